//! `mini-vmm snapshot`: save a running VM's timers next to KVM's own state,
//! tear the VM down, restore it into a fresh VM, and let the same guest
//! finish its workload there.
//!
//! Step by step ([`snapshot`]):
//! 1. Boot as `run` does (`vm::boot`), start the timer thread and the vCPU
//!    threads, each with a pause flag.
//! 2. **Pause** after `--at-ms`: set the flag, then kick every vCPU thread
//!    with its `SignalKicker` (the signal sets `kvm_run.immediate_exit`, so
//!    a thread about to enter `KVM_RUN` leaves it at once). Each thread
//!    calls `VcpuTimer::service()` (a host timer expiry handed to it is
//!    injected into the in-kernel LAPIC, take-over / hand-back done), sees
//!    the flag, completes the exit it last handled (`KVM_RUN` with
//!    `immediate_exit` set: KVM skips the `wrmsr` / `out` and returns
//!    `EINTR` without running the guest; saved before that, the restored
//!    vCPU would execute the instruction again), calls `service()` again
//!    and stops, handing back its vCPU and its counts; the
//!    orchestrator waits for all of them (the barrier), then stops the
//!    timer thread (a later expiry stays in the timer's saved deadline).
//! 3. **Save**, every vCPU out of `KVM_RUN`: a copy of guest memory, each
//!    vCPU's KVM state (`vmstate::save`: registers, special registers,
//!    FPU, LAPIC, the MSRs of `KVM_GET_MSR_INDEX_LIST` less the TSC, plus
//!    the PVM VIF page MSR on a PVM host, vCPU events, MP state), each
//!    `VcpuTimer::save()` and `MsrRouting::state()`.
//! 4. **Tear down**: the vCPUs, the timers, the routing, the VM and its
//!    memory are dropped.
//! 5. **Restore into a fresh VM**, in the order of `lazy-tscdeadline-kvm`'s
//!    "Save and restore": a new VM with its irqchip and a new guest memory
//!    mapping with the saved bytes copied back; per vCPU the same CPUID,
//!    then the guest TSC (offset 0: guest TSC == host TSC, as at boot; the
//!    saved `IA32_TSC` is not written back), then KVM's state
//!    (`vmstate::restore`: special registers and registers, FPU, the LAPIC
//!    before the MSRs, so `IA32_TSC_DEADLINE` (0x6e0) lands in a LAPIC in
//!    TSC-deadline mode, then vCPU events and MP state); then
//!    `MsrRouting::new` and `MsrRouting::restore`; then
//!    `VcpuTimer::restore` per vCPU (paused); last `VcpuTimer::resume` (a
//!    deadline that passed while the VM was stopped fires at once).
//! 6. Start a new timer thread and new vCPU threads, which continue the
//!    same guest to DONE with the counts carried over; the results are
//!    checked as `run` checks them.
//!
//! For a vCPU whose timer the VMM owns, KVM's saved 0x6e0 reads 0 (the
//! deadline is in the timer's state); for one KVM owns (optin before its
//! registration, stock, kernel mode) KVM's 0x6e0 carries the deadline and
//! is written back after the LAPIC (written before it, it is lost:
//! measured, one missed interrupt in kernel and optin mode).
//!
//! On a PVM host the guest switched itself to native execution with the
//! VIF page MSR 0x4b564d10, which `KVM_GET_MSR_INDEX_LIST` does not list:
//! `vmstate` saves it anyway and writes it back with the other MSRs, and
//! the restored guest runs natively again (measured: KVM's
//! `insn_emulation` equals the guest's trapping instructions). Without it
//! the restored vCPU runs in KVM's emulator while the guest keeps its
//! interrupt flag in the VIF page (measured: spurious and extra timer
//! interrupts); a refused write is an error.
//!
//! The guest TSC runs on while the VM is stopped (it equals the host's): a
//! deadline armed across the pause fires up to the pause late, and a pause
//! longer than the guest's 200 ms miss bound makes it count as missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use lazy_tscdeadline_host::Counters;
use lazy_tscdeadline_kvm::{
    GuestTsc, MsrRouting, SignalKicker, VcpuCounters, VcpuKicker, VcpuTimer, VcpuTimerParts,
    VcpuTimerState,
};
use serde_json::{json, Value};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::error::Error;
use crate::expiry::{TimerThread, Watchdog};
use crate::layout::MSR_PVM_VIF_PAGE;
use crate::mode::Mode;
use crate::vcpu::{self, Carried, Ended, Timer, VcpuOutcome, VcpuRun};
use crate::vm::{self, Booted, ModeRun, Workload};
use crate::vmstate::{self, VcpuState};

