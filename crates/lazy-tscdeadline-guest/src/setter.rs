//! The deadline setter: the protocol's guest half.

use lazy_tscdeadline_abi::{
    Registration, RegistrationError, LAZY_FLAG_EXITLESS_CANCEL, MSR_IA32_TSC_DEADLINE,
    MSR_KVM_LAZY_TSCDEADLINE,
};

use crate::{MsrWriter, SharedFields};

/// What one [`DeadlineSetter::set_next_deadline`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// `IA32_TSC_DEADLINE` was written: a VM exit.
    Trapped,
    /// Only `pending` was written; the host's earlier armed timer will pick
    /// the new deadline up.
    Deferred,
}

/// Guest-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Calls of `set_next_deadline`.
    pub writes: u64,
    /// Calls that wrote the MSR.
    pub traps: u64,
    /// Calls that only stored `pending`.
    pub deferred: u64,
    /// Of the `deferred` calls, cancellations (deadline 0) left to the host
    /// under the negotiated exitless cancel.
    pub exitless_cancels: u64,
}

/// The protocol's trap rule: with `armed` loaded after storing `deadline`
/// into `pending`, the MSR must be written iff this returns true.
#[inline(always)]
pub const fn must_trap(armed: u64, deadline: u64) -> bool {
    armed == 0 || deadline < armed
}

/// The trap rule with the negotiated exitless cancel: as [`must_trap`], except
/// that a cancellation (`deadline == 0`) does not trap while something is
/// armed when `exitless_cancel` is in force (the host set
/// [`LAZY_FLAG_EXITLESS_CANCEL`] at registration and the setter honours it).
#[inline(always)]
pub const fn must_trap_with(armed: u64, deadline: u64, exitless_cancel: bool) -> bool {
    if exitless_cancel && deadline == 0 && armed != 0 {
        return false;
    }
    must_trap(armed, deadline)
}

/// Programs the LAPIC TSC-deadline timer of one vCPU, lazily once a shared
/// struct is registered and eagerly (always writing the MSR) before.
///
/// # Exitless cancel
/// By default the setter honours the host's offer of exitless cancel: if,
/// after the registration WRMSR, `flags` has
/// [`LAZY_FLAG_EXITLESS_CANCEL`] set, a cancellation (deadline 0) is only
/// stored into `pending` while `armed != 0`. A host built for the RFC never
/// sets the flag, and then every cancellation traps as the RFC requires.
/// [`with_exitless_cancel(false)`](Self::with_exitless_cancel) makes the
/// setter behave exactly like the RFC's guest whatever the host offers.
#[derive(Debug)]
pub struct DeadlineSetter<S, M> {
    shared: Option<S>,
    msr: M,
    stats: GuestStats,
    /// Whether to use exitless cancel when the host offers it.
    honour_exitless: bool,
    /// Whether the host offered it at the current registration.
    host_offers_exitless: bool,
}

impl<S: SharedFields, M: MsrWriter> DeadlineSetter<S, M> {
    /// A setter that writes the MSR for every deadline until
    /// [`register`](Self::register) is called.
    pub fn new(msr: M) -> Self {
        DeadlineSetter {
            shared: None,
            msr,
            stats: GuestStats::default(),
            honour_exitless: true,
            host_offers_exitless: false,
        }
    }

    /// Whether to use exitless cancel when the host offers it (default
    /// `true`). With `false` the setter is the RFC's guest: every
    /// cancellation traps while something is armed.
    pub fn with_exitless_cancel(mut self, honour: bool) -> Self {
        self.honour_exitless = honour;
        self
    }

    /// As [`with_exitless_cancel`](Self::with_exitless_cancel), on an
    /// existing setter (takes effect at the next write).
    pub fn set_exitless_cancel(&mut self, honour: bool) {
        self.honour_exitless = honour;
    }

    /// Whether cancellations currently skip the trap: the setter honours
    /// exitless cancel, a struct is registered, and the host set
    /// [`LAZY_FLAG_EXITLESS_CANCEL`] in it at registration.
    pub fn exitless_cancel(&self) -> bool {
        self.honour_exitless && self.host_offers_exitless && self.shared.is_some()
    }

    /// Registers `shared`, located at guest-physical `gpa`, with the host.
    ///
    /// Writes [`registration_value`]`(gpa)` to the registration MSR. The
    /// host answers with `armed = 0`, so the next deadline traps; `pending`
    /// need not be initialised, as the host reads it only after a trapped
    /// write, which this setter always precedes with a store to `pending`.
    /// The caller must have checked the CPUID feature bit: without it the
    /// host answers the write with #GP.
    ///
    /// `flags` is zeroed before the WRMSR (a host built for the RFC leaves it
    /// alone) and read after it: the host writes the extensions it offers
    /// there while it handles the registration.
    pub fn register(&mut self, shared: S, gpa: u64) -> Result<(), RegistrationError> {
        let value = registration_value(gpa)?;
        shared.store_flags(0);
        self.msr.write_msr(MSR_KVM_LAZY_TSCDEADLINE, value);
        self.host_offers_exitless = shared.load_flags() & LAZY_FLAG_EXITLESS_CANCEL != 0;
        self.shared = Some(shared);
        Ok(())
    }

