//! Fake devices: virtual TSC, one-shot host timer, recording interrupt sink.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
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

/// A one-shot host timer. The simulator polls it with
/// [`FakeTimer::take_expired`] and then kicks the host.
#[derive(Clone, Debug, Default)]
pub struct FakeTimer(Rc<Cell<Option<u64>>>);

impl FakeTimer {
    /// The armed deadline, if any.
    pub fn deadline(&self) -> Option<u64> {
        self.0.get()
    }
    /// If armed for a deadline at or before `now`, expires it (disarms) and
    /// returns true.
    pub fn take_expired(&self, now: u64) -> bool {
        match self.0.get() {
            Some(d) if d <= now => {
                self.0.set(None);
                true
            }
            _ => false,
        }
    }
    /// Expires the timer whatever its deadline (an early or stray host
    /// expiry); returns whether it was armed.
    pub fn force_expire(&self) -> bool {
        self.0.take().is_some()
    }
}

impl HostTimer for FakeTimer {
    type Error = Infallible;
    fn arm(&mut self, deadline: u64) -> Result<(), Infallible> {
        self.0.set(Some(deadline));
        Ok(())
    }
    fn disarm(&mut self) -> Result<(), Infallible> {
        self.0.set(None);
        Ok(())
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
}

impl InterruptSink for RecordingIrq {
    type Error = Infallible;
    fn inject(&mut self, vector: u8) -> Result<(), Infallible> {
        self.log.borrow_mut().push(Interrupt {
            time: self.clock.now(),
            vector,
        });
        Ok(())
    }
}
