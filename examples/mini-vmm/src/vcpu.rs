//! vCPU set-up (64-bit mode straight from the VMM) and the vCPU thread:
//! its run loop and the one exit handler. Everything about the timer MSRs
//! is `lazy-tscdeadline-kvm`'s `VcpuTimer`; this module only counts.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_device_attr, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_segment, CpuId, Msrs,
    KVM_MP_STATE_RUNNABLE, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_kvm::{MsrOutcome, RoutingPolicy, SignalKicker, VcpuCounters, VcpuTimer};
use vm_memory::GuestMemoryMmap;

use crate::error::Error;
use crate::layout::*;
use crate::mode::Mode;
use crate::stats::VcpuStats;
use crate::tsc::rdtsc;

/// One vCPU's timer, from `lazy-tscdeadline-kvm`.
pub type Timer = VcpuTimer<Arc<GuestMemoryMmap>, Arc<VmFd>>;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Code segment selector of the GDT written by `vm::write_boot_data`.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of vCPU 0's TSS; vCPU `i` uses `TSS_SELECTOR + 16 * i`.
pub const TSS_SELECTOR: u16 = 0x18;
/// `_IOW(KVMIO, 0xe1, struct kvm_device_attr)`.
const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_aee1;
/// `_IOW(KVMIO, 0xe3, struct kvm_device_attr)`.
const KVM_HAS_DEVICE_ATTR: libc::c_ulong = 0x4018_aee3;
/// `IA32_TSC`.
const MSR_IA32_TSC: u32 = 0x10;

/// Puts `vcpu` (index `index`) in 64-bit mode at the guest entry point with
/// its own stack and TSS, sets its CPUID, makes its TSC equal to the host's,
/// and makes it runnable.
pub fn configure(vcpu: &VcpuFd, index: u32, cpuid: &CpuId, gdt_limit: u16) -> Result<(), Error> {
    vcpu.set_cpuid2(cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;

    let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: DATA_SELECTOR,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        base: TSS_GPA + u64::from(index) * TSS_STRIDE,
        limit: 103,
        selector: TSS_SELECTOR + 16 * index as u16,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;

    let mut regs = vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
    regs.rip = IMAGE_GPA;
    // As if `_start` had been called: RSP + 8 is 16-byte aligned.
    regs.rsp = STACKS_GPA + u64::from(index + 1) * STACK_STRIDE - 8;
    regs.rdi = u64::from(index);
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;

    set_tsc_offset_zero(vcpu)?;

    if index != 0 {
        // APs start directly in 64-bit mode: no INIT/SIPI.
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
    }
    Ok(())
}

/// Makes the guest TSC equal to the host TSC (offset 0, no scaling), so the
/// host reads guest time with `rdtsc`, and checks it took effect.
pub fn set_tsc_offset_zero(vcpu: &VcpuFd) -> Result<(), Error> {
    let offset: u64 = 0;
    let attr = kvm_device_attr {
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr: &offset as *const u64 as u64,
        flags: 0,
    };
    // kvm-ioctls 0.25 only offers VcpuFd::{has,set}_device_attr on
    // aarch64, so issue the two ioctls directly.
    for (request, what) in [
        (KVM_HAS_DEVICE_ATTR, "KVM_HAS_DEVICE_ATTR"),
        (KVM_SET_DEVICE_ATTR, "KVM_SET_DEVICE_ATTR"),
    ] {
        // SAFETY: both ioctls read a `kvm_device_attr` we own; for
        // KVM_SET_DEVICE_ATTR the kernel also reads the u64 at `attr.addr`,
        // which lives until the end of this function.
        let ret =
            unsafe { libc::ioctl(vcpu.as_raw_fd(), request, &attr as *const kvm_device_attr) };
        if ret != 0 {
            return Err(Error::Unsupported(format!(
                "KVM lacks the KVM_VCPU_TSC_CTRL/KVM_VCPU_TSC_OFFSET vCPU attribute ({what}: {}); \
                 cannot make guest TSC == host TSC",
                std::io::Error::last_os_error()
            )));
        }
    }
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|_| Error::Kvm {
        op: "KVM_GET_MSRS(IA32_TSC)",
        source: kvm_ioctls::Error::new(libc::ENOMEM),
    })?;
    let before = rdtsc();
    vcpu.get_msrs(&mut msrs)
        .map_err(Error::kvm("KVM_GET_MSRS(IA32_TSC)"))?;
    let after = rdtsc();
    let guest = msrs.as_slice()[0].data;
    if guest < before || guest > after {
        return Err(Error::Unsupported(format!(
            "guest TSC {guest} is not the host TSC (read between {before} and {after}) after setting offset 0 (TSC scaling active?)"
        )));
    }
    Ok(())
}

