//! The transitions this crate adds to the RFC: grace re-arm after a
//! delivered deadline or a trapped cancel, the grace expiry, exitless cancel
//! and its negotiation, the adaptive grace length, and their snapshot.
//! Expected values are written out from `docs/PROTOCOL.md` section 9.

mod common;

use std::rc::Rc;

use lazy_tscdeadline_abi::{
    LAZY_FLAG_EXITLESS_CANCEL, MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE,
};
use lazy_tscdeadline_host::{
    Config, GracePolicy, KickOutcome, LvtTimer, StateError, TimerState, TscDeadlineTimer,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use common::{Clock, Irq, Timer};

const GPA: u64 = 0x1000;
const G: u64 = 100;
type Host = TscDeadlineTimer<Rc<GuestMemoryMmap>, Timer, Clock, Irq>;

struct Rig {
    mem: Rc<GuestMemoryMmap>,
    clock: Clock,
    timer: Timer,
    irq: Irq,
    t: Host,
}

impl Rig {
    fn new(config: Config) -> Rig {
        let mem = Rc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap());
        let clock = Clock::default();
        let (timer, irq) = (Timer::default(), Irq(Rc::default(), clock.clone()));
        let mut t = TscDeadlineTimer::new(
            mem.clone(),
            timer.clone(),
            clock.clone(),
            irq.clone(),
            LvtTimer::tsc_deadline(0xec),
            config.with_lazy_advertised(true),
        );
        t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, GPA | 1).unwrap();
        Rig {
            mem,
            clock,
            timer,
            irq,
            t,
        }
    }
    fn grace() -> Rig {
        Rig::new(Config::rfc().with_grace(GracePolicy::Fixed(G)))
    }
    /// The guest stores `pending` only.
    fn store(&self, d: u64) {
        self.mem.write_obj(d, GuestAddress(GPA + 8)).unwrap();
    }
    /// The guest stores `pending` and traps.
    fn write(&mut self, d: u64) {
        self.store(d);
        self.t.write_msr(MSR_IA32_TSC_DEADLINE, d).unwrap();
    }
    fn armed(&self) -> u64 {
        self.mem.read_obj(GuestAddress(GPA)).unwrap()
    }
    fn flags(&self) -> u32 {
        self.mem.read_obj(GuestAddress(GPA + 16)).unwrap()
    }
    fn fired(&self) -> Vec<u64> {
        self.irq.0.borrow().clone()
    }
    /// Time reaches the host timer's deadline and it expires.
    fn expire(&mut self) -> KickOutcome {
        let d = self.timer.0.take().expect("host timer armed");
        self.clock.0.set(self.clock.0.get().max(d));
        self.t.kick().unwrap()
    }
    /// Host timer, published `armed`, host copy: all agree on `want`.
    fn assert_armed(&self, want: u64) {
        assert_eq!(self.armed(), want, "armed in memory");
        assert_eq!(self.t.armed(), want, "host copy");
        assert_eq!(
            self.timer.0.get(),
            (want != 0).then_some(want),
            "host timer"
        );
    }
}

#[test]
fn delivery_begins_a_grace_period_that_ends_when_pending_has_nothing_new() {
    let mut r = Rig::grace();
    r.write(1000);
    assert_eq!(r.expire(), KickOutcome::Injected);
    assert_eq!(r.fired(), [1000]);
    // armed = now + G, the host timer there, no guest deadline.
    r.assert_armed(1000 + G);
    assert_eq!((r.t.deadline(), r.t.grace_deadline()), (0, 1000 + G));
    assert_eq!(
        r.t.read_msr(MSR_IA32_TSC_DEADLINE),
        Ok(0),
        "fired: RDMSR reads 0"
    );
    assert_eq!(r.t.counters().grace_arms, 1);
    // pending still holds the delivered deadline: nothing new, no second
    // interrupt although 1000 is long past.
    assert_eq!(r.expire(), KickOutcome::GraceEnded);
    assert_eq!(r.fired(), [1000]);
    r.assert_armed(0);
    let c = r.t.counters();
    assert_eq!((c.grace_expiries, c.grace_hits, c.injections), (1, 0, 1));
    // pending 0 (a cancel) at a grace expiry is nothing new either.
    r.write(2000);
    r.expire();
    r.store(0);
    assert_eq!(r.expire(), KickOutcome::GraceEnded);
    assert_eq!(r.fired(), [1000, 2000]);
}

