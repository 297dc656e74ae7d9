//! Model checking of the racing parts of the protocol with loom.
//!
//! The guest's `DeadlineSetter` (store `pending`, fence, load `armed`, maybe
//! trap) runs on one thread; its trapped writes run the host's UPDATE and
//! registration code on that same (vCPU) thread. The host's KICK runs on a
//! second (timer) thread. Both are the crates' real code: only the shared
//! struct's two fields are loom atomics, plugged in through the guest's
//! `SharedFields` and the host's `SharedMemory` traits, and the timer is
//! behind a loom mutex, as a VMM would have it.
//!
//! Under every interleaving (up to the preemption bound) each scenario
//! checks:
//! - no early or spurious interrupt: no injection comes before the earliest
//!   deadline that may be current (that of the last completed write, or of
//!   a write in flight if earlier), nor after a completed cancellation, LVT
//!   mode change or reset; none while the LVT timer is
//!   masked; the guest takes at most one interrupt per deadline write
//!   (injections merge in the IRR, as in a LAPIC, while the guest writes
//!   with interrupts disabled);
//! - an expiry the host reports as masked happened while the LVT was masked;
//! - no lost deadline (a re-registration keeps the deadline armed, so the
//!   guest's deadline stays current across it): once both threads are
//!   done, the guest's last deadline
//!   either has fired, or has a host timer armed and fires when the host
//!   timer does, exactly once, or expired while the LVT was masked (it was
//!   due, by the guest TSC, with the LVT masked when the timer thread
//!   kicked or when the guest changed the LVT: the host must deliver
//!   nothing for it);
//! - `armed` never stale: whenever the threads are quiescent, a non-zero
//!   `armed` in guest memory is exactly the deadline (or grace deadline)
//!   the host timer is armed for.
//!
//! The scenarios run with the RFC's policies, and (the later ones) with a
//! short grace period (`GracePolicy::Fixed(5)`: the grace deadline falls
//! between the guest's deadlines) and exitless cancel offered and
//! honoured, racing the delivery, the grace publication and the grace
//! expiry with pushes and cancels. Swapping the delivery and the grace
//! publication in the host makes them fail (an interrupt after a push later
//! completed without a trap).
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p lazy-tscdeadline-sim --test
//! loom --release` (`.ci/run` does). `LOOM_MAX_PREEMPTIONS` overrides the
//! default bound of 3. Without `--cfg loom` the same scenarios run as a
//! stress test on real threads.

#[cfg(loom)]
use loom::{
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
    sync::{Arc, Mutex},
    thread,
};
#[cfg(not(loom))]
use std::{
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
    sync::{Arc, Mutex},
    thread,
};

use lazy_tscdeadline_guest::{DeadlineSetter, MsrWriter, SharedFields};
use std::convert::Infallible;

use lazy_tscdeadline_host::{
    Config, GracePolicy, GuestClock, HostTimer, InterruptSink, KickOutcome, LvtTimer, SharedMemory,
    TscDeadlineTimer,
};

/// Where the guest registers its struct.
const GPA: u64 = 0x1000;
/// The LVT timer vector.
const VECTOR: u8 = 0xec;
/// "No deadline expected" in [`Guest::intent`].
const NONE: u64 = u64::MAX;

/// The two fields of the registered struct, as model atomics.
#[derive(Default)]
struct Fields {
    armed: AtomicU64,
    pending: AtomicU64,
    flags: AtomicU32,
}

/// The host's view of guest memory: only the registered struct exists.
#[derive(Clone)]
struct HostMem(Arc<Fields>);

