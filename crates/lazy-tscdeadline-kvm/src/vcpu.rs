//! One vCPU's timer on KVM: the MSR exits of both MSRs, host timer expiries
//! handed to the vCPU thread, and the taking over and handing back of the
//! TSC-deadline timer between KVM's in-kernel LAPIC and the VMM.

use std::borrow::Borrow;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::{ReadMsrExit, VcpuFd, VmFd, WriteMsrExit};
use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::{
    Config, GuestClock, GuestFault, KickOutcome, LvtTimer, ReadMsrError, SharedMemory,
    TimerSnapshot, TscDeadlineTimer, WriteMsrError,
};

use crate::backends::{GuestTsc, MsiInjector, TimerFdTimer};
use crate::error::{ExitError, RestoreError, SetupError};
use crate::ioctl::VcpuIoctls;
use crate::kick::VcpuKicker;
use crate::routing::MsrRouting;

/// The host crate's timer with this crate's collaborators.
pub type KvmTscDeadlineTimer<M, V> = TscDeadlineTimer<M, TimerFdTimer, GuestTsc, MsiInjector<V>>;

/// What an MSR exit handler did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MsrOutcome {
    /// The exit was one of ours and is complete.
    Handled,
    /// The guest's access faults: the exit's `error` is set, so KVM injects
    /// #GP when the vCPU runs again.
    GuestFault(GuestFault),
    /// Not one of the two MSRs: the VMM handles the exit.
    NotOurs,
}

/// Who emulates this vCPU's TSC-deadline timer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// KVM's in-kernel LAPIC (0x6e0 is not routed, or not taken over yet).
    Kvm,
    /// The VMM, through the host crate's timer.
    Vmm,
}

/// What the crate did for the VMM, per vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct VcpuCounters {
    /// Host timer expiries handled on the vCPU thread.
    pub expiries: u64,
    /// Times the vCPU's timer was taken over from KVM (its armed deadline,
    /// if any, is adopted unpublished by the host timer).
    pub takeovers: u64,
    /// Times it was handed back to KVM.
    pub handbacks: u64,
    /// 0x6e0 accesses that exited while KVM owned the timer (during a
    /// hand-back) and were passed on to KVM.
    pub forwarded: u64,
    /// Reads of the in-kernel LAPIC's LVT timer register.
    pub lvt_reads: u64,
}

struct Inner<M: SharedMemory, V: Borrow<VmFd>> {
    timer: KvmTscDeadlineTimer<M, V>,
    owner: Owner,
    counters: VcpuCounters,
}

/// The saved state of one vCPU's timer (see
/// [`VcpuTimer::save`] and [`VcpuTimer::restore`]).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct VcpuTimerState {
    /// The host crate's timer (versioned envelope).
    pub timer: TimerSnapshot,
    /// Whether the VMM, not KVM, emulated the TSC-deadline timer (then
    /// KVM's own `IA32_TSC_DEADLINE` in the vCPU's saved MSRs reads 0 and
    /// the deadline is in `timer`).
    pub vmm_owned: bool,
}

/// One vCPU's lazy TSC-deadline timer on KVM.
///
/// Shared (`Arc`) by the vCPU thread, which calls [`handle_wrmsr`],
/// [`handle_rdmsr`] and [`service`], and the thread that watches the host
/// timer's fd ([`timer_fd`]), which calls [`on_expiry`]. The vCPU ioctls it
/// needs (`KVM_GET_LAPIC`, `KVM_GET_MSRS`, `KVM_SET_MSRS`) go through its
/// own duplicate of the vCPU's file descriptor, so the exit handlers work
/// inside a `match` on kvm-ioctls' borrowed `VcpuExit`. They are made only
/// on the vCPU's thread (elsewhere they would wait for `KVM_RUN`).
///
/// [`handle_wrmsr`]: Self::handle_wrmsr
/// [`handle_rdmsr`]: Self::handle_rdmsr
/// [`service`]: Self::service
/// [`timer_fd`]: Self::timer_fd
/// [`on_expiry`]: Self::on_expiry
pub struct VcpuTimer<M: SharedMemory, V: Borrow<VmFd>> {
    index: u32,
    inner: Mutex<Inner<M, V>>,
    expired: AtomicBool,
    timer_fd: RawFd,
    vcpu: VcpuIoctls,
    kicker: Arc<dyn VcpuKicker>,
    routing: Arc<MsrRouting<V>>,
}

