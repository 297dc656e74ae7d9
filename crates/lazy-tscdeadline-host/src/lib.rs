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
//! The VMM creates one timer per vCPU with [`TscDeadlineTimer::new`] (which
//! takes the current LVT timer register), routes the [`HANDLED_MSRS`]
//! (test with [`handles_msr`]) to [`write_msr`] / [`read_msr`], calls
//! [`set_lvt_timer`] whenever the LVT timer register may have changed (the
//! timer follows the architecture: deadline writes are ignored outside
//! TSC-deadline mode), [`kick`] when the host timer expires (from any
//! thread: wrap the timer in a mutex), and [`reset`] on INIT/RESET. For
//! snapshots: [`state`] and [`from_state`], then [`resume`] once the guest
//! TSC is restored.
//!
//! [`write_msr`]: TscDeadlineTimer::write_msr
//! [`read_msr`]: TscDeadlineTimer::read_msr
//! [`kick`]: TscDeadlineTimer::kick
//! [`set_lvt_timer`]: TscDeadlineTimer::set_lvt_timer
//! [`reset`]: TscDeadlineTimer::reset
//! [`state`]: TscDeadlineTimer::state
//! [`from_state`]: TscDeadlineTimer::from_state
//! [`resume`]: TscDeadlineTimer::resume
//!
//! # Errors
//! Each operation returns only what it can fail with (see [`error`]): a
//! [`GuestFault`] is answered with #GP, a [`BackendError`] is a failure of
//! the VMM's own host timer or interrupt injection, `UnknownMsr` is an MSR
//! the VMM should not have routed here, and [`StateError`] is a snapshot
//! that cannot be restored.
//!
//! # Features and versions
//! - `serde` (off by default): `Serialize`/`Deserialize` for
//!   [`TimerSnapshot`] (the versioned envelope of [`TimerState`]) and the
//!   plain state types.
//! - Guest memory comes from [`vm_memory`] 0.18.x (`>=0.18, <0.19`),
//!   re-exported as [`lazy_tscdeadline_host::vm_memory`](vm_memory) so that
//!   a VMM can name the exact version the timer implements
//!   [`SharedMemory`] for.
//!
//! # Example: a vCPU thread and a timer thread
//! The timer sits in an `Arc<Mutex<_>>` shared by the vCPU thread (MSR
//! exits, LVT changes) and a timer thread (host timer expiries); guest
//! memory is an `Arc<GuestMemoryMmap>` (a `GuestMemoryAtomic` works the
//! same way).
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
//! use std::sync::mpsc::{channel, SendError, Sender};
//! use std::sync::{Arc, Mutex};
//! use std::thread;
//!
//! use lazy_tscdeadline_host::abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
//! use lazy_tscdeadline_host::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//! use lazy_tscdeadline_host::{
//!     Config, GuestClock, HostTimer, InterruptSink, LvtTimer, TscDeadlineTimer,
//! };
//!
//! /// The guest TSC (in a VMM: RDTSC scaled and offset as the guest sees it).
//! #[derive(Clone, Default)]
//! struct Tsc(Arc<AtomicU64>);
//! impl GuestClock for Tsc {
//!     fn now(&self) -> u64 { self.0.load(SeqCst) }
//! }
//!
//! /// Hands each (re-)arm to the timer thread (in a VMM: a timerfd).
//! struct ChannelTimer(Sender<Option<u64>>);
//! impl HostTimer for ChannelTimer {
//!     type Error = SendError<Option<u64>>;
//!     fn arm(&mut self, deadline: u64) -> Result<(), Self::Error> { self.0.send(Some(deadline)) }
//!     fn disarm(&mut self) -> Result<(), Self::Error> { self.0.send(None) }
//! }
//!
//! /// The vCPU's LAPIC (in a VMM: KVM_SIGNAL_MSI, whose error is an errno).
//! #[derive(Clone, Default)]
//! struct Lapic(Arc<Mutex<Vec<u8>>>);
//! impl InterruptSink for Lapic {
//!     type Error = Infallible;
//!     fn inject(&mut self, vector: u8) -> Result<(), Infallible> {
//!         self.0.lock().unwrap().push(vector);
//!         Ok(())
//!     }
//! }
//!
//! type Timer = TscDeadlineTimer<Arc<GuestMemoryMmap>, ChannelTimer, Tsc, Lapic>;
//! fn shareable<X: Send + Sync + 'static>(_: &X) {}
//!
//! let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
//! let (tsc, lapic) = (Tsc::default(), Lapic::default());
//! let (arms, expiries) = channel();
//! let config = Config::new().with_lazy_advertised(true);
//! let timer: Arc<Mutex<Timer>> = Arc::new(Mutex::new(TscDeadlineTimer::new(
//!     mem.clone(), ChannelTimer(arms), tsc.clone(), lapic.clone(), LvtTimer::RESET, config,
//! )));
//! shareable(&timer);
//!
//! // Timer thread: keeps the latest arm, kicks once the guest TSC reaches it.
//! let stop = Arc::new(AtomicBool::new(false));
//! let timer_thread = {
//!     let (timer, tsc, stop) = (timer.clone(), tsc.clone(), stop.clone());
//!     thread::spawn(move || {
//!         let mut armed = None;
//!         while !stop.load(SeqCst) {
//!             armed = expiries.try_iter().last().unwrap_or(armed);
//!             if armed.is_some_and(|d| tsc.now() >= d) {
//!                 armed = None;
//!                 timer.lock().unwrap().kick().expect("host timer and LAPIC work");
//!             }
//!             thread::yield_now();
//!         }
//!     })
//! };
//!
//! // vCPU thread: the guest programs the LVT, registers its struct at
//! // 0x1000 and traps one deadline; then it pushes the deadline later with
//! // a plain store, without an exit.
//! let vcpu_thread = {
//!     let (timer, mem, tsc, lapic) = (timer.clone(), mem.clone(), tsc.clone(), lapic.clone());
//!     thread::spawn(move || {
//!         {
//!             let mut t = timer.lock().unwrap();
//!             t.set_lvt_timer(LvtTimer::tsc_deadline(0xec)).unwrap();
//!             t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap(); // WRMSR exit
//!             t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap(); // WRMSR exit
//!         }
//!         mem.write_obj(250u64, GuestAddress(0x1008)).unwrap(); // `pending`, no exit
//!         tsc.0.store(200, SeqCst);
//!         // The expiry at 100 finds `pending` = 250 and re-arms, silently.
//!         while timer.lock().unwrap().deadline() != 250 { thread::yield_now() }
//!         assert!(lapic.0.lock().unwrap().is_empty());
//!         tsc.0.store(300, SeqCst);
//!         while lapic.0.lock().unwrap().is_empty() { thread::yield_now() }
//!     })
//! };
//! vcpu_thread.join().unwrap();
//! stop.store(true, SeqCst);
//! timer_thread.join().unwrap();
//! assert_eq!(*lapic.0.lock().unwrap(), [0xec]);
//! let t = timer.lock().unwrap();
//! assert_eq!((t.counters().trapped_writes, t.counters().rearms), (1, 1));
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod error;
mod lvt;
mod policy;
mod shared;
mod state;
mod timer;
mod traits;

pub use error::{BackendError, GuestFault, ReadMsrError, StateError, WriteMsrError};
pub use lvt::{LvtTimer, TimerMode};
pub use policy::{
    GracePolicy, DEFAULT_GRACE_CYCLES, DEFAULT_GRACE_MAX_CYCLES, DEFAULT_GRACE_MIN_CYCLES,
};
pub use shared::SharedMemory;
pub use state::{Counters, GraceState, TimerSnapshot, TimerState, STATE_VERSION};
pub use timer::{
    handles_msr, Config, KickOutcome, TscDeadlineTimer, HANDLED_MSRS, MAX_KICK_ROUNDS,
};
pub use traits::{GuestClock, HostTimer, InterruptSink};

pub use lazy_tscdeadline_abi as abi;
/// The vm-memory crate this crate implements [`SharedMemory`] for
/// (0.18.x): name guest memory types through it to be sure they match.
pub use vm_memory;

/// The crate README's example, compiled and run as a doc test. The README
/// lies inside the package, so the test also runs in the packaged crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
