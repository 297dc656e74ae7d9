//! A registration change (enable, re-register, disable) keeps the
//! architectural timer: the armed deadline survives, unpublished
//! (`docs/PROTOCOL.md` section 4.1, Registration). Also the take-over of a
//! deadline from elsewhere, `adopt_deadline`. Expected values are written
//! out from the protocol text, not computed with the crate.

mod common;

use std::rc::Rc;

use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::{Config, GracePolicy, KickOutcome, LvtTimer, TscDeadlineTimer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use common::{Clock, Irq, Timer};

/// The first struct and the one re-registered to.
const OLD: u64 = 0x1000;
const NEW: u64 = 0x2000;
/// A value no test writes as a deadline: "garbage" in a struct.
const GARBAGE: u64 = 0xdead_beef_0000;

struct Rig {
    mem: Rc<GuestMemoryMmap>,
    clock: Clock,
    timer: Timer,
    irq: Irq,
    t: TscDeadlineTimer<Rc<GuestMemoryMmap>, Timer, Clock, Irq>,
}

impl Rig {
    /// Registered at [`OLD`] with `config`, LVT in TSC-deadline mode.
    fn new(config: Config) -> Rig {
        let mut r = Rig::unregistered(config);
        r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, OLD | 1).unwrap();
        r
    }
    fn unregistered(config: Config) -> Rig {
        let mem = Rc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap());
        let clock = Clock::default();
        let (timer, irq) = (Timer::default(), Irq(Rc::default(), clock.clone()));
        let t = TscDeadlineTimer::new(
            mem.clone(),
            timer.clone(),
            clock.clone(),
            irq.clone(),
            LvtTimer::tsc_deadline(0xec),
            config.with_lazy_advertised(true),
        );
        Rig {
            mem,
            clock,
            timer,
            irq,
            t,
        }
    }
    fn rfc() -> Rig {
        Rig::new(Config::rfc())
    }
    /// The guest stores `pending` of the struct at `gpa` only.
    fn store(&self, gpa: u64, d: u64) {
        self.mem.write_obj(d, GuestAddress(gpa + 8)).unwrap();
    }
    /// The guest stores `pending` (of [`OLD`]) and traps.
    fn write(&mut self, d: u64) {
        self.store(OLD, d);
        self.t.write_msr(MSR_IA32_TSC_DEADLINE, d).unwrap();
    }
    fn armed(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }
    fn pending(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa + 8)).unwrap()
    }
    fn register(&mut self, value: u64) {
        self.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, value).unwrap();
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
    /// The deadline `d` is armed on the host and unpublished: RDMSR reads
    /// it, the host timer is armed for it, and `armed` reads 0 in `structs`.
    fn assert_kept_unpublished(&self, d: u64, structs: &[u64]) {
        assert_eq!(self.t.read_msr(MSR_IA32_TSC_DEADLINE), Ok(d), "RDMSR");
        assert_eq!(self.t.deadline(), d, "host deadline");
        assert_eq!(self.timer.0.get(), Some(d), "host timer");
        assert_eq!(self.t.armed(), 0, "host copy of armed");
        assert!(!self.t.is_published());
        for &gpa in structs {
            assert_eq!(self.armed(gpa), 0, "armed in the struct at {gpa:#x}");
        }
    }
    /// Nothing armed on the host.
    fn assert_nothing_armed(&self) {
        assert_eq!(self.t.read_msr(MSR_IA32_TSC_DEADLINE), Ok(0), "RDMSR");
        assert_eq!(self.t.timer_deadline(), 0);
        assert_eq!(self.timer.0.get(), None, "host timer");
    }
    /// The kept deadline `d` fires once, at `d`, whatever the new struct's
    /// `pending` holds (it is not read: it is garbage here), and nothing
    /// stays armed.
    fn assert_fires_once_at(&mut self, d: u64) {
        let before = self.fired();
        self.store(NEW, GARBAGE);
        self.store(OLD, GARBAGE);
        assert_eq!(self.expire(), KickOutcome::Injected);
        let mut want = before;
        want.push(d);
        assert_eq!(self.fired(), want);
        self.assert_nothing_armed();
        assert_eq!(self.t.kick().unwrap(), KickOutcome::Stale);
        assert_eq!(self.fired(), want, "no second interrupt");
    }
}

