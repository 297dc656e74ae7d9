//! Fake devices: virtual TSC, one-shot host timer, recording interrupt sink.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use lazy_tscdeadline_host::{GuestClock, HostTimer, InterruptSink};

/// A virtual guest TSC, shared by every part of one simulated vCPU.
#[derive(Clone, Debug, Default)]
pub struct VirtualClock(Rc<Cell<u64>>);

impl VirtualClock {
    /// Sets the time; it never goes backwards.
    pub fn set(&self, t: u64) {
        self.0.set(self.0.get().max(t));
    }
    /// Advances the time by `d` (saturating).
    pub fn advance(&self, d: u64) {
        self.0.set(self.0.get().saturating_add(d));
    }
}

impl GuestClock for VirtualClock {
    fn now(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Debug, Default)]
struct TimerInner {
    deadline: Option<u64>,
    arms: u64,
    disarms: u64,
}

/// A one-shot host timer. The simulator polls it with
/// [`FakeTimer::take_expired`] and then kicks the host.
#[derive(Clone, Debug, Default)]
pub struct FakeTimer(Rc<RefCell<TimerInner>>);

impl FakeTimer {
    /// The armed deadline, if any.
    pub fn deadline(&self) -> Option<u64> {
        self.0.borrow().deadline
    }
    /// If armed for a deadline at or before `now`, expires it (disarms) and
    /// returns true.
    pub fn take_expired(&self, now: u64) -> bool {
        let mut t = self.0.borrow_mut();
        match t.deadline {
            Some(d) if d <= now => {
                t.deadline = None;
                true
            }
            _ => false,
        }
    }
    /// Expires the timer whatever its deadline (an early or stray host
    /// expiry); returns whether it was armed.
    pub fn force_expire(&self) -> bool {
        self.0.borrow_mut().deadline.take().is_some()
    }
    /// `(arms, disarms)` so far.
    pub fn calls(&self) -> (u64, u64) {
        let t = self.0.borrow();
        (t.arms, t.disarms)
    }
}

impl HostTimer for FakeTimer {
    fn arm(&mut self, deadline: u64) {
        let mut t = self.0.borrow_mut();
        t.deadline = Some(deadline);
        t.arms += 1;
    }
    fn disarm(&mut self) {
        let mut t = self.0.borrow_mut();
        t.deadline = None;
        t.disarms += 1;
    }
}

/// One delivered timer interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Virtual guest TSC at injection.
    pub time: u64,
    /// Vector.
    pub vector: u8,
}

/// An interrupt sink that records each injection with the virtual time.
#[derive(Clone, Debug)]
pub struct RecordingIrq {
    clock: VirtualClock,
    log: Rc<RefCell<Vec<Interrupt>>>,
}

impl RecordingIrq {
    /// A sink stamping injections with `clock`.
    pub fn new(clock: VirtualClock) -> Self {
        RecordingIrq {
            clock,
            log: Rc::default(),
        }
    }
    /// Everything injected so far.
    pub fn log(&self) -> Vec<Interrupt> {
        self.log.borrow().clone()
    }
    /// How many injections so far.
    pub fn count(&self) -> usize {
        self.log.borrow().len()
    }
}

impl InterruptSink for RecordingIrq {
    fn inject(&mut self, vector: u8) {
        self.log.borrow_mut().push(Interrupt {
            time: self.clock.now(),
            vector,
        });
    }
}