/// What the pause, save and restore measured.
#[derive(Debug, Default)]
pub struct Figures {
    /// When the pause was requested, in milliseconds after the vCPU threads
    /// started.
    pub at_ms: u64,
    /// From the pause request until every vCPU thread had stopped.
    pub stop_us: u64,
    /// From the pause request until the restored vCPU threads started: the
    /// time the guest did not run.
    pub pause_ms: f64,
    /// Requests each vCPU had started at the save (of `Workload::requests`).
    pub requests_before: Vec<u64>,
    /// vCPUs with a deadline armed in the VMM (`VcpuTimer`) at the save.
    pub armed_in_vmm: u32,
    /// vCPUs with a deadline armed in KVM (its saved 0x6e0) at the save.
    pub armed_in_kvm: u32,
    /// vCPUs whose timer the VMM owned at the save.
    pub vmm_owned: u32,
    /// Host timer expiries handled after the restore (all vCPUs).
    pub expiries_after_restore: u64,
    /// MSRs saved per vCPU (vCPU 0's count).
    pub msrs_saved: usize,
    /// MSRs KVM refused to take back: (vCPU, index, value written).
    pub msrs_refused: Vec<(u32, u32, u64)>,
    /// Whether `KVM_GET_MSR_INDEX_LIST` listed the PVM VIF page MSR.
    pub vif_listed: bool,
    /// The saved PVM VIF page MSR of each vCPU (PVM host only).
    pub vif_pages: Vec<u64>,
}

impl Figures {
    /// As JSON (the `snapshot` object of the output).
    pub fn json(&self) -> Value {
        json!({
            "at_ms": self.at_ms,
            "stop_us": self.stop_us,
            "pause_ms": self.pause_ms,
            "requests_before": self.requests_before,
            "armed_in_vmm": self.armed_in_vmm,
            "armed_in_kvm": self.armed_in_kvm,
            "vmm_owned": self.vmm_owned,
            "expiries_after_restore": self.expiries_after_restore,
            "msrs_saved": self.msrs_saved,
            "msrs_refused": self.msrs_refused.iter()
                .map(|(v, i, d)| json!({"vcpu": v, "msr": format!("{i:#x}"), "value": format!("{d:#x}")}))
                .collect::<Vec<_>>(),
            "vif_msr_listed": self.vif_listed,
            "vif_pages": self.vif_pages.iter().map(|v| format!("{v:#x}")).collect::<Vec<_>>(),
        })
    }

    /// As table rows.
    pub fn table(&self) -> String {
        let refused: Vec<String> = self
            .msrs_refused
            .iter()
            .map(|(v, i, d)| format!("vCPU {v} {i:#x}={d:#x}"))
            .collect();
        format!(
            "snapshot: paused at {} ms: every vCPU stopped in {} us, guest stopped {:.1} ms\n\
             requests started at the save, per vCPU: {:?}\n\
             deadlines armed at the save: {} in the VMM, {} in KVM ({} vCPUs VMM-owned)\n\
             host timer expiries after the restore: {}\n\
             MSRs saved per vCPU: {} (VIF page MSR {:#x} listed by KVM: {}); refused on restore: {}\n\
             (the guest TSC ran on while the VM was stopped: a deadline armed across the pause \
             fires up to the pause late, in the lateness max; the wall time includes the pause)\n",
            self.at_ms,
            self.stop_us,
            self.pause_ms,
            self.requests_before,
            self.armed_in_vmm,
            self.armed_in_kvm,
            self.vmm_owned,
            self.expiries_after_restore,
            self.msrs_saved,
            MSR_PVM_VIF_PAGE,
            self.vif_listed,
            if refused.is_empty() {
                "none".to_string()
            } else {
                refused.join(", ")
            }
        )
    }
}

