//! The guest's side of the simulated vCPU: shared fields in guest memory and
//! the MSR "exit" into the host.

use std::sync::atomic::{fence, Ordering};

use lazy_tscdeadline_abi::{ARMED_OFFSET, FLAGS_OFFSET, PENDING_OFFSET};
use lazy_tscdeadline_guest::{MsrWriter, SharedFields};
use lazy_tscdeadline_host::WriteMsrError;
use vm_memory::{Bytes, GuestAddress};

use crate::vcpu::{HostCell, SimMemory};

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
    fn store_flags(&self, flags: u32) {
        let _ = self.mem.store(
            flags,
            GuestAddress(self.gpa + FLAGS_OFFSET),
            Ordering::Relaxed,
        );
    }
    fn load_flags(&self) -> u32 {
        self.mem
            .load(GuestAddress(self.gpa + FLAGS_OFFSET), Ordering::Relaxed)
            .unwrap_or(0)
    }
}

/// The guest's [`MsrWriter`]: a WRMSR exit handled synchronously by the host,
/// remembering the last #GP.
#[derive(Debug)]
pub struct TrapBridge {
    host: HostCell,
    last_fault: Option<WriteMsrError>,
}

impl TrapBridge {
    /// A bridge into `host`.
    pub fn new(host: HostCell) -> Self {
        TrapBridge {
            host,
            last_fault: None,
        }
    }
    /// Takes the error of the last faulting write, if any.
    pub fn take_fault(&mut self) -> Option<WriteMsrError> {
        self.last_fault.take()
    }
}

impl MsrWriter for TrapBridge {
    fn write_msr(&mut self, index: u32, value: u64) {
        if let Err(e) = self.host.write_msr(index, value) {
            self.last_fault = Some(e);
        }
    }
}
