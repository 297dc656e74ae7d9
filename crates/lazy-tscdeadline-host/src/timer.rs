//! The TSC-deadline timer state machine: UPDATE, KICK and CLEAR.

use crate::shared::{SharedArea, SharedMemory};
use crate::state::{Counters, TimerState, STATE_VERSION};
use crate::{Error, GuestClock, HostTimer, InterruptSink, LvtTimer};
use lazy_tscdeadline_abi::{Registration, MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};

/// How many publish/re-check rounds one [`TscDeadlineTimer::kick`] makes
/// before it stops trusting a `pending` that keeps moving under it. An
/// honest guest changes `pending` at most once or twice while one kick runs;
/// after this many rounds the kick publishes `armed = 0`, which settles in
/// one more step (see `docs/PROTOCOL.md`).
pub const MAX_KICK_ROUNDS: u32 = 4;

/// Static configuration of one vCPU's timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Whether the VMM advertises `KVM_FEATURE_LAZY_TSCDEADLINE` to this
    /// guest. Without it every access to the registration MSR faults.
    pub lazy_advertised: bool,
}

/// What a [`TscDeadlineTimer::kick`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickOutcome {
    /// The timer interrupt was injected.
    Injected,
    /// The guest had moved its deadline later: the host timer was re-armed
    /// there, no interrupt.
    Rearmed(u64),
    /// The guest had cancelled its deadline (its trapping write of 0 is on
    /// its way): nothing armed, no interrupt.
    Cancelled,
    /// The host timer fired before the guest TSC reached the deadline; it
    /// was re-armed for the same deadline.
    TooEarly,
    /// Nothing was armed: an expiry left over from a deadline that has since
    /// been replaced or cleared. Ignored.
    Stale,
}

/// One vCPU's LAPIC TSC-deadline timer with the lazy extension.
///
/// See the [crate documentation](crate) for how a VMM drives it and
/// `docs/PROTOCOL.md` for the protocol it implements.
#[derive(Debug)]
pub struct TscDeadlineTimer<M, T, C, I> {
    mem: M,
    timer: T,
    clock: C,
    irq: I,
    config: Config,
    lvt: LvtTimer,
    /// Deadline the host timer is armed for, 0 when none. This is the host's
    /// own copy of `armed`: guest memory is written from it, never read.
    deadline: u64,
    /// Whether `deadline` is published as `armed` in the registered struct.
    published: bool,
    /// Whether the host timer is armed and has not expired yet.
    timer_running: bool,
    registration: Registration,
    area: Option<SharedArea>,
    counters: Counters,
}