/// The three registration changes, from a rig registered at [`OLD`].
const CHANGES: [(u64, &str); 3] = [
    (OLD | 1, "re-registration at the same address"),
    (NEW | 1, "re-registration elsewhere"),
    (0, "disable"),
];

#[test]
fn a_published_deadline_survives_every_registration_change_unpublished() {
    for (value, what) in CHANGES {
        let mut r = Rig::rfc();
        r.write(1000);
        assert_eq!(r.armed(OLD), 1000, "{what}: published before");
        r.register(value);
        r.assert_kept_unpublished(1000, &[OLD, NEW]);
        assert_eq!(r.t.counters().clears, 0, "{what}");
        assert!(r.fired().is_empty(), "{what}: nothing delivered yet");
        r.assert_fires_once_at(1000);
    }
}

#[test]
fn a_later_pending_in_the_old_struct_becomes_the_kept_deadline() {
    for (value, what) in CHANGES {
        let mut r = Rig::rfc();
        r.write(1000);
        // A push later that did not trap (armed 1000 <= 1500).
        r.store(OLD, 1500);
        r.register(value);
        r.assert_kept_unpublished(1500, &[OLD, NEW]);
        assert_eq!(r.pending(OLD), 1500, "{what}: pending is never written");
        // The host timer was moved: nothing at 1000.
        r.assert_fires_once_at(1500);
    }
}

#[test]
fn an_equal_or_earlier_pending_keeps_the_deadline() {
    for p in [1000, 999, 1] {
        let mut r = Rig::rfc();
        r.write(1000);
        r.store(OLD, p);
        r.register(NEW | 1);
        r.assert_kept_unpublished(1000, &[OLD, NEW]);
        r.assert_fires_once_at(1000);
    }
}

#[test]
fn a_zero_pending_is_a_cancel_only_when_exitless_cancel_was_offered() {
    for (value, what) in CHANGES {
        // Offered: the guest cancelled without trapping.
        let mut r = Rig::new(Config::new().with_grace(GracePolicy::Off));
        r.write(1000);
        r.store(OLD, 0);
        r.register(value);
        r.assert_nothing_armed();
        assert_eq!((r.armed(OLD), r.armed(NEW)), (0, 0), "{what}");
        r.clock.0.set(5000);
        assert_eq!(r.t.kick().unwrap(), KickOutcome::Stale, "{what}");
        assert!(r.fired().is_empty(), "{what}");
        // Not offered: an honest cancel would have trapped; keep.
        let mut r = Rig::rfc();
        r.write(1000);
        r.store(OLD, 0);
        r.register(value);
        r.assert_kept_unpublished(1000, &[OLD, NEW]);
        r.assert_fires_once_at(1000);
    }
}

#[test]
fn an_unpublished_deadline_survives_registration_without_reading_pending() {
    for config in [Config::rfc(), Config::new()] {
        let mut r = Rig::unregistered(config);
        r.t.write_msr(MSR_IA32_TSC_DEADLINE, 1000).unwrap();
        // Garbage in the struct about to be registered: neither a later
        // value nor 0 may move or cancel the deadline.
        for garbage in [0, 2000] {
            r.store(OLD, garbage);
            r.register(OLD | 1);
            r.assert_kept_unpublished(1000, &[OLD]);
        }
        assert_eq!(r.t.counters().registrations, 2);
        r.assert_fires_once_at(1000);
    }
}