impl SharedMemory for HostMem {
    fn struct_in_ram(&self, gpa: u64) -> bool {
        gpa == GPA
    }
    fn publish_armed(&self, _gpa: u64, armed: u64) -> bool {
        self.0.armed.store(armed, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        true
    }
    fn load_pending(&self, _gpa: u64) -> Option<u64> {
        Some(self.0.pending.load(Ordering::Relaxed))
    }
    fn write_flags(&self, _gpa: u64, flags: u32) -> bool {
        self.0.flags.store(flags, Ordering::Relaxed);
        true
    }
}

/// The guest's view of the same struct.
struct GuestView(Arc<Fields>);

impl SharedFields for GuestView {
    fn store_pending(&self, deadline: u64) {
        self.0.pending.store(deadline, Ordering::Relaxed);
    }
    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
    fn load_armed(&self) -> u64 {
        self.0.armed.load(Ordering::Relaxed)
    }
    fn store_flags(&self, flags: u32) {
        self.0.flags.store(flags, Ordering::Relaxed);
    }
    fn load_flags(&self) -> u32 {
        self.0.flags.load(Ordering::Relaxed)
    }
}

/// The guest TSC. Only the timer thread (and the final drain) moves it.
#[derive(Clone)]
struct Clock(Arc<AtomicU64>);

impl GuestClock for Clock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A one-shot host timer: its armed deadline (0: none) in a slot the timer
/// thread takes when it fires. The slot has its own lock, as a timerfd has
/// in the kernel: arming and expiring are atomic with respect to each other
/// but not to the VMM's timer lock.
struct SlotTimer(Arc<Mutex<u64>>);

impl HostTimer for SlotTimer {
    type Error = Infallible;
    fn arm(&mut self, deadline: u64) -> Result<(), Infallible> {
        *self.0.lock().unwrap() = deadline;
        Ok(())
    }
    fn disarm(&mut self) -> Result<(), Infallible> {
        *self.0.lock().unwrap() = 0;
        Ok(())
    }
}

fn take(slot: &Mutex<u64>) -> u64 {
    std::mem::take(&mut *slot.lock().unwrap())
}

fn peek(slot: &Mutex<u64>) -> u64 {
    *slot.lock().unwrap()
}

/// The vCPU's LAPIC timer interrupt: an injection sets the IRR bit; a
/// second injection before the guest takes the first merges with it, as in
/// a real LAPIC. The guest takes the interrupt when it enables interrupts,
/// between writes.
///
/// Each injection is checked on the spot against the guest's intent: an
/// interrupt before the earliest deadline that may be current is early.
struct Irqs {
    clock: Clock,
    intent: Arc<AtomicU64>,
    /// Whether the guest's LVT timer is masked (or not in TSC-deadline
    /// mode), as the guest last set it; updated under the timer lock.
    masked: bool,
    /// Guest deadlines (intents) that the timer thread saw due with the
    /// LVT masked when it kicked, and that the kick reported as masked.
    dropped: Vec<u64>,
    irr: Option<Taken>,
    /// Interrupts the guest took.
    log: Vec<Taken>,
}

/// One interrupt the guest took: the latest guest TSC among the injections
/// merged into it, and the guest's intent at each of them.
#[derive(Debug, Default)]
struct Taken {
    now: u64,
    intents: Vec<u64>,
}

impl InterruptSink for Irqs {
    type Error = Infallible;
    fn inject(&mut self, vector: u8) -> Result<(), Infallible> {
        assert_eq!(vector, VECTOR);
        assert!(!self.masked, "interrupt delivered while the LVT is masked");
        let now = self.clock.now();
        let intent = self.intent.load(Ordering::SeqCst);
        assert!(
            intent <= now,
            "interrupt at {now} before the deadline {intent} (u64::MAX: none)"
        );
        let irr = self.irr.get_or_insert_with(Taken::default);
        irr.now = irr.now.max(now);
        irr.intents.push(intent);
        Ok(())
    }
}

/// The guest enables interrupts: a pending timer interrupt is taken.
fn take_interrupt(timer: &Mutex<Timer>) {
    let mut t = timer.lock().unwrap();
    let irqs = t.interrupts_mut();
    if let Some(irq) = irqs.irr.take() {
        irqs.log.push(irq);
    }
}

type Timer = TscDeadlineTimer<HostMem, SlotTimer, Clock, Irqs>;

/// A trapped guest MSR write: runs the host's emulation on the vCPU thread.
struct Trap(Arc<Mutex<Timer>>);

impl MsrWriter for Trap {
    fn write_msr(&mut self, index: u32, value: u64) {
        let r = self.0.lock().unwrap().write_msr(index, value);
        assert!(r.is_ok(), "honest MSR write {index:#x}={value:#x} faulted");
    }
}

/// The guest thread's handle: the setter, the shared fields and the intent
/// it publishes after each completed write.
struct Guest {
    setter: DeadlineSetter<GuestView, Trap>,
    fields: Arc<Fields>,
    timer: Arc<Mutex<Timer>>,
    /// The earliest deadline that may be current: that of the guest's last
    /// completed write ([`NONE`] after a cancellation, a mode change or a
    /// reset; a registration change keeps it), lowered to the new deadline while a write is in
    /// flight.
    intent: Arc<AtomicU64>,
    /// Deadline writes made, for the duplicate check.
    deadlines: u64,
    /// The LVT timer register as the guest last set it.
    lvt: LvtTimer,
}

impl Guest {
    fn set(&mut self, deadline: u64) {
        let intent = if deadline == 0 { NONE } else { deadline };
        // While the write is in flight either deadline may be the current
        // one: an interrupt is due from the earlier of the two.
        let before = self.intent.load(Ordering::SeqCst).min(intent);
        self.intent.store(before, Ordering::SeqCst);
        self.setter.set_next_deadline(deadline);
        self.deadlines += 1;
        self.intent.store(intent, Ordering::SeqCst);
        take_interrupt(&self.timer);
    }

