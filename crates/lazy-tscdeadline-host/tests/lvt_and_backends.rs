//! The architectural TSC-deadline rules (SDM vol. 3A, "TSC-Deadline Mode";
//! KVM's `lapic.c`) in eager and lazy mode, and collaborator failures.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::{
    BackendError, Config, GuestClock, HostTimer, InterruptSink, KickOutcome, LvtTimer,
    TscDeadlineTimer, WriteMsrError,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Clone, Default)]
struct Clock(Rc<Cell<u64>>);
impl GuestClock for Clock {
    fn now(&self) -> u64 {
        self.0.get()
    }
}

/// A host timer that records its deadline and fails while `fail` is set.
#[derive(Clone, Default)]
struct Timer {
    armed: Rc<Cell<Option<u64>>>,
    fail: Rc<Cell<bool>>,
}
impl HostTimer for Timer {
    type Error = std::io::Error;
    fn arm(&mut self, d: u64) -> std::io::Result<()> {
        if self.fail.get() {
            return Err(std::io::Error::other("timerfd_settime"));
        }
        self.armed.set(Some(d));
        Ok(())
    }
    fn disarm(&mut self) -> std::io::Result<()> {
        if self.fail.get() {
            return Err(std::io::Error::other("timerfd_settime"));
        }
        self.armed.set(None);
        Ok(())
    }
}

/// An interrupt sink that records vectors and fails while `fail` is set.
#[derive(Clone, Default)]
struct Irq {
    log: Rc<RefCell<Vec<u8>>>,
    fail: Rc<Cell<bool>>,
}
impl InterruptSink for Irq {
    type Error = std::io::Error;
    fn inject(&mut self, v: u8) -> std::io::Result<()> {
        if self.fail.get() {
            return Err(std::io::Error::other("KVM_SIGNAL_MSI"));
        }
        self.log.borrow_mut().push(v);
        Ok(())
    }
}

const LIVE: LvtTimer = LvtTimer::tsc_deadline(0xec);
const MASKED: LvtTimer = LIVE.with_masked(true);
const GPA: u64 = 0x1000;

struct Rig {
    mem: Rc<GuestMemoryMmap>,
    clock: Clock,
    timer: Timer,
    irq: Irq,
    t: TscDeadlineTimer<Rc<GuestMemoryMmap>, Timer, Clock, Irq>,
}

impl Rig {
    /// A timer with `lvt`, lazy-registered at [`GPA`] when `lazy`.
    fn new(lvt: LvtTimer, lazy: bool) -> Rig {
        let mem = Rc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap());
        let (clock, timer, irq) = (Clock::default(), Timer::default(), Irq::default());
        let mut t = TscDeadlineTimer::new(
            mem.clone(),
            timer.clone(),
            clock.clone(),
            irq.clone(),
            lvt,
            Config::rfc().with_lazy_advertised(true),
        );
        if lazy {
            t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, GPA | 1).unwrap();
        }
        Rig {
            mem,
            clock,
            timer,
            irq,
            t,
        }
    }
    /// The guest writes `d` to its `pending` and traps, as the setter does.
    fn write(&mut self, d: u64) {
        self.mem.write_obj(d, GuestAddress(GPA + 8)).unwrap();
        self.t.write_msr(MSR_IA32_TSC_DEADLINE, d).unwrap();
    }
    fn read(&self) -> u64 {
        self.t.read_msr(MSR_IA32_TSC_DEADLINE).unwrap()
    }
    fn armed(&self) -> u64 {
        self.mem.read_obj(GuestAddress(GPA)).unwrap()
    }
    fn fired(&self) -> Vec<u8> {
        self.irq.log.borrow().clone()
    }
    fn set_lvt(&mut self, lvt: LvtTimer) {
        self.t.set_lvt_timer(lvt).unwrap();
    }
    /// Time reaches the host timer's deadline and it expires.
    fn expire(&mut self) -> KickOutcome {
        let d = self.timer.armed.take().expect("host timer armed");
        self.clock.0.set(self.clock.0.get().max(d));
        self.t.kick().unwrap()
    }
}

