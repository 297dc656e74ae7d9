//! The host's accesses to the registered struct in guest memory.
//!
//! Only two accesses exist: a store of `armed` followed by a full fence, and
//! a load of `pending`. Both are single aligned 64-bit atomic accesses
//! through vm-memory; the host never keeps a pointer into guest memory and
//! never reads `armed` back.

use std::sync::atomic::{fence, Ordering};

use lazy_tscdeadline_abi::{ARMED_OFFSET, LAZY_TSCDEADLINE_SIZE, PENDING_OFFSET};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory, Permissions};

/// The location of a registered struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SharedArea {
    gpa: u64,
}

impl SharedArea {
    /// Validates that the 64 bytes at `gpa` are readable and writable guest
    /// RAM.
    pub(crate) fn new<M: GuestAddressSpace>(mem: &M, gpa: u64) -> Option<Self> {
        let ok = mem.memory().check_range(
            GuestAddress(gpa),
            LAZY_TSCDEADLINE_SIZE,
            Permissions::ReadWrite,
        );
        ok.then_some(SharedArea { gpa })
    }

    /// Publishes `armed` and orders it before any later load of `pending`
    /// (the host half of the store/fence/load handshake).
    pub(crate) fn publish_armed<M: GuestAddressSpace>(&self, mem: &M, armed: u64) -> bool {
        let ok = mem
            .memory()
            .store(
                armed,
                GuestAddress(self.gpa + ARMED_OFFSET),
                Ordering::Relaxed,
            )
            .is_ok();
        fence(Ordering::SeqCst);
        ok
    }

    /// Loads the guest's `pending`.
    pub(crate) fn load_pending<M: GuestAddressSpace>(&self, mem: &M) -> Option<u64> {
        mem.memory()
            .load(GuestAddress(self.gpa + PENDING_OFFSET), Ordering::Relaxed)
            .ok()
    }
}
