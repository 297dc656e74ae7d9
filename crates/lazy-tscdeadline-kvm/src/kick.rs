//! Getting a vCPU thread out of `KVM_RUN` when its host timer expired.
//!
//! Only the vCPU's own thread can read its LAPIC without waiting for
//! `KVM_RUN` to return, and the LVT must be read before a timer interrupt is
//! delivered (the guest masks it, or leaves TSC-deadline mode, with x2APIC
//! writes the in-kernel LAPIC takes without an exit). So an expiry is handed
//! to the vCPU thread: [`VcpuKicker::kick`] makes its `KVM_RUN` return, and
//! the thread calls [`VcpuTimer::service`](crate::VcpuTimer::service).
//!
//! VMMs usually have such a kick already (a signal, as Cloud Hypervisor and
//! Firecracker use to pause vCPUs): implement [`VcpuKicker`] with it.
//! [`SignalKicker`] is a ready one.

use std::cell::Cell;
use std::sync::Mutex;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::register_signal_handler;

use crate::error::SetupError;

/// Makes a vCPU thread return from `KVM_RUN` soon, or not enter it before
/// it has looked at its timer again.
pub trait VcpuKicker: Send + Sync {
    /// Kicks the vCPU thread. Called from the thread that saw the expiry.
    fn kick(&self);
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
            // while attached (see `SignalKicker::attach`). Setting
            // `immediate_exit` from a signal handler is what the field is for:
            // a `KVM_RUN` entered after the signal returns EINTR at once, so
            // a kick that lands between the VMM's last look at the timer and
            // `KVM_RUN` is not lost. One byte, written volatile.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) }
        }
    });
}

/// A [`VcpuKicker`] that signals the vCPU thread with a real-time signal
/// whose handler sets `kvm_run.immediate_exit`.
///
/// The VMM [installs](Self::install_handler) the handler once, calls
/// [`attach`](Self::attach) on the vCPU thread before its first `KVM_RUN`
/// and [`detach`](Self::detach) before the thread stops running the vCPU,
/// and after `KVM_RUN` returns `EINTR` clears `immediate_exit`
/// (`VcpuFd::set_kvm_immediate_exit(0)`).
#[derive(Debug)]
pub struct SignalKicker {
    signal: libc::c_int,
    thread: Mutex<Option<libc::pthread_t>>,
}

impl SignalKicker {
    /// A kicker with `signal` (e.g. `vmm_sys_util::signal::SIGRTMIN() + n`,
    /// one the VMM uses for nothing else).
    pub fn new(signal: libc::c_int) -> Self {
        SignalKicker {
            signal,
            thread: Mutex::new(None),
        }
    }

    /// Installs the process-wide handler of `signal` (idempotent).
    pub fn install_handler(signal: libc::c_int) -> Result<(), SetupError> {
        register_signal_handler(signal, on_kick_signal).map_err(|source| SetupError::Kvm {
            op: "sigaction(vCPU kick signal)",
            source,
        })
    }

    /// On the vCPU thread, before its first `KVM_RUN`: kicks now signal this
    /// thread and set `run.immediate_exit` (`VcpuFd::get_kvm_run()`).
    pub fn attach(&self, run: &mut kvm_run) {
        KVM_RUN.with(|r| r.set(run));
        // SAFETY: `pthread_self` has no preconditions.
        *self.thread.lock().unwrap() = Some(unsafe { libc::pthread_self() });
    }

    /// On the vCPU thread, before it stops running the vCPU: no more
    /// signals (the thread may exit afterwards).
    pub fn detach(&self) {
        *self.thread.lock().unwrap() = None;
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }
}

impl VcpuKicker for SignalKicker {
    fn kick(&self) {
        if let Some(thread) = *self.thread.lock().unwrap() {
            // SAFETY: the thread is alive: it detaches, under this lock,
            // before it stops running the vCPU. pthread_kill cannot fail for a
            // live thread and a valid signal; if it did, the expiry would
            // only wait for the vCPU's next exit.
            unsafe { libc::pthread_kill(thread, self.signal) };
        }
    }
}
