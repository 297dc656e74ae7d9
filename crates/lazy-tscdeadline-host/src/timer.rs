//! The TSC-deadline timer state machine: UPDATE, KICK and CLEAR.

use crate::error::{BackendError, GuestFault, ReadMsrError, StateError, WriteMsrError};
use crate::shared::{SharedArea, SharedMemory};
use crate::state::{Counters, TimerState};
use crate::{GuestClock, HostTimer, InterruptSink, LvtTimer};
use lazy_tscdeadline_abi::{Registration, MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};

/// How many publish/re-check rounds one [`TscDeadlineTimer::kick`] makes
/// before it stops trusting a `pending` that keeps moving under it. An
/// honest guest changes `pending` at most once or twice while one kick runs;
/// after this many rounds the kick publishes `armed = 0`, which settles in
/// one more read. So one kick reads `pending` at most
/// `MAX_KICK_ROUNDS + 2` times and stores `armed` at most
/// `MAX_KICK_ROUNDS + 1` times (see `docs/PROTOCOL.md`).
pub const MAX_KICK_ROUNDS: u32 = 4;

/// The MSRs a [`TscDeadlineTimer`] emulates: `IA32_TSC_DEADLINE` and
/// `MSR_KVM_LAZY_TSCDEADLINE`. Route exactly these to it (e.g. in a
/// `KVM_X86_SET_MSR_FILTER` deny list, so they exit to userspace).
pub const HANDLED_MSRS: [u32; 2] = [MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE];

/// Whether `index` is one of the [`HANDLED_MSRS`].
///
/// ```
/// assert!(lazy_tscdeadline_host::handles_msr(0x6e0));
/// assert!(!lazy_tscdeadline_host::handles_msr(0x10));
/// ```
pub const fn handles_msr(index: u32) -> bool {
    index == MSR_IA32_TSC_DEADLINE || index == MSR_KVM_LAZY_TSCDEADLINE
}

/// Static configuration of one vCPU's timer.
///
/// Options may be added: build it with [`Config::new`] and the `with_`
/// methods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Whether the VMM advertises `KVM_FEATURE_LAZY_TSCDEADLINE` to this
    /// guest. Without it every access to the registration MSR faults.
    pub lazy_advertised: bool,
}

impl Config {
    /// The default configuration: the lazy feature not advertised (plain
    /// `IA32_TSC_DEADLINE` emulation).
    pub const fn new() -> Self {
        Config {
            lazy_advertised: false,
        }
    }

    /// Sets whether the lazy feature is advertised to the guest in CPUID.
    pub const fn with_lazy_advertised(mut self, advertised: bool) -> Self {
        self.lazy_advertised = advertised;
        self
    }
}

/// What a [`TscDeadlineTimer::kick`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KickOutcome {
    /// The deadline expired and the timer interrupt was injected.
    Injected,
    /// The deadline expired while the LVT timer was masked: nothing was
    /// delivered and nothing stays armed (unmasking later delivers nothing).
    Masked,
    /// The guest had moved its deadline later: the host timer was re-armed
    /// there, no interrupt.
    Rearmed(u64),
    /// The guest had cancelled its deadline (its trapping write of 0 is on
    /// its way): nothing armed, no interrupt.
    Cancelled,
    /// The host timer fired before the guest TSC reached the deadline; it
    /// was re-armed for the same deadline.
    TooEarly,
    /// Nothing was armed (an expiry left over from a deadline that has since
    /// been replaced or cleared), or the timer was restored and not resumed
    /// yet. Ignored.
    Stale,
}

/// How a KICK of a published deadline settled with the guest's `pending`.
enum Settled {
    /// Due (or the struct became inaccessible): nothing armed, deliver.
    Due,
    /// Re-armed for a later deadline.
    Rearmed(u64),
    /// The guest cancelled: nothing armed, nothing delivered.
    Cancelled,
}