impl<M, T, C, I> TscDeadlineTimer<M, T, C, I>
where
    M: SharedMemory,
    T: HostTimer,
    C: GuestClock,
    I: InterruptSink,
{
    /// A timer in its reset state: LVT masked, nothing armed, no struct
    /// registered.
    pub fn new(mem: M, timer: T, clock: C, irq: I, config: Config) -> Self {
        TscDeadlineTimer {
            mem,
            timer,
            clock,
            irq,
            config,
            lvt: LvtTimer::RESET,
            deadline: 0,
            published: false,
            timer_running: false,
            registration: Registration::DISABLED,
            area: None,
            counters: Counters::default(),
        }
    }

    /// Whether `index` is one of the MSRs this timer emulates.
    pub fn handles_msr(index: u32) -> bool {
        index == MSR_IA32_TSC_DEADLINE || index == MSR_KVM_LAZY_TSCDEADLINE
    }

    /// Emulates WRMSR. `Err` means the VMM must inject #GP instead.
    pub fn write_msr(&mut self, index: u32, value: u64) -> Result<(), Error> {
        match index {
            MSR_IA32_TSC_DEADLINE => {
                self.update(value);
                Ok(())
            }
            MSR_KVM_LAZY_TSCDEADLINE => self.register(value).inspect_err(|_| {
                self.counters.rejected_registrations += 1;
            }),
            _ => Err(Error::UnknownMsr(index)),
        }
    }

    /// Emulates RDMSR. `Err` means the VMM must inject #GP instead.
    ///
    /// `IA32_TSC_DEADLINE` reads the deadline the host timer is armed for,
    /// 0 once it has fired or when the LVT is not in TSC-deadline mode.
    pub fn read_msr(&self, index: u32) -> Result<u64, Error> {
        match index {
            MSR_IA32_TSC_DEADLINE => Ok(self.deadline),
            MSR_KVM_LAZY_TSCDEADLINE if self.config.lazy_advertised => {
                Ok(self.registration.to_msr())
            }
            MSR_KVM_LAZY_TSCDEADLINE => Err(Error::FeatureNotAdvertised),
            _ => Err(Error::UnknownMsr(index)),
        }
    }

    /// Tells the timer the LVT timer register's current value. Leaving
    /// TSC-deadline mode, or masking, drops the armed deadline (CLEAR).
    ///
    /// A deadline that is already due but whose host expiry has not been
    /// handled yet is delivered first, under the old LVT value, as it would
    /// have been had the host timer been on time.
    pub fn set_lvt_timer(&mut self, lvt: u32) {
        self.catch_up();
        self.lvt = LvtTimer::from_raw(lvt);
        if !self.lvt.deadline_live() && self.deadline != 0 {
            self.clear();
        }
    }

    /// The host timer expired: KICK.
    ///
    /// Safe to call from a timer thread while the vCPU runs the guest (with
    /// the timer behind a mutex shared with the vCPU thread). Injects only
    /// for the guest's latest deadline and only once it has passed; re-arms
    /// when the guest moved the deadline later.
    pub fn kick(&mut self) -> KickOutcome {
        self.timer_running = false;
        if self.deadline == 0 {
            self.counters.stale_expiries += 1;
            return KickOutcome::Stale;
        }
        let now = self.clock.now();
        if now < self.deadline {
            self.counters.early_expiries += 1;
            self.arm_timer(self.deadline);
            return KickOutcome::TooEarly;
        }
        if !self.published {
            // Armed by a trapped write before registration (or after a
            // fallback): plain TSC-deadline semantics.
            self.deadline = 0;
            self.fire();
            return KickOutcome::Injected;
        }
        let outcome = self.settle_pending(now);
        match outcome {
            KickOutcome::Injected => self.fire(),
            KickOutcome::Rearmed(_) => self.counters.rearms += 1,
            _ => self.counters.kick_cancels += 1,
        }
        outcome
    }

    /// Resets the timer for INIT/RESET: the deadline and the registration
    /// are dropped (and `armed` cleared in the struct), the LVT is masked.
    pub fn reset(&mut self) {
        self.clear_deadline();
        self.published_to(0);
        self.registration = Registration::DISABLED;
        self.area = None;
        self.lvt = LvtTimer::RESET;
        self.counters.resets += 1;
    }

    /// A snapshot of the timer's state, for save/restore and migration.
    pub fn state(&self) -> TimerState {
        TimerState {
            version: STATE_VERSION,
            lvt_timer: self.lvt.raw(),
            deadline: self.deadline,
            published: self.published,
            registration: self.registration.to_msr(),
            lazy_advertised: self.config.lazy_advertised,
            counters: self.counters,
        }
    }

    /// Rebuilds a timer from `state` over `mem` (the restored guest memory)
    /// and re-arms `timer` if a deadline was armed. A deadline that passed
    /// while the VM was stopped fires at the first kick.
    pub fn from_state(
        mem: M,
        timer: T,
        clock: C,
        irq: I,
        state: &TimerState,
    ) -> Result<Self, Error> {
        if state.version != STATE_VERSION {
            return Err(Error::UnsupportedStateVersion(state.version));
        }
        let registration = Registration::from_msr(state.registration)
            .map_err(|_| Error::InvalidState("reserved bits set in the registration value"))?;
        let lvt = LvtTimer::from_raw(state.lvt_timer);
        if registration.is_enabled() && !state.lazy_advertised {
            return Err(Error::InvalidState(
                "registered but the feature is not advertised",
            ));
        }
        if state.published && (state.deadline == 0 || !registration.is_enabled()) {
            return Err(Error::InvalidState(
                "published without a deadline or registration",
            ));
        }
        if state.deadline != 0 && !lvt.deadline_live() {
            return Err(Error::InvalidState(
                "deadline armed while the LVT is not in live TSC-deadline mode",
            ));
        }
        let area = match registration.gpa() {
            Some(gpa) => Some(
                SharedArea::new(&mem, gpa)
                    .ok_or(Error::InvalidState("registered struct is not in guest RAM"))?,
            ),
            None => None,
        };
        let mut t = TscDeadlineTimer::new(
            mem,
            timer,
            clock,
            irq,
            Config {
                lazy_advertised: state.lazy_advertised,
            },
        );
        t.lvt = lvt;
        t.registration = registration;
        t.area = area;
        t.counters = state.counters;
        t.deadline = state.deadline;
        t.published = state.published;
        if t.deadline != 0 {
            t.arm_timer(t.deadline);
        }
        // Guest memory was restored with the rest of the VM, but write
        // `armed` again so it matches the host's copy whatever it holds.
        t.published_to(if t.published { t.deadline } else { 0 });
        Ok(t)
    }

    /// Counters since creation (carried over snapshots).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The deadline the host timer is armed for (0: none).
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// Whether `deadline` is published to the guest as `armed`.
    pub fn is_published(&self) -> bool {
        self.published
    }

    /// The current registration.
    pub fn registration(&self) -> Registration {
        self.registration
    }

    /// The LVT timer register as last set.
    pub fn lvt_timer(&self) -> LvtTimer {
        self.lvt
    }

    /// The interrupt sink.
    pub fn interrupts(&self) -> &I {
        &self.irq
    }

    /// The interrupt sink, mutably (e.g. to drain what a recording sink
    /// collected).
    pub fn interrupts_mut(&mut self) -> &mut I {
        &mut self.irq
    }

    /// The host timer.
    pub fn host_timer(&self) -> &T {
        &self.timer
    }

    /// UPDATE: the guest wrote `IA32_TSC_DEADLINE` (a trapped write).
    fn update(&mut self, value: u64) {
        self.counters.trapped_writes += 1;
        if !self.lvt.deadline_live() {
            // Writes are ignored outside live TSC-deadline mode.
            self.counters.ignored_writes += 1;
            return;
        }
        if value == 0 {
            self.clear_deadline();
            self.published_to(0);
            return;
        }
        if value <= self.clock.now() {
            // Already passed: fire at once, nothing stays armed (CLEAR).
            self.clear_deadline();
            self.published_to(0);
            self.fire();
            return;
        }
        self.arm_timer(value);
        self.deadline = value;
        self.published_to(value);
    }

    /// Registration MSR write: enable, disable or re-register. Any change
    /// drops the armed deadline (after delivering it if it is already due)
    /// and starts the new struct with `armed = 0`.
    fn register(&mut self, value: u64) -> Result<(), Error> {
        if !self.config.lazy_advertised {
            return Err(Error::FeatureNotAdvertised);
        }
        let registration = Registration::from_msr(value)?;
        let area = match registration.gpa() {
            Some(gpa) => {
                Some(SharedArea::new(&self.mem, gpa).ok_or(Error::OutsideGuestMemory(gpa))?)
            }
            None => None,
        };
        self.catch_up();
        if self.deadline != 0 {
            self.clear();
        } else {
            self.published_to(0);
        }
        self.registration = registration;
        self.area = area;
        self.published_to(0);
        if registration.is_enabled() {
            self.counters.registrations += 1;
        }
        Ok(())
    }

    /// Handles a due host expiry now, before an event that would drop the
    /// deadline (a late host timer must not turn into a lost interrupt).
    fn catch_up(&mut self) {
        if self.deadline != 0 && self.deadline <= self.clock.now() {
            self.disarm_timer();
            self.kick();
        }
    }

    /// CLEAR: the deadline goes away for a reason other than firing.
    fn clear(&mut self) {
        self.clear_deadline();
        self.published_to(0);
        self.counters.clears += 1;
    }

    /// The KICK of a published deadline: reads `pending`, publishes the
    /// outcome, and re-reads `pending` after the fence until it is stable.
    /// Leaves `deadline`/`published`/timer consistent; the caller injects.
    fn settle_pending(&mut self, now: u64) -> KickOutcome {
        let Some(area) = self.area else {
            self.deadline = 0;
            self.published = false;
            return KickOutcome::Injected;
        };
        let Some(mut pending) = area.load_pending(&self.mem) else {
            return self.memory_fault();
        };
        for _ in 0..MAX_KICK_ROUNDS {
            let next = Self::next_deadline(pending, now);
            if next == self.deadline && self.published {
                // Nothing new to publish: the last re-check stands.
                return Self::outcome(pending, next);
            }
            self.set_published_deadline(next);
            if !area.publish_armed(&self.mem, next) {
                return self.memory_fault();
            }
            let Some(again) = area.load_pending(&self.mem) else {
                return self.memory_fault();
            };
            if again == pending {
                return Self::outcome(pending, next);
            }
            pending = again;
        }
        // `pending` kept moving: publish 0 so that every later guest write
        // traps, then one more read sees the last write that did not.
        self.counters.kick_fallbacks += 1;
        if !area.publish_armed(&self.mem, 0) {
            return self.memory_fault();
        }
        let Some(last) = area.load_pending(&self.mem) else {
            return self.memory_fault();
        };
        let next = Self::next_deadline(last, now);
        self.set_published_deadline(next);
        self.published = false;
        Self::outcome(last, next)
    }

    /// The deadline a kick at `now` arms for `pending`: itself if in the
    /// future, else 0 (due, or cancelled).
    fn next_deadline(pending: u64, now: u64) -> u64 {
        if pending > now {
            pending
        } else {
            0
        }
    }

    fn outcome(pending: u64, next: u64) -> KickOutcome {
        match (pending, next) {
            (0, _) => KickOutcome::Cancelled,
            (_, 0) => KickOutcome::Injected,
            (_, n) => KickOutcome::Rearmed(n),
        }
    }

    /// Arms (or disarms, for 0) the host timer for `next` and records it as
    /// the published deadline.
    fn set_published_deadline(&mut self, next: u64) {
        if next == 0 {
            self.disarm_timer();
        } else {
            self.arm_timer(next);
        }
        self.deadline = next;
        self.published = next != 0;
    }

    /// Guest memory stopped being accessible under a registered struct
    /// (the VMM changed the memory map): keep the deadline as a plain,
    /// unpublished one and fire it now, as its time has come.
    fn memory_fault(&mut self) -> KickOutcome {
        self.counters.memory_errors += 1;
        self.disarm_timer();
        self.deadline = 0;
        self.published = false;
        KickOutcome::Injected
    }

    fn fire(&mut self) {
        if self.lvt.deadline_live() {
            self.irq.inject(self.lvt.vector());
            self.counters.injections += 1;
        }
    }

    fn arm_timer(&mut self, deadline: u64) {
        self.timer.arm(deadline);
        self.timer_running = true;
    }

    fn disarm_timer(&mut self) {
        if self.timer_running {
            self.timer.disarm();
            self.timer_running = false;
        }
    }

    fn clear_deadline(&mut self) {
        self.disarm_timer();
        self.deadline = 0;
        self.published = false;
    }

    /// Writes `armed` in the registered struct (if any) as `value`.
    fn published_to(&mut self, value: u64) {
        if let Some(area) = self.area {
            if !area.publish_armed(&self.mem, value) {
                self.counters.memory_errors += 1;
            }
            self.published = value != 0;
        }
    }
}
