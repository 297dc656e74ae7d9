//! Host side of the paravirtual *lazy TSC deadline* timer.
//!
//! [`TscDeadlineTimer`] emulates one vCPU's LAPIC timer in TSC-deadline mode
//! (`IA32_TSC_DEADLINE`, MSR 0x6e0) for a VMM that routes that MSR to
//! userspace, and implements the lazy extension registered through
//! `MSR_KVM_LAZY_TSCDEADLINE`. It is generic, in the style of the rust-vmm
//! devices, over:
//! - the guest memory ([`SharedMemory`], implemented for every
//!   [`vm_memory::GuestAddressSpace`]), where it publishes `armed` and reads
//!   `pending` with atomic accesses;
//! - a [`HostTimer`] that fires at a guest-TSC deadline;
//! - a [`GuestClock`] that reads the guest TSC;
//! - an [`InterruptSink`] that raises the LAPIC timer interrupt.
//!
//! The VMM calls [`TscDeadlineTimer::write_msr`] / [`read_msr`] for MSR
//! exits (an `Err` becomes #GP), [`kick`] when the host timer expires (from
//! any thread: wrap the timer in a mutex), [`set_lvt_timer`] when the LVT
//! timer register changes, and [`reset`] on INIT/RESET.
//!
//! [`read_msr`]: TscDeadlineTimer::read_msr
//! [`kick`]: TscDeadlineTimer::kick
//! [`set_lvt_timer`]: TscDeadlineTimer::set_lvt_timer
//! [`reset`]: TscDeadlineTimer::reset
//!
//! ```
//! use std::cell::Cell;
//! use std::rc::Rc;
//! use lazy_tscdeadline_host::{
//!     Config, GuestClock, HostTimer, InterruptSink, KickOutcome, LvtTimer, TscDeadlineTimer,
//! };
//! use lazy_tscdeadline_abi::{LazyTscDeadline, MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//!
//! #[derive(Clone, Default)]
//! struct Clock(Rc<Cell<u64>>);
//! impl GuestClock for Clock {
//!     fn now(&self) -> u64 { self.0.get() }
//! }
//! #[derive(Default)]
//! struct Timer(Option<u64>);
//! impl HostTimer for Timer {
//!     fn arm(&mut self, deadline: u64) { self.0 = Some(deadline) }
//!     fn disarm(&mut self) { self.0 = None }
//! }
//! #[derive(Default)]
//! struct Irq(Vec<u8>);
//! impl InterruptSink for Irq {
//!     fn inject(&mut self, vector: u8) { self.0.push(vector) }
//! }
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
//! let clock = Clock::default();
//! let mut t = TscDeadlineTimer::new(&mem, Timer::default(), clock.clone(), Irq::default(),
//!     Config { lazy_advertised: true });
//! t.set_lvt_timer(LvtTimer::tsc_deadline(0xec).raw());
//!
//! // The guest registers its struct at 0x1000, then traps a deadline.
//! t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap();
//! t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap();
//! assert_eq!(mem.read_obj::<LazyTscDeadline>(GuestAddress(0x1000)).unwrap().armed, 100);
//!
//! // Without an exit it pushes the deadline later...
//! mem.write_obj(250u64, GuestAddress(0x1008)).unwrap();
//! // ...so when the host timer fires at 100, it is re-armed, no interrupt.
//! clock.0.set(100);
//! assert_eq!(t.kick(), KickOutcome::Rearmed(250));
//! assert!(t.interrupts().0.is_empty());
//! clock.0.set(250);
//! assert_eq!(t.kick(), KickOutcome::Injected);
//! assert_eq!(t.interrupts().0, vec![0xec]);
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod error;
mod lvt;
mod shared;
mod state;
mod timer;
mod traits;

pub use error::Error;
pub use lvt::{LvtTimer, TimerMode};
pub use shared::SharedMemory;
pub use state::{Counters, TimerState, STATE_VERSION};
pub use timer::{Config, KickOutcome, TscDeadlineTimer, MAX_KICK_ROUNDS};
pub use traits::{GuestClock, HostTimer, InterruptSink};

pub use lazy_tscdeadline_abi as abi;

/// The crate README's example, compiled and run as a doc test. The README
/// lies inside the package, so the test also runs in the packaged crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
