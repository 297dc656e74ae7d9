//! Guest side of the paravirtual *lazy TSC deadline* timer.
//!
//! A guest kernel calls [`DeadlineSetter::set_next_deadline`] wherever it
//! would write `IA32_TSC_DEADLINE`. Once the per-vCPU
//! [`LazyTscDeadline`](lazy_tscdeadline_abi::LazyTscDeadline) is registered,
//! the setter stores the new deadline into `pending`, issues a full fence and
//! loads `armed`; it writes the MSR (a VM exit) only when the host has no
//! timer (`armed == 0`) or the new deadline is earlier than the armed one.
//! Otherwise the host's earlier timer will find the new deadline in
//! `pending` when it fires.
//!
//! The crate is `#![no_std]` and generic: [`MsrWriter`] writes MSRs and
//! [`SharedFields`] reaches the two shared fields. [`AtomicSharedFields`]
//! implements the latter over any properly aligned struct in memory; with
//! the `x86_64` feature (on x86-64 targets), `x86::X86Msr` implements the
//! former with `wrmsr`.
//!
//! # Calling context
//! Like any clock-event programming, `set_next_deadline` must run with local
//! interrupts disabled on the vCPU that owns the struct. The host may
//! deliver the timer interrupt for a deadline that this very call is about to
//! trap for; with interrupts disabled both deliveries land in the same LAPIC
//! IRR bit and the guest sees one interrupt (see `docs/PROTOCOL.md`).
//!
//! ```
//! # extern crate std;
//! use std::boxed::Box;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use lazy_tscdeadline_abi::{LazyTscDeadline, MSR_IA32_TSC_DEADLINE};
//! use lazy_tscdeadline_guest::{AtomicSharedFields, DeadlineSetter, MsrWriter, WriteOutcome};
//!
//! /// Records MSR writes instead of executing `wrmsr`.
//! #[derive(Default)]
//! struct Recorder(Vec<(u32, u64)>);
//! impl MsrWriter for Recorder {
//!     fn write_msr(&mut self, index: u32, value: u64) {
//!         self.0.push((index, value));
//!     }
//! }
//!
//! let area: *mut LazyTscDeadline = Box::leak(Box::default());
//! // SAFETY: `area` is a leaked, hence live, aligned struct, and below both
//! // `shared` and `host_armed` access its fields only atomically.
//! let shared = unsafe { AtomicSharedFields::new(area) };
//! // The host's view of `armed` (in a VM: the host's mapping of the struct).
//! // SAFETY: as above; `armed` is 8-byte aligned.
//! let host_armed = unsafe { AtomicU64::from_ptr(core::ptr::addr_of_mut!((*area).armed)) };
//! let mut setter = DeadlineSetter::new(Recorder::default());
//! setter.register(shared, 0x9000).unwrap();
//!
//! // Nothing armed yet: the write traps.
//! assert_eq!(setter.set_next_deadline(1_000), WriteOutcome::Trapped);
//! // The host arms its timer and publishes it, as its UPDATE handler does.
//! host_armed.store(1_000, Ordering::SeqCst);
//! // A later deadline is left to the host's timer: no exit.
//! assert_eq!(setter.set_next_deadline(5_000), WriteOutcome::Deferred);
//! // An earlier one must trap.
//! assert_eq!(setter.set_next_deadline(500), WriteOutcome::Trapped);
//! assert_eq!(setter.stats().traps, 2);
//! assert_eq!(setter.msr().0.last(), Some(&(MSR_IA32_TSC_DEADLINE, 500)));
//! ```
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod setter;
mod shared;
#[cfg(all(feature = "x86_64", target_arch = "x86_64"))]
pub mod x86;

pub use setter::{
    disable_value, must_trap, must_trap_with, registration_value, DeadlineSetter, GuestStats,
    WriteOutcome,
};
pub use shared::{AtomicSharedFields, SharedFields};

/// Writes a model-specific register of the current CPU.
pub trait MsrWriter {
    /// Writes `value` to MSR `index` (on x86: `wrmsr`, a VM exit for the
    /// MSRs this crate writes).
    fn write_msr(&mut self, index: u32, value: u64);
}

impl<W: MsrWriter + ?Sized> MsrWriter for &mut W {
    fn write_msr(&mut self, index: u32, value: u64) {
        (**self).write_msr(index, value)
    }
}

/// The crate README's example, compiled and run as a doc test (also in the
/// packaged crate, which contains the README).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