    /// Unregisters the struct (writes [`disable_value`]) and returns it.
    /// The host keeps an armed deadline (unpublished: it fires unless the
    /// next write, which traps, replaces it).
    pub fn unregister(&mut self) -> Option<S> {
        let shared = self.shared.take();
        self.host_offers_exitless = false;
        if shared.is_some() {
            self.msr
                .write_msr(MSR_KVM_LAZY_TSCDEADLINE, disable_value());
        }
        shared
    }

    /// Forgets the registration without writing any MSR, as after INIT or
    /// RESET (which the host also saw). Counters are kept.
    pub fn reset(&mut self) -> Option<S> {
        self.host_offers_exitless = false;
        self.shared.take()
    }

    /// Sets the next timer deadline to guest TSC `deadline` (0 cancels),
    /// writing `IA32_TSC_DEADLINE` only when the protocol requires it.
    #[inline]
    pub fn set_next_deadline(&mut self, deadline: u64) -> WriteOutcome {
        self.stats.writes += 1;
        let exitless = self.honour_exitless && self.host_offers_exitless;
        let trap = match &self.shared {
            None => true,
            Some(shared) => {
                shared.store_pending(deadline);
                shared.full_fence();
                must_trap_with(shared.load_armed(), deadline, exitless)
            }
        };
        if trap {
            self.stats.traps += 1;
            self.msr.write_msr(MSR_IA32_TSC_DEADLINE, deadline);
            WriteOutcome::Trapped
        } else {
            self.stats.deferred += 1;
            if deadline == 0 {
                self.stats.exitless_cancels += 1;
            }
            WriteOutcome::Deferred
        }
    }

    /// The registered shared fields, if any.
    pub fn shared(&self) -> Option<&S> {
        self.shared.as_ref()
    }

    /// The MSR writer.
    pub fn msr(&self) -> &M {
        &self.msr
    }

    /// The MSR writer, mutably (e.g. to write other MSRs through it).
    pub fn msr_mut(&mut self) -> &mut M {
        &mut self.msr
    }

    /// Counters since creation.
    pub fn stats(&self) -> GuestStats {
        self.stats
    }
}

/// The value that registers the struct at `gpa` (which must be 64-byte
/// aligned).
pub fn registration_value(gpa: u64) -> Result<u64, RegistrationError> {
    Registration::enabled(gpa).map(Registration::to_msr)
}

