//! The host timer plumbing of eager and lazy modes: one `TimerFd` per vCPU
//! armed at a guest-TSC deadline, the guest clock, MSI injection, and the
//! single timer thread that watches the timerfds (and runs the miss
//! watchdog).
//!
//! An expiry is not handled on the timer thread: the guest may have masked
//! its LVT timer, or left TSC-deadline mode, without an exit (the in-kernel
//! LAPIC takes x2APIC LVT writes itself), and only the vCPU's own thread
//! can read the LAPIC without waiting for `KVM_RUN` to return. So the timer
//! thread marks the vCPU's [`VcpuTimer`] expired and signals the vCPU
//! thread out of `KVM_RUN`; that thread reads the LVT, hands it to the
//! timer and calls `kick()`, as KVM itself checks the LVT mask when it
//! delivers a timer interrupt on the vCPU's thread.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_msi, kvm_run};
use kvm_ioctls::VmFd;
use lazy_tscdeadline_host::{GuestClock, HostTimer, InterruptSink, TscDeadlineTimer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};
use vmm_sys_util::timerfd::TimerFd;

use crate::layout::{Results, RESULTS_GPA, RESULTS_STRIDE, WAKE_VECTOR};

/// One vCPU's emulated TSC-deadline timer.
pub type Timer = TscDeadlineTimer<Arc<GuestMemoryMmap>, FdTimer, TscClock, MsiSink>;

/// The host TSC. Every vCPU's TSC offset is 0, so this is the guest TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects and is available in user mode on
    // the hosts KVM runs on.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds of CLOCK_MONOTONIC covering `cycles` TSC cycles at `khz`,
/// rounded up so the timer never expires before the deadline on account of
/// the conversion.
pub fn tsc_to_ns(cycles: u64, khz: u64) -> u64 {
    let ns = (u128::from(cycles) * 1_000_000).div_ceil(u128::from(khz.max(1)));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// [`GuestClock`] reading the guest TSC (== host TSC).
#[derive(Clone, Copy, Debug)]
pub struct TscClock;

impl GuestClock for TscClock {
    fn now(&self) -> u64 {
        rdtsc()
    }
}

/// [`HostTimer`] over a non-blocking CLOCK_MONOTONIC `TimerFd`.
///
/// A guest-TSC deadline is converted to a relative CLOCK_MONOTONIC expiry
/// from the TSC read now (guest TSC == host TSC, constant rate `tsc_khz`).
#[derive(Debug)]
pub struct FdTimer {
    fd: TimerFd,
    tsc_khz: u64,
}

impl FdTimer {
    /// A disarmed timer.
    pub fn new(tsc_khz: u64) -> Result<Self, String> {
        let fd = TimerFd::new().map_err(|e| format!("timerfd_create: {e}"))?;
        // SAFETY: F_GETFL/F_SETFL on a file descriptor we own.
        let ok = unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(format!(
                "fcntl(timerfd): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(FdTimer { fd, tsc_khz })
    }

    /// The file descriptor, readable once the timer expired.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl HostTimer for FdTimer {
    type Error = vmm_sys_util::errno::Error;

    fn arm(&mut self, deadline: u64) -> Result<(), Self::Error> {
        let ns = tsc_to_ns(deadline.saturating_sub(rdtsc()), self.tsc_khz);
        // A zero duration would disarm the timerfd: expire "now" instead.
        let dur = Duration::from_nanos(ns.max(1));
        self.fd.reset(dur, None)
    }

    fn disarm(&mut self) -> Result<(), Self::Error> {
        self.fd.clear()
    }
}

/// Sends a fixed-vector MSI to one x2APIC, as KVM_SIGNAL_MSI.
pub fn send_msi(vm: &VmFd, apic_id: u32, vector: u8) -> Result<(), kvm_ioctls::Error> {
    let msi = kvm_msi {
        address_lo: 0xfee0_0000 | (apic_id << 12),
        address_hi: 0,
        data: u32::from(vector),
        ..Default::default()
    };
    vm.signal_msi(msi).map(drop)
}

/// [`InterruptSink`] raising the LAPIC timer interrupt through an MSI.
#[derive(Debug)]
pub struct MsiSink {
    vm: Arc<VmFd>,
    apic_id: u32,
}

impl MsiSink {
    /// Interrupts for the vCPU with x2APIC ID `apic_id`.
    pub fn new(vm: Arc<VmFd>, apic_id: u32) -> Self {
        MsiSink { vm, apic_id }
    }
}

impl InterruptSink for MsiSink {
    type Error = kvm_ioctls::Error;

    fn inject(&mut self, vector: u8) -> Result<(), Self::Error> {
        send_msi(&self.vm, self.apic_id, vector)
    }
}

/// The signal that takes a vCPU thread out of `KVM_RUN` when its host timer
/// expired.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// The `kvm_run` area of the vCPU this thread runs (null elsewhere),
    /// for the signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's vCPU `kvm_run` mapping, live
            // while registered (see `VcpuTimer::attach`). Setting
            // `immediate_exit` from a signal handler is what the field is
            // for: a `KVM_RUN` entered after the signal returns EINTR at once
            // instead of missing the wake-up; one byte, written volatile.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) }
        }
    });
}

