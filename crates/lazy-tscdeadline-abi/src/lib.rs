//! The guest/host ABI of the paravirtual *lazy TSC deadline* timer.
//!
//! A guest that finds [`KVM_FEATURE_LAZY_TSCDEADLINE`] set in CPUID leaf
//! [`KVM_CPUID_FEATURES`] (EAX) may register one [`LazyTscDeadline`] per vCPU
//! by writing its guest-physical address, with [`KVM_MSR_ENABLED`] set, to
//! [`MSR_KVM_LAZY_TSCDEADLINE`]. From then on it writes `IA32_TSC_DEADLINE`
//! ([`MSR_IA32_TSC_DEADLINE`]) only when the host has no earlier timer armed.
//!
//! The numbers and the layout are those of the 2023 KVM RFC ("KVM: x86:
//! introduce pv feature lazy tscdeadline", V3), so a guest built for that RFC
//! works with a host built on this crate and the other way round. The protocol
//! itself is specified in `docs/PROTOCOL.md` of this repository.
//!
//! This crate is `#![no_std]` and has no required dependencies.
//!
//! ```
//! use lazy_tscdeadline_abi::{Registration, MSR_KVM_LAZY_TSCDEADLINE};
//!
//! // The guest placed its per-vCPU struct at guest-physical 0x9000.
//! let reg = Registration::enabled(0x9000).unwrap();
//! let value = reg.to_msr();
//! assert_eq!(value, 0x9001);
//! // The host decodes what the guest wrote to MSR_KVM_LAZY_TSCDEADLINE.
//! assert_eq!(Registration::from_msr(value), Ok(reg));
//! assert_eq!(reg.gpa(), Some(0x9000));
//! # let _ = MSR_KVM_LAZY_TSCDEADLINE;
//! ```
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod registration;
mod shared;

pub use registration::{Registration, RegistrationError};
pub use shared::{LazyTscDeadline, ARMED_OFFSET, FLAGS_OFFSET, PENDING_OFFSET};

/// `IA32_TSC_DEADLINE`: the architectural LAPIC TSC-deadline MSR.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The paravirtual MSR through which a guest registers (or unregisters) its
/// per-vCPU [`LazyTscDeadline`].
pub const MSR_KVM_LAZY_TSCDEADLINE: u32 = 0x4b56_4d09;

/// Bit number, in EAX of CPUID leaf [`KVM_CPUID_FEATURES`], that advertises
/// the lazy TSC deadline feature.
pub const KVM_FEATURE_LAZY_TSCDEADLINE: u32 = 18;

/// CPUID leaf of the KVM paravirtual feature bits.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;

/// Bit 0 of a paravirtual registration MSR value: the registration is enabled.
pub const KVM_MSR_ENABLED: u64 = 1;

/// Bit of [`LazyTscDeadline::flags`]: the host offers *exitless cancel*.
///
/// Written by the host into `flags` while it handles an enabling
/// registration WRMSR, never at any other time; a guest reads `flags` after
/// that WRMSR returns (having zeroed it before, as a host built for the RFC
/// leaves it untouched). When set, a guest may cancel its deadline by
/// storing `pending = 0` without writing `IA32_TSC_DEADLINE`, as long as it
/// loaded a non-zero `armed` after the store (and its full fence): the
/// host's expiry at `armed` treats `pending == 0` as a cancellation (no
/// interrupt, nothing re-armed). When clear, a cancel must trap, as in the
/// RFC. The other bits are reserved (zero).
pub const LAZY_FLAG_EXITLESS_CANCEL: u32 = 1 << 0;

/// Size in bytes of the shared per-vCPU struct.
pub const LAZY_TSCDEADLINE_SIZE: usize = 64;

/// The crate README's example, compiled and run as a doc test (also in the
/// packaged crate, which contains the README).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