/// One vCPU's LAPIC TSC-deadline timer with the lazy extension.
///
/// See the [crate documentation](crate) for how a VMM drives it and
/// `docs/PROTOCOL.md` for the protocol it implements.
///
/// # The LVT timer register
/// The timer follows the architecture (SDM vol. 3A, "TSC-Deadline Mode"):
/// `IA32_TSC_DEADLINE` writes arm it only while the LVT timer is in
/// TSC-deadline mode (masked or not); in other modes they are ignored
/// (counted in [`Counters::ignored_writes`]) and reads return 0. The mask
/// only suppresses delivery. So the timer must know the LVT: it is given to
/// [`new`](Self::new) and kept current with
/// [`set_lvt_timer`](Self::set_lvt_timer).
///
/// # Collaborator errors
/// When the [`HostTimer`] or the [`InterruptSink`] fails, the operation
/// still completes its own bookkeeping (deadline, `armed`, counters) as if
/// the call had succeeded, and returns the first failure as a
/// [`BackendError`] (also counted in [`Counters::backend_errors`]). What is
/// then missing is that call's effect: an interrupt that was not raised, or
/// a host timer that is not armed for [`deadline`](Self::deadline). A VMM
/// that does not stop the VM can re-arm the host timer with
/// [`rearm_host_timer`](Self::rearm_host_timer).
///
/// # Threads
/// The timer is `Send` (`Sync`) when its memory, host timer, clock and
/// interrupt sink are (checked at compile time). The VMM shares it between
/// the vCPU thread (MSR exits) and the thread that handles host timer
/// expiries (`kick`) behind a mutex, as in the crate example.
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
    /// Restored from a snapshot and not resumed yet: `deadline` has no host
    /// timer, and kicks are ignored.
    paused: bool,
    registration: Registration,
    area: Option<SharedArea>,
    counters: Counters,
    /// The first collaborator failure of the operation in progress.
    backend_error: Option<BackendError>,
}

// The timer is `Send` / `Sync` whenever its parts are: a compile-time check
// that no field (such as the boxed backend error) takes that away.
const _: () = {
    fn send<X: Send>() {}
    fn sync<X: Sync>() {}
    #[allow(dead_code)]
    fn timer_is_send<M: Send, T: Send, C: Send, I: Send>() {
        send::<TscDeadlineTimer<M, T, C, I>>();
    }
    #[allow(dead_code)]
    fn timer_is_sync<M: Sync, T: Sync, C: Sync, I: Sync>() {
        sync::<TscDeadlineTimer<M, T, C, I>>();
    }
};

/// A [`TimerState`] that passed validation against the guest memory.
struct Validated {
    state: TimerState,
    registration: Registration,
    area: Option<SharedArea>,
}