/// Installs the process-wide handler of the kick signal (idempotent).
pub fn install_kick_handler() -> Result<(), String> {
    register_signal_handler(kick_signal(), on_kick_signal)
        .map_err(|e| format!("installing the vCPU kick signal handler: {e}"))
}

/// One vCPU's emulated timer, shared by its vCPU thread and the timer
/// thread, with the hand-over of expiries to the vCPU thread.
#[derive(Debug)]
pub struct VcpuTimer {
    /// The timer. Locked by the vCPU thread for MSR exits and expiries,
    /// and by the VMM for counters.
    pub timer: Mutex<Timer>,
    /// Set by the timer thread when the host timer fired.
    expired: AtomicBool,
    /// The vCPU thread, while it can be signalled.
    thread: Mutex<Option<libc::pthread_t>>,
}

impl VcpuTimer {
    /// Wraps `timer`; no vCPU thread attached yet.
    pub fn new(timer: Timer) -> Self {
        VcpuTimer {
            timer: Mutex::new(timer),
            expired: AtomicBool::new(false),
            thread: Mutex::new(None),
        }
    }

    /// Called on the vCPU thread before its first `KVM_RUN`: expiries now
    /// signal this thread, and the signal sets `run.immediate_exit`.
    pub fn attach(&self, run: *mut kvm_run) {
        KVM_RUN.with(|r| r.set(run));
        // SAFETY: `pthread_self` has no preconditions.
        *self.thread.lock().unwrap() = Some(unsafe { libc::pthread_self() });
    }

    /// Called on the vCPU thread before it stops running the vCPU: no
    /// more signals (the thread may exit after this).
    pub fn detach(&self) {
        *self.thread.lock().unwrap() = None;
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }

    /// Timer thread: the host timer fired; wake the vCPU thread.
    fn expire(&self) {
        self.expired.store(true, Ordering::SeqCst);
        if let Some(thread) = *self.thread.lock().unwrap() {
            // SAFETY: the thread is alive: it detaches (under this lock)
            // before it stops running the vCPU. A failure (it cannot fail
            // for a live thread and a valid signal) would only delay the
            // expiry to the vCPU's next exit.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    /// vCPU thread: whether the host timer fired since the last call.
    pub fn take_expiry(&self) -> bool {
        self.expired.swap(false, Ordering::SeqCst)
    }
}

/// What the timer thread watches besides the timers: guests halted on a
/// deadline long past (a miss) get a wake-up interrupt, so they report the
/// miss instead of hanging.
#[derive(Debug)]
pub struct Watchdog {
    /// The VM, for the wake-up MSI.
    pub vm: Arc<VmFd>,
    /// Guest memory, to read `Results::waiting_for`.
    pub mem: Arc<GuestMemoryMmap>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Cycles past a deadline after which a waiting guest is woken.
    pub bound_tsc: u64,
}

/// The running timer thread.
#[derive(Debug)]
pub struct TimerThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(), String>>,
}

impl TimerThread {
    /// Starts the thread over `timers` (index = vCPU index; empty in kernel
    /// mode, where only the watchdog runs).
    pub fn spawn(timers: Vec<(RawFd, Arc<VcpuTimer>)>, watchdog: Watchdog) -> Result<Self, String> {
        let epoll = Epoll::new().map_err(|e| format!("epoll_create: {e}"))?;
        for (i, (fd, _)) in timers.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    *fd,
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(|e| format!("epoll_ctl: {e}"))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("timer".into())
            .spawn(move || timer_loop(epoll, timers, watchdog, stop2))
            .map_err(|e| format!("spawning the timer thread: {e}"))?;
        Ok(TimerThread { stop, handle })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| "the timer thread panicked".to_string())?
    }
}

fn timer_loop(
    epoll: Epoll,
    timers: Vec<(RawFd, Arc<VcpuTimer>)>,
    watchdog: Watchdog,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut events = vec![EpollEvent::default(); timers.len().max(1)];
    let waiting_offset = std::mem::offset_of!(Results, waiting_for) as u64;
    while !stop.load(Ordering::Relaxed) {
        let n = match epoll.wait(10, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for ev in &events[..n] {
            let (fd, timer) = &timers[ev.data() as usize];
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into `expirations` from a non-blocking
            // timerfd we own; EAGAIN (expiry already consumed by a re-arm)
            // is fine.
            let r = unsafe { libc::read(*fd, (&mut expirations as *mut u64).cast(), 8) };
            if r == 8 {
                timer.expire();
            }
        }
        let now = rdtsc();
        for cpu in 0..watchdog.vcpus {
            let addr = RESULTS_GPA + u64::from(cpu) * RESULTS_STRIDE + waiting_offset;
            let waiting: u64 = watchdog
                .mem
                .load(GuestAddress(addr), Ordering::Relaxed)
                .map_err(|e| format!("reading guest memory: {e}"))?;
            if waiting != 0 && now > waiting.saturating_add(watchdog.bound_tsc) {
                send_msi(&watchdog.vm, cpu, WAKE_VECTOR)
                    .map_err(|e| format!("KVM_SIGNAL_MSI to APIC {cpu}: {e}"))?;
            }
        }
    }
    Ok(())
}