#[test]
fn grace_expiry_follows_a_new_deadline_like_a_kick() {
    let mut r = Rig::grace();
    r.write(1000);
    r.expire();
    // The guest's next deadline, not earlier than armed: no trap.
    r.store(1500);
    assert_eq!(r.expire(), KickOutcome::Rearmed(1500));
    r.assert_armed(1500);
    assert_eq!(r.t.deadline(), 1500);
    assert_eq!(r.t.counters().grace_hits, 1);
    assert_eq!(r.expire(), KickOutcome::Injected);
    assert_eq!(r.fired(), [1000, 1500]);
    r.assert_armed(1500 + G);
    // A new deadline exactly at the grace deadline is due at its expiry.
    r.store(1500 + G);
    assert_eq!(r.expire(), KickOutcome::Injected);
    assert_eq!(r.fired(), [1000, 1500, 1500 + G]);
    r.assert_armed(1500 + 2 * G);
    assert_eq!(r.t.counters().grace_arms, 3);
}

#[test]
fn an_earlier_deadline_traps_and_ends_the_grace_period() {
    let mut r = Rig::grace();
    r.write(1000);
    r.expire();
    r.write(1000 + G / 2);
    r.assert_armed(1000 + G / 2);
    assert_eq!((r.t.deadline(), r.t.grace_deadline()), (1000 + G / 2, 0));
    assert_eq!(r.expire(), KickOutcome::Injected);
}

#[test]
fn a_re_request_of_the_delivered_value_traps_and_fires_at_once() {
    let mut r = Rig::grace();
    r.write(1000);
    r.expire();
    r.clock.0.set(1050);
    // The same absolute value again: in the past, so below armed = 1100;
    // the guest traps and UPDATE delivers at once, as eager would.
    assert!(1000 < r.armed());
    r.write(1000);
    assert_eq!(r.fired(), [1000, 1050]);
    // A grace period from now, nothing new in it.
    r.assert_armed(1050 + G);
    assert_eq!(r.expire(), KickOutcome::GraceEnded);
    assert_eq!(r.fired().len(), 2);
}

#[test]
fn trapped_cancel_and_past_write_begin_grace_periods() {
    let mut r = Rig::grace();
    r.write(1000);
    r.clock.0.set(10);
    r.write(0);
    r.assert_armed(10 + G);
    assert_eq!(r.t.read_msr(MSR_IA32_TSC_DEADLINE), Ok(0));
    assert_eq!(r.expire(), KickOutcome::GraceEnded);
    assert!(r.fired().is_empty());
    r.clock.0.set(500);
    r.write(400);
    assert_eq!(r.fired(), [500]);
    r.assert_armed(500 + G);
    assert_eq!(r.expire(), KickOutcome::GraceEnded);
    assert_eq!(r.fired(), [500]);
}

#[test]
fn early_grace_expiry_rearms_and_counts_as_a_grace_wake_up() {
    let mut r = Rig::grace();
    r.write(1000);
    r.expire();
    r.timer.0.take();
    assert_eq!(r.t.kick().unwrap(), KickOutcome::TooEarly);
    r.assert_armed(1000 + G);
    assert_eq!(r.t.counters().grace_expiries, 1);
    assert_eq!(r.t.counters().early_expiries, 1);
}

#[test]
fn mode_change_and_registration_end_a_grace_period_after_catching_up() {
    // Mode change: dropped, nothing delivered, not counted as a clear.
    let mut r = Rig::grace();
    r.write(1000);
    r.expire();
    r.t.set_lvt_timer(LvtTimer::RESET).unwrap();
    r.assert_armed(0);
    assert_eq!(r.t.counters().clears, 0);
    // A new deadline stored in a grace period that is due when the LVT
    // changes is delivered first, under the old LVT.
    let mut r = Rig::grace();
    r.write(1000);
    r.expire();
    r.store(1000 + G);
    r.clock.0.set(1000 + 2 * G);
    r.t.set_lvt_timer(LvtTimer::RESET).unwrap();
    assert_eq!(r.fired(), [1000, 1000 + 2 * G]);
    r.assert_armed(0);
    // Registration: the grace period ends (it holds no real deadline),
    // armed 0 in the old struct.
    let mut r = Rig::grace();
    r.write(1000);
    r.expire();
    r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0).unwrap();
    assert_eq!(r.armed(), 0);
    assert_eq!((r.t.grace_deadline(), r.timer.0.get()), (0, None));
}

