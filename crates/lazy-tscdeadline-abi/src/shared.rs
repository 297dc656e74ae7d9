//! The per-vCPU struct shared between guest and host.

use core::mem::{align_of, offset_of, size_of};

/// The per-vCPU struct a guest registers through
/// [`MSR_KVM_LAZY_TSCDEADLINE`](crate::MSR_KVM_LAZY_TSCDEADLINE).
///
/// Ownership of the fields is split:
/// - `armed` is written only by the host: the guest-TSC deadline the host
///   really has a timer for, or 0 when it has none;
/// - `pending` is written only by the guest: the latest deadline it wants.
///
/// Both sides access the two `u64` fields with single, naturally aligned
/// 64-bit atomic (or volatile) loads and stores; never through a reference to
/// the whole struct while the other side may be writing.
///
/// `flags` is written by the host, and only while it handles a registration
/// (the WRMSR of [`MSR_KVM_LAZY_TSCDEADLINE`](crate::MSR_KVM_LAZY_TSCDEADLINE)
/// that enables this struct): it holds the extensions the host offers, such
/// as [`LAZY_FLAG_EXITLESS_CANCEL`](crate::LAZY_FLAG_EXITLESS_CANCEL). A host
/// built for the RFC never writes it, so a guest zeroes it before
/// registering and reads it after the registration WRMSR returns. A host
/// never reads it. `pad` is reserved: a guest should write it as zero and a
/// host must not interpret it.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LazyTscDeadline {
    /// Deadline the host has a timer armed for (0: none). Host-written.
    pub armed: u64,
    /// Latest deadline the guest wants. Guest-written.
    pub pending: u64,
    /// Extensions the host offers ([`LAZY_FLAG_EXITLESS_CANCEL`](crate::LAZY_FLAG_EXITLESS_CANCEL)).
    /// Host-written at registration only; zero from a host built for the RFC.
    pub flags: u32,
    /// Reserved, zero.
    pub pad: [u32; 11],
}

/// Byte offset of [`LazyTscDeadline::armed`].
pub const ARMED_OFFSET: u64 = offset_of!(LazyTscDeadline, armed) as u64;
/// Byte offset of [`LazyTscDeadline::pending`].
pub const PENDING_OFFSET: u64 = offset_of!(LazyTscDeadline, pending) as u64;
/// Byte offset of [`LazyTscDeadline::flags`].
pub const FLAGS_OFFSET: u64 = offset_of!(LazyTscDeadline, flags) as u64;

const _: () = assert!(size_of::<LazyTscDeadline>() == crate::LAZY_TSCDEADLINE_SIZE);
const _: () = assert!(align_of::<LazyTscDeadline>() == 64);
const _: () = assert!(ARMED_OFFSET == 0);
const _: () = assert!(PENDING_OFFSET == 8);
const _: () = assert!(FLAGS_OFFSET == 16);
const _: () = assert!(offset_of!(LazyTscDeadline, pad) == 20);

// SAFETY: `LazyTscDeadline` is `repr(C)`, made only of integers, and has no
// padding bytes (8 + 8 + 4 + 44 = 64, asserted above), so every byte pattern
// is a valid value.
#[cfg(feature = "vm-memory")]
unsafe impl vm_memory::ByteValued for LazyTscDeadline {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_all_zero() {
        let s = LazyTscDeadline::default();
        assert_eq!((s.armed, s.pending, s.flags), (0, 0, 0));
        assert!(s.pad.iter().all(|&p| p == 0));
    }

    #[cfg(feature = "vm-memory")]
    #[test]
    fn byte_valued_round_trip() {
        use vm_memory::ByteValued;
        let mut s = LazyTscDeadline::default();
        s.as_mut_slice()[8] = 0x2a;
        assert_eq!(s.pending, 0x2a);
        assert_eq!(s.as_slice().len(), 64);
    }
}
