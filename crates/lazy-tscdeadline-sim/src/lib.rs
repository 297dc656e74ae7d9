//! Deterministic simulator of the lazy TSC deadline protocol.
//!
//! It runs the real guest crate ([`lazy_tscdeadline_guest::DeadlineSetter`])
//! and the real host crate ([`lazy_tscdeadline_host::TscDeadlineTimer`])
//! against one [`GuestMemoryMmap`](vm_memory::GuestMemoryMmap), with a
//! virtual guest TSC ([`VirtualClock`]), a fake one-shot host timer
//! ([`FakeTimer`]) and an interrupt sink that records what fires and when
//! ([`RecordingIrq`]). [`EagerModel`] is the reference: plain
//! `IA32_TSC_DEADLINE` semantics with no protocol at all.
//!
//! [`Scenario`] replays a list of [`Op`]s on a [`SimVcpu`] (lazy or eager
//! guest) and on the reference model, and returns everything the property
//! tests, the fuzz targets and the benchmarks compare.
//!
//! ```
//! use lazy_tscdeadline_sim::{GuestKind, Op, Scenario};
//!
//! let ops = [Op::LvtDeadline, Op::Register, Op::WriteIn(100), Op::WriteLater(50), Op::Advance(1000)];
//! let lazy = Scenario::run(GuestKind::Lazy, &ops).unwrap();
//! // One trap for the first deadline; the push later stayed in memory.
//! assert_eq!(lazy.host_trapped_writes, 1);
//! // It fired once, at the pushed deadline, exactly as the reference says.
//! assert_eq!(lazy.interrupts, lazy.reference);
//! assert_eq!(lazy.interrupts.len(), 1);
//! assert_eq!(lazy.interrupts[0].time, 150);
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod devices;
mod guest_side;
mod reference;
mod scenario;
mod vcpu;

pub use devices::{FakeTimer, Interrupt, RecordingIrq, VirtualClock};
pub use guest_side::{MemShared, TrapBridge};
pub use reference::EagerModel;
pub use scenario::{GuestKind, Op, Outcome, Scenario, ScenarioError, MAX_KICKS_PER_ADVANCE};
pub use vcpu::{HostCell, Policy, SimHost, SimMemory, SimVcpu, TIMER_VECTOR};