    /// The guest writes the LVT timer register. A mode change drops the
    /// deadline; the mask only suppresses delivery.
    fn set_lvt(&mut self, lvt: LvtTimer) {
        {
            let mut t = self.timer.lock().unwrap();
            t.set_lvt_timer(lvt).unwrap();
            // A deadline due while masked expires, undelivered, when the
            // host catches up under the old (masked) value. (Checked after
            // the host's catch-up: the timer thread moves the clock without
            // the lock, and the clock only grows.)
            record_masked_expiry(&mut t, !self.lvt.delivers());
            t.interrupts_mut().masked = !lvt.delivers();
            if lvt.mode() != self.lvt.mode() {
                self.intent.store(NONE, Ordering::SeqCst);
            }
        }
        self.lvt = lvt;
        take_interrupt(&self.timer);
    }

    fn mask(&mut self) {
        self.set_lvt(self.lvt.with_masked(true));
    }

    fn unmask(&mut self) {
        self.set_lvt(self.lvt.with_masked(false));
    }

    /// INIT/RESET of the vCPU: the host drops everything; the guest starts
    /// over (here: it stops programming the timer).
    fn reset(&mut self) {
        {
            let mut t = self.timer.lock().unwrap();
            t.reset().unwrap();
            t.interrupts_mut().masked = true;
        }
        self.lvt = LvtTimer::RESET;
        self.intent.store(NONE, Ordering::SeqCst);
        take_interrupt(&self.timer);
    }