#[test]
fn a_due_deadline_is_delivered_first_and_nothing_stays_armed() {
    for (value, what) in CHANGES {
        let mut r = Rig::rfc();
        r.write(1000);
        r.clock.0.set(1200);
        r.register(value);
        assert_eq!(r.fired(), [1200], "{what}: delivered at the registration");
        r.assert_nothing_armed();
        assert_eq!((r.armed(OLD), r.armed(NEW)), (0, 0), "{what}");
        // A push later that is due too: the catch-up delivers it once.
        let mut r = Rig::rfc();
        r.write(1000);
        r.store(OLD, 1100);
        r.clock.0.set(1200);
        r.register(value);
        assert_eq!(r.fired(), [1200], "{what}");
        r.assert_nothing_armed();
        // A push later that is not due yet: re-armed by the catch-up's
        // kick, then kept unpublished.
        let mut r = Rig::rfc();
        r.write(1000);
        r.store(OLD, 1500);
        r.clock.0.set(1200);
        r.register(value);
        assert!(r.fired().is_empty(), "{what}");
        r.assert_kept_unpublished(1500, &[OLD, NEW]);
        r.assert_fires_once_at(1500);
    }
}

#[test]
fn a_kept_deadline_fires_on_time_not_early() {
    let mut r = Rig::rfc();
    r.write(1000);
    r.register(NEW | 1);
    r.clock.0.set(999);
    assert_eq!(r.t.kick().unwrap(), KickOutcome::TooEarly);
    assert!(r.fired().is_empty());
    r.assert_kept_unpublished(1000, &[OLD, NEW]);
    r.assert_fires_once_at(1000);
}

#[test]
fn the_next_trapped_write_replaces_the_kept_deadline_and_publishes() {
    // Later, earlier and 0: every write traps (armed == 0) and replaces it.
    for (t, published) in [(3000, 3000), (500, 500), (0, 0)] {
        let mut r = Rig::rfc();
        r.write(1000);
        r.register(NEW | 1);
        r.store(NEW, t);
        r.t.write_msr(MSR_IA32_TSC_DEADLINE, t).unwrap();
        assert_eq!(r.armed(NEW), published);
        assert_eq!(r.t.deadline(), t);
        assert_eq!(r.timer.0.get(), (t != 0).then_some(t));
        if t != 0 {
            // Published now: the expiry reads the new struct's pending.
            r.store(NEW, t + 100);
            assert_eq!(r.expire(), KickOutcome::Rearmed(t + 100));
            assert_eq!(r.expire(), KickOutcome::Injected);
            assert_eq!(r.fired(), [t + 100], "nothing for 1000 or {t}");
        } else {
            r.clock.0.set(5000);
            assert_eq!(r.t.kick().unwrap(), KickOutcome::Stale);
            assert!(r.fired().is_empty());
        }
    }
}

#[test]
fn a_grace_period_ends_at_a_registration_change() {
    for (value, what) in CHANGES {
        let mut r = Rig::new(Config::rfc().with_grace(GracePolicy::Fixed(100)));
        r.write(1000);
        assert_eq!(r.expire(), KickOutcome::Injected);
        assert_eq!(r.t.grace_deadline(), 1100, "{what}");
        r.register(value);
        r.assert_nothing_armed();
        assert_eq!(r.t.grace_deadline(), 0, "{what}");
        assert_eq!((r.armed(OLD), r.armed(NEW)), (0, 0), "{what}");
        assert_eq!(r.fired(), [1000], "{what}");
    }
}

#[test]
fn a_deadline_stored_during_a_grace_period_survives_the_registration_change() {
    for (value, what) in CHANGES {
        // Pushed to 1100 or later (not below armed = 1100: no trap).
        for p in [1100, 1500] {
            let mut r = Rig::new(Config::rfc().with_grace(GracePolicy::Fixed(100)));
            r.write(1000);
            assert_eq!(r.expire(), KickOutcome::Injected);
            r.store(OLD, p);
            r.register(value);
            assert_eq!(r.t.grace_deadline(), 0, "{what}");
            r.assert_kept_unpublished(p, &[OLD, NEW]);
            r.assert_fires_once_at(p);
            assert_eq!(r.fired(), [1000, p], "{what}");
        }
        // The delivered deadline (stale) or 0 is nothing new.
        for p in [1000, 0] {
            let mut r = Rig::new(Config::new().with_grace(GracePolicy::Fixed(100)));
            r.write(1000);
            assert_eq!(r.expire(), KickOutcome::Injected);
            r.store(OLD, p);
            r.register(value);
            r.assert_nothing_armed();
            assert_eq!(r.t.grace_deadline(), 0, "{what}");
        }
    }
}

