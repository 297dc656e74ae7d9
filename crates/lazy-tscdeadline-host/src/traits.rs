//! What a VMM plugs into the timer.

/// A one-shot host timer that expires at a guest-TSC deadline.
///
/// When it expires the VMM calls
/// [`TscDeadlineTimer::kick`](crate::TscDeadlineTimer::kick). It may expire
/// late, and even early (the timer re-arms itself when the guest clock has
/// not reached its deadline yet), but must not be lost. Arming replaces any
/// earlier deadline; a stale expiry reported after a re-arm is tolerated.
pub trait HostTimer {
    /// Arms the timer for guest TSC `deadline`, replacing any earlier one.
    fn arm(&mut self, deadline: u64);
    /// Cancels the timer, if armed.
    fn disarm(&mut self);
}

/// Reads the current guest TSC.
pub trait GuestClock {
    /// The guest TSC now. Must be monotonic.
    fn now(&self) -> u64;
}

/// Raises the vCPU's LAPIC timer interrupt.
pub trait InterruptSink {
    /// Sets the interrupt `vector` pending in the LAPIC (IRR semantics: a
    /// second injection before the guest takes the first is merged).
    fn inject(&mut self, vector: u8);
}

impl<T: HostTimer + ?Sized> HostTimer for &mut T {
    fn arm(&mut self, deadline: u64) {
        (**self).arm(deadline)
    }
    fn disarm(&mut self) {
        (**self).disarm()
    }
}

impl<C: GuestClock + ?Sized> GuestClock for &C {
    fn now(&self) -> u64 {
        (**self).now()
    }
}

impl<I: InterruptSink + ?Sized> InterruptSink for &mut I {
    fn inject(&mut self, vector: u8) {
        (**self).inject(vector)
    }
}