    /// Disable, then register again: the deadline survives both
    /// (unpublished), so the intent stays.
    fn reregister(&mut self) {
        self.setter.unregister();
        take_interrupt(&self.timer);
        let view = GuestView(self.fields.clone());
        self.setter.register(view, GPA).unwrap();
        take_interrupt(&self.timer);
    }
}

/// One host-timer expiry as the timer thread sees it: take the armed
/// deadline, let the guest TSC reach it, then KICK under the lock. Returns
/// false when nothing was armed.
fn expire_once(slot: &Mutex<u64>, clock: &AtomicU64, timer: &Mutex<Timer>) -> bool {
    let d = take(slot);
    if d == 0 {
        return false;
    }
    if clock.load(Ordering::SeqCst) < d {
        clock.store(d, Ordering::SeqCst);
    }
    let mut t = timer.lock().unwrap();
    let masked = t.interrupts().masked;
    record_masked_expiry(&mut t, masked);
    if t.kick().unwrap() == KickOutcome::Masked {
        assert!(masked, "a masked expiry reported while the LVT is unmasked");
    }
    true
}

/// Under the timer lock, before the host acts: if the LVT is `masked` and
/// the guest's current deadline has passed, that deadline expires while
/// masked and must not be delivered; the lost-deadline check exempts it.
fn record_masked_expiry(t: &mut Timer, masked: bool) {
    let irqs = t.interrupts_mut();
    let intent = irqs.intent.load(Ordering::SeqCst);
    if masked && intent != NONE && intent <= irqs.clock.now() {
        irqs.dropped.push(intent);
    }
}

/// Builds the VM with the struct registered and deadline 10 armed (trapped),
/// runs `guest` on one thread and `timer_rounds` expiries on another, then
/// checks the invariants. The RFC's behaviour on both sides.
fn scenario(timer_rounds: usize, guest: fn(&mut Guest)) {
    scenario_with(Config::rfc(), false, timer_rounds, guest)
}

/// [`scenario`] with the host's `config` (grace, exitless cancel offer) and
/// a guest that honours exitless cancel when `guest_exitless`.
fn scenario_with(config: Config, guest_exitless: bool, timer_rounds: usize, guest: fn(&mut Guest)) {
    let fields = Arc::new(Fields::default());
    let clock = Clock(Arc::new(AtomicU64::new(0)));
    let slot = Arc::new(Mutex::new(0));
    let intent = Arc::new(AtomicU64::new(NONE));
    let irqs = Irqs {
        clock: clock.clone(),
        intent: intent.clone(),
        masked: false,
        dropped: Vec::new(),
        irr: None,
        log: Vec::new(),
    };
    let lvt = LvtTimer::tsc_deadline(VECTOR);
    let t = TscDeadlineTimer::new(
        HostMem(fields.clone()),
        SlotTimer(slot.clone()),
        clock.clone(),
        irqs,
        lvt,
        config.with_lazy_advertised(true),
    );
    let timer = Arc::new(Mutex::new(t));

    let mut g = Guest {
        setter: DeadlineSetter::new(Trap(timer.clone())).with_exitless_cancel(guest_exitless),
        fields: fields.clone(),
        timer: timer.clone(),
        intent: intent.clone(),
        deadlines: 0,
        lvt,
    };
    g.setter
        .register(GuestView(fields.clone()), GPA)
        .expect("aligned GPA");
    g.set(10);
    assert_eq!(fields.armed.load(Ordering::SeqCst), 10);

    let guest_thread = thread::spawn(move || {
        guest(&mut g);
        g
    });
    let (s, c, tm) = (slot.clone(), clock.0.clone(), timer.clone());
    let timer_thread = thread::spawn(move || {
        for _ in 0..timer_rounds {
            if !expire_once(&s, &c, &tm) {
                break;
            }
        }
    });
    let g = guest_thread.join().unwrap();
    timer_thread.join().unwrap();

    // Quiescent: a published `armed` is exactly what the host timer holds.
    {
        let t = timer.lock().unwrap();
        let armed = fields.armed.load(Ordering::SeqCst);
        if armed != 0 {
            assert!(t.is_published(), "armed {armed} published by nobody");
            assert_eq!(t.armed(), armed, "armed is stale");
            assert_eq!(peek(&slot), armed, "no host timer at armed");
        }
        if t.timer_deadline() != 0 {
            assert_eq!(peek(&slot), t.timer_deadline(), "deadline without a timer");
        }
    }

    // Let every remaining host timer fire; it must settle quickly.
    take_interrupt(&timer);
    let mut rounds = 0;
    while expire_once(&slot, &clock.0, &timer) {
        take_interrupt(&timer);
        rounds += 1;
        // (One more with a grace period after the last interrupt.)
        assert!(rounds <= 5, "the host timer keeps re-arming");
    }

    let t = timer.lock().unwrap();
    let log = &t.interrupts().log;
    let last = intent.load(Ordering::SeqCst);
    assert!(
        log.len() as u64 <= g.deadlines,
        "{} interrupts for {} deadline writes: {log:?}",
        log.len(),
        g.deadlines
    );
    if last != NONE && !t.interrupts().dropped.contains(&last) {
        // The last interrupt serves the last deadline, and only one does.
        let taken = log.last().unwrap_or_else(|| {
            panic!(
                "the last deadline {last} was lost; dropped while masked: {:?}; {:?}",
                t.interrupts().dropped,
                t.counters()
            )
        });
        assert!(taken.now >= last, "last deadline {last} lost: {log:?}");
        let n = log.iter().filter(|t| t.intents.contains(&last)).count();
        assert!(n <= 1, "last deadline {last} taken {n} times: {log:?}");
    }
    assert_eq!(t.timer_deadline(), 0, "deadline left armed after the drain");
    assert!(!t.is_published());
    assert_eq!(fields.armed.load(Ordering::SeqCst), 0, "armed left stale");
    assert_eq!(peek(&slot), 0, "host timer left armed");
}

/// Runs `f` under loom (every interleaving up to the preemption bound), or
/// many times on real threads without `--cfg loom`.
fn model(f: fn()) {
    #[cfg(loom)]
    {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(f);
    }
    #[cfg(not(loom))]
    for _ in 0..2000 {
        f();
    }
}

#[test]
fn push_later_races_the_expiry() {
    model(|| scenario(2, |g| g.set(20)));
}

#[test]
fn two_pushes_race_two_expiries() {
    model(|| {
        scenario(2, |g| {
            g.set(20);
            g.set(30);
        })
    });
}

#[test]
fn pull_back_above_armed_races_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.set(30);
            g.set(20);
        })
    });
}

#[test]
fn pull_earlier_than_armed_traps() {
    model(|| {
        scenario(2, |g| {
            g.set(25);
            g.set(5);
        })
    });
}