#[test]
fn masked_write_arms_reads_back_and_fires_once_unmasked() {
    for lazy in [false, true] {
        let mut r = Rig::new(MASKED, lazy);
        r.write(100);
        assert_eq!(r.read(), 100, "lazy {lazy}: a masked write arms");
        assert_eq!(r.timer.armed.get(), Some(100));
        if lazy {
            assert_eq!(r.armed(), 100, "armed is published while masked");
        }
        r.set_lvt(LIVE);
        r.set_lvt(MASKED);
        r.set_lvt(LIVE);
        assert_eq!(r.read(), 100, "lazy {lazy}: mask/unmask keeps it armed");
        assert_eq!(r.expire(), KickOutcome::Injected);
        assert_eq!(r.clock.0.get(), 100, "on time");
        assert_eq!(r.fired(), [0xec]);
        assert_eq!(r.read(), 0);
    }
}

#[test]
fn expiry_while_masked_delivers_nothing_and_disarms() {
    for lazy in [false, true] {
        let mut r = Rig::new(LIVE, lazy);
        r.write(100);
        r.set_lvt(MASKED);
        assert_eq!(r.expire(), KickOutcome::Masked, "lazy {lazy}");
        assert_eq!(r.read(), 0, "lazy {lazy}: disarmed");
        assert_eq!(r.timer.armed.get(), None);
        if lazy {
            assert_eq!(r.armed(), 0, "the next guest write traps");
        }
        r.set_lvt(LIVE);
        r.clock.0.set(1000);
        r.t.kick().unwrap();
        assert!(
            r.fired().is_empty(),
            "lazy {lazy}: unmasking delivers nothing"
        );
        assert_eq!(r.t.counters().masked_expiries, 1);
        // A deadline already passed when written while masked: the same.
        r.set_lvt(MASKED);
        r.write(5);
        assert_eq!(r.read(), 0);
        r.set_lvt(LIVE);
        assert!(r.fired().is_empty());
    }
}

#[test]
fn lazy_push_later_while_masked_follows_pending_and_drops_silently() {
    let mut r = Rig::new(LIVE, true);
    r.write(100);
    r.set_lvt(MASKED);
    // Pushed later without an exit, as `armed` = 100 <= 250.
    r.mem.write_obj(250u64, GuestAddress(GPA + 8)).unwrap();
    assert_eq!(r.expire(), KickOutcome::Rearmed(250));
    assert_eq!((r.read(), r.armed()), (250, 250));
    assert_eq!(r.expire(), KickOutcome::Masked);
    assert_eq!((r.read(), r.armed()), (0, 0));
    assert!(r.fired().is_empty());
}

#[test]
fn a_due_deadline_expires_under_the_lvt_it_was_due_under() {
    // The host is late: the deadline passed while unmasked, then the guest
    // masks. It was delivered on hardware, so it is delivered here.
    let mut r = Rig::new(LIVE, true);
    r.write(100);
    r.clock.0.set(150);
    r.set_lvt(MASKED);
    assert_eq!(r.fired(), [0xec]);
    // And the other way round: due while masked, then unmasked: nothing.
    r.write(200);
    r.clock.0.set(250);
    r.set_lvt(LIVE);
    assert_eq!(r.fired(), [0xec]);
    assert_eq!(r.read(), 0);
}

#[test]
fn an_lvt_observed_late_decides_delivery_at_the_kick() {
    // An in-kernel LAPIC: the guest masks, writes, unmasks without an exit;
    // the VMM reads the LVT only when it handles the expiry. The value it
    // reads is what decides (as KVM decides at injection).
    for lazy in [false, true] {
        let mut r = Rig::new(MASKED, lazy);
        r.write(100);
        let d = r.timer.armed.get().expect("armed while masked");
        r.clock.0.set(d + 10);
        r.t.observe_lvt_timer(LIVE).unwrap();
        assert_eq!(r.t.kick().unwrap(), KickOutcome::Injected, "lazy {lazy}");
        assert_eq!(r.fired(), [0xec]);
        // Unmasked when written, masked when the expiry is handled: nothing.
        r.write(300);
        r.clock.0.set(310);
        r.t.observe_lvt_timer(MASKED).unwrap();
        assert_eq!(r.t.kick().unwrap(), KickOutcome::Masked);
        assert_eq!(r.fired(), [0xec]);
        assert_eq!(r.read(), 0);
        // A mode change still disarms, without delivery.
        r.t.observe_lvt_timer(LIVE).unwrap();
        r.write(400);
        r.t.observe_lvt_timer(LvtTimer::from_raw(0xec)).unwrap(); // one-shot
        assert_eq!(r.t.deadline(), 0);
        assert_eq!(r.fired(), [0xec]);
    }
}