/// Exits seen by the VMM (returns from KVM_RUN) during the workload.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitCounts {
    /// All returns from KVM_RUN.
    pub total: u64,
    /// KVM_EXIT_X86_WRMSR.
    pub msr_writes: u64,
    /// KVM_EXIT_X86_RDMSR.
    pub msr_reads: u64,
    /// WRMSR exits for IA32_TSC_DEADLINE.
    pub tsc_deadline_writes: u64,
    /// WRMSR exits for IA32_TSC_DEADLINE while this vCPU's struct was
    /// registered (after the exit of its registration write).
    pub tsc_deadline_writes_registered: u64,
    /// WRMSR exits for the registration MSR.
    pub registration_writes: u64,
    /// #GP injected for an MSR access (one the timer does not handle, or a
    /// guest fault under the protocol).
    pub gp_injected: u64,
    /// Host timer expiries handled on this vCPU's thread (`service()`
    /// returned the outcome of a KICK).
    pub timer_expiries: u64,
    /// VMM TSC cycles spent in those `service()` calls (LVT read, KICK).
    pub expiry_cycles: u64,
}

/// What one vCPU thread brings back.
#[derive(Debug)]
pub struct VcpuOutcome {
    /// vCPU index.
    pub index: u32,
    /// Userspace exits between READY and DONE.
    pub exits: ExitCounts,
    /// IA32_TSC_DEADLINE write exits seen before READY (the boot probe).
    pub boot_tsc_deadline_writes: u64,
    /// Deltas of KVM's vCPU statistics between READY and DONE (None when
    /// KVM_GET_STATS_FD is unavailable).
    pub kvm_stats: Option<BTreeMap<String, u64>>,
    /// `lazy-tscdeadline-kvm`'s counters of this vCPU at DONE (modes with a
    /// routing only).
    pub timer_counters: Option<VcpuCounters>,
}

/// KVM_EXIT_INTERNAL_ERROR with its sub-error, data words and RIP.
fn internal_error(vcpu: &mut VcpuFd) -> String {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the active member of the exit union; it holds plain integers.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    format!(
        "KVM_EXIT_INTERNAL_ERROR suberror {} data {:x?} at guest RIP {rip:#x}",
        internal.suberror,
        &internal.data[..n]
    )
}

/// What the run loop does after an exit was handled.
enum Step {
    /// Run the vCPU again.
    Run,
    /// `KVM_RUN` returned EINTR (a kick): clear `immediate_exit`, run again.
    Interrupted,
    /// KVM_EXIT_INTERNAL_ERROR: read its details, then fail.
    InternalError,
    /// The guest reported DONE.
    Done(Box<VcpuOutcome>),
}

/// The vCPU thread's state: what it counts, and its timer.
struct VcpuThread {
    index: u32,
    mode: Mode,
    timer: Option<Arc<Timer>>,
    pause: Option<Arc<AtomicBool>>,
    stats: Option<VcpuStats>,
    snapshot: Option<BTreeMap<String, u64>>,
    /// KVM's statistics of the vCPU this one was restored from, READY to
    /// the pause.
    carried_stats: Option<BTreeMap<String, u64>>,
    exits: ExitCounts,
    boot_probe: u64,
    ready: bool,
    /// Whether this vCPU's struct is registered (as the timer says).
    registered: bool,
}