/// What the vCPU threads send back: index, how the thread ended, when.
type Report = (usize, Result<Ended, Error>, Instant);

/// Starts one thread per vCPU; `pause` is shared by all of them.
fn spawn_vcpus(
    mode: Mode,
    vcpus: Vec<(VcpuFd, Carried)>,
    timers: &[Arc<Timer>],
    kickers: &[Arc<SignalKicker>],
    pause: Option<Arc<AtomicBool>>,
) -> Result<mpsc::Receiver<Report>, Error> {
    let (tx, rx) = mpsc::channel();
    for (i, (v, carried)) in vcpus.into_iter().enumerate() {
        let tx = tx.clone();
        let run = VcpuRun {
            index: i as u32,
            mode,
            timer: timers.get(i).cloned(),
            kicker: Some(kickers[i].clone()),
            pause: pause.clone(),
        };
        std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let r = vcpu::run_pausable(v, run, carried);
                let _ = tx.send((i, r, Instant::now()));
            })
            .map_err(Error::io("spawning a vCPU thread"))?;
    }
    Ok(rx)
}

/// Waits for one report of every vCPU thread.
fn collect(mode: Mode, rx: &mpsc::Receiver<Report>, n: u32) -> Result<Vec<Report>, Error> {
    (0..n)
        .map(|_| {
            rx.recv_timeout(vm::RUN_LIMIT).map_err(|_| Error::Hung {
                mode,
                limit: vm::RUN_LIMIT,
            })
        })
        .collect()
}

fn in_mode(mode: Mode, e: Error) -> Error {
    Error::InMode {
        mode,
        detail: String::new(),
        source: Box::new(e),
    }
}

/// When to pause.
#[derive(Clone, Copy, Debug)]
pub enum PauseAt {
    /// This long after the vCPU threads started (`--at-ms`).
    Time(Duration),
    /// Once every vCPU has started this many requests (`--at-request`;
    /// read from the guest's results page every millisecond).
    Request(u64),
}

/// Waits until it is time to pause. Returns a vCPU thread that ended
/// before (an error for the caller).
fn wait_for_pause(
    rx: &mpsc::Receiver<Report>,
    mem: &GuestMemoryMmap,
    vcpus: u32,
    at: PauseAt,
) -> Result<Option<Report>, Error> {
    match at {
        PauseAt::Time(t) => Ok(rx.recv_timeout(t).ok()),
        PauseAt::Request(n) => {
            let start = Instant::now();
            loop {
                if let Ok(report) = rx.recv_timeout(Duration::from_millis(1)) {
                    return Ok(Some(report));
                }
                let mut all = true;
                for cpu in 0..vcpus {
                    all &= requests_started(mem, cpu)? >= n;
                }
                if all {
                    return Ok(None);
                }
                if start.elapsed() > vm::RUN_LIMIT {
                    return Err(Error::Usage(format!(
                        "the vCPUs did not reach request {n} within {:?}",
                        vm::RUN_LIMIT
                    )));
                }
            }
        }
    }
}

/// One vCPU as saved.
struct Saved {
    kvm: VcpuState,
    timer: Option<VcpuTimerState>,
    carried: Carried,
    /// The crate's counters before the save (the restored timer's start
    /// at 0).
    counters: Option<VcpuCounters>,
}