/// The value that unregisters the struct.
pub const fn disable_value() -> u64 {
    Registration::DISABLED.to_msr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// Shared fields in plain cells: single-threaded tests only.
    #[derive(Default)]
    struct Cells {
        armed: Cell<u64>,
        pending: Cell<u64>,
        flags: Cell<u32>,
    }
    impl SharedFields for &Cells {
        fn store_pending(&self, d: u64) {
            self.pending.set(d)
        }
        fn full_fence(&self) {}
        fn load_armed(&self) -> u64 {
            self.armed.get()
        }
        fn store_flags(&self, f: u32) {
            self.flags.set(f)
        }
        fn load_flags(&self) -> u32 {
            self.flags.get()
        }
    }
    /// Fields without `flags` (the trait's defaults).
    struct NoFlags<'a>(&'a Cells);
    impl SharedFields for NoFlags<'_> {
        fn store_pending(&self, d: u64) {
            self.0.pending.set(d)
        }
        fn full_fence(&self) {}
        fn load_armed(&self) -> u64 {
            self.0.armed.get()
        }
    }
    /// An MSR writer that plays a host offering `flags` at registration.
    struct Offering<'a>(&'a Cells, u32, u32);
    impl MsrWriter for Offering<'_> {
        fn write_msr(&mut self, i: u32, v: u64) {
            if i == MSR_KVM_LAZY_TSCDEADLINE && v & 1 != 0 {
                self.0.flags.set(self.1);
            }
            if i == MSR_IA32_TSC_DEADLINE {
                self.2 += 1;
            }
        }
    }
    #[derive(Default)]
    struct Last(Option<(u32, u64)>, u32);
    impl MsrWriter for Last {
        fn write_msr(&mut self, i: u32, v: u64) {
            self.0 = Some((i, v));
            self.1 += 1;
        }
    }

    #[test]
    fn unregistered_setter_always_traps() {
        let mut s: DeadlineSetter<&Cells, Last> = DeadlineSetter::new(Last::default());
        for d in [5, 5, 1, 0] {
            assert_eq!(s.set_next_deadline(d), WriteOutcome::Trapped);
            assert_eq!(s.msr().0, Some((MSR_IA32_TSC_DEADLINE, d)));
        }
        assert_eq!(s.stats().traps, 4);
    }

    #[test]
    fn trap_rule_matches_protocol() {
        let cells = Cells::default();
        let mut s = DeadlineSetter::new(Last::default());
        s.register(&cells, 0x40).unwrap();
        assert_eq!(s.msr().0, Some((MSR_KVM_LAZY_TSCDEADLINE, 0x41)));
        cells.armed.set(100);
        assert_eq!(s.set_next_deadline(100), WriteOutcome::Deferred);
        assert_eq!(s.set_next_deadline(150), WriteOutcome::Deferred);
        assert_eq!(cells.pending.get(), 150);
        assert_eq!(s.set_next_deadline(99), WriteOutcome::Trapped);
        // Cancelling always traps while something is armed.
        assert_eq!(s.set_next_deadline(0), WriteOutcome::Trapped);
        cells.armed.set(0);
        assert_eq!(s.set_next_deadline(u64::MAX), WriteOutcome::Trapped);
        assert_eq!(
            s.stats(),
            GuestStats {
                writes: 5,
                traps: 3,
                deferred: 2,
                exitless_cancels: 0,
            }
        );
    }

    #[test]
    fn register_rejects_bad_address_and_unregister_writes_zero() {
        let cells = Cells::default();
        let mut s = DeadlineSetter::new(Last::default());
        assert!(s.register(&cells, 0x41).is_err());
        assert_eq!(s.msr().1, 0, "no MSR write for a rejected address");
        s.register(&cells, 0x80).unwrap();
        assert_eq!(s.msr().0, Some((MSR_KVM_LAZY_TSCDEADLINE, 0x81)));
        assert!(s.unregister().is_some());
        assert_eq!(s.msr().0, Some((MSR_KVM_LAZY_TSCDEADLINE, 0)));
        assert!(s.unregister().is_none());
    }

    #[test]
    fn trap_rule_with_exitless_cancel() {
        // Written out from the protocol: only a cancel with something armed
        // changes, and only when exitless cancel is in force.
        for armed in [0u64, 1, 100, u64::MAX] {
            for d in [0u64, 1, 99, 100, 101, u64::MAX] {
                let rfc = armed == 0 || d < armed;
                assert_eq!(must_trap_with(armed, d, false), rfc);
                let exitless = if d == 0 && armed != 0 { false } else { rfc };
                assert_eq!(must_trap_with(armed, d, true), exitless, "{armed} {d}");
            }
        }
    }

    #[test]
    fn exitless_cancel_only_when_offered_and_honoured() {
        for (offered, honour) in [(0, true), (1, true), (1, false), (0xffff_fffe, true)] {
            let cells = Cells::default();
            // Garbage left in `flags` by earlier use of the memory: zeroed
            // before registering, so a host that writes nothing offers nothing.
            cells.flags.set(u32::MAX);
            let mut s =
                DeadlineSetter::new(Offering(&cells, offered, 0)).with_exitless_cancel(honour);
            s.register(&cells, 0x40).unwrap();
            let on = offered & 1 != 0 && honour;
            assert_eq!(s.exitless_cancel(), on);
            cells.armed.set(100);
            let want = if on {
                WriteOutcome::Deferred
            } else {
                WriteOutcome::Trapped
            };
            assert_eq!(s.set_next_deadline(0), want);
            assert_eq!(cells.pending.get(), 0);
            assert_eq!(s.stats().exitless_cancels, u64::from(on));
            // Nothing armed: a cancel traps whatever was negotiated.
            cells.armed.set(0);
            assert_eq!(s.set_next_deadline(0), WriteOutcome::Trapped);
            // Unregistering forgets the offer.
            s.unregister();
            assert!(!s.exitless_cancel());
        }
    }

    #[test]
    fn a_host_that_never_writes_flags_offers_nothing() {
        // An RFC host: the registration WRMSR leaves `flags` as it was.
        let cells = Cells::default();
        cells.flags.set(1);
        let mut s = DeadlineSetter::new(Last::default());
        s.register(&cells, 0x40).unwrap();
        assert!(!s.exitless_cancel());
        cells.armed.set(100);
        assert_eq!(s.set_next_deadline(0), WriteOutcome::Trapped);
        // Fields without `flags` access never use the extension either.
        let mut s = DeadlineSetter::new(Offering(&cells, 1, 0));
        s.register(NoFlags(&cells), 0x40).unwrap();
        assert!(!s.exitless_cancel());
        assert_eq!(s.set_next_deadline(0), WriteOutcome::Trapped);
        assert_eq!(s.msr().2, 1);
    }
}
