//! Collaborators of the timer for the integration tests that drive time by
//! hand: a settable guest clock, a host timer that records the deadline it
//! is armed for, and an interrupt sink that records when it was raised.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;

use lazy_tscdeadline_host::{GuestClock, HostTimer, InterruptSink};

/// A guest clock the test sets.
#[derive(Clone, Default)]
pub struct Clock(pub Rc<Cell<u64>>);
impl GuestClock for Clock {
    fn now(&self) -> u64 {
        self.0.get()
    }
}

/// A host timer that holds the deadline it is armed for.
#[derive(Clone, Default)]
pub struct Timer(pub Rc<Cell<Option<u64>>>);
impl HostTimer for Timer {
    type Error = Infallible;
    fn arm(&mut self, d: u64) -> Result<(), Infallible> {
        self.0.set(Some(d));
        Ok(())
    }
    fn disarm(&mut self) -> Result<(), Infallible> {
        self.0.set(None);
        Ok(())
    }
}

/// Records the guest TSC of every injection.
#[derive(Clone, Default)]
pub struct Irq(pub Rc<RefCell<Vec<u64>>>, pub Clock);
impl InterruptSink for Irq {
    type Error = Infallible;
    fn inject(&mut self, _: u8) -> Result<(), Infallible> {
        self.0.borrow_mut().push(self.1.now());
        Ok(())
    }
}