#[test]
fn only_mode_change_zero_write_or_reset_disarm() {
    // Mode change (and a change to any other mode).
    for other in [0u32, 1 << 17, 3 << 17, 1 << 16] {
        let mut r = Rig::new(LIVE, true);
        r.write(100);
        r.set_lvt(LvtTimer::from_raw(other | 0xec));
        assert_eq!((r.read(), r.armed()), (0, 0), "mode {other:#x}");
        assert_eq!(r.timer.armed.get(), None);
        // Back in TSC-deadline mode nothing comes back.
        r.set_lvt(LIVE);
        assert_eq!(r.read(), 0);
    }
    // A vector change in the same mode keeps it.
    let mut r = Rig::new(LIVE, false);
    r.write(100);
    r.set_lvt(LvtTimer::tsc_deadline(0x40));
    assert_eq!(r.read(), 100);
    assert_eq!(r.expire(), KickOutcome::Injected);
    assert_eq!(r.fired(), [0x40]);
    // A write of 0 (masked too).
    let mut r = Rig::new(MASKED, true);
    r.write(100);
    r.write(0);
    assert_eq!((r.read(), r.armed(), r.timer.armed.get()), (0, 0, None));
    // Reset.
    let mut r = Rig::new(MASKED, true);
    r.write(100);
    r.t.reset().unwrap();
    assert_eq!((r.read(), r.armed(), r.timer.armed.get()), (0, 0, None));
    assert_eq!(r.t.lvt_timer(), LvtTimer::RESET);
}

#[test]
fn writes_outside_tsc_deadline_mode_are_ignored_and_counted() {
    for lvt in [
        LvtTimer::RESET,
        LvtTimer::from_raw(1 << 17 | 0xec),
        LvtTimer::from_raw(0xec),
    ] {
        let mut r = Rig::new(lvt, true);
        r.write(100);
        assert_eq!(r.read(), 0, "{lvt:?}");
        assert_eq!(r.timer.armed.get(), None);
        assert_eq!(r.armed(), 0);
        assert_eq!(r.t.counters().ignored_writes, 1);
        assert_eq!(r.t.counters().trapped_writes, 1);
    }
}

#[test]
fn collaborator_failures_are_backend_errors_not_guest_faults() {
    let mut r = Rig::new(LIVE, true);
    r.timer.fail.set(true);
    // The guest's store of `pending`, then its trap (as `Rig::write`).
    r.mem.write_obj(100u64, GuestAddress(GPA + 8)).unwrap();
    let e = r.t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap_err();
    assert!(!e.is_guest_fault());
    assert!(
        matches!(e, WriteMsrError::Backend(BackendError::HostTimer(_))),
        "{e:?}"
    );
    // The emulation itself completed: the deadline is armed and published.
    assert_eq!((r.read(), r.armed()), (100, 100));
    assert_eq!(r.t.counters().backend_errors, 1);
    // The VMM can retry arming the host timer.
    r.timer.fail.set(false);
    r.t.rearm_host_timer().unwrap();
    assert_eq!(r.timer.armed.get(), Some(100));
    // A failed injection reaches the caller of kick.
    r.irq.fail.set(true);
    r.mem.write_obj(100u64, GuestAddress(GPA + 8)).unwrap();
    r.clock.0.set(100);
    let e = r.t.kick().unwrap_err();
    assert!(matches!(e, BackendError::Interrupt(_)), "{e:?}");
    assert_eq!(r.read(), 0);
    assert_eq!(r.t.counters().injections, 0);
    assert_eq!(r.t.counters().backend_errors, 2);
    // Errors do not stick to later operations.
    r.irq.fail.set(false);
    r.write(200);
    assert_eq!(r.expire(), KickOutcome::Injected);
    assert_eq!(r.fired(), [0xec]);
}