/// Boots a VM in `mode`, runs the workload, pauses it `at` after the vCPU
/// threads started (or at a request), saves it, tears it down, restores it into a fresh VM
/// and runs it to DONE there. See the module documentation.
pub fn snapshot(mode: Mode, w: &Workload, at: PauseAt) -> Result<(ModeRun, Figures), Error> {
    let spec = mode.spec();
    let Booted {
        kvm,
        vm,
        mem,
        vcpus,
        tsc_khz,
        pvm_native,
        params,
    } = vm::boot(mode, w, 0)?;
    let pvm = vm::is_pvm_host(&vcpus[0]);
    let signal = vm::kick_signal()?;
    let (routing, timers) = vm::routing_and_timers(&kvm, spec, w, &vm, &mem, &vcpus)?;
    let (timers, mut kickers): (Vec<Arc<Timer>>, Vec<Arc<SignalKicker>>) =
        timers.into_iter().unzip();
    // Kernel mode has no timers: its vCPU threads get a kicker for the pause.
    while kickers.len() < vcpus.len() {
        kickers.push(Arc::new(SignalKicker::new(signal)));
    }
    let watchdog = |vm: &Arc<kvm_ioctls::VmFd>, mem: &Arc<GuestMemoryMmap>| Watchdog {
        vm: vm.clone(),
        mem: mem.clone(),
        vcpus: w.vcpus,
        bound_tsc: params.miss_bound_tsc,
    };
    let timer_thread = TimerThread::spawn(timers.clone(), watchdog(&vm, &mem))?;

    // 1.-2. Run, then pause.
    let cpu_start = vm::process_cpu_time();
    let start = Instant::now();
    let pause = Arc::new(AtomicBool::new(false));
    let rx = spawn_vcpus(
        mode,
        vcpus.into_iter().map(|v| (v, Carried::default())).collect(),
        &timers,
        &kickers,
        Some(pause.clone()),
    )?;
    if let Some((i, r, _)) = wait_for_pause(&rx, &mem, w.vcpus, at)? {
        pause.store(true, Ordering::SeqCst);
        kickers.iter().for_each(|k| k.kick());
        let what = match r {
            Ok(Ended::Done(_)) => "finished its workload before the pause: pause earlier \
                 or give it more --requests"
                .to_string(),
            Ok(Ended::Paused(_)) => "paused unasked".to_string(),
            Err(e) => return Err(in_mode(mode, e)),
        };
        return Err(in_mode(
            mode,
            Error::Vcpu {
                vcpu: i as u32,
                what,
            },
        ));
    }
    let pause_start = Instant::now();
    pause.store(true, Ordering::SeqCst);
    for k in &kickers {
        k.kick();
    }
    let mut paused: Vec<Option<(VcpuFd, Carried)>> = (0..w.vcpus).map(|_| None).collect();
    for (i, r, _) in collect(mode, &rx, w.vcpus)? {
        match r.map_err(|e| in_mode(mode, e))? {
            Ended::Paused(p) => paused[i] = Some(*p),
            Ended::Done(_) => {
                return Err(in_mode(
                    mode,
                    Error::Vcpu {
                        vcpu: i as u32,
                        what: "finished its workload before the pause: pause earlier or give \
                               it more --requests"
                            .into(),
                    },
                ))
            }
        }
    }
    let stop_us = pause_start.elapsed().as_micros() as u64;
    timer_thread.stop()?;

    // 3. Save.
    let mut figures = Figures {
        at_ms: (start.elapsed().as_millis() as u64).saturating_sub(stop_us / 1000),
        stop_us,
        ..Figures::default()
    };
    let mut saved = Vec::new();
    for (i, p) in paused.into_iter().enumerate() {
        let (vcpu, carried) = p.expect("every vCPU reported");
        let kvm_state = vmstate::save(&kvm, &vcpu, pvm)?;
        let timer = timers.get(i);
        let timer_state = timer.map(|t| t.save());
        if let Some(t) = timer {
            let deadline = t.with_timer(|t| t.deadline());
            if t.vmm_owned() {
                figures.vmm_owned += 1;
                figures.armed_in_vmm += u32::from(deadline != 0);
            }
        }
        figures.armed_in_kvm += u32::from(kvm_state.tsc_deadline() != 0);
        figures.msrs_saved = figures.msrs_saved.max(kvm_state.msr_count());
        figures.vif_listed = kvm_state.vif_listed;
        if let Some(v) = kvm_state.vif_page() {
            figures.vif_pages.push(v);
        }
        saved.push(Saved {
            kvm: kvm_state,
            timer: timer_state,
            carried,
            counters: timer.map(|t| t.counters()),
        });
        drop(vcpu);
    }
    let routing_state = routing.as_ref().map(|r| r.state());
    let mem_size = vm::mem_size(w);
    let image = copy_out(&mem, mem_size)?;
    for cpu in 0..w.vcpus {
        figures.requests_before.push(requests_started(&mem, cpu)?);
    }

    // 4. Tear down: the timers (and their timerfds), the routing, the VM.
    drop(timers);
    drop(kickers);
    drop(routing);
    drop(vm);
    drop(mem);

    // 5. Restore into a fresh VM.
    let (vm, mem) = vm::new_vm(&kvm, mem_size)?;
    copy_in(&mem, &image)?;
    drop(image);
    let mut vcpus = Vec::new();
    for (i, s) in saved.iter().enumerate() {
        let vcpu = vm
            .create_vcpu(i as u64)
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&vm::cpuid_for(&kvm, spec, i as u32)?)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        // The guest TSC first: equal to the host's, as at boot.
        vcpu::set_tsc_offset_zero(&vcpu)?;
        for (index, value) in vmstate::restore(&vcpu, &s.kvm)? {
            if index == MSR_PVM_VIF_PAGE {
                // Without it the restored vCPU runs in KVM's emulator while
                // the guest believes it runs natively (its interrupt flag
                // is in the VIF page): interrupts would come at the wrong
                // times.
                return Err(Error::Unsupported(format!(
                    "vCPU {i}: KVM refused the PVM VIF page MSR {MSR_PVM_VIF_PAGE:#x} = \
                     {value:#x} on restore; the guest ran natively and cannot be restored \
                     (try --execution emulated)"
                )));
            }
            figures.msrs_refused.push((i as u32, index, value));
        }
        vcpus.push(vcpu);
    }
    let mut timers = Vec::new();
    let mut kickers = Vec::new();
    let routing = match (spec.routing, &routing_state) {
        (Some(policy), Some(state)) => {
            let routing = Arc::new(MsrRouting::new(&kvm, vm.clone(), policy)?);
            routing
                .restore(state)
                .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER (restore)"))?;
            Some(routing)
        }
        _ => None,
    };
    for (i, (vcpu, s)) in vcpus.iter().zip(&saved).enumerate() {
        let kicker = Arc::new(SignalKicker::new(signal));
        if let (Some(routing), Some(state)) = (&routing, &s.timer) {
            let parts = VcpuTimerParts {
                index: i as u32,
                apic_id: i as u32,
                mem: mem.clone(),
                vm: vm.clone(),
                clock: GuestTsc::from_vcpu(vcpu)?,
                config: vm::host_config(spec, w),
            };
            let timer = VcpuTimer::restore(vcpu, parts, routing.clone(), kicker.clone(), state)?;
            timers.push(Arc::new(timer));
        }
        kickers.push(kicker);
    }
    // Last: the timers' host timers are armed again.
    for t in &timers {
        t.resume().map_err(|source| Error::Exit {
            vcpu: t.index(),
            source,
        })?;
    }
    let timer_thread = TimerThread::spawn(timers.clone(), watchdog(&vm, &mem))?;
    let carried: Vec<(VcpuFd, Carried)> = vcpus
        .into_iter()
        .zip(saved.iter_mut())
        .map(|(v, s)| (v, std::mem::take(&mut s.carried)))
        .collect();
    figures.pause_ms = pause_start.elapsed().as_secs_f64() * 1e3;
    let rx = spawn_vcpus(mode, carried, &timers, &kickers, None)?;

    // 6. Run to DONE.
    let mut outcomes: Vec<Option<VcpuOutcome>> = (0..w.vcpus).map(|_| None).collect();
    let mut last_done = start;
    for (i, r, at) in collect(mode, &rx, w.vcpus)? {
        let detail = |mem: &GuestMemoryMmap| {
            vm::read_results(mem, i as u32)
                .map(|r| {
                    format!(
                        " [guest fault kind {} vector {} error {:#x} rip {:#x}]",
                        r.fault_kind, r.fault_vector, r.fault_error, r.fault_rip
                    )
                })
                .unwrap_or_default()
        };
        match r {
            Ok(Ended::Done(mut o)) => {
                if let (Some(c), Some(before)) = (o.timer_counters.as_mut(), saved[i].counters) {
                    c.expiries += before.expiries;
                    c.takeovers += before.takeovers;
                    c.handbacks += before.handbacks;
                    c.forwarded += before.forwarded;
                    c.lvt_reads += before.lvt_reads;
                }
                outcomes[i] = Some(*o);
            }
            Ok(Ended::Paused(_)) => {
                return Err(in_mode(
                    mode,
                    Error::Vcpu {
                        vcpu: i as u32,
                        what: "paused unasked after the restore".into(),
                    },
                ))
            }
            Err(e) => {
                return Err(Error::InMode {
                    mode,
                    detail: format!(" (after the restore){}", detail(&mem)),
                    source: Box::new(e),
                })
            }
        }
        last_done = last_done.max(at);
    }
    timer_thread.stop()?;
    let wall = last_done - start;
    let vmm_cpu = vm::process_cpu_time().saturating_sub(cpu_start);
    figures.expiries_after_restore = timers.iter().map(|t| t.counters().expiries).sum();

    let timer_refs: Vec<&Arc<Timer>> = timers.iter().collect();
    let (results, lateness_cycles) = vm::collect_results(mode, &mem, &timer_refs, pvm_native, 0)?;
    // The host crate's counters are part of the timer's saved state: they
    // run on across the restore.
    let vcpu_counters: Vec<Counters> = timers.iter().map(|t| t.timer_counters()).collect();
    let host_counters = (!vcpu_counters.is_empty()).then(|| vcpu_counters.iter().copied().sum());
    let run = ModeRun {
        mode,
        tsc_khz,
        pvm_native,
        vcpus: outcomes
            .into_iter()
            .map(|o| o.expect("every vCPU reported"))
            .collect(),
        results,
        lateness_cycles,
        host_counters,
        vcpu_counters,
        hostile_vcpus: 0,
        wall,
        vmm_cpu,
    };
    Ok((run, figures))
}

