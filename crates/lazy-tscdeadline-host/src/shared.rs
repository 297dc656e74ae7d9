//! The host's accesses to the registered struct in guest memory.
//!
//! Only four operations exist: checking that a struct lies in guest RAM, a
//! store of `armed` followed by a full fence, a load of `pending`, and (at
//! registration only) a store of `flags`. The host never keeps a pointer
//! into guest memory and never reads `armed` or `flags` back. [`SharedMemory`] names those operations so that the timer can run
//! over vm-memory (every [`GuestAddressSpace`]) in a VMM and over model
//! atomics in a model checker, with the same protocol code.

use std::sync::atomic::{fence, Ordering};

use lazy_tscdeadline_abi::{ARMED_OFFSET, FLAGS_OFFSET, LAZY_TSCDEADLINE_SIZE, PENDING_OFFSET};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory, Permissions};

/// Guest memory as the timer uses it: the two fields of a registered struct.
///
/// It is implemented for every vm-memory [`GuestAddressSpace`]
/// (`&GuestMemoryMmap`, `Arc<GuestMemoryMmap>`, `GuestMemoryAtomic`), which
/// is what a VMM passes. Implement it yourself only to run the timer over
/// something else, such as the loom atomics of a model checker.
///
/// `gpa` is always the guest-physical address of a struct that
/// [`struct_in_ram`](Self::struct_in_ram) accepted; the accesses may still
/// fail if the memory map changed since, which the timer handles.
pub trait SharedMemory {
    /// Whether the [`LAZY_TSCDEADLINE_SIZE`] bytes at `gpa` are guest RAM
    /// that is both readable and writable.
    fn struct_in_ram(&self, gpa: u64) -> bool;

    /// Stores `armed` into the struct at `gpa` (one atomic 64-bit store),
    /// then issues a full (store-load) fence so that no later load of
    /// `pending` is satisfied before the store is visible to the guest.
    /// Returns `false` if the memory could not be accessed (the fence is
    /// issued anyway).
    fn publish_armed(&self, gpa: u64, armed: u64) -> bool;

    /// Loads `pending` from the struct at `gpa` (one atomic 64-bit load), or
    /// `None` if the memory could not be accessed.
    fn load_pending(&self, gpa: u64) -> Option<u64>;

    /// Stores `flags` into the struct at `gpa` (one 32-bit store). Called
    /// only while the timer handles an enabling registration WRMSR, i.e.
    /// with the vCPU stopped. Returns `false` if the memory could not be
    /// accessed.
    fn write_flags(&self, gpa: u64, flags: u32) -> bool;
}

impl<M: GuestAddressSpace> SharedMemory for M {
    fn struct_in_ram(&self, gpa: u64) -> bool {
        self.memory().check_range(
            GuestAddress(gpa),
            LAZY_TSCDEADLINE_SIZE,
            Permissions::ReadWrite,
        )
    }

    fn publish_armed(&self, gpa: u64, armed: u64) -> bool {
        // `checked_add`: `gpa` was validated, but stay total on any input.
        let ok = gpa.checked_add(ARMED_OFFSET).is_some_and(|a| {
            self.memory()
                .store(armed, GuestAddress(a), Ordering::Relaxed)
                .is_ok()
        });
        fence(Ordering::SeqCst);
        ok
    }

    fn load_pending(&self, gpa: u64) -> Option<u64> {
        let a = gpa.checked_add(PENDING_OFFSET)?;
        self.memory().load(GuestAddress(a), Ordering::Relaxed).ok()
    }

    fn write_flags(&self, gpa: u64, flags: u32) -> bool {
        gpa.checked_add(FLAGS_OFFSET).is_some_and(|a| {
            self.memory()
                .store(flags, GuestAddress(a), Ordering::Relaxed)
                .is_ok()
        })
    }
}

/// The location of a registered struct, validated against guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SharedArea {
    gpa: u64,
}

impl SharedArea {
    /// Validates that the struct at `gpa` is readable and writable guest
    /// RAM.
    pub(crate) fn new<M: SharedMemory>(mem: &M, gpa: u64) -> Option<Self> {
        mem.struct_in_ram(gpa).then_some(SharedArea { gpa })
    }

    /// Publishes `armed` and orders it before any later load of `pending`
    /// (the host half of the store/fence/load handshake).
    pub(crate) fn publish_armed<M: SharedMemory>(&self, mem: &M, armed: u64) -> bool {
        mem.publish_armed(self.gpa, armed)
    }

    /// Writes `flags` (registration only).
    pub(crate) fn write_flags<M: SharedMemory>(&self, mem: &M, flags: u32) -> bool {
        mem.write_flags(self.gpa, flags)
    }

    /// Loads the guest's `pending`.
    pub(crate) fn load_pending<M: SharedMemory>(&self, mem: &M) -> Option<u64> {
        mem.load_pending(self.gpa)
    }
}