#[test]
fn cancel_races_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.set(20);
            g.set(0);
        })
    });
}

#[test]
fn lvt_mode_change_races_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.set(20);
            g.set_lvt(LvtTimer::RESET);
            g.set_lvt(LvtTimer::tsc_deadline(VECTOR));
            g.set(30);
        })
    });
}

#[test]
fn mask_and_unmask_race_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.set(20);
            g.mask();
            g.unmask();
            g.set(30);
        })
    });
}

#[test]
fn push_later_while_masked_races_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.mask();
            g.set(20);
            g.unmask();
        })
    });
}

#[test]
fn reregistration_races_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.set(20);
            g.reregister();
            g.set(30);
        })
    });
}

/// The kept deadline is the guest's last one: the host must deliver it,
/// once, at its expiry (reading no `pending`), whether the expiry of 10,
/// the re-arm at 20 or the delivery come before, between or after the two
/// registration writes.
#[test]
fn reregistration_keeps_the_deadline_racing_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.set(20);
            g.reregister();
        })
    });
}

/// A re-registration during the grace period after 10, with a deadline
/// stored without trapping during it: kept.
#[test]
fn reregistration_keeps_a_deadline_stored_in_a_grace_period() {
    model(|| {
        scenario_with(grace(), false, 2, |g| {
            g.set(20);
            g.reregister();
        })
    });
}

/// An exitless cancel, then a re-registration, racing the expiry: the
/// cancel is settled at the registration (nothing stays armed) or by the
/// kick, never delivered.
#[test]
fn reregistration_after_an_exitless_cancel_races_the_expiry() {
    model(|| {
        scenario_with(Config::new().with_grace(GracePolicy::Off), true, 2, |g| {
            g.set(0);
            g.reregister();
        })
    });
}

#[test]
fn reset_races_the_expiry() {
    model(|| {
        scenario(2, |g| {
            g.set(20);
            g.reset();
        })
    });
}

/// A short grace period: 5 after each delivery or trapped cancel, so that
/// the grace deadline falls between the guest's deadlines.
fn grace() -> Config {
    Config::rfc().with_grace(GracePolicy::Fixed(5))
}

/// The delivery of 10 and the publication of its grace period (15) race a
/// push to 20, which does not trap once it sees the grace deadline; the
/// grace expiry then races nothing and must find 20.
#[test]
fn grace_publication_races_a_push() {
    model(|| scenario_with(grace(), false, 3, |g| g.set(20)));
}

/// Two pushes race the delivery, the grace publication and the grace
/// expiry: 18 traps only if the guest sees the `armed = 0` of the delivery
/// (it is later than both 10 and the grace deadline 15); 30 does not trap
/// unless `armed` is 0.
#[test]
fn grace_expiry_races_two_pushes() {
    model(|| {
        scenario_with(grace(), false, 3, |g| {
            g.set(18);
            g.set(30);
        })
    });
}

/// A trapped cancel begins a grace period (at the guest TSC of the cancel);
/// the next deadline races its expiry.
#[test]
fn trapped_cancel_grace_races_the_next_deadline() {
    model(|| {
        scenario_with(grace(), false, 3, |g| {
            g.set(0);
            g.set(30);
        })
    });
}

/// Exitless cancel (offered and honoured) races the expiry of 10: either
/// the kick sees `pending == 0` (no interrupt), or the guest sees the
/// kick's `armed = 0` and traps.
#[test]
fn exitless_cancel_races_the_expiry() {
    model(|| {
        scenario_with(Config::rfc().with_exitless_cancel(true), true, 2, |g| {
            g.set(0)
        })
    });
}

/// Exitless cancel with grace periods: a push, then a cancel, racing the
/// expiries, the delivery and the grace publication.
#[test]
fn exitless_cancel_races_the_grace_period() {
    model(|| {
        scenario_with(grace().with_exitless_cancel(true), true, 3, |g| {
            g.set(20);
            g.set(0);
        })
    });
}

/// Our guest on a host that does not offer exitless cancel: the cancel
/// traps (the loom model's host would deliver nothing for `pending == 0`
/// anyway; the trap count is the simulator's business, here: no lost or
/// extra interrupt).
#[test]
fn new_guest_on_a_host_without_the_offer_cancels_with_a_trap() {
    model(|| {
        scenario_with(grace(), true, 3, |g| {
            g.set(20);
            g.set(0);
            g.set(30);
        })
    });
}