/// `Results::requests_started` of `cpu`.
fn requests_started(mem: &GuestMemoryMmap, cpu: u32) -> Result<u64, Error> {
    Ok(vm::read_results(mem, cpu)?.requests_started)
}

/// The host mapping of all of `mem` (one region at guest-physical 0 of
/// `len` bytes, as `vm::new_vm` makes it).
fn host_range(mem: &GuestMemoryMmap, len: u64) -> Result<*mut u8, Error> {
    let slice = mem
        .get_slice(GuestAddress(0), len as usize)
        .map_err(Error::memory("mapping guest memory"))?;
    Ok(slice.ptr_guard_mut().as_ptr())
}

/// Guest memory as saved: its size and its non-zero 4 KiB pages (a fresh
/// mapping reads zero elsewhere; copying only these keeps the pause short,
/// as page faults dominate a full copy on this project's hosts).
struct Image {
    len: u64,
    pages: Vec<(u64, Box<[u8; PAGE]>)>,
}

const PAGE: usize = 4096;
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// A copy of guest memory, taken with every vCPU and the timer thread
/// stopped.
fn copy_out(mem: &GuestMemoryMmap, len: u64) -> Result<Image, Error> {
    let src = host_range(mem, len)?;
    let mut pages = Vec::new();
    for offset in (0..len).step_by(PAGE) {
        // SAFETY: `src` maps `len` bytes of guest memory (a multiple of
        // the page size), alive as long as `mem`; nothing writes it
        // meanwhile (the vCPUs and the timer thread are stopped).
        let page = unsafe { std::slice::from_raw_parts(src.add(offset as usize), PAGE) };
        // A slice comparison: `memcmp`, fast in debug builds too.
        if page != ZERO_PAGE.as_slice() {
            let mut copy = Box::new([0u8; PAGE]);
            copy.copy_from_slice(page);
            pages.push((offset, copy));
        }
    }
    Ok(Image { len, pages })
}

/// Copies `image` back into the fresh VM's (zeroed) guest memory, before
/// any vCPU runs.
fn copy_in(mem: &GuestMemoryMmap, image: &Image) -> Result<(), Error> {
    let dst = host_range(mem, image.len)?;
    for (offset, page) in &image.pages {
        // SAFETY: `dst` maps `image.len` bytes of the fresh guest memory,
        // alive as long as `mem`, which no vCPU or thread uses yet; each
        // page lies within it (it was read at the same offset of a mapping
        // of the same length) and `page` is a distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), dst.add(*offset as usize), PAGE) };
    }
    Ok(())
}