impl<M: SharedMemory, V: Borrow<VmFd>> std::fmt::Debug for VcpuTimer<M, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuTimer")
            .field("index", &self.index)
            .field("timer_fd", &self.timer_fd)
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

/// How a new [`VcpuTimer`] is put together.
#[derive(Debug)]
pub struct VcpuTimerParts<M, V> {
    /// The vCPU index: how the routing tells vCPUs apart.
    pub index: u32,
    /// The vCPU's x2APIC ID, where the timer interrupt's MSI goes (often
    /// equal to the index; with a CPU topology it may not be).
    pub apic_id: u32,
    /// Guest memory, where the registered struct lives.
    pub mem: M,
    /// The VM, for `KVM_SIGNAL_MSI` (the same handle as the routing's).
    pub vm: V,
    /// The guest TSC of this vCPU.
    pub clock: GuestTsc,
    /// The host timer's configuration: whether the guest's CPUID advertises
    /// the feature, and the policies (`Config::new()`: grace re-arm and
    /// exitless cancel offered; `Config::rfc()`: the RFC's behaviour).
    pub config: Config,
}

impl<M, V> VcpuTimer<M, V>
where
    M: SharedMemory,
    V: Borrow<VmFd>,
{
    /// A timer for `vcpu` with nothing armed, KVM owning the TSC-deadline
    /// timer until the routing says otherwise (with
    /// [`RoutingPolicy::Always`](crate::RoutingPolicy::Always) it is taken
    /// over at the first [`service`](Self::service)). Call on any thread
    /// before the vCPU first runs.
    pub fn new(
        vcpu: &VcpuFd,
        parts: VcpuTimerParts<M, V>,
        routing: Arc<MsrRouting<V>>,
        kicker: Arc<dyn VcpuKicker>,
    ) -> Result<Self, SetupError> {
        let config = parts.config;
        let host_timer = TimerFdTimer::new(parts.clock)?;
        let timer = TscDeadlineTimer::new(
            parts.mem,
            host_timer,
            parts.clock,
            MsiInjector::new(parts.vm, parts.apic_id),
            LvtTimer::RESET,
            config,
        );
        Self::assemble(vcpu, parts.index, timer, Owner::Kvm, routing, kicker)
    }

    /// Rebuilds a vCPU's timer from `state` in a restored VM. The timer is
    /// paused until [`resume`](Self::resume): restore the guest TSC and the
    /// vCPU's KVM state first (see the crate documentation for the order).
    pub fn restore(
        vcpu: &VcpuFd,
        parts: VcpuTimerParts<M, V>,
        routing: Arc<MsrRouting<V>>,
        kicker: Arc<dyn VcpuKicker>,
        state: &VcpuTimerState,
    ) -> Result<Self, RestoreError> {
        let index = parts.index;
        let timer_state = state
            .timer
            .into_state()
            .map_err(|source| RestoreError::Timer {
                vcpu: index,
                source,
            })?;
        let host_timer = TimerFdTimer::new(parts.clock).map_err(|e| RestoreError::Kvm {
            op: "timerfd_create",
            source: match e {
                SetupError::TimerFd(io) => {
                    kvm_ioctls::Error::new(io.raw_os_error().unwrap_or(libc::EIO))
                }
                _ => kvm_ioctls::Error::new(libc::EIO),
            },
        })?;
        let timer = TscDeadlineTimer::from_state(
            parts.mem,
            host_timer,
            parts.clock,
            MsiInjector::new(parts.vm, parts.apic_id),
            &timer_state,
        )
        .map_err(|source| RestoreError::Timer {
            vcpu: index,
            source,
        })?;
        let owner = if state.vmm_owned {
            Owner::Vmm
        } else {
            Owner::Kvm
        };
        let t = Self::assemble(vcpu, index, timer, owner, routing, kicker).map_err(|e| {
            RestoreError::Kvm {
                op: "dup(vCPU fd)",
                source: match e {
                    SetupError::Kvm { source, .. } => source,
                    _ => kvm_ioctls::Error::new(libc::EIO),
                },
            }
        })?;
        if state.vmm_owned {
            t.routing.took_over(index);
        }
        let registered = t.lock().timer.registration().is_enabled();
        if registered {
            t.routing.note_registered(index);
        }
        Ok(t)
    }

    fn assemble(
        vcpu: &VcpuFd,
        index: u32,
        timer: KvmTscDeadlineTimer<M, V>,
        owner: Owner,
        routing: Arc<MsrRouting<V>>,
        kicker: Arc<dyn VcpuKicker>,
    ) -> Result<Self, SetupError> {
        let timer_fd = std::os::fd::AsRawFd::as_raw_fd(timer.host_timer());
        routing.add_vcpu(index, kicker.clone());
        Ok(VcpuTimer {
            index,
            inner: Mutex::new(Inner {
                timer,
                owner,
                counters: VcpuCounters::default(),
            }),
            expired: AtomicBool::new(false),
            timer_fd,
            vcpu: VcpuIoctls::new(vcpu)?,
            kicker,
            routing,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<M, V>> {
        // A panic while holding the lock cannot leave the timer torn in a
        // way the next operation would not tolerate: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The vCPU index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The host timer's file descriptor: readable when it expired. Watch it
    /// (epoll, or a timer thread) and call [`on_expiry`](Self::on_expiry).
    pub fn timer_fd(&self) -> RawFd {
        self.timer_fd
    }

    /// On the thread that watches [`timer_fd`](Self::timer_fd), when it is
    /// readable: consumes the expiry and hands it to the vCPU thread (marks
    /// it and kicks the thread). Returns whether there was an expiry.
    pub fn on_expiry(&self) -> std::io::Result<bool> {
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into `expirations` from the
        // non-blocking timerfd owned by this timer's host timer, which lives
        // as long as `self`.
        let r = unsafe { libc::read(self.timer_fd, (&mut expirations as *mut u64).cast(), 8) };
        if r != 8 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::WouldBlock {
                Ok(false)
            } else {
                Err(e)
            };
        }
        self.expired.store(true, Ordering::SeqCst);
        self.kicker.kick();
        Ok(true)
    }

    /// On the vCPU thread after every return from `KVM_RUN` (including
    /// `EINTR` after a kick), before the next: takes the TSC-deadline timer
    /// over from KVM or hands it back as the routing requires, and handles
    /// a host timer expiry (reads the LVT, then KICK). Returns the KICK's
    /// outcome if there was an expiry.
    pub fn service(&self) -> Result<Option<KickOutcome>, ExitError> {
        self.sync_owner()?;
        if !self.expired.swap(false, Ordering::SeqCst) {
            return Ok(None);
        }
        let mut inner = self.lock();
        if inner.owner == Owner::Kvm {
            // A late expiry of a deadline already handed back: KVM has it.
            return Ok(None);
        }
        self.read_lvt(&mut inner)?;
        inner.counters.expiries += 1;
        Ok(Some(inner.timer.kick()?))
    }

    /// On `KVM_EXIT_X86_WRMSR`: emulates writes of the two MSRs, sets the
    /// exit's `error` for a guest fault (#GP), and returns
    /// [`MsrOutcome::NotOurs`] for any other MSR (untouched).
    pub fn handle_wrmsr(&self, exit: &mut WriteMsrExit<'_>) -> Result<MsrOutcome, ExitError> {
        match exit.index {
            MSR_IA32_TSC_DEADLINE => {
                self.sync_owner()?;
                let mut inner = self.lock();
                if inner.owner == Owner::Kvm {
                    inner.counters.forwarded += 1;
                    self.vcpu.set_msr(MSR_IA32_TSC_DEADLINE, exit.data)?;
                    return Ok(MsrOutcome::Handled);
                }
                self.observe_lvt(&mut inner)?;
                self.write(&mut inner, exit.index, exit.data, exit.error)
            }
            MSR_KVM_LAZY_TSCDEADLINE => {
                self.sync_owner()?;
                let outcome = {
                    let mut inner = self.lock();
                    let outcome = self.write(&mut inner, exit.index, exit.data, exit.error)?;
                    if outcome != MsrOutcome::Handled {
                        return Ok(outcome);
                    }
                    inner.timer.registration().is_enabled()
                };
                // The first registration routes 0x6e0 to the VMM: take this
                // vCPU's deadline over before it runs again.
                self.routing.set_registered(self.index, outcome)?;
                self.sync_owner()?;
                Ok(MsrOutcome::Handled)
            }
            _ => Ok(MsrOutcome::NotOurs),
        }
    }

    /// On `KVM_EXIT_X86_RDMSR`: as [`handle_wrmsr`](Self::handle_wrmsr)
    /// for reads.
    pub fn handle_rdmsr(&self, exit: &mut ReadMsrExit<'_>) -> Result<MsrOutcome, ExitError> {
        if exit.index != MSR_IA32_TSC_DEADLINE && exit.index != MSR_KVM_LAZY_TSCDEADLINE {
            return Ok(MsrOutcome::NotOurs);
        }
        self.sync_owner()?;
        let mut inner = self.lock();
        if exit.index == MSR_IA32_TSC_DEADLINE {
            if inner.owner == Owner::Kvm {
                inner.counters.forwarded += 1;
                *exit.data = self.vcpu.get_msr(MSR_IA32_TSC_DEADLINE)?;
                return Ok(MsrOutcome::Handled);
            }
            self.observe_lvt(&mut inner)?;
        }
        match inner.timer.read_msr(exit.index) {
            Ok(v) => {
                *exit.data = v;
                Ok(MsrOutcome::Handled)
            }
            Err(ReadMsrError::GuestFault(f)) => {
                *exit.error = 1;
                Ok(MsrOutcome::GuestFault(f))
            }
            Err(_) => Ok(MsrOutcome::NotOurs),
        }
    }

    fn write(
        &self,
        inner: &mut Inner<M, V>,
        index: u32,
        value: u64,
        error: &mut u8,
    ) -> Result<MsrOutcome, ExitError> {
        match inner.timer.write_msr(index, value) {
            Ok(()) => Ok(MsrOutcome::Handled),
            Err(WriteMsrError::GuestFault(f)) => {
                *error = 1;
                Ok(MsrOutcome::GuestFault(f))
            }
            Err(WriteMsrError::Backend(e)) => Err(e.into()),
            Err(_) => Ok(MsrOutcome::NotOurs),
        }
    }

    /// Reads the LVT timer register from the in-kernel LAPIC (the guest
    /// changes it without exits) and gives it to the timer.
    fn read_lvt(&self, inner: &mut Inner<M, V>) -> Result<(), ExitError> {
        let lvt = self.vcpu.lvt_timer()?;
        inner.counters.lvt_reads += 1;
        Ok(inner.timer.observe_lvt_timer(lvt)?)
    }

    /// [`read_lvt`](Self::read_lvt), then a deadline due by now (whose
    /// expiry is still on its way to this thread) is expired under that
    /// value (delivered or not, as KVM decides at injection), before the
    /// exit being handled changes or reads it.
    fn observe_lvt(&self, inner: &mut Inner<M, V>) -> Result<(), ExitError> {
        self.read_lvt(inner)?;
        let deadline = inner.timer.deadline();
        if deadline != 0 && deadline <= inner.timer.clock().now() {
            inner.timer.kick()?;
        }
        Ok(())
    }

    /// Takes the TSC-deadline timer over from KVM, or hands it back, as the
    /// routing requires now.
    fn sync_owner(&self) -> Result<(), ExitError> {
        let want_vmm = self.routing.vmm_owns();
        let mut inner = self.lock();
        match (want_vmm, inner.owner) {
            (true, Owner::Kvm) => {
                // KVM's armed deadline (0 if none, or if it fired already and
                // was delivered by KVM). Disarm it in KVM (no interrupt) and
                // arm it here: a value already past fires at once, so an
                // expiry KVM had not delivered yet is not lost.
                let deadline = self.vcpu.get_msr(MSR_IA32_TSC_DEADLINE)?;
                self.vcpu.set_msr(MSR_IA32_TSC_DEADLINE, 0)?;
                inner.owner = Owner::Vmm;
                inner.counters.takeovers += 1;
                self.routing.took_over(self.index);
                self.read_lvt(&mut inner)?;
                // Adopted, not written as an UPDATE: the deadline is
                // architectural state taken over from KVM, not a guest write,
                // and the guest's `pending` does not hold it (a registering
                // vCPU is taken over right after its registration write,
                // which kept `armed = 0`, docs/PROTOCOL.md §4.1). So it is
                // armed unpublished: its expiry is delivered without reading
                // `pending`, and the guest's next write traps (it reads
                // `armed == 0`) and replaces it. A deadline already past
                // fires at once.
                inner.timer.adopt_deadline(deadline)?;
            }
            (false, Owner::Vmm) => {
                // The armed deadline goes back to KVM (which ignores it
                // outside TSC-deadline mode, as the host did); a deadline
                // already past fires there at once.
                let deadline = inner.timer.deadline();
                if deadline != 0 {
                    match inner.timer.write_msr(MSR_IA32_TSC_DEADLINE, 0) {
                        Ok(()) => {}
                        Err(WriteMsrError::Backend(e)) => return Err(e.into()),
                        Err(_) => {}
                    }
                    self.vcpu.set_msr(MSR_IA32_TSC_DEADLINE, deadline)?;
                }
                inner.owner = Owner::Kvm;
                inner.counters.handbacks += 1;
                drop(inner);
                self.routing.handed_back(self.index)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the VMM emulates this vCPU's TSC-deadline timer now.
    pub fn vmm_owned(&self) -> bool {
        self.lock().owner == Owner::Vmm
    }

    /// The crate's counters of this vCPU.
    pub fn counters(&self) -> VcpuCounters {
        self.lock().counters
    }

    /// The host crate's counters of this vCPU's timer.
    pub fn timer_counters(&self) -> lazy_tscdeadline_host::Counters {
        self.lock().timer.counters()
    }

    /// Runs `f` on the host crate's timer (e.g. to read its state).
    pub fn with_timer<R>(&self, f: impl FnOnce(&mut KvmTscDeadlineTimer<M, V>) -> R) -> R {
        f(&mut self.lock().timer)
    }

    /// On INIT or RESET of this vCPU (from userspace): drops the deadline
    /// and the registration (see the host crate's `reset`).
    pub fn reset(&self) -> Result<(), ExitError> {
        let registered = {
            let mut inner = self.lock();
            inner.timer.reset()?;
            inner.timer.registration().is_enabled()
        };
        self.routing.set_registered(self.index, registered)
    }

    /// The vCPU's timer for a snapshot. Take it with the vCPU stopped (out
    /// of `KVM_RUN`) and after [`service`](Self::service), next to KVM's
    /// own state of the vCPU.
    pub fn save(&self) -> VcpuTimerState {
        let inner = self.lock();
        VcpuTimerState {
            timer: TimerSnapshot::from(inner.timer.state()),
            vmm_owned: inner.owner == Owner::Vmm,
        }
    }

    /// Ends the pause of a [`restore`](Self::restore)d timer: arms the host
    /// timer. Call last, after the guest TSC and the vCPU's KVM state are
    /// restored, before the vCPU runs.
    pub fn resume(&self) -> Result<(), ExitError> {
        Ok(self.lock().timer.resume()?)
    }
}

/// The timer is shared by the vCPU thread and the expiry thread.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VcpuTimer<Arc<vm_memory::GuestMemoryMmap>, Arc<VmFd>>>();
};
