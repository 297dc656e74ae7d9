//! What a VMM plugs into the timer.
//!
//! The host timer and the interrupt sink can fail (a `timerfd_settime` or a
//! `KVM_SIGNAL_MSI` ioctl): like vm-superio's `Trigger`, they name their
//! error type and return a `Result`. The timer hands the error to the caller
//! of the operation that hit it as a
//! [`BackendError`](crate::BackendError), never as a guest fault and never
//! with a panic. Infallible implementations use
//! [`core::convert::Infallible`].
//!
//! Blanket implementations let a VMM pass its collaborators by mutable
//! reference or boxed (also as trait objects, e.g.
//! `Box<dyn HostTimer<Error = std::io::Error> + Send>`); the clock, which
//! only reads, also by shared reference, `Rc` or `Arc`.

use std::rc::Rc;
use std::sync::Arc;

/// A one-shot host timer that expires at a guest-TSC deadline.
///
/// When it expires the VMM calls
/// [`TscDeadlineTimer::kick`](crate::TscDeadlineTimer::kick). It may expire
/// late, and even early (the timer re-arms itself when the guest clock has
/// not reached its deadline yet), but must not be lost. Arming replaces any
/// earlier deadline; a stale expiry reported after a re-arm is tolerated.
pub trait HostTimer {
    /// The error of a failed call.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Arms the timer for guest TSC `deadline`, replacing any earlier one.
    fn arm(&mut self, deadline: u64) -> Result<(), Self::Error>;
    /// Cancels the timer, if armed.
    fn disarm(&mut self) -> Result<(), Self::Error>;
}

/// Reads the current guest TSC.
pub trait GuestClock {
    /// The guest TSC now. Must be monotonic.
    fn now(&self) -> u64;
}

/// Raises the vCPU's LAPIC timer interrupt.
pub trait InterruptSink {
    /// The error of a failed injection.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Sets the interrupt `vector` pending in the LAPIC (IRR semantics: a
    /// second injection before the guest takes the first is merged).
    fn inject(&mut self, vector: u8) -> Result<(), Self::Error>;
}

impl<T: HostTimer + ?Sized> HostTimer for &mut T {
    type Error = T::Error;
    fn arm(&mut self, deadline: u64) -> Result<(), Self::Error> {
        (**self).arm(deadline)
    }
    fn disarm(&mut self) -> Result<(), Self::Error> {
        (**self).disarm()
    }
}

impl<T: HostTimer + ?Sized> HostTimer for Box<T> {
    type Error = T::Error;
    fn arm(&mut self, deadline: u64) -> Result<(), Self::Error> {
        (**self).arm(deadline)
    }
    fn disarm(&mut self) -> Result<(), Self::Error> {
        (**self).disarm()
    }
}

impl<C: GuestClock + ?Sized> GuestClock for &C {
    fn now(&self) -> u64 {
        (**self).now()
    }
}

impl<C: GuestClock + ?Sized> GuestClock for Box<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
}

impl<C: GuestClock + ?Sized> GuestClock for Rc<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
}

impl<C: GuestClock + ?Sized> GuestClock for Arc<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
}

impl<I: InterruptSink + ?Sized> InterruptSink for &mut I {
    type Error = I::Error;
    fn inject(&mut self, vector: u8) -> Result<(), Self::Error> {
        (**self).inject(vector)
    }
}

impl<I: InterruptSink + ?Sized> InterruptSink for Box<I> {
    type Error = I::Error;
    fn inject(&mut self, vector: u8) -> Result<(), Self::Error> {
        (**self).inject(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    struct Count(u64);
    impl HostTimer for Count {
        type Error = std::io::Error;
        fn arm(&mut self, _: u64) -> Result<(), Self::Error> {
            self.0 += 1;
            Ok(())
        }
        fn disarm(&mut self) -> Result<(), Self::Error> {
            Err(std::io::Error::other("disarm"))
        }
    }
    struct Sink(Vec<u8>);
    impl InterruptSink for Sink {
        type Error = Infallible;
        fn inject(&mut self, v: u8) -> Result<(), Infallible> {
            self.0.push(v);
            Ok(())
        }
    }
    struct Fixed;
    impl GuestClock for Fixed {
        fn now(&self) -> u64 {
            7
        }
    }

    fn arm<H: HostTimer>(mut h: H, d: u64) -> Result<(), H::Error> {
        h.arm(d)?;
        h.disarm()
    }
    fn inject<S: InterruptSink>(mut s: S) -> Result<(), S::Error> {
        s.inject(3)
    }
    fn now<C: GuestClock>(c: C) -> u64 {
        c.now()
    }

    #[test]
    fn blanket_impls_forward() {
        // Generic callers need the impls for the wrapper types themselves.
        let mut boxed: Box<dyn HostTimer<Error = std::io::Error> + Send> = Box::new(Count(0));
        assert!(arm(&mut boxed, 1).is_err());
        assert!(arm(boxed, 2).is_err());
        let mut counted = Count(0);
        assert!(arm(&mut counted, 3).is_err());
        assert_eq!(counted.0, 1);
        let mut sink = Sink(vec![]);
        inject(&mut sink).unwrap();
        let boxed: Box<dyn InterruptSink<Error = Infallible> + Send> = Box::new(Sink(vec![]));
        inject(boxed).unwrap();
        assert_eq!(sink.0, [3]);
        assert_eq!(now(&Fixed), 7);
        assert_eq!(now(Box::new(Fixed)), 7);
        assert_eq!(now(Rc::new(Fixed)), 7);
        assert_eq!(now(Arc::new(Fixed) as Arc<dyn GuestClock + Send + Sync>), 7);
    }
}
