//! The TSC-deadline timer state machine: UPDATE, KICK and CLEAR.

use crate::error::{BackendError, GuestFault, ReadMsrError, StateError, WriteMsrError};
use crate::shared::{SharedArea, SharedMemory};
use crate::state::{Counters, GraceState, TimerState};
use crate::{GracePolicy, GuestClock, HostTimer, InterruptSink, LvtTimer};
use lazy_tscdeadline_abi::{
    Registration, LAZY_FLAG_EXITLESS_CANCEL, MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE,
};

/// How many publish/re-check rounds one [`TscDeadlineTimer::kick`] makes
/// before it stops trusting a `pending` that keeps moving under it. An
/// honest guest changes `pending` at most once or twice while one kick runs;
/// after this many rounds the kick publishes `armed = 0`, which settles in
/// one more read. So one kick reads `pending` at most
/// `MAX_KICK_ROUNDS + 2` times and stores `armed` at most
/// `MAX_KICK_ROUNDS + 1` times (see `docs/PROTOCOL.md`). The rounds that
/// begin a grace period after a delivery come out of the same budget.
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
/// Options may be added: build it with [`Config::new`] (or
/// [`Config::rfc`]) and the `with_` methods.
///
/// ```
/// use lazy_tscdeadline_host::{Config, GracePolicy};
///
/// // Lazy mode with this crate's policies (the default ones).
/// let lazy = Config::new().with_lazy_advertised(true);
/// assert_eq!(lazy.grace, GracePolicy::DEFAULT);
/// assert!(lazy.exitless_cancel);
/// // Lazy mode exactly as the RFC specifies it.
/// let rfc = Config::rfc().with_lazy_advertised(true);
/// assert_eq!((rfc.grace, rfc.exitless_cancel), (GracePolicy::Off, false));
/// // Or anything in between.
/// let fixed = Config::rfc().with_lazy_advertised(true).with_grace(GracePolicy::Fixed(50_000));
/// # let _ = fixed;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Whether the VMM advertises `KVM_FEATURE_LAZY_TSCDEADLINE` to this
    /// guest. Without it every access to the registration MSR faults.
    pub lazy_advertised: bool,
    /// The grace re-arm policy (only used with a registered guest).
    pub grace: GracePolicy,
    /// Whether the host offers exitless cancel: at every enabling
    /// registration it writes
    /// [`LAZY_FLAG_EXITLESS_CANCEL`](lazy_tscdeadline_abi::LAZY_FLAG_EXITLESS_CANCEL)
    /// into `flags` (and 0 without it).
    pub exitless_cancel: bool,
}

impl Default for Config {
    /// [`Config::new`].
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// The default configuration: the lazy feature not advertised (plain
    /// `IA32_TSC_DEADLINE` emulation); once advertised, this crate's
    /// policies: [`GracePolicy::DEFAULT`] and exitless cancel offered.
    pub const fn new() -> Self {
        Config {
            lazy_advertised: false,
            grace: GracePolicy::DEFAULT,
            exitless_cancel: true,
        }
    }

    /// The RFC's behaviour: the lazy feature not advertised; once
    /// advertised, no grace period and no exitless cancel (`flags` is
    /// written as 0 at registration).
    pub const fn rfc() -> Self {
        Config {
            lazy_advertised: false,
            grace: GracePolicy::Off,
            exitless_cancel: false,
        }
    }

    /// Sets whether the lazy feature is advertised to the guest in CPUID.
    pub const fn with_lazy_advertised(mut self, advertised: bool) -> Self {
        self.lazy_advertised = advertised;
        self
    }

    /// Sets the grace re-arm policy.
    pub const fn with_grace(mut self, grace: GracePolicy) -> Self {
        self.grace = grace;
        self
    }

    /// Sets whether exitless cancel is offered to the guest.
    pub const fn with_exitless_cancel(mut self, offered: bool) -> Self {
        self.exitless_cancel = offered;
        self
    }

