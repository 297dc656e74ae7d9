//! The deadline setter: the protocol's guest half.

use lazy_tscdeadline_abi::{
    Registration, RegistrationError, MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE,
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
}

/// The protocol's trap rule: with `armed` loaded after storing `deadline`
/// into `pending`, the MSR must be written iff this returns true.
#[inline(always)]
pub const fn must_trap(armed: u64, deadline: u64) -> bool {
    armed == 0 || deadline < armed
}

/// Programs the LAPIC TSC-deadline timer of one vCPU, lazily once a shared
/// struct is registered and eagerly (always writing the MSR) before.
#[derive(Debug)]
pub struct DeadlineSetter<S, M> {
    shared: Option<S>,
    msr: M,
    stats: GuestStats,
}

impl<S: SharedFields, M: MsrWriter> DeadlineSetter<S, M> {
    /// A setter that writes the MSR for every deadline until
    /// [`register`](Self::register) is called.
    pub fn new(msr: M) -> Self {
        DeadlineSetter {
            shared: None,
            msr,
            stats: GuestStats::default(),
        }
    }

    /// Registers `shared`, located at guest-physical `gpa`, with the host.
    ///
    /// Writes [`registration_value`]`(gpa)` to the registration MSR. The
    /// host answers with `armed = 0`, so the next deadline traps; `pending`
    /// need not be initialised, as the host reads it only after a trapped
    /// write, which this setter always precedes with a store to `pending`.
    /// The caller must have checked the CPUID feature bit: without it the
    /// host answers the write with #GP.
    pub fn register(&mut self, shared: S, gpa: u64) -> Result<(), RegistrationError> {
        let value = registration_value(gpa)?;
        self.msr.write_msr(MSR_KVM_LAZY_TSCDEADLINE, value);
        self.shared = Some(shared);
        Ok(())
    }

    /// Unregisters the struct (writes [`disable_value`]) and returns it.
    /// The host drops any armed deadline; the guest re-programs afterwards.
    pub fn unregister(&mut self) -> Option<S> {
        let shared = self.shared.take();
        if shared.is_some() {
            self.msr
                .write_msr(MSR_KVM_LAZY_TSCDEADLINE, disable_value());
        }
        shared
    }

    /// Forgets the registration without writing any MSR, as after INIT or
    /// RESET (which the host also saw). Counters are kept.
    pub fn reset(&mut self) -> Option<S> {
        self.shared.take()
    }

    /// Sets the next timer deadline to guest TSC `deadline` (0 cancels),
    /// writing `IA32_TSC_DEADLINE` only when the protocol requires it.
    #[inline]
    pub fn set_next_deadline(&mut self, deadline: u64) -> WriteOutcome {
        self.stats.writes += 1;
        let trap = match &self.shared {
            None => true,
            Some(shared) => {
                shared.store_pending(deadline);
                shared.full_fence();
                must_trap(shared.load_armed(), deadline)
            }
        };
        if trap {
            self.stats.traps += 1;
            self.msr.write_msr(MSR_IA32_TSC_DEADLINE, deadline);
            WriteOutcome::Trapped
        } else {
            self.stats.deferred += 1;
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
    }
    impl SharedFields for &Cells {
        fn store_pending(&self, d: u64) {
            self.pending.set(d)
        }
        fn full_fence(&self) {}
        fn load_armed(&self) -> u64 {
            self.armed.get()
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
                deferred: 2
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
}
