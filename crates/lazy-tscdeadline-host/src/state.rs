//! Snapshot state and counters.

/// Version of [`TimerState`] written by this crate.
pub const STATE_VERSION: u32 = 1;

/// Per-vCPU counters. They add up (`+=`, `Sum`) for per-VM totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Counters {
    /// `IA32_TSC_DEADLINE` writes that reached the host (VM exits).
    pub trapped_writes: u64,
    /// Of those, writes ignored because the LVT was not in live TSC-deadline mode.
    pub ignored_writes: u64,
    /// Kicks that re-armed for a later `pending` without an interrupt.
    pub rearms: u64,
    /// Timer interrupts injected.
    pub injections: u64,
    /// Deadlines dropped by CLEAR (LVT change, registration change).
    pub clears: u64,
    /// Kicks that found the deadline cancelled by the guest.
    pub kick_cancels: u64,
    /// Kicks that hit the round limit and fell back to publishing 0.
    pub kick_fallbacks: u64,
    /// Host timer expiries with nothing armed.
    pub stale_expiries: u64,
    /// Host timer expiries before the guest TSC reached the deadline.
    pub early_expiries: u64,
    /// Successful enabling registrations.
    pub registrations: u64,
    /// Registration MSR writes answered with #GP.
    pub rejected_registrations: u64,
    /// Guest memory accesses to a registered struct that failed.
    pub memory_errors: u64,
    /// INIT/RESET.
    pub resets: u64,
}

impl core::ops::AddAssign for Counters {
    /// Adds every counter of `other` (e.g. to total the vCPUs of a VM).
    fn add_assign(&mut self, other: Counters) {
        let Counters {
            trapped_writes,
            ignored_writes,
            rearms,
            injections,
            clears,
            kick_cancels,
            kick_fallbacks,
            stale_expiries,
            early_expiries,
            registrations,
            rejected_registrations,
            memory_errors,
            resets,
        } = other;
        self.trapped_writes += trapped_writes;
        self.ignored_writes += ignored_writes;
        self.rearms += rearms;
        self.injections += injections;
        self.clears += clears;
        self.kick_cancels += kick_cancels;
        self.kick_fallbacks += kick_fallbacks;
        self.stale_expiries += stale_expiries;
        self.early_expiries += early_expiries;
        self.registrations += registrations;
        self.rejected_registrations += rejected_registrations;
        self.memory_errors += memory_errors;
        self.resets += resets;
    }
}

impl core::iter::Sum for Counters {
    fn sum<I: Iterator<Item = Counters>>(iter: I) -> Counters {
        iter.fold(Counters::default(), |mut acc, c| {
            acc += c;
            acc
        })
    }
}

/// The state of one vCPU's timer, as plain data (see
/// [`TscDeadlineTimer::state`](crate::TscDeadlineTimer::state)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TimerState {
    /// Format version, [`STATE_VERSION`].
    pub version: u32,
    /// LVT timer register.
    pub lvt_timer: u32,
    /// Deadline the host timer is armed for (0: none).
    pub deadline: u64,
    /// Whether `deadline` is published as `armed` in the registered struct.
    pub published: bool,
    /// Raw registration MSR value.
    pub registration: u64,
    /// Whether the feature is advertised to the guest.
    pub lazy_advertised: bool,
    /// Counters.
    pub counters: Counters,
}
