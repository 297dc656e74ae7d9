//! The timer thread: one epoll over every vCPU's host timer fd
//! (`VcpuTimer::timer_fd`), handing expiries to the vCPU threads with
//! `VcpuTimer::on_expiry`, and the miss watchdog.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::VmFd;
use lazy_tscdeadline_kvm::lazy_tscdeadline_host::InterruptSink;
use lazy_tscdeadline_kvm::MsiInjector;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::error::Error;
use crate::layout::{Results, RESULTS_GPA, RESULTS_STRIDE, WAKE_VECTOR};
use crate::tsc::rdtsc;
use crate::vcpu::Timer;

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
    handle: JoinHandle<Result<(), Error>>,
}

impl TimerThread {
    /// Starts the thread over `timers` (empty in kernel mode, where only
    /// the watchdog runs).
    pub fn spawn(timers: Vec<Arc<Timer>>, watchdog: Watchdog) -> Result<Self, Error> {
        let epoll = Epoll::new().map_err(Error::io("epoll_create"))?;
        for (i, t) in timers.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    t.timer_fd(),
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(Error::io("epoll_ctl"))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("timer".into())
            .spawn(move || timer_loop(epoll, timers, watchdog, stop2))
            .map_err(Error::io("spawning the timer thread"))?;
        Ok(TimerThread { stop, handle })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) -> Result<(), Error> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| Error::Panicked("timer"))?
    }
}

fn timer_loop(
    epoll: Epoll,
    timers: Vec<Arc<Timer>>,
    watchdog: Watchdog,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    let mut events = vec![EpollEvent::default(); timers.len().max(1)];
    let waiting_offset = std::mem::offset_of!(Results, waiting_for) as u64;
    while !stop.load(Ordering::Relaxed) {
        let n = match epoll.wait(10, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(Error::io("epoll_wait")(e)),
        };
        for ev in &events[..n] {
            let timer = &timers[ev.data() as usize];
            // An expiry already consumed by a re-arm reads nothing: fine.
            timer.on_expiry().map_err(Error::io(format!(
                "reading vCPU {}'s timerfd",
                timer.index()
            )))?;
        }
        let now = rdtsc();
        for cpu in 0..watchdog.vcpus {
            let addr = RESULTS_GPA + u64::from(cpu) * RESULTS_STRIDE + waiting_offset;
            let waiting: u64 = watchdog
                .mem
                .load(GuestAddress(addr), Ordering::Relaxed)
                .map_err(Error::memory("reading the guest's waiting_for"))?;
            if waiting != 0 && now > waiting.saturating_add(watchdog.bound_tsc) {
                MsiInjector::new(&*watchdog.vm, cpu)
                    .inject(WAKE_VECTOR)
                    .map_err(Error::kvm("KVM_SIGNAL_MSI (watchdog wake-up)"))?;
            }
        }
    }
    Ok(())
}