/// Runs vCPU `index` until the guest reports done. With a timer, `kicker`
/// (its [`SignalKicker`], whose handler is installed) is attached to this
/// thread while it runs the vCPU.
pub fn run(
    vcpu: VcpuFd,
    index: u32,
    mode: Mode,
    timer: Option<(Arc<Timer>, Arc<SignalKicker>)>,
) -> Result<VcpuOutcome, Error> {
    let (timer, kicker) = timer.unzip();
    let run = VcpuRun {
        index,
        mode,
        timer,
        kicker,
        pause: None,
    };
    match run_pausable(vcpu, run, Carried::default())? {
        Ended::Done(outcome) => Ok(*outcome),
        Ended::Paused(_) => Err(Error::Vcpu {
            vcpu: index,
            what: "paused without a pause request".into(),
        }),
    }
}

/// What a vCPU thread runs with.
pub struct VcpuRun {
    /// vCPU index.
    pub index: u32,
    /// The mode.
    pub mode: Mode,
    /// The vCPU's timer (modes with a routing).
    pub timer: Option<Arc<Timer>>,
    /// Its kicker, attached to the thread while it runs the vCPU (the
    /// timer's own where there is a timer).
    pub kicker: Option<Arc<SignalKicker>>,
    /// Set (then the kicker kicked) to make the thread stop: it calls
    /// `VcpuTimer::service` once more and returns [`Ended::Paused`].
    pub pause: Option<Arc<AtomicBool>>,
}

/// What a vCPU thread counted so far, carried across a snapshot into the
/// thread that runs the restored vCPU.
#[derive(Debug, Default)]
pub struct Carried {
    exits: ExitCounts,
    boot_probe: u64,
    ready: bool,
    registered: bool,
    /// KVM's statistics from READY to the pause (None: not READY yet, or
    /// no statistics).
    kvm_stats: Option<BTreeMap<String, u64>>,
}

/// How a vCPU thread ended.
#[derive(Debug)]
pub enum Ended {
    /// The guest reported DONE.
    Done(Box<VcpuOutcome>),
    /// It paused on request: the vCPU (out of `KVM_RUN`, its timer
    /// serviced) and what the thread counted.
    Paused(Box<(VcpuFd, Carried)>),
}

/// Runs a vCPU until the guest reports done or, with `run.pause`, until the
/// pause is requested; `carried` continues the counts of a thread that ran
/// the vCPU before a snapshot (default for a fresh vCPU).
pub fn run_pausable(mut vcpu: VcpuFd, run: VcpuRun, carried: Carried) -> Result<Ended, Error> {
    if let Some(k) = &run.kicker {
        k.attach(vcpu.get_kvm_run());
    }
    let stats = VcpuStats::open(&vcpu).ok();
    // A vCPU restored after READY counts KVM's statistics from now on (its
    // counters are the fresh vCPU's), on top of the carried ones.
    let snapshot = if carried.ready {
        stats.as_ref().and_then(|s| s.read().ok())
    } else {
        None
    };
    let mut thread = VcpuThread {
        index: run.index,
        mode: run.mode,
        timer: run.timer,
        pause: run.pause,
        stats,
        snapshot,
        carried_stats: carried.kvm_stats,
        exits: carried.exits,
        boot_probe: carried.boot_probe,
        ready: carried.ready,
        registered: carried.registered,
    };
    let outcome = thread.run_loop(&mut vcpu);
    if let Some(k) = &run.kicker {
        k.detach();
    }
    match outcome? {
        Some(done) => Ok(Ended::Done(Box::new(done))),
        None => {
            let kvm_stats = thread.kvm_stats_since_ready();
            Ok(Ended::Paused(Box::new((
                vcpu,
                Carried {
                    exits: thread.exits,
                    boot_probe: thread.boot_probe,
                    ready: thread.ready,
                    registered: thread.registered,
                    kvm_stats,
                },
            ))))
        }
    }
}

impl VcpuThread {
    fn fail(&self, what: impl Into<String>) -> Error {
        Error::Vcpu {
            vcpu: self.index,
            what: what.into(),
        }
    }

    fn exit_error(&self) -> impl FnOnce(lazy_tscdeadline_kvm::ExitError) -> Error {
        let vcpu = self.index;
        move |source| Error::Exit { vcpu, source }
    }

