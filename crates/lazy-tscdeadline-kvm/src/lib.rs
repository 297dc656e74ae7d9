//! KVM integration of the paravirtual *lazy TSC deadline* timer.
//!
//! [`lazy_tscdeadline_host`] emulates one vCPU's TSC-deadline timer; this
//! crate is everything between it and KVM that a VMM would otherwise write
//! itself:
//! - [`setup`]: the capability check, the CPUID bit, 32-bit x2APIC IDs.
//! - [`MsrRouting`]: the VM-wide MSR filter, with a start-up probe that
//!   refuses kernels whose exit fastpath bypasses the filter for 0x6e0, and
//!   **opt-in routing** ([`RoutingPolicy::OptIn`], the default): 0x6e0 stays
//!   in KVM's in-kernel LAPIC until a vCPU registers, so a guest that never
//!   does costs exactly what it costs without the feature.
//! - [`VcpuTimer`]: one vCPU's exits for both MSRs (usable inside a `match`
//!   on kvm-ioctls' borrowed `VcpuExit`), the LVT read from the in-kernel
//!   LAPIC before every decision, host timer expiries handed to the vCPU
//!   thread so that nothing is delivered while the guest has masked the LVT
//!   timer, the hand-over of deadlines between KVM and the VMM, and
//!   save/restore.
//! - [`GuestTsc`], [`TimerFdTimer`], [`MsiInjector`]: the guest clock, a
//!   timerfd host timer whose fd goes into any epoll loop, and
//!   `KVM_SIGNAL_MSI` injection addressing x2APIC IDs above 255.
//! - [`SignalKicker`]: a race-free way out of `KVM_RUN` (or bring your own
//!   [`VcpuKicker`]).
//!
//! # Wiring
//! ```no_run
//! use std::sync::Arc;
//! use kvm_ioctls::{Kvm, VcpuExit};
//! use lazy_tscdeadline_kvm::lazy_tscdeadline_host::Config;
//! use lazy_tscdeadline_kvm::{
//!     setup, GuestTsc, MsrOutcome, MsrRouting, RoutingPolicy, SignalKicker, VcpuTimer,
//!     VcpuTimerParts,
//! };
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kvm = Kvm::new()?;
//! let vm = Arc::new(kvm.create_vm()?);
//! vm.create_irq_chip()?;
//! let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)])?);
//! // ... register the memory with KVM ...
//! // Probe, enable MSR exits, install the opt-in filter.
//! let routing = Arc::new(MsrRouting::new(&kvm, vm.clone(), RoutingPolicy::OptIn)?);
//! let mut cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
//! setup::advertise(&mut cpuid)?;
//!
//! let mut vcpu = vm.create_vcpu(0)?;
//! vcpu.set_cpuid2(&cpuid)?;
//! let signal = vmm_sys_util::signal::SIGRTMIN() + 1;
//! SignalKicker::install_handler(signal)?;
//! let kicker = Arc::new(SignalKicker::new(signal));
//! let parts = VcpuTimerParts {
//!     index: 0,
//!     apic_id: 0,
//!     mem: mem.clone(),
//!     vm: vm.clone(),
//!     clock: GuestTsc::from_vcpu(&vcpu)?,
//!     config: Config::new().with_lazy_advertised(true),
//! };
//! let timer = Arc::new(VcpuTimer::new(&vcpu, parts, routing.clone(), kicker.clone())?);
//!
//! // The expiry side: add timer.timer_fd() to an epoll loop (or a thread)
//! // and call timer.on_expiry() when it is readable.
//!
//! // The vCPU thread:
//! kicker.attach(vcpu.get_kvm_run());
//! loop {
//!     timer.service()?; // expiries, take-over and hand-back
//!     match vcpu.run() {
//!         Ok(VcpuExit::X86Wrmsr(mut exit)) => {
//!             if timer.handle_wrmsr(&mut exit)? == MsrOutcome::NotOurs {
//!                 *exit.error = 1; // as KVM would
//!             }
//!         }
//!         Ok(VcpuExit::X86Rdmsr(mut exit)) => {
//!             if timer.handle_rdmsr(&mut exit)? == MsrOutcome::NotOurs {
//!                 *exit.error = 1;
//!             }
//!         }
//!         Ok(_other) => { /* the VMM's own exits */ }
//!         Err(e) if e.errno() == libc::EINTR => vcpu.set_kvm_immediate_exit(0),
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! # }
//! ```
//!
//! # Save and restore
//! KVM keeps the vCPU's registers, LAPIC and MSRs; this crate keeps what
//! the VMM emulates. While the VMM owns a vCPU's TSC-deadline timer, KVM's
//! `IA32_TSC_DEADLINE` reads 0 and the deadline is in [`VcpuTimerState`]:
//! a VMM that writes a saved 0x6e0 of 0 back as "now" (Firecracker does,
//! at save time) fires a spurious interrupt, so skip that fix-up for VMM-owned
//! timers. The order, with every vCPU out of `KVM_RUN`:
//! 1. Save: on each vCPU thread complete the last exit (enter `KVM_RUN`
//!    once with `immediate_exit` set: KVM finishes a pending MSR exit,
//!    skipping the `wrmsr`, and returns `EINTR`; saved before that, the
//!    restored vCPU executes the `wrmsr` again) and call
//!    [`VcpuTimer::service`] (nothing left pending), then
//!    [`VcpuTimer::save`] per vCPU and [`MsrRouting::state`], next to
//!    KVM's state.
//! 2. Restore into a fresh VM: guest memory; then each vCPU's guest TSC
//!    (offset); then KVM's vCPU state (registers, LAPIC, then MSRs: a
//!    KVM-owned `IA32_TSC_DEADLINE` written before the LAPIC is lost);
//!    then [`MsrRouting::new`] and [`MsrRouting::restore`]; then
//!    [`VcpuTimer::restore`] (paused); last [`VcpuTimer::resume`], before
//!    the vCPUs run. A deadline that passed while the VM was stopped then
//!    fires at once. The mini-VMM's `snapshot` command does all of this
//!    (`examples/mini-vmm/src/snapshot.rs`).
//!
//! # INIT and kexec
//! With an in-kernel LAPIC an INIT of an application processor never
//! reaches userspace, so the host cannot drop a registration on INIT the
//! way [`VcpuTimer::reset`] does for resets it sees. A registration
//! therefore outlives the guest kernel that made it: the host keeps writing
//! `armed` into the last registered struct (and nowhere else: the struct's
//! guest-physical address was checked to lie in RAM when it was
//! registered) until the guest writes the registration MSR again. A guest
//! kernel must disable the feature (write 0 to `0x4b564d09`) before it
//! hands the machine to another kernel (kexec, crash kernel), as KVM's
//! other paravirtual features require. The host's timer for a stale
//! registration delivers what an unregistered timer would: the interrupt of
//! the deadline last written.
#![deny(missing_docs)]

mod backends;
pub mod error;
mod ioctl;
mod kick;
mod probe;
mod routing;
pub mod setup;
mod vcpu;

pub use backends::{msi_to, GuestTsc, MsiInjector, TimerFdTimer, MAX_RATE_ERROR};
pub use error::{ExitError, RestoreError, SetupError};
pub use kick::{SignalKicker, VcpuKicker};
pub use routing::{MsrRouting, RoutingPolicy, RoutingState};
pub use vcpu::{
    KvmTscDeadlineTimer, MsrOutcome, VcpuCounters, VcpuTimer, VcpuTimerParts, VcpuTimerState,
};

pub use kvm_bindings;
pub use kvm_ioctls;
pub use lazy_tscdeadline_host;