impl<M, T, C, I> TscDeadlineTimer<M, T, C, I>
where
    M: SharedMemory,
    T: HostTimer,
    C: GuestClock,
    I: InterruptSink,
{
    /// A timer with nothing armed and no struct registered, whose LVT timer
    /// register currently holds `lvt` ([`LvtTimer::RESET`] for a vCPU that
    /// has not run yet).
    pub fn new(mem: M, timer: T, clock: C, irq: I, lvt: LvtTimer, config: Config) -> Self {
        let state = TimerState {
            lvt_timer: lvt.raw(),
            lazy_advertised: config.lazy_advertised,
            ..TimerState::default()
        };
        let valid = Validated {
            state,
            registration: Registration::DISABLED,
            area: None,
        };
        Self::assemble(mem, timer, clock, irq, valid)
    }

    /// Rebuilds a timer from `state` over `mem` (the restored guest memory).
    ///
    /// The timer starts *paused*: a deadline in `state` has no host timer
    /// yet and kicks are ignored, because the guest TSC it is measured
    /// against may not be restored yet. Once the VMM has restored the guest
    /// TSC, it calls [`resume`](Self::resume), which arms the host timer; a
    /// deadline that passed while the VM was stopped then fires at the first
    /// kick. `armed` is written again into the registered struct from the
    /// host's copy.
    pub fn from_state(
        mem: M,
        timer: T,
        clock: C,
        irq: I,
        state: &TimerState,
    ) -> Result<Self, StateError> {
        let valid = Self::validate(&mem, state)?;
        Ok(Self::assemble(mem, timer, clock, irq, valid))
    }

    /// The one construction path of [`new`](Self::new) and
    /// [`from_state`](Self::from_state).
    fn assemble(mem: M, timer: T, clock: C, irq: I, valid: Validated) -> Self {
        let Validated {
            state,
            registration,
            area,
        } = valid;
        let mut t = TscDeadlineTimer {
            mem,
            timer,
            clock,
            irq,
            config: Config::new().with_lazy_advertised(state.lazy_advertised),
            lvt: LvtTimer::from_raw(state.lvt_timer),
            deadline: state.deadline,
            published: state.published,
            timer_running: false,
            paused: state.deadline != 0,
            registration,
            area,
            counters: state.counters,
            backend_error: None,
        };
        // Guest memory was restored with the rest of the VM, but write
        // `armed` again so it matches the host's copy whatever it holds.
        t.published_to(if t.published { t.deadline } else { 0 });
        t
    }

    fn validate(mem: &M, state: &TimerState) -> Result<Validated, StateError> {
        let registration = Registration::from_msr(state.registration)
            .map_err(|_| StateError::Invalid("reserved bits set in the registration value"))?;
        let lvt = LvtTimer::from_raw(state.lvt_timer);
        if registration.is_enabled() && !state.lazy_advertised {
            return Err(StateError::Invalid(
                "registered but the feature is not advertised",
            ));
        }
        if state.published && (state.deadline == 0 || !registration.is_enabled()) {
            return Err(StateError::Invalid(
                "published without a deadline or registration",
            ));
        }
        if state.deadline != 0 && !lvt.is_tsc_deadline() {
            return Err(StateError::Invalid(
                "deadline armed while the LVT timer is not in TSC-deadline mode",
            ));
        }
        let area = match registration.gpa() {
            Some(gpa) => Some(
                SharedArea::new(mem, gpa)
                    .ok_or(StateError::Invalid("registered struct is not in guest RAM"))?,
            ),
            None => None,
        };
        Ok(Validated {
            state: *state,
            registration,
            area,
        })
    }

    /// Emulates WRMSR of one of the [`HANDLED_MSRS`].
    ///
    /// [`WriteMsrError::GuestFault`] means the VMM must inject #GP instead;
    /// the write had no effect. [`WriteMsrError::Backend`]: the write was
    /// emulated, a collaborator failed.
    pub fn write_msr(&mut self, index: u32, value: u64) -> Result<(), WriteMsrError> {
        match index {
            MSR_IA32_TSC_DEADLINE => self.update(value),
            MSR_KVM_LAZY_TSCDEADLINE => {
                if let Err(fault) = self.register(value) {
                    self.counters.rejected_registrations += 1;
                    return Err(fault.into());
                }
            }
            _ => return Err(WriteMsrError::UnknownMsr(index)),
        }
        Ok(self.backend_result()?)
    }

    /// Emulates RDMSR of one of the [`HANDLED_MSRS`].
    /// [`ReadMsrError::GuestFault`] means the VMM must inject #GP instead.
    ///
    /// `IA32_TSC_DEADLINE` reads the armed deadline: 0 once it has fired,
    /// and always 0 when the LVT timer is not in TSC-deadline mode.
    pub fn read_msr(&self, index: u32) -> Result<u64, ReadMsrError> {
        match index {
            MSR_IA32_TSC_DEADLINE if self.lvt.is_tsc_deadline() => Ok(self.deadline),
            MSR_IA32_TSC_DEADLINE => Ok(0),
            MSR_KVM_LAZY_TSCDEADLINE if self.config.lazy_advertised => {
                Ok(self.registration.to_msr())
            }
            MSR_KVM_LAZY_TSCDEADLINE => Err(GuestFault::FeatureNotAdvertised.into()),
            _ => Err(ReadMsrError::UnknownMsr(index)),
        }
    }

    /// Tells the timer the LVT timer register's current value (a raw `u32`
    /// or an [`LvtTimer`]).
    ///
    /// Call it whenever the guest changes the register. A VMM that emulates
    /// the LAPIC sees every write; one with KVM's in-kernel LAPIC (where
    /// the register is not visible to userspace when it changes) reads it
    /// with `KVM_GET_LAPIC` (APIC offset 0x320) on every `IA32_TSC_DEADLINE`
    /// exit and passes it here before [`write_msr`](Self::write_msr), or
    /// routes x2APIC MSR 0x832 writes to userspace as well.
    ///
    /// Leaving TSC-deadline mode (any change of the mode bits) disarms the
    /// deadline (CLEAR). Masking or unmasking does not: a deadline stays
    /// armed and, if still masked when it expires, is dropped without an
    /// interrupt. A deadline that is already due but whose host expiry has
    /// not been handled yet is expired first, under the old LVT value, as
    /// it would have been had the host timer been on time.
    pub fn set_lvt_timer(&mut self, lvt: impl Into<LvtTimer>) -> Result<(), BackendError> {
        self.catch_up();
        self.apply_lvt(lvt.into())
    }

    /// The LVT timer register as the VMM has just read it from an in-kernel
    /// LAPIC, which takes the guest's LVT writes without an exit: the VMM
    /// does not know when it changed, only that it holds `lvt` now.
    ///
    /// Unlike [`set_lvt_timer`](Self::set_lvt_timer), a deadline that is
    /// already due is not expired under the previous value first: whether
    /// it is delivered is decided by `lvt` at the next [`kick`](Self::kick),
    /// as KVM's in-kernel LAPIC decides at injection time on the vCPU's
    /// thread. (The guest may have unmasked before the deadline passed; the
    /// value read now is the best knowledge of the LVT at the expiry.) A
    /// change of the timer mode disarms as with `set_lvt_timer`.
    pub fn observe_lvt_timer(&mut self, lvt: impl Into<LvtTimer>) -> Result<(), BackendError> {
        self.apply_lvt(lvt.into())
    }

    fn apply_lvt(&mut self, lvt: LvtTimer) -> Result<(), BackendError> {
        let mode_changed = lvt.mode() != self.lvt.mode();
        self.lvt = lvt;
        if mode_changed && self.deadline != 0 {
            self.clear();
        }
        self.backend_result()
    }

    /// The host timer expired: KICK.
    ///
    /// Safe to call from a timer thread while the vCPU runs the guest (with
    /// the timer behind a mutex shared with the vCPU thread). Injects only
    /// for the guest's latest deadline, only once it has passed, and only
    /// if the LVT timer is not masked then; re-arms when the guest moved the
    /// deadline later.
    pub fn kick(&mut self) -> Result<KickOutcome, BackendError> {
        let outcome = if self.paused {
            self.counters.stale_expiries += 1;
            KickOutcome::Stale
        } else {
            self.expire()
        };
        self.backend_result().map(|()| outcome)
    }

    /// Ends the pause of a timer restored by
    /// [`from_state`](Self::from_state): arms the host timer for the
    /// restored deadline. Call it once the guest TSC is restored, before the
    /// vCPU runs. Does nothing on a timer that is not paused.
    pub fn resume(&mut self) -> Result<(), BackendError> {
        if self.paused {
            self.arm_timer(self.deadline);
        }
        self.backend_result()
    }

    /// Whether the timer was restored and [`resume`](Self::resume) has not
    /// been called yet.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Arms the host timer again for [`deadline`](Self::deadline) (if one
    /// is armed and the timer is not paused), e.g. after a [`BackendError`]
    /// from the host timer.
    pub fn rearm_host_timer(&mut self) -> Result<(), BackendError> {
        if self.deadline != 0 && !self.paused {
            self.arm_timer(self.deadline);
        }
        self.backend_result()
    }

    /// Resets the timer for INIT/RESET: the deadline and the registration
    /// are dropped (and `armed` cleared in the struct), the LVT timer
    /// register takes its reset value (masked, one-shot).
    pub fn reset(&mut self) -> Result<(), BackendError> {
        self.clear_deadline();
        self.published_to(0);
        self.registration = Registration::DISABLED;
        self.area = None;
        self.lvt = LvtTimer::RESET;
        self.counters.resets += 1;
        self.backend_result()
    }

    /// A snapshot of the timer's state, for save/restore and migration
    /// (store it as a [`TimerSnapshot`](crate::TimerSnapshot)).
    pub fn state(&self) -> TimerState {
        TimerState {
            lvt_timer: self.lvt.raw(),
            deadline: self.deadline,
            published: self.published,
            registration: self.registration.to_msr(),
            lazy_advertised: self.config.lazy_advertised,
            counters: self.counters,
        }
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

    /// The configuration.
    pub fn config(&self) -> Config {
        self.config
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

    /// The guest clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The first collaborator failure since the last public operation
    /// returned, if any.
    fn backend_result(&mut self) -> Result<(), BackendError> {
        match self.backend_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn backend_failed(&mut self, e: BackendError) {
        self.counters.backend_errors += 1;
        if self.backend_error.is_none() {
            self.backend_error = Some(e);
        }
    }

    /// UPDATE: the guest wrote `IA32_TSC_DEADLINE` (a trapped write).
    fn update(&mut self, value: u64) {
        self.counters.trapped_writes += 1;
        if !self.lvt.is_tsc_deadline() {
            // Writes are ignored outside TSC-deadline mode. (Masked or not
            // makes no difference: the mask only suppresses delivery.)
            self.counters.ignored_writes += 1;
            return;
        }
        if value == 0 {
            self.clear_deadline();
            self.published_to(0);
            return;
        }
        if value <= self.clock.now() {
            // Already passed: expires at once, nothing stays armed.
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
    /// drops the armed deadline (after expiring it if it is already due)
    /// and starts the new struct with `armed = 0`.
    fn register(&mut self, value: u64) -> Result<(), GuestFault> {
        if !self.config.lazy_advertised {
            return Err(GuestFault::FeatureNotAdvertised);
        }
        let registration = Registration::from_msr(value)?;
        let area = match registration.gpa() {
            Some(gpa) => {
                Some(SharedArea::new(&self.mem, gpa).ok_or(GuestFault::OutsideGuestMemory(gpa))?)
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

    /// KICK without the pause check.
    fn expire(&mut self) -> KickOutcome {
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
            return self.fire();
        }
        match self.settle_pending(now) {
            Settled::Due => self.fire(),
            Settled::Rearmed(next) => {
                self.counters.rearms += 1;
                KickOutcome::Rearmed(next)
            }
            Settled::Cancelled => {
                self.counters.kick_cancels += 1;
                KickOutcome::Cancelled
            }
        }
    }

    /// Handles a due host expiry now, before an event that would drop the
    /// deadline or change how it is delivered (a late host timer must not
    /// turn into a lost interrupt, nor a masked one into a delivered one).
    fn catch_up(&mut self) {
        if !self.paused && self.deadline != 0 && self.deadline <= self.clock.now() {
            self.disarm_timer();
            self.expire();
        }
    }

    /// CLEAR: the deadline goes away for a reason other than expiring.
    fn clear(&mut self) {
        self.clear_deadline();
        self.published_to(0);
        self.counters.clears += 1;
    }

    /// The KICK of a published deadline: reads `pending`, publishes the
    /// outcome, and re-reads `pending` after the fence until it is stable.
    /// Leaves `deadline`/`published`/timer consistent; the caller delivers.
    fn settle_pending(&mut self, now: u64) -> Settled {
        let Some(area) = self.area else {
            self.deadline = 0;
            self.published = false;
            return Settled::Due;
        };
        let Some(mut pending) = area.load_pending(&self.mem) else {
            return self.memory_fault();
        };
        for _ in 0..MAX_KICK_ROUNDS {
            let next = Self::next_deadline(pending, now);
            if next == self.deadline && self.published {
                // Nothing new to publish: the last re-check stands.
                return Self::settled(pending, next);
            }
            self.set_published_deadline(next);
            if !area.publish_armed(&self.mem, next) {
                return self.memory_fault();
            }
            let Some(again) = area.load_pending(&self.mem) else {
                return self.memory_fault();
            };
            if again == pending {
                return Self::settled(pending, next);
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
        Self::settled(last, next)
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

    fn settled(pending: u64, next: u64) -> Settled {
        match (pending, next) {
            (0, _) => Settled::Cancelled,
            (_, 0) => Settled::Due,
            (_, n) => Settled::Rearmed(n),
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
    /// unpublished one and expire it now, as its time has come.
    fn memory_fault(&mut self) -> Settled {
        self.counters.memory_errors += 1;
        self.disarm_timer();
        self.deadline = 0;
        self.published = false;
        Settled::Due
    }

    /// The deadline expired (it is already disarmed): deliver the
    /// interrupt unless the LVT timer is masked.
    fn fire(&mut self) -> KickOutcome {
        if !self.lvt.delivers() {
            self.counters.masked_expiries += 1;
            return KickOutcome::Masked;
        }
        match self.irq.inject(self.lvt.vector()) {
            Ok(()) => self.counters.injections += 1,
            Err(e) => self.backend_failed(BackendError::Interrupt(Box::new(e))),
        }
        KickOutcome::Injected
    }

    fn arm_timer(&mut self, deadline: u64) {
        self.timer_running = true;
        self.paused = false;
        if let Err(e) = self.timer.arm(deadline) {
            self.backend_failed(BackendError::HostTimer(Box::new(e)));
        }
    }

    fn disarm_timer(&mut self) {
        if self.timer_running {
            self.timer_running = false;
            if let Err(e) = self.timer.disarm() {
                self.backend_failed(BackendError::HostTimer(Box::new(e)));
            }
        }
    }

    fn clear_deadline(&mut self) {
        self.disarm_timer();
        self.paused = false;
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
