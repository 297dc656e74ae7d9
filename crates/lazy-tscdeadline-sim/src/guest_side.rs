//! The guest's side of the simulated vCPU: shared fields in guest memory and
//! the MSR "exit" into the host.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{fence, Ordering};

use lazy_tscdeadline_abi::{ARMED_OFFSET, PENDING_OFFSET};
use lazy_tscdeadline_guest::{MsrWriter, SharedFields};
use lazy_tscdeadline_host::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::vcpu::{SimHost, SimMemory};

/// The guest's [`SharedFields`] over the simulated guest memory, with the
/// same atomic accesses a guest kernel makes.
#[derive(Clone, Debug)]
pub struct MemShared {
    mem: SimMemory,
    gpa: u64,
}

impl MemShared {
    /// The struct at `gpa` in `mem`.
    pub fn new(mem: SimMemory, gpa: u64) -> Self {
        MemShared { mem, gpa }
    }
    /// The `armed` field as the guest sees it (0 if unreadable).
    pub fn armed(&self) -> u64 {
        self.mem
            .load(GuestAddress(self.gpa + ARMED_OFFSET), Ordering::Relaxed)
            .unwrap_or(0)
    }
}

impl SharedFields for MemShared {
    fn store_pending(&self, deadline: u64) {
        // A guest store to its own RAM; the struct was checked in range.
        let _ = self.mem.store(
            deadline,
            GuestAddress(self.gpa + PENDING_OFFSET),
            Ordering::Relaxed,
        );
    }
    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
    fn load_armed(&self) -> u64 {
        self.armed()
    }
}

/// The guest's [`MsrWriter`]: a WRMSR exit handled synchronously by the host,
/// remembering the last #GP.
#[derive(Debug)]
pub struct TrapBridge {
    host: Rc<RefCell<SimHost>>,
    last_fault: Option<Error>,
    faults: u64,
}

impl TrapBridge {
    /// A bridge into `host`.
    pub fn new(host: Rc<RefCell<SimHost>>) -> Self {
        TrapBridge {
            host,
            last_fault: None,
            faults: 0,
        }
    }
    /// The #GP the last faulting write raised, if any.
    pub fn last_fault(&self) -> Option<Error> {
        self.last_fault
    }
    /// Number of writes answered with #GP.
    pub fn faults(&self) -> u64 {
        self.faults
    }
}

impl MsrWriter for TrapBridge {
    fn write_msr(&mut self, index: u32, value: u64) {
        if let Err(e) = self.host.borrow_mut().write_msr(index, value) {
            self.last_fault = Some(e);
            self.faults += 1;
        }
    }
}