    /// Runs until DONE (`Some`) or a pause request (`None`, after the
    /// timer was serviced).
    fn run_loop(&mut self, vcpu: &mut VcpuFd) -> Result<Option<VcpuOutcome>, Error> {
        loop {
            self.service()?;
            if self
                .pause
                .as_ref()
                .is_some_and(|p| p.load(Ordering::SeqCst))
            {
                self.complete_exit(vcpu)?;
                self.service()?;
                return Ok(None);
            }
            let step = self.handle_exit(vcpu.run())?;
            match step {
                Step::Run => {}
                Step::Interrupted => vcpu.set_kvm_immediate_exit(0),
                Step::InternalError => return Err(self.fail(internal_error(vcpu))),
                Step::Done(outcome) => return Ok(Some(*outcome)),
            }
        }
    }

    /// Before a save: completes the exit last handled. KVM finishes an MSR
    /// or I/O exit (skips the `wrmsr` or `out`, or injects the #GP) only
    /// when `KVM_RUN` is entered again, and that pending completion is not
    /// part of the state userspace can save: a vCPU saved in between
    /// executes the instruction again after the restore (measured: an
    /// extra 0x6e0 exit after a restore). With `immediate_exit` set,
    /// `KVM_RUN` completes it and returns `EINTR` without running the guest
    /// (the KVM API documentation's way to complete pending operations).
    fn complete_exit(&mut self, vcpu: &mut VcpuFd) -> Result<(), Error> {
        vcpu.set_kvm_immediate_exit(1);
        let r = vcpu.run().map(|_| ()).map_err(|e| e.errno());
        vcpu.set_kvm_immediate_exit(0);
        match r {
            Err(libc::EINTR) => Ok(()),
            Err(errno) => Err(self.fail(format!(
                "KVM_RUN with immediate_exit (completing the last exit before the pause): errno {errno}"
            ))),
            Ok(()) => Err(self.fail(
                "KVM_RUN with immediate_exit returned an exit instead of EINTR before the pause",
            )),
        }
    }

    /// After every return from `KVM_RUN` (and before the first): the
    /// timer's take-over / hand-back and a pending host timer expiry.
    fn service(&mut self) -> Result<(), Error> {
        let Some(timer) = &self.timer else {
            return Ok(());
        };
        let start = rdtsc();
        let kicked = timer.service().map_err(self.exit_error())?;
        if kicked.is_some() {
            self.exits.timer_expiries += 1;
            self.exits.expiry_cycles += rdtsc().wrapping_sub(start);
        }
        Ok(())
    }

