//! One simulated vCPU: the real guest setter wired to the real host timer.

use std::cell::{Ref, RefCell};
use std::rc::Rc;

use lazy_tscdeadline_abi::{ARMED_OFFSET, PENDING_OFFSET};
use lazy_tscdeadline_guest::{DeadlineSetter, WriteOutcome};
use lazy_tscdeadline_host::{Config, Error, GuestClock, KickOutcome, TimerState, TscDeadlineTimer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{FakeTimer, Interrupt, MemShared, RecordingIrq, TrapBridge, VirtualClock};

/// Guest memory as the simulator shares it between guest and host.
pub type SimMemory = Rc<GuestMemoryMmap>;

/// The host timer type the simulator instantiates.
pub type SimHost = TscDeadlineTimer<SimMemory, FakeTimer, VirtualClock, RecordingIrq>;

/// Vector the simulated guest programs into its LVT timer.
pub const TIMER_VECTOR: u8 = 0xec;

/// A simulated vCPU: guest setter, host timer, clock, fake devices.
#[derive(Debug)]
pub struct SimVcpu {
    clock: VirtualClock,
    timer: FakeTimer,
    irq: RecordingIrq,
    host: Rc<RefCell<SimHost>>,
    guest: DeadlineSetter<MemShared, TrapBridge>,
    mem: SimMemory,
    gpa: u64,
    kicks: u64,
}

impl SimVcpu {
    /// A vCPU whose struct (when registered) lives at `gpa` in `mem`.
    pub fn new(mem: SimMemory, gpa: u64, lazy_advertised: bool) -> Self {
        let clock = VirtualClock::default();
        let timer = FakeTimer::default();
        let irq = RecordingIrq::new(clock.clone());
        let host = Rc::new(RefCell::new(TscDeadlineTimer::new(
            mem.clone(),
            timer.clone(),
            clock.clone(),
            irq.clone(),
            Config { lazy_advertised },
        )));
        let guest = DeadlineSetter::new(TrapBridge::new(host.clone()));
        SimVcpu {
            clock,
            timer,
            irq,
            host,
            guest,
            mem,
            gpa,
            kicks: 0,
        }
    }

    /// The virtual guest TSC.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The guest programs deadline `t` through the real setter.
    pub fn write_deadline(&mut self, t: u64) -> WriteOutcome {
        self.guest.set_next_deadline(t)
    }

    /// The guest registers its struct. Returns the #GP, if the host raised one.
    pub fn register(&mut self) -> Result<(), Error> {
        self.guest.reset();
        let faults = self.guest.msr().faults();
        self.guest
            .register(MemShared::new(self.mem.clone(), self.gpa), self.gpa)
            .expect("simulator struct address is aligned");
        if self.guest.msr().faults() != faults {
            self.guest.reset();
            return Err(self.guest.msr().last_fault().expect("fault recorded"));
        }
        Ok(())
    }

    /// The guest unregisters.
    pub fn unregister(&mut self) {
        self.guest.unregister();
    }

    /// Whether the guest believes it is registered.
    pub fn registered(&self) -> bool {
        self.guest.shared().is_some()
    }

    /// The guest's view of `armed` (0 when not registered).
    pub fn guest_armed(&self) -> u64 {
        self.guest.shared().map_or(0, MemShared::armed)
    }

    /// A raw WRMSR from the guest, bypassing the setter (hostile guests).
    pub fn raw_msr_write(&mut self, index: u32, value: u64) -> Result<(), Error> {
        self.host.borrow_mut().write_msr(index, value)
    }

    /// A raw RDMSR from the guest.
    pub fn raw_msr_read(&self, index: u32) -> Result<u64, Error> {
        self.host.borrow().read_msr(index)
    }

    /// The guest writes an arbitrary value at `offset` (0..64, rounded down
    /// to 8) of its struct (hostile guests).
    pub fn scribble(&mut self, offset: u64, value: u64) {
        let off = (offset % 64) & !7;
        let _ = self.mem.write_obj(value, GuestAddress(self.gpa + off));
    }

    /// The LVT timer register changed.
    pub fn set_lvt(&mut self, raw: u32) {
        self.host.borrow_mut().set_lvt_timer(raw);
    }

    /// INIT/RESET of the vCPU: both sides forget the registration.
    pub fn reset(&mut self) {
        self.host.borrow_mut().reset();
        self.guest.reset();
    }

    /// Delivers host timer expiries that are due now; returns how many
    /// kicks ran.
    pub fn expire_due(&mut self) -> u64 {
        let mut kicks = 0;
        while kicks < crate::MAX_KICKS_PER_ADVANCE && self.timer.take_expired(self.clock.now()) {
            self.host.borrow_mut().kick();
            kicks += 1;
        }
        self.kicks += kicks;
        kicks
    }

    /// A host timer expiry that arrives although the timer is not due (a
    /// stray or early wake-up). Returns the kick's outcome.
    pub fn stray_expiry(&mut self) -> KickOutcome {
        self.timer.force_expire();
        self.kicks += 1;
        self.host.borrow_mut().kick()
    }

    /// Advances time by `delta`, delivering each host expiry on time.
    /// Returns how many kicks ran.
    pub fn advance(&mut self, delta: u64) -> u64 {
        let target = self.clock.now().saturating_add(delta);
        let mut kicks = 0;
        while kicks < crate::MAX_KICKS_PER_ADVANCE {
            match self.timer.deadline() {
                Some(d) if d <= target => {
                    self.clock.set(d);
                    kicks += self.expire_due();
                }
                _ => break,
            }
        }
        self.clock.set(target);
        kicks
    }

    /// Advances time by `delta` without delivering expiries (the host is
    /// late); a later [`expire_due`](Self::expire_due) delivers them.
    pub fn advance_late(&mut self, delta: u64) {
        self.clock.advance(delta);
    }

    /// Snapshots the host timer (through its serialized form) and restores
    /// it into a fresh instance with a fresh host timer over the same memory.
    pub fn snapshot_restore(&mut self) -> Result<(), Error> {
        let state = self.host.borrow().state();
        let text = serde_json::to_string(&state).expect("state serializes");
        let state: TimerState = serde_json::from_str(&text).expect("state deserializes");
        let timer = FakeTimer::default();
        let restored = TscDeadlineTimer::from_state(
            self.mem.clone(),
            timer.clone(),
            self.clock.clone(),
            self.irq.clone(),
            &state,
        )?;
        self.timer = timer;
        *self.host.borrow_mut() = restored;
        Ok(())
    }

    /// The host timer.
    pub fn host(&self) -> Ref<'_, SimHost> {
        self.host.borrow()
    }

    /// The guest setter.
    pub fn guest(&self) -> &DeadlineSetter<MemShared, TrapBridge> {
        &self.guest
    }

    /// The fake host timer.
    pub fn timer(&self) -> &FakeTimer {
        &self.timer
    }

    /// Interrupts injected so far.
    pub fn interrupts(&self) -> Vec<Interrupt> {
        self.irq.log()
    }

    /// Kicks delivered so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// The struct's `(armed, pending)` in guest memory.
    pub fn shared_fields(&self) -> (u64, u64) {
        let rd = |off| {
            self.mem
                .read_obj::<u64>(GuestAddress(self.gpa + off))
                .unwrap_or(0)
        };
        (rd(ARMED_OFFSET), rd(PENDING_OFFSET))
    }

    /// Checks the host's internal consistency; with `honest`, also that the
    /// guest-visible `armed` is what the host published.
    pub fn check_invariants(&self, honest: bool) -> Result<(), String> {
        let host = self.host.borrow();
        let d = host.deadline();
        match (d, self.timer.deadline()) {
            (0, None) => {}
            (d, Some(t)) if d == t && d != 0 => {}
            (d, t) => return Err(format!("host deadline {d} but host timer {t:?}")),
        }
        if host.is_published() && !host.registration().is_enabled() {
            return Err("published without a registration".into());
        }
        if honest && host.registration().is_enabled() {
            let armed = self.shared_fields().0;
            let want = if host.is_published() { d } else { 0 };
            if armed != want {
                return Err(format!("armed in memory {armed}, host published {want}"));
            }
        }
        Ok(())
    }
}