    /// The `flags` value the host writes at registration.
    pub const fn offered_flags(self) -> u32 {
        if self.exitless_cancel {
            LAZY_FLAG_EXITLESS_CANCEL
        } else {
            0
        }
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
    /// its way, or, with exitless cancel, it only stored `pending = 0`):
    /// nothing armed, no interrupt.
    Cancelled,
    /// A grace period expired and `pending` held nothing new (the deadline
    /// delivered before it, or 0): `armed` is 0 again, no interrupt.
    GraceEnded,
    /// The host timer fired before the guest TSC reached the deadline; it
    /// was re-armed for the same deadline.
    TooEarly,
    /// Nothing was armed (an expiry left over from a deadline that has since
    /// been replaced or cleared), or the timer was restored and not resumed
    /// yet. Ignored.
    Stale,
}

/// How a KICK of a published deadline settled with the guest's `pending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// Due (or the struct became inaccessible): deliver; nothing armed.
    /// `Some(p)`: decided on `pending == p` with `armed = 0` published and
    /// re-checked, so a grace period may follow the delivery.
    Due(Option<u64>),
    /// Re-armed for a later deadline.
    Rearmed(u64),
    /// The guest cancelled, or a grace period found nothing new: nothing
    /// armed, nothing delivered.
    Cancelled,
    /// After a delivery: the grace period stands (published).
    Grace,
}

/// What a round of KICK is settling.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The expiry of a published deadline or grace deadline; in a grace
    /// period, `stale` is the value of `pending` that is nothing new.
    Expiry { stale: Option<u64> },
    /// Beginning the grace period `grace` after delivering `delivered`.
    Grace { delivered: u64, grace: u64 },
}

impl Phase {
    /// The outcome when `pending` cannot be read at all.
    fn nothing_known(self) -> Settled {
        match self {
            Phase::Expiry { stale: None } => Settled::Due(None),
            _ => Settled::Cancelled,
        }
    }