    /// The exit handler: every return from `KVM_RUN`.
    fn handle_exit(
        &mut self,
        exit: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    ) -> Result<Step, Error> {
        self.exits.total += 1;
        match exit {
            Ok(VcpuExit::IoOut(PORT_READY, _)) => self.on_ready().map(|()| Step::Run),
            Ok(VcpuExit::IoOut(PORT_DONE, _)) => {
                self.exits.total -= 1;
                Ok(Step::Done(Box::new(self.on_done())))
            }
            Ok(VcpuExit::IoOut(PORT_FAULT, data)) => Err(self.fail(format!(
                "guest fault reported (cpu byte {})",
                data.first().copied().unwrap_or(0)
            ))),
            Ok(VcpuExit::IoOut(port, _)) => {
                Err(self.fail(format!("unexpected port write {port:#x}")))
            }
            Ok(VcpuExit::X86Wrmsr(mut exit)) => {
                self.exits.msr_writes += 1;
                match exit.index {
                    MSR_IA32_TSC_DEADLINE => {
                        self.exits.tsc_deadline_writes += 1;
                        if self.registered {
                            self.exits.tsc_deadline_writes_registered += 1;
                        }
                        if !self.ready {
                            self.boot_probe += 1;
                        }
                    }
                    MSR_KVM_LAZY_TSCDEADLINE => self.exits.registration_writes += 1,
                    _ => {}
                }
                let outcome = match &self.timer {
                    Some(t) => t.handle_wrmsr(&mut exit).map_err(self.exit_error())?,
                    None => MsrOutcome::NotOurs,
                };
                if exit.index == MSR_KVM_LAZY_TSCDEADLINE {
                    if let Some(t) = &self.timer {
                        self.registered = t.with_timer(|t| t.registration().is_enabled());
                    }
                }
                self.count_gp(outcome, exit.error);
                Ok(Step::Run)
            }
            Ok(VcpuExit::X86Rdmsr(mut exit)) => {
                self.exits.msr_reads += 1;
                let outcome = match &self.timer {
                    Some(t) => t.handle_rdmsr(&mut exit).map_err(self.exit_error())?,
                    None => MsrOutcome::NotOurs,
                };
                self.count_gp(outcome, exit.error);
                Ok(Step::Run)
            }
            Ok(VcpuExit::Hlt) => Err(self.fail("unexpected HLT exit")),
            Ok(VcpuExit::Shutdown) => Err(self.fail("triple fault (KVM_EXIT_SHUTDOWN)")),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Err(self.fail(format!(
                "KVM_EXIT_FAIL_ENTRY reason {reason:#x} on cpu {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => Ok(Step::InternalError),
            Ok(other) => Err(self.fail(format!("unexpected exit {other:?}"))),
            // The kick signal (a host timer expired: `service` handles it
            // before the next run) or another one.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(Step::Interrupted)
            }
            Err(e) => Err(self.fail(format!("KVM_RUN: {e}"))),
        }
    }

    /// An MSR exit's outcome: not the timer's (any other MSR) gets #GP, as
    /// KVM would; the timer already set `error` for a guest fault.
    fn count_gp(&mut self, outcome: MsrOutcome, error: &mut u8) {
        match outcome {
            MsrOutcome::NotOurs => {
                *error = 1;
                self.exits.gp_injected += 1;
            }
            MsrOutcome::GuestFault(_) => self.exits.gp_injected += 1,
            _ => {}
        }
    }

    /// READY: boot is over. With `Always` routing the guest's boot-time
    /// write of 0x6e0 must have reached the VMM; counting starts.
    fn on_ready(&mut self) -> Result<(), Error> {
        let always = self.mode.spec().routing == Some(RoutingPolicy::Always);
        if always && self.boot_probe == 0 {
            return Err(self.fail(format!(
                "the guest's boot-time write of IA32_TSC_DEADLINE (0x6e0) never reached userspace \
                 although the MSR filter denies it: KVM handled it in its exit fastpath \
                 (handle_fastpath_set_msr_irqoff / TSC-deadline fastpath) without consulting the \
                 filter, so {} mode cannot be measured on this kernel",
                self.mode
            )));
        }
        self.ready = true;
        self.exits = ExitCounts::default();
        self.snapshot = self.stats.as_ref().and_then(|s| s.read().ok());
        Ok(())
    }

    /// KVM's statistics since READY (plus those carried from before a
    /// snapshot).
    fn kvm_stats_since_ready(&mut self) -> Option<BTreeMap<String, u64>> {
        let end = self.stats.as_ref().and_then(|s| s.read().ok());
        let mut delta: BTreeMap<String, u64> = match (self.snapshot.take(), end) {
            (Some(a), Some(b)) => b
                .into_iter()
                .map(|(k, v)| {
                    let d = v.wrapping_sub(a.get(&k).copied().unwrap_or(0));
                    (k, d)
                })
                .collect(),
            _ => return self.carried_stats.take(),
        };
        if let Some(carried) = self.carried_stats.take() {
            for (k, v) in carried {
                *delta.entry(k).or_default() += v;
            }
        }
        Some(delta)
    }

    /// DONE: KVM's statistics since READY, and the timer's counters.
    fn on_done(&mut self) -> VcpuOutcome {
        let kvm_stats = self.kvm_stats_since_ready();
        VcpuOutcome {
            index: self.index,
            exits: self.exits,
            boot_tsc_deadline_writes: self.boot_probe,
            kvm_stats,
            timer_counters: self.timer.as_ref().map(|t| t.counters()),
        }
    }
}