#[test]
fn no_grace_period_without_a_registration() {
    let mut r = Rig::grace();
    r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0).unwrap();
    r.write(1000);
    assert_eq!(r.expire(), KickOutcome::Injected);
    assert_eq!((r.t.grace_deadline(), r.timer.0.get()), (0, None));
    r.write(0);
    assert_eq!(r.timer.0.get(), None);
}

#[test]
fn exitless_cancel_is_offered_in_flags_and_a_zero_pending_cancels() {
    let r = Rig::new(Config::new());
    assert_eq!(r.flags(), LAZY_FLAG_EXITLESS_CANCEL);
    let mut r = Rig::new(Config::rfc());
    assert_eq!(r.flags(), 0);
    // Re-registration elsewhere writes the new struct's flags only.
    r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0).unwrap();
    let mut r = Rig::new(Config::new().with_grace(GracePolicy::Off));
    r.mem
        .write_obj(0xffff_ffffu32, GuestAddress(0x2010))
        .unwrap();
    r.mem
        .write_obj(0xffff_ffffu32, GuestAddress(GPA + 16))
        .unwrap();
    r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x2001).unwrap();
    assert_eq!(r.mem.read_obj::<u32>(GuestAddress(0x2010)).unwrap(), 1);
    assert_eq!(r.flags(), 0xffff_ffff, "the old struct's flags untouched");
    r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, GPA | 1).unwrap();
    // The guest cancels without trapping; the expiry cancels.
    r.write(1000);
    r.store(0);
    assert_eq!(r.expire(), KickOutcome::Cancelled);
    assert!(r.fired().is_empty());
    r.assert_armed(0);
    // With grace: an exitless cancel during a grace period ends it.
    let mut r = Rig::new(Config::new().with_grace(GracePolicy::Fixed(G)));
    r.write(1000);
    r.expire();
    r.store(0);
    assert_eq!(r.expire(), KickOutcome::GraceEnded);
    assert_eq!(r.fired(), [1000]);
    r.assert_armed(0);
}

#[test]
fn adaptive_length_follows_the_guest() {
    let policy = GracePolicy::Adaptive {
        initial: 1000,
        min: 10,
        max: 5000,
    };
    let mut r = Rig::new(Config::rfc().with_grace(policy));
    r.write(100);
    r.expire();
    r.assert_armed(100 + 1000);
    // The next deadline, 300 after the grace period began, traps (it is
    // earlier than armed): the length becomes 300 / 2.
    r.write(400);
    assert_eq!(r.t.state().grace.cycles, 150);
    r.expire();
    r.assert_armed(400 + 150);
    // The guest comes back 400 after: the period ended unused; the length
    // becomes 2 * 400 at its trap.
    r.expire();
    r.clock.0.set(800);
    r.write(5000);
    assert_eq!(r.t.state().grace.cycles, 800);
    r.expire();
    r.assert_armed(5000 + 800);
    // A hit changes nothing; the bounds hold.
    r.store(9000);
    r.expire();
    r.expire();
    r.assert_armed(9000 + 800);
    r.clock.0.set(9001);
    r.write(9002);
    assert_eq!(r.t.state().grace.cycles, 10);
}

#[cfg(feature = "serde")]
#[test]
fn grace_state_survives_a_snapshot_and_is_validated() {
    use lazy_tscdeadline_host::TimerSnapshot;
    let mut r = Rig::new(Config::new().with_grace(GracePolicy::Fixed(G)));
    r.write(1000);
    r.expire();
    let state = r.t.state();
    assert_eq!((state.grace.deadline, state.grace.stale), (1000 + G, 1000));
    assert!(state.exitless_cancel);
    let json = serde_json::to_string(&TimerSnapshot::from(state)).unwrap();
    let back: TimerSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back.version(), 3);
    let state = back.into_state().unwrap();
    let timer = Timer::default();
    let mut t = Host::from_state(
        r.mem.clone(),
        timer.clone(),
        r.clock.clone(),
        r.irq.clone(),
        &state,
    )
    .unwrap();
    assert!(t.is_paused());
    assert_eq!(t.config().grace, GracePolicy::Fixed(G));
    assert!(t.config().exitless_cancel);
    t.resume().unwrap();
    assert_eq!(timer.0.get(), Some(1000 + G));
    r.clock.0.set(1000 + G);
    // pending still 1000: nothing new after the restore either.
    assert_eq!(t.kick().unwrap(), KickOutcome::GraceEnded);
    assert_eq!(r.fired(), [1000]);
}