#[test]
fn reset_and_a_mode_change_still_clear() {
    let mut r = Rig::rfc();
    r.write(1000);
    r.t.reset().unwrap();
    r.assert_nothing_armed();
    assert_eq!(r.armed(OLD), 0);
    let mut r = Rig::rfc();
    r.write(1000);
    r.t.set_lvt_timer(LvtTimer::RESET).unwrap();
    r.assert_nothing_armed();
    assert_eq!((r.armed(OLD), r.t.counters().clears), (0, 1));
}

#[test]
fn a_rejected_registration_changes_nothing() {
    let mut r = Rig::rfc();
    r.write(1000);
    r.store(OLD, 1500);
    assert!(r.t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x8001).is_err());
    assert_eq!(r.armed(OLD), 1000, "still published");
    assert_eq!((r.t.deadline(), r.timer.0.get()), (1000, Some(1000)));
    // The published deadline still reads pending at its expiry.
    assert_eq!(r.expire(), KickOutcome::Rearmed(1500));
}

#[test]
fn an_adopted_deadline_is_armed_unpublished() {
    // Registered, with a published deadline that the adopted one replaces.
    let mut r = Rig::rfc();
    r.write(1000);
    r.t.adopt_deadline(2000).unwrap();
    r.assert_kept_unpublished(2000, &[OLD]);
    assert_eq!(r.t.counters().adopted, 1);
    assert_eq!(r.t.counters().trapped_writes, 1, "not a guest write");
    r.assert_fires_once_at(2000);
    // Unregistered.
    let mut r = Rig::unregistered(Config::new());
    r.t.adopt_deadline(2000).unwrap();
    r.assert_kept_unpublished(2000, &[]);
    r.assert_fires_once_at(2000);
    // Due: fires at once, nothing armed.
    let mut r = Rig::rfc();
    r.clock.0.set(3000);
    r.t.adopt_deadline(2000).unwrap();
    assert_eq!(r.fired(), [3000]);
    r.assert_nothing_armed();
    assert_eq!(r.armed(OLD), 0);
    // Due while masked: nothing delivered.
    let mut r = Rig::rfc();
    r.t.set_lvt_timer(LvtTimer::tsc_deadline(0xec).with_masked(true))
        .unwrap();
    r.clock.0.set(3000);
    r.t.adopt_deadline(2000).unwrap();
    assert!(r.fired().is_empty());
    r.assert_nothing_armed();
    // 0: nothing armed, a published deadline withdrawn.
    let mut r = Rig::rfc();
    r.write(1000);
    r.t.adopt_deadline(0).unwrap();
    r.assert_nothing_armed();
    assert_eq!(r.armed(OLD), 0);
    // Outside TSC-deadline mode: ignored, as a write is.
    let mut r = Rig::rfc();
    r.t.set_lvt_timer(LvtTimer::RESET).unwrap();
    r.t.adopt_deadline(2000).unwrap();
    r.assert_nothing_armed();
    // A grace period is replaced.
    let mut r = Rig::new(Config::rfc().with_grace(GracePolicy::Fixed(100)));
    r.write(1000);
    r.expire();
    r.t.adopt_deadline(2000).unwrap();
    assert_eq!(r.t.grace_deadline(), 0);
    r.assert_kept_unpublished(2000, &[OLD]);
    r.assert_fires_once_at(2000);
}
