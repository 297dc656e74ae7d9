//! Access to the shared `armed` and `pending` fields from the guest.

use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use lazy_tscdeadline_abi::LazyTscDeadline;

/// The guest's view of its registered struct: the three steps of the
/// protocol's fast path.
///
/// Implementations must make `store_pending`, `full_fence`, `load_armed`
/// (in that program order) behave as a store, a store-load barrier and a
/// load: the load may not be satisfied before the store is globally visible.
/// [`AtomicSharedFields`] does this with relaxed 64-bit atomics and a
/// sequentially consistent fence (`mov`; `mfence`; `mov` on x86-64). Other
/// implementations exist for model checking.
pub trait SharedFields {
    /// Stores the guest's latest deadline into `pending`.
    fn store_pending(&self, deadline: u64);
    /// A full (store-load) memory barrier.
    fn full_fence(&self);
    /// Loads the host-published `armed` deadline.
    fn load_armed(&self) -> u64;

    /// Stores `flags` (the guest zeroes it before registering: a host built
    /// for the RFC never writes it). The default does nothing, for
    /// implementations without access to `flags`; their
    /// [`load_flags`](Self::load_flags) must then return 0.
    fn store_flags(&self, flags: u32) {
        let _ = flags;
    }

    /// Loads `flags`, which the host writes while it handles the
    /// registration WRMSR. The default returns 0: no extension is used.
    fn load_flags(&self) -> u32 {
        0
    }
}

/// [`SharedFields`] over a [`LazyTscDeadline`] in the guest's own memory,
/// with 64-bit atomic accesses and a `SeqCst` fence.
#[derive(Debug)]
pub struct AtomicSharedFields {
    ptr: NonNull<LazyTscDeadline>,
}

// SAFETY: the struct is only ever accessed through atomic operations, which
// are safe to perform from any thread.
unsafe impl Send for AtomicSharedFields {}
// SAFETY: as above; all methods take `&self` and use atomics.
unsafe impl Sync for AtomicSharedFields {}

impl AtomicSharedFields {
    /// Wraps the struct at `area`.
    ///
    /// # Safety
    /// `area` must point to a live, 64-byte aligned [`LazyTscDeadline`] that
    /// stays valid for as long as the returned value exists, and whose
    /// `armed`, `pending` and `flags` fields are, meanwhile, accessed only with
    /// atomic (or, by the host, equivalent single-copy atomic) operations.
    pub unsafe fn new(area: *mut LazyTscDeadline) -> Self {
        AtomicSharedFields {
            // SAFETY: the caller promises a valid pointer, hence non-null.
            ptr: unsafe { NonNull::new_unchecked(area) },
        }
    }

    fn field(&self, pending: bool) -> &AtomicU64 {
        let base = self.ptr.as_ptr();
        // SAFETY: `new`'s contract: the struct is live and aligned (so each
        // u64 field is 8-byte aligned), and only accessed atomically.
        unsafe {
            let p = if pending {
                core::ptr::addr_of_mut!((*base).pending)
            } else {
                core::ptr::addr_of_mut!((*base).armed)
            };
            AtomicU64::from_ptr(p)
        }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: `new`'s contract: the struct is live and aligned (so
        // `flags`, at offset 16, is 4-byte aligned), and only accessed
        // atomically.
        unsafe { AtomicU32::from_ptr(core::ptr::addr_of_mut!((*self.ptr.as_ptr()).flags)) }
    }

    /// Loads `pending` (the guest's own last store).
    pub fn load_pending(&self) -> u64 {
        self.field(true).load(Ordering::Relaxed)
    }

    /// Zeroes `armed`, `pending` and `flags`, as a guest does before
    /// registering.
    pub fn reset(&self) {
        self.field(false).store(0, Ordering::Relaxed);
        self.field(true).store(0, Ordering::Relaxed);
        self.flags().store(0, Ordering::Relaxed);
    }
}

impl SharedFields for AtomicSharedFields {
    #[inline(always)]
    fn store_pending(&self, deadline: u64) {
        self.field(true).store(deadline, Ordering::Relaxed);
    }

    #[inline(always)]
    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }

    #[inline(always)]
    fn load_armed(&self) -> u64 {
        self.field(false).load(Ordering::Relaxed)
    }

    fn store_flags(&self, flags: u32) {
        self.flags().store(flags, Ordering::Relaxed);
    }

    fn load_flags(&self) -> u32 {
        self.flags().load(Ordering::Relaxed)
    }
}