    /// The stale value of a grace period begun in this phase.
    fn delivered(self) -> u64 {
        match self {
            Phase::Grace { delivered, .. } => delivered,
            Phase::Expiry { .. } => 0,
        }
    }
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
    /// own copy of `armed` (with `grace.deadline`): guest memory is written
    /// from it, never read.
    deadline: u64,
    /// The grace period: while `grace.deadline != 0` (and `deadline == 0`)
    /// the host timer is armed for it and it is published as `armed`.
    grace: GraceState,
    /// Whether `deadline` (or the grace deadline) is published as `armed`
    /// in the registered struct.
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
            grace_policy: config.grace,
            exitless_cancel: config.exitless_cancel,
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
            config: Config::rfc()
                .with_lazy_advertised(state.lazy_advertised)
                .with_grace(state.grace_policy)
                .with_exitless_cancel(state.exitless_cancel),
            lvt: LvtTimer::from_raw(state.lvt_timer),
            deadline: state.deadline,
            grace: state.grace,
            published: state.published,
            timer_running: false,
            paused: state.deadline != 0 || state.grace.deadline != 0,
            registration,
            area,
            counters: state.counters,
            backend_error: None,
        };
        // Guest memory was restored with the rest of the VM, but write
        // `armed` again so it matches the host's copy whatever it holds.
        t.published_to(if t.published { t.target() } else { 0 });
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
        let grace = state.grace.deadline;
        if state.published && ((state.deadline == 0 && grace == 0) || !registration.is_enabled()) {
            return Err(StateError::Invalid(
                "published without a deadline or registration",
            ));
        }
        if grace != 0 && (state.deadline != 0 || !state.published || !state.grace_policy.is_on()) {
            return Err(StateError::Invalid(
                "grace period with a deadline, unpublished or without a grace policy",
            ));
        }
        if grace != 0 && !lvt.is_tsc_deadline() {
            return Err(StateError::Invalid(
                "grace period while the LVT timer is not in TSC-deadline mode",
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
    /// `IA32_TSC_DEADLINE` reads the deadline the guest has set, as an
    /// eager guest's MSR would hold it (for a registered guest that moved
    /// it without a trap, from `pending`: see `docs/PROTOCOL.md` §4.1): 0
    /// once it has fired or was cancelled, and always 0 when the LVT timer
    /// is not in TSC-deadline mode.
    pub fn read_msr(&self, index: u32) -> Result<u64, ReadMsrError> {
        match index {
            MSR_IA32_TSC_DEADLINE if self.lvt.is_tsc_deadline() => Ok(self.guest_deadline()),
            MSR_IA32_TSC_DEADLINE => Ok(0),
            MSR_KVM_LAZY_TSCDEADLINE if self.config.lazy_advertised => {
                Ok(self.registration.to_msr())
            }
            MSR_KVM_LAZY_TSCDEADLINE => Err(GuestFault::FeatureNotAdvertised.into()),
            _ => Err(ReadMsrError::UnknownMsr(index)),
        }
    }

    /// What `IA32_TSC_DEADLINE` reads for the guest: the deadline it has
    /// set, as an eager guest's MSR would hold it.
    ///
    /// Unregistered, or with nothing published, that is the host's
    /// deadline. With a deadline or a grace period published in the struct,
    /// the guest may have moved its deadline without a trap; `pending` is
    /// read (once: RDMSR is the vCPU's own exit, so its guest cannot write
    /// `pending` meanwhile) and interpreted as the next expiry will: a
    /// later deadline is the guest's (it is what the host re-arms for), 0
    /// is a cancel, and in a grace period the delivered (or cancelled)
    /// value is nothing new. An earlier `pending` that did not trap changes
    /// nothing (the expiry delivers at the host's deadline).
    fn guest_deadline(&self) -> u64 {
        let (true, Some(area)) = (self.published, self.area) else {
            return self.deadline;
        };
        let Some(pending) = area.load_pending(&self.mem) else {
            return self.deadline;
        };
        if self.deadline != 0 {
            match pending {
                0 => 0,
                p if p > self.deadline => p,
                _ => self.deadline,
            }
        } else if pending == 0 || pending == self.grace.stale {
            0
        } else {
            pending
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
        if mode_changed && self.target() != 0 {
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
    /// deadline later. With a grace policy, a kick that injects then begins
    /// a grace period, and the expiry of a grace period
    /// ([`grace_deadline`](Self::grace_deadline)) ends it
    /// ([`KickOutcome::GraceEnded`]) unless the guest stored a new deadline
    /// meanwhile, which it then serves like any kick.
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
            self.arm_timer(self.target());
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
        if self.target() != 0 && !self.paused {
            self.arm_timer(self.target());
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
        self.grace.missed = false;
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
            grace_policy: self.config.grace,
            exitless_cancel: self.config.exitless_cancel,
            grace: self.grace,
        }
    }

    /// Counters since creation (carried over snapshots).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The guest's deadline the host timer is armed for (0: none; also 0
    /// during a grace period, see [`grace_deadline`](Self::grace_deadline)).
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// The deadline of the grace period in progress (0: none). While it is
    /// non-zero, [`deadline`](Self::deadline) is 0 and the host timer is
    /// armed for it.
    pub fn grace_deadline(&self) -> u64 {
        self.grace.deadline
    }

    /// The guest TSC the host timer is armed for (0: none): the deadline,
    /// or the grace deadline.
    pub fn timer_deadline(&self) -> u64 {
        self.target()
    }

    /// What the host last published as `armed` in the registered struct
    /// (its own copy; 0 when nothing is published or nothing registered).
    pub fn armed(&self) -> u64 {
        if self.published {
            self.target()
        } else {
            0
        }
    }

    /// Whether the timer's deadline (or grace deadline) is published to the
    /// guest as `armed`.
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
        let now = self.clock.now();
        self.adapt_grace(value, now);
        if value == 0 {
            // Cancelled: nothing armed but, possibly, a grace period.
            self.clear_deadline();
            self.begin_grace_stopped(0, now);
            return;
        }
        if value <= now {
            // Already passed: expires at once, nothing stays armed but,
            // after an injection, possibly a grace period (an expiry while
            // masked delivers nothing and leaves `armed = 0`, section 4.0).
            self.clear_deadline();
            if self.fire() == KickOutcome::Injected {
                self.begin_grace_stopped(value, now);
            } else {
                self.published_to(0);
            }
            return;
        }
        self.arm_timer(value);
        self.deadline = value;
        self.grace.deadline = 0;
        self.published_to(value);
    }

    /// The grace length for a period beginning now, if the policy has one
    /// and a struct is registered.
    fn grace_length(&self) -> Option<u64> {
        self.area?;
        self.config.grace.length(self.grace.cycles)
    }

    /// The grace deadline for a period beginning at `now` (0: none).
    fn grace_target(&self, now: u64) -> u64 {
        match self.grace_length() {
            Some(g) => match now.checked_add(g) {
                Some(d) if d > now => d,
                _ => 0,
            },
            None => 0,
        }
    }

    /// In vCPU context (the guest is stopped in the WRMSR exit, so no
    /// re-check of `pending` is needed, as for UPDATE): after a trapped
    /// cancellation (`stale == 0`) or a deadline `stale` that expired at
    /// once, begins a grace period and publishes it, or publishes 0.
    fn begin_grace_stopped(&mut self, stale: u64, now: u64) {
        let grace = self.grace_target(now);
        if grace == 0 {
            self.published_to(0);
            return;
        }
        self.arm_timer(grace);
        self.grace.deadline = grace;
        self.grace.stale = stale;
        self.grace.started = now;
        self.counters.grace_arms += 1;
        self.published_to(grace);
    }

    /// The adaptive policy learns from a trapped write of `value` at `now`
    /// (see [`GracePolicy::Adaptive`]).
    fn adapt_grace(&mut self, value: u64, now: u64) {
        let missed = core::mem::take(&mut self.grace.missed);
        let GracePolicy::Adaptive { .. } = self.config.grace else {
            return;
        };
        let Some(current) = self.config.grace.length(self.grace.cycles) else {
            return;
        };
        let g = self.grace.deadline;
        let next = if g != 0 && value > now && value < g {
            // The grace period made this deadline trap: it is too long.
            (value - self.grace.started) / 2
        } else if g == 0 && self.deadline == 0 && missed && value != 0 {
            // The last grace period ended before the guest came back.
            now.saturating_sub(self.grace.started).saturating_mul(2)
        } else {
            current
        };
        self.grace.cycles = self.config.grace.length(next).unwrap_or(current);
    }

    /// Registration MSR write: enable, disable or re-register. The
    /// architectural timer is kept: a due deadline is delivered first
    /// (catch-up), a published one is settled against the old struct's
    /// `pending` ([`settle_for_registration`](Self::settle_for_registration)),
    /// a grace period ends, and what remains stays armed **unpublished**;
    /// both the old and the new struct read `armed = 0`.
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
        self.settle_for_registration();
        // `armed = 0` in the old struct: what stays armed is unpublished.
        self.published_to(0);
        self.published = false;
        self.grace.missed = false;
        self.registration = registration;
        self.area = area;
        self.published_to(0);
        if let Some(area) = area {
            // The only write of `flags`: the extensions this host offers.
            if !area.write_flags(&self.mem, self.config.offered_flags()) {
                self.counters.memory_errors += 1;
            }
        }
        if registration.is_enabled() {
            self.counters.registrations += 1;
        }
        Ok(())
    }

    /// Before a registration change (after [`catch_up`](Self::catch_up),
    /// so nothing armed is due unless the timer is paused): turns what the
    /// host has armed into the guest's effective deadline, to be kept
    /// unpublished. Whatever is published is settled against the old
    /// struct's `pending = p` as a KICK would, minus delivery. The guest is
    /// stopped in this WRMSR exit, so `pending` cannot change under the
    /// host: one read suffices, and no re-check is needed.
    ///
    /// - A published deadline `d`: `p > d` (a push later that did not
    ///   trap) becomes the deadline; `p == 0` with exitless cancel offered
    ///   is a cancel that did not trap: nothing armed; anything else keeps
    ///   `d` (a later value is the only one a non-trapping write can leave,
    ///   and without the offer an honest cancel always traps).
    /// - A grace period holds no real deadline and ends, but the guest may
    ///   have stored one during it without trapping (any `p >= grace`): as
    ///   at the grace expiry, `p` other than 0 and `stale` and still in the
    ///   future becomes the deadline; otherwise nothing stays armed.
    /// - An unpublished deadline is the guest's latest (every write since
    ///   it was armed trapped): kept, `pending` not read.
    fn settle_for_registration(&mut self) {
        let in_grace = self.grace.deadline != 0;
        if !self.published || self.target() == 0 {
            return;
        }
        let pending = self.area.and_then(|area| area.load_pending(&self.mem));
        if in_grace {
            self.disarm_timer();
            self.grace.deadline = 0;
            match pending {
                Some(p) if p != 0 && p != self.grace.stale && p > self.clock.now() => {
                    self.deadline = p;
                    if !self.paused {
                        self.arm_timer(p);
                    }
                }
                Some(_) => {}
                None => self.counters.memory_errors += 1,
            }
            return;
        }
        let Some(p) = pending else {
            // Nothing known beyond the deadline itself: keep it.
            self.counters.memory_errors += 1;
            return;
        };
        if p > self.deadline {
            self.deadline = p;
            if !self.paused {
                self.arm_timer(p);
            }
        } else if p == 0 && self.config.exitless_cancel {
            self.clear_deadline();
        }
    }

    /// Arms `deadline`, an architectural TSC deadline taken over from
    /// elsewhere (e.g. from KVM's in-kernel LAPIC when the VMM starts
    /// emulating the timer), **without publishing it**: `armed` reads 0 in
    /// the registered struct, so the guest's next write traps and replaces
    /// it, and its expiry is delivered without reading `pending` (which
    /// does not hold it). It replaces whatever the host had armed (a grace
    /// period included). 0 arms nothing; a deadline already due fires at
    /// once (unless the LVT is masked); outside TSC-deadline mode it is
    /// ignored, as a write would be.
    ///
    /// Unlike a trapped write ([`write_msr`](Self::write_msr)), this is not
    /// a guest action: it counts in [`Counters::adopted`] and does not feed
    /// the adaptive grace policy.
    pub fn adopt_deadline(&mut self, deadline: u64) -> Result<(), BackendError> {
        if !self.lvt.is_tsc_deadline() {
            return self.backend_result();
        }
        self.clear_deadline();
        self.published_to(0);
        self.published = false;
        if deadline != 0 {
            self.counters.adopted += 1;
            if deadline <= self.clock.now() {
                self.fire();
            } else {
                self.arm_timer(deadline);
                self.deadline = deadline;
            }
        }
        self.backend_result()
    }

    /// KICK without the pause check.
    fn expire(&mut self) -> KickOutcome {
        self.timer_running = false;
        let target = self.target();
        if target == 0 {
            self.counters.stale_expiries += 1;
            return KickOutcome::Stale;
        }
        let in_grace = self.deadline == 0;
        if in_grace {
            self.counters.grace_expiries += 1;
        }
        let now = self.clock.now();
        if now < target {
            self.counters.early_expiries += 1;
            self.arm_timer(target);
            return KickOutcome::TooEarly;
        }
        if !self.published {
            // Armed by a trapped write before registration (or after a
            // fallback): plain TSC-deadline semantics. (A grace period is
            // always published.)
            self.deadline = 0;
            return self.fire();
        }
        // In a grace period, `pending` equal to the deadline delivered (or
        // cancelled) before it is nothing new.
        let stale = in_grace.then_some(self.grace.stale);
        let Some(area) = self.area else {
            // (Published implies registered; stay total anyway.)
            self.set_armed(0, Settled::Cancelled, 0, now);
            return if in_grace {
                KickOutcome::GraceEnded
            } else {
                self.fire()
            };
        };
        let mut rounds = MAX_KICK_ROUNDS;
        let settled = self.settle(area, now, Phase::Expiry { stale }, &mut rounds);
        if in_grace && settled != Settled::Cancelled {
            self.counters.grace_hits += 1;
        }
        match settled {
            Settled::Due(decided) => {
                // Deliver first, with `armed = 0` published and re-checked:
                // a guest write racing this kick traps and waits for it.
                // Only then begin the grace period, with the rounds left.
                // (Not after an expiry while masked: nothing was delivered,
                // `armed` stays 0 as section 4.0 says.)
                let outcome = self.fire();
                if let (Some(delivered), KickOutcome::Injected) = (decided, outcome) {
                    self.begin_grace_running(area, delivered, now, &mut rounds);
                }
                outcome
            }
            Settled::Rearmed(next) => {
                self.counters.rearms += 1;
                KickOutcome::Rearmed(next)
            }
            Settled::Cancelled | Settled::Grace if in_grace => {
                self.grace.missed = true;
                KickOutcome::GraceEnded
            }
            Settled::Cancelled | Settled::Grace => {
                self.counters.kick_cancels += 1;
                KickOutcome::Cancelled
            }
        }
    }

    /// Handles a due host expiry now, before an event that would drop the
    /// deadline or change how it is delivered (a late host timer must not
    /// turn into a lost interrupt, nor a masked one into a delivered one).
    fn catch_up(&mut self) {
        let target = self.target();
        if !self.paused && target != 0 && target <= self.clock.now() {
            self.disarm_timer();
            self.expire();
        }
    }

    /// CLEAR: the deadline goes away for a reason other than expiring.
    fn clear(&mut self) {
        if self.deadline != 0 {
            self.counters.clears += 1;
        }
        self.clear_deadline();
        self.published_to(0);
    }

    /// The guest TSC the host timer is armed for: the deadline or the grace
    /// deadline (at most one of them is non-zero), 0 when none.
    fn target(&self) -> u64 {
        if self.deadline != 0 {
            self.deadline
        } else {
            self.grace.deadline
        }
    }

    /// KICK's rounds (section 4.1 of `docs/PROTOCOL.md`): reads `pending`
    /// (in the [`Phase::Grace`] phase, starts from the delivered value
    /// instead), publishes what [`plan`](Self::plan) makes of it, and
    /// re-reads `pending` after the fence until it is stable, using at most
    /// `rounds` publications (shared by the two phases of one kick). If
    /// `pending` is still moving then, falls back: publishes 0 so that every
    /// later guest write traps and acts, unpublished, on one more read.
    /// Leaves `deadline`/grace/`published`/timer consistent; the caller
    /// delivers.
    fn settle(&mut self, area: SharedArea, now: u64, phase: Phase, rounds: &mut u32) -> Settled {
        let mut pending = match phase {
            Phase::Expiry { .. } => match area.load_pending(&self.mem) {
                Some(p) => p,
                None => return self.memory_fault(phase.nothing_known()),
            },
            Phase::Grace { delivered, .. } => delivered,
        };
        let mut last_published = None;
        while *rounds > 0 {
            let (next, settled) = self.plan(pending, now, phase);
            self.set_armed(next, settled, phase.delivered(), now);
            if last_published == Some(next) {
                // Nothing new to publish: the last re-check stands.
                return settled;
            }
            *rounds -= 1;
            if !area.publish_armed(&self.mem, next) {
                return self.memory_fault(settled);
            }
            last_published = Some(next);
            let Some(again) = area.load_pending(&self.mem) else {
                return self.memory_fault(settled);
            };
            if again == pending {
                return settled;
            }
            pending = again;
        }
        if last_published.is_none() {
            // No round left for a grace period to begin: none.
            return Settled::Cancelled;
        }
        // `pending` kept moving: publish 0 so that every later guest write
        // traps, then one more read sees the last write that did not.
        self.counters.kick_fallbacks += 1;
        self.set_armed(0, Settled::Cancelled, 0, now);
        if !area.publish_armed(&self.mem, 0) {
            return self.memory_fault(Settled::Cancelled);
        }
        let Some(last) = area.load_pending(&self.mem) else {
            return self.memory_fault(phase.nothing_known());
        };
        let (next, settled) = match self.plan(last, now, phase) {
            // Unpublished: no grace period may follow, nor stand.
            (_, Settled::Due(_)) => (0, Settled::Due(None)),
            (_, Settled::Grace) => (0, Settled::Cancelled),
            other => other,
        };
        self.set_armed(next, settled, 0, now);
        self.published = false;
        settled
    }

    /// After a kick delivered the deadline `delivered` (decided with
    /// `armed = 0` published and re-checked), begins a grace period while
    /// the guest may be running, through the same rounds: publishes
    /// `armed = now + G` (with `stale = delivered`), fences and re-reads
    /// `pending`; a deadline the guest wrote since (having seen `armed` 0,
    /// or the grace deadline) is re-armed as by any kick.
    fn begin_grace_running(
        &mut self,
        area: SharedArea,
        delivered: u64,
        now: u64,
        rounds: &mut u32,
    ) {
        let grace = self.grace_target(now);
        if grace == 0 {
            return;
        }
        match self.settle(area, now, Phase::Grace { delivered, grace }, rounds) {
            Settled::Grace => self.counters.grace_arms += 1,
            Settled::Rearmed(_) => self.counters.rearms += 1,
            _ => {}
        }
    }

    /// What a kick at `now` publishes for `pending`, and the outcome.
    ///
    /// At an expiry ([`Phase::Expiry`]):
    /// - 0 or `stale` (nothing new): publish 0, [`Settled::Cancelled`];
    /// - in the future: publish it, [`Settled::Rearmed`];
    /// - due: publish 0, [`Settled::Due`].
    ///
    /// After a delivery ([`Phase::Grace`]):
    /// - in the future (a deadline the guest wrote since): publish it,
    ///   [`Settled::Rearmed`];
    /// - anything else (the delivered value, 0, or a due value, whose write
    ///   traps, being below both `armed` values it can have seen): publish
    ///   the grace deadline, [`Settled::Grace`].
    fn plan(&self, pending: u64, now: u64, phase: Phase) -> (u64, Settled) {
        match phase {
            Phase::Expiry { stale } => {
                if pending == 0 || stale == Some(pending) {
                    (0, Settled::Cancelled)
                } else if pending > now {
                    (pending, Settled::Rearmed(pending))
                } else {
                    (0, Settled::Due(Some(pending)))
                }
            }
            Phase::Grace { grace, .. } => {
                if pending > now {
                    (pending, Settled::Rearmed(pending))
                } else {
                    (grace, Settled::Grace)
                }
            }
        }
    }

    /// Arms (or disarms, for 0) the host timer for `next`, planned by
    /// [`plan`](Self::plan), and records it as the deadline (re-armed), as
    /// the grace deadline (with `stale`), or nothing, and as published.
    fn set_armed(&mut self, next: u64, settled: Settled, stale: u64, now: u64) {
        if next == 0 {
            self.disarm_timer();
        } else {
            self.arm_timer(next);
        }
        self.deadline = 0;
        self.grace.deadline = 0;
        match settled {
            Settled::Rearmed(_) => self.deadline = next,
            Settled::Grace if next != 0 => {
                self.grace.deadline = next;
                self.grace.stale = stale;
                self.grace.started = now;
            }
            _ => {}
        }
        self.published = next != 0;
    }

    /// Guest memory stopped being accessible under a registered struct
    /// (the VMM changed the memory map). The host acts on what it last
    /// knew, `decision`, without publishing: a re-armed deadline stays
    /// armed, unpublished; a due one (its time has come) is delivered; a
    /// grace period ends.
    fn memory_fault(&mut self, decision: Settled) -> Settled {
        self.counters.memory_errors += 1;
        self.published = false;
        self.grace.deadline = 0;
        if let Settled::Rearmed(d) = decision {
            self.deadline = d;
            return decision;
        }
        self.disarm_timer();
        self.deadline = 0;
        match decision {
            // Nothing published: no grace period may follow, nor stand.
            Settled::Due(_) => Settled::Due(None),
            Settled::Grace => Settled::Cancelled,
            d => d,
        }
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
        self.grace.deadline = 0;
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