#[test]
fn inconsistent_grace_states_are_refused() {
    let mut r = Rig::new(Config::new().with_grace(GracePolicy::Fixed(G)));
    r.write(1000);
    r.expire();
    let state = r.t.state();
    let bad = |f: fn(&mut TimerState)| {
        let mut s = state;
        f(&mut s);
        Host::from_state(
            r.mem.clone(),
            Timer::default(),
            r.clock.clone(),
            r.irq.clone(),
            &s,
        )
        .map(|_| ())
    };
    assert!(bad(|_| ()).is_ok());
    for f in [
        (|s: &mut TimerState| s.deadline = 5) as fn(&mut TimerState),
        |s| s.published = false,
        |s| s.grace_policy = GracePolicy::Off,
        |s| s.lvt_timer = LvtTimer::RESET.raw(),
        |s| s.registration = 0,
    ] {
        assert!(matches!(bad(f), Err(StateError::Invalid(_))));
    }
}

#[cfg(feature = "serde")]
#[test]
fn version_2_snapshots_read_with_the_rfc_policies() {
    use lazy_tscdeadline_host::TimerSnapshot;
    let v2 = r#"{"version":2,"state":{"lvt_timer":262380,"deadline":1000,"published":true,
        "registration":4097,"lazy_advertised":true,"counters":{"trapped_writes":1}}}"#;
    let snap: TimerSnapshot = serde_json::from_str(v2).unwrap();
    assert_eq!(snap.version(), 2);
    let s = snap.into_state().unwrap();
    assert_eq!(
        (s.grace_policy, s.exitless_cancel),
        (GracePolicy::Off, false)
    );
    assert_eq!(s.grace.deadline, 0);
    assert_eq!((s.deadline, s.counters.trapped_writes), (1000, 1));
}

/// An expiry while masked delivers nothing and begins no grace period:
/// `armed` reads 0 afterwards, as section 4.0 says (the mini-VMM's
/// `lvt-mask` check reads it), both for a kick and for a passed deadline
/// written while masked.
#[test]
fn no_grace_period_after_an_expiry_while_masked() {
    let mut r = Rig::grace();
    r.t.set_lvt_timer(LvtTimer::tsc_deadline(0xec).with_masked(true))
        .unwrap();
    r.write(1000);
    assert_eq!(r.expire(), KickOutcome::Masked);
    r.assert_armed(0);
    r.clock.0.set(2000);
    r.write(1500);
    r.assert_armed(0);
    assert!(r.fired().is_empty());
    assert_eq!(r.t.counters().grace_arms, 0);
}

#[test]
fn rdmsr_reads_the_deadline_the_guest_set_without_a_trap() {
    let mut r = Rig::new(Config::new().with_grace(GracePolicy::Fixed(G)));
    let read = |r: &Rig| r.t.read_msr(MSR_IA32_TSC_DEADLINE).unwrap();
    r.write(1000);
    assert_eq!(read(&r), 1000);
    // Pushed later without a trap: the guest's deadline is the later one.
    r.store(1400);
    assert_eq!(read(&r), 1400);
    // An earlier value stored without its trap changes nothing (the expiry
    // would deliver at 1000).
    r.store(900);
    assert_eq!(read(&r), 1000);
    // An exitless cancel: nothing armed for the guest.
    r.store(0);
    assert_eq!(read(&r), 0);
    // Delivered: 0, also in the grace period that follows, until the guest
    // sets a new deadline without a trap.
    r.store(1000);
    assert_eq!(r.expire(), KickOutcome::Injected);
    assert_eq!(read(&r), 0);
    r.store(1000 + G + 300);
    assert_eq!(read(&r), 1000 + G + 300);
    assert_eq!(r.expire(), KickOutcome::Rearmed(1000 + G + 300));
    assert_eq!(read(&r), 1000 + G + 300);
    // Unregistered: the host's own deadline.
    r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0).unwrap();
    r.t.write_msr(MSR_IA32_TSC_DEADLINE, 5000).unwrap();
    r.store(7000);
    assert_eq!(read(&r), 5000);
}
