//! The VM: capability checks, guest memory and its initial contents (image,
//! page tables, GDT, TSSs, parameters), CPUID, and one run of the workload
//! in one mode, with the timer glue of `lazy-tscdeadline-kvm` as the mode's
//! [`ModeSpec`] says.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use lazy_tscdeadline_abi::MSR_KVM_LAZY_TSCDEADLINE;
use lazy_tscdeadline_host::{Config, Counters, GracePolicy};
use lazy_tscdeadline_kvm::{setup, GuestTsc, MsrRouting, SignalKicker, VcpuTimer, VcpuTimerParts};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::Error;
use crate::expiry::{TimerThread, Watchdog};
use crate::layout::*;
pub use crate::mode::Mode;
use crate::mode::{ModeSpec, Registration};
use crate::vcpu::{self, Timer, VcpuOutcome};

/// The guest program, built by `build.rs`.
static GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest/guest.bin"));

/// How the guest's CPL0 code is to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Execution {
    /// Natively wherever the host can: on a PVM host the guest switches
    /// itself to native execution; with hardware virtualization it always
    /// runs natively.
    Auto,
    /// As `Auto` (kept as an explicit request).
    Native,
    /// In KVM's instruction emulator: the guest does not switch on a PVM
    /// host; refused on hosts that cannot emulate on request.
    Emulated,
}

impl Execution {
    /// Whether the guest must switch itself to native execution, given
    /// whether this is a PVM host.
    fn switch_to_native(self, pvm: bool) -> Result<bool, Error> {
        match (self, pvm) {
            (Execution::Auto | Execution::Native, pvm) => Ok(pvm),
            (Execution::Emulated, true) => Ok(false),
            (Execution::Emulated, false) => Err(Error::Unsupported(
                "--execution emulated needs a PVM host (kvm_pvm); this /dev/kvm runs guests with \
                 hardware virtualization and cannot be told to emulate them"
                    .into(),
            )),
        }
    }
}

/// Whether this `/dev/kvm` is a PVM host (the `kvm_pvm` module): its
/// signature MSR reads "PVM" through `KVM_GET_MSRS`. Anything else (the
/// MSR unknown, another value) means no.
pub(crate) fn is_pvm_host(vcpu: &VcpuFd) -> bool {
    let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_PVM_SIGNATURE,
        ..Default::default()
    }]) else {
        return false;
    };
    matches!(vcpu.get_msrs(&mut msrs), Ok(1)) && msrs.as_slice()[0].data == PVM_SIGNATURE
}

/// What the honest vCPUs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// The request/response timer workload.
    Requests,
    /// The LVT-mask check (`guest/masking.rs`): `requests` rounds.
    LvtMask,
}

/// The seeded workload every vCPU runs.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Requests per vCPU.
    pub requests: u64,
    /// Pushes per request.
    pub depth: u64,
    /// Request timeout.
    pub timeout_us: u64,
    /// Seed.
    pub seed: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Per-mille of pushes that move the deadline earlier.
    pub early_per_mille: u64,
    /// One request in this many is cancelled (0: none).
    pub cancel_one_in: u64,
    /// How the guest's code runs.
    pub execution: Execution,
    /// What the vCPUs run.
    pub program: Program,
    /// The grace policy of the modes whose host uses one (`lazy`, `optin`,
    /// ...), instead of the mode's own (`None`: the mode's).
    pub grace: Option<GracePolicy>,
}

/// The host timer's configuration of a mode for a workload: the mode's
/// policies, with the workload's grace policy where the mode has one.
pub fn host_config(spec: &ModeSpec, w: &Workload) -> Config {
    let config = spec.host.with_lazy_advertised(spec.advertised);
    match w.grace {
        Some(g) if config.grace.is_on() => config.with_grace(g),
        _ => config,
    }
}

/// Everything measured in one mode.
#[derive(Debug)]
pub struct ModeRun {
    /// The mode.
    pub mode: Mode,
    /// Guest TSC frequency.
    pub tsc_khz: u64,
    /// Whether the guest was told to switch itself to native execution (a
    /// PVM host); whether it then ran natively is measured in the report.
    pub pvm_native: bool,
    /// Per-vCPU VMM-side outcome, by index.
    pub vcpus: Vec<VcpuOutcome>,
    /// Per-vCPU guest results, by index.
    pub results: Vec<Results>,
    /// Lateness samples of all vCPUs, in guest TSC cycles.
    pub lateness_cycles: Vec<u64>,
    /// Host timer counters summed over vCPUs (eager and lazy only).
    pub host_counters: Option<Counters>,
    /// Host timer counters of each vCPU, by index (eager and lazy only).
    pub vcpu_counters: Vec<Counters>,
    /// vCPUs `0..hostile_vcpus` ran the hostile program.
    pub hostile_vcpus: u32,
    /// From the first vCPU's start to the last one's DONE.
    pub wall: Duration,
    /// CPU time (user + system) the VMM process used meanwhile.
    pub vmm_cpu: Duration,
}

/// A guest that runs longer than this is considered hung.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Waits longer than this past their deadline count as missed.
pub(crate) const MISS_BOUND_MS: u64 = 200;

fn check_caps(kvm: &Kvm, spec: &ModeSpec) -> Result<(), Error> {
    let needed = [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
        (Cap::GetTscKhz, "KVM_CAP_GET_TSC_KHZ"),
        (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ];
    for (cap, name) in needed {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCapability {
                cap: name,
                mode: spec.mode,
            });
        }
    }
    if spec.routing.is_some() {
        // The MSR routing's own needs.
        setup::check_capabilities(kvm)?;
    }
    Ok(())
}

/// The CPUID of vCPU `index`: KVM's supported set plus TSC-deadline and
/// x2APIC, the KVM signature leaf, and the lazy bit as the mode says.
pub(crate) fn cpuid_for(
    kvm: &Kvm,
    spec: &ModeSpec,
    index: u32,
) -> Result<kvm_bindings::CpuId, Error> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    if spec.advertised {
        setup::advertise(&mut cpuid)?;
    } else {
        setup::withdraw(&mut cpuid)?;
    }
    let sig = |s: &[u8; 4]| u32::from_le_bytes(*s);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ecx |= (1 << 24) | (1 << 21); // TSC-deadline, x2APIC
                e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24);
            }
            0xb | 0x1f => e.edx = index,
            // The guest checks for KVM's signature before the feature leaf.
            setup::KVM_CPUID_SIGNATURE => {
                (e.ebx, e.ecx, e.edx) = (sig(b"KVMK"), sig(b"VMKV"), sig(b"M\0\0\0"));
            }
            _ => {}
        }
    }
    Ok(cpuid)
}

fn mem_err(e: impl std::fmt::Display) -> Error {
    Error::Memory(format!("writing guest memory: {e}"))
}

/// Writes the image, identity page tables (first 1 GiB, 2 MiB pages), the
/// GDT with one TSS per vCPU, the TSSs and the parameters. Returns the GDT
/// limit.
pub(crate) fn write_boot_data(
    mem: &GuestMemoryMmap,
    params: &Params,
    vcpus: u32,
) -> Result<u16, Error> {
    if GUEST_IMAGE.len() as u64 > IMAGE_MAX {
        return Err(Error::Memory("guest image too large".into()));
    }
    mem.write_slice(GUEST_IMAGE, GuestAddress(IMAGE_GPA))
        .map_err(mem_err)?;

    let pdpt = PML4_GPA + 0x1000;
    let pd = PML4_GPA + 0x2000;
    // Present, writable and user (U/S) at every level: a PVM host runs the
    // guest's CPL0 code natively in user mode, where an entry without U/S
    // faults forever. Without SMEP/SMAP the bit changes nothing otherwise.
    mem.write_obj(pdpt | 0x7, GuestAddress(PML4_GPA))
        .map_err(mem_err)?;
    mem.write_obj(pd | 0x7, GuestAddress(pdpt))
        .map_err(mem_err)?;
    for i in 0..512u64 {
        // ... and a 2 MiB page.
        mem.write_obj((i << 21) | 0x87, GuestAddress(pd + i * 8))
            .map_err(mem_err)?;
    }

    let mut gdt: Vec<u64> = vec![0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for i in 0..u64::from(vcpus) {
        let base = TSS_GPA + i * TSS_STRIDE;
        let limit = 103u64;
        gdt.push(
            (limit & 0xffff)
                | ((base & 0xff_ffff) << 16)
                | (0x89 << 40)
                | (((limit >> 16) & 0xf) << 48)
                | (((base >> 24) & 0xff) << 56),
        );
        gdt.push(base >> 32);
        // 64-bit TSS: IST1 at offset 0x24, I/O map base (none) at 0x66.
        let ist_top = STACKS_GPA + i * STACK_STRIDE + IST_SIZE;
        mem.write_obj(ist_top, GuestAddress(base + 0x24))
            .map_err(mem_err)?;
        mem.write_obj(104u16, GuestAddress(base + 0x66))
            .map_err(mem_err)?;
    }
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_GPA + 8 * i as u64))
            .map_err(mem_err)?;
    }
    // SAFETY: `Params` is repr(C), all u64, no padding: any bytes are valid.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (params as *const Params).cast::<u8>(),
            std::mem::size_of::<Params>(),
        )
    };
    mem.write_slice(bytes, GuestAddress(PARAMS_GPA))
        .map_err(mem_err)?;
    Ok((gdt.len() * 8 - 1) as u16)
}

pub(crate) fn read_results(mem: &GuestMemoryMmap, cpu: u32) -> Result<Results, Error> {
    let mut r = Results::default();
    // SAFETY: `Results` is repr(C), all u64, no padding: any bytes are valid.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut r as *mut Results).cast::<u8>(),
            std::mem::size_of::<Results>(),
        )
    };
    mem.read_slice(
        bytes,
        GuestAddress(RESULTS_GPA + u64::from(cpu) * RESULTS_STRIDE),
    )
    .map_err(Error::memory("reading guest results"))?;
    Ok(r)
}

/// Opens /dev/kvm, or explains why it can't.
pub fn open_kvm() -> Result<Kvm, Error> {
    Kvm::new().map_err(Error::OpenKvm)
}

/// Boots a fresh VM in `mode` and runs the workload on every vCPU.
pub fn run(mode: Mode, w: &Workload) -> Result<ModeRun, Error> {
    run_with(mode, w, 0)
}

/// The VM-wide MSR routing.
pub(crate) type Routing = MsrRouting<Arc<kvm_ioctls::VmFd>>;

/// One `VcpuTimer` per vCPU, with its signal kick.
pub(crate) type Timers = Vec<(Arc<Timer>, Arc<SignalKicker>)>;

/// A mode's routing (None without one) and its vCPUs' timers over it.
pub(crate) fn routing_and_timers(
    kvm: &Kvm,
    spec: &ModeSpec,
    w: &Workload,
    vm: &Arc<kvm_ioctls::VmFd>,
    mem: &Arc<GuestMemoryMmap>,
    vcpus: &[VcpuFd],
) -> Result<(Option<Arc<Routing>>, Timers), Error> {
    let Some(policy) = spec.routing else {
        return Ok((None, Vec::new()));
    };
    // Probes the kernel (once per process), enables MSR exits, installs
    // the filter for `policy`.
    let routing = Arc::new(MsrRouting::new(kvm, vm.clone(), policy)?);
    let signal = kick_signal()?;
    let mut timers = Vec::new();
    for (i, vcpu) in vcpus.iter().enumerate() {
        let kicker = Arc::new(SignalKicker::new(signal));
        let parts = VcpuTimerParts {
            index: i as u32,
            // The guest's x2APIC ID is its vCPU index (CPUID leaf 1/0xb).
            apic_id: i as u32,
            mem: mem.clone(),
            vm: vm.clone(),
            // After `vcpu::configure` set the TSC offset.
            clock: GuestTsc::from_vcpu(vcpu)?,
            config: host_config(spec, w),
        };
        let timer = VcpuTimer::new(vcpu, parts, routing.clone(), kicker.clone())?;
        timers.push((Arc::new(timer), kicker));
    }
    Ok((Some(routing), timers))
}

/// The signal that kicks vCPU threads out of `KVM_RUN`, its handler
/// installed once per process.
pub(crate) fn kick_signal() -> Result<libc::c_int, Error> {
    static SIGNAL: OnceLock<libc::c_int> = OnceLock::new();
    if let Some(s) = SIGNAL.get() {
        return Ok(*s);
    }
    let signal = vmm_sys_util::signal::SIGRTMIN();
    SignalKicker::install_handler(signal)?;
    Ok(*SIGNAL.get_or_init(|| signal))
}

/// Refuses workloads the guest's layout cannot hold.
pub(crate) fn check_workload(w: &Workload) -> Result<(), Error> {
    if w.vcpus == 0 || w.vcpus as usize > MAX_CPUS {
        return Err(Error::Usage(format!("--vcpus must be 1..={MAX_CPUS}")));
    }
    if w.requests > SAMPLES_PER_CPU {
        return Err(Error::Usage(format!(
            "--requests must be at most {SAMPLES_PER_CPU}"
        )));
    }
    Ok(())
}

/// The guest memory size for `w`.
pub(crate) fn mem_size(w: &Workload) -> u64 {
    let needed = SAMPLES_GPA + u64::from(w.vcpus) * SAMPLES_PER_CPU * 8;
    needed.max(64 << 20).next_multiple_of(2 << 20)
}

/// A fresh VM with its TSS address, the in-kernel irqchip and `mem_size`
/// bytes of (zeroed) guest memory registered at guest-physical 0.
pub(crate) fn new_vm(
    kvm: &Kvm,
    mem_size: u64,
) -> Result<(Arc<kvm_ioctls::VmFd>, Arc<GuestMemoryMmap>), Error> {
    let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
    vm.set_tss_address(0xfffb_d000)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .map_err(Error::memory("allocating guest memory"))?,
    );
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(Error::memory("host address of guest memory"))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `mem`. The Arc is held
        // by the vCPU timers and the timer thread for as long as they run; if
        // a vCPU thread outlived it after an error, KVM would only fail its
        // accesses to the unmapped range (it validates user addresses).
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }

    Ok((vm, mem))
}

/// A VM booted up to its first `KVM_RUN`: memory written, vCPUs
/// configured.
pub(crate) struct Booted {
    pub kvm: Kvm,
    pub vm: Arc<kvm_ioctls::VmFd>,
    pub mem: Arc<GuestMemoryMmap>,
    pub vcpus: Vec<VcpuFd>,
    pub tsc_khz: u64,
    /// Whether the guest is told to switch to native execution.
    pub pvm_native: bool,
    pub params: Params,
}

/// Creates and boots the VM of [`run_with`], up to its first `KVM_RUN`.
pub(crate) fn boot(mode: Mode, w: &Workload, hostile_vcpus: u32) -> Result<Booted, Error> {
    let spec = mode.spec();
    check_workload(w)?;
    let kvm = open_kvm()?;
    check_caps(&kvm, spec)?;
    let mem_size = mem_size(w);
    let (vm, mem) = new_vm(&kvm, mem_size)?;

    let mut vcpus = Vec::new();
    for i in 0..w.vcpus {
        vcpus.push(
            vm.create_vcpu(u64::from(i))
                .map_err(Error::kvm("KVM_CREATE_VCPU"))?,
        );
    }
    let tsc_khz = u64::from(
        vcpus[0]
            .get_tsc_khz()
            .map_err(Error::kvm("KVM_GET_TSC_KHZ"))?,
    );
    let pvm_native = w.execution.switch_to_native(is_pvm_host(&vcpus[0]))?;
    let params = Params {
        magic: PARAMS_MAGIC,
        register: spec.registration.guest_value(),
        register_after: spec.registration.register_after(w.requests),
        requests: w.requests,
        depth: w.depth,
        timeout_tsc: w.timeout_us * tsc_khz / 1000,
        seed: w.seed,
        early_per_mille: w.early_per_mille,
        cancel_one_in: w.cancel_one_in,
        miss_bound_tsc: MISS_BOUND_MS * tsc_khz,
        vcpus: u64::from(w.vcpus),
        hostile_vcpus: u64::from(hostile_vcpus),
        mem_size,
        native: u64::from(pvm_native),
        program: match w.program {
            Program::Requests => PROGRAM_REQUESTS,
            Program::LvtMask => PROGRAM_LVT_MASK,
        },
    };
    let gdt_limit = write_boot_data(&mem, &params, w.vcpus)?;
    for (i, v) in vcpus.iter().enumerate() {
        vcpu::configure(v, i as u32, &cpuid_for(&kvm, spec, i as u32)?, gdt_limit)?;
    }

    Ok(Booted {
        kvm,
        vm,
        mem,
        vcpus,
        tsc_khz,
        pvm_native,
        params,
    })
}

/// Like [`run`], with vCPUs `0..hostile_vcpus` running the hostile program
/// (lazy mode only) instead of the workload.
pub fn run_with(mode: Mode, w: &Workload, hostile_vcpus: u32) -> Result<ModeRun, Error> {
    let spec = mode.spec();
    if hostile_vcpus > 0 && spec.registration != Registration::AtBoot {
        return Err(Error::Usage(
            "the hostile program runs in lazy mode only".into(),
        ));
    }
    let Booted {
        kvm,
        vm,
        mem,
        vcpus,
        tsc_khz,
        pvm_native,
        params,
    } = boot(mode, w, hostile_vcpus)?;
    let (_, timers) = routing_and_timers(&kvm, spec, w, &vm, &mem, &vcpus)?;
    let timer_thread = TimerThread::spawn(
        timers.iter().map(|(t, _)| t.clone()).collect(),
        Watchdog {
            vm: vm.clone(),
            mem: mem.clone(),
            vcpus: w.vcpus,
            bound_tsc: params.miss_bound_tsc,
        },
    )?;

    let cpu_start = process_cpu_time();
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    for (i, v) in vcpus.into_iter().enumerate() {
        let tx = tx.clone();
        let timer = timers.get(i).cloned();
        std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let r = vcpu::run(v, i as u32, mode, timer);
                let _ = tx.send((i, r, Instant::now()));
            })
            .map_err(Error::io("spawning a vCPU thread"))?;
    }
    drop(tx);
    let mut outcomes: Vec<Option<VcpuOutcome>> = (0..w.vcpus).map(|_| None).collect();
    let mut last_done = start;
    for _ in 0..w.vcpus {
        let (i, r, at) = rx.recv_timeout(RUN_LIMIT).map_err(|_| Error::Hung {
            mode,
            limit: RUN_LIMIT,
        })?;
        let outcome = r.map_err(|e| {
            let detail = read_results(&mem, i as u32)
                .map(|r| {
                    format!(
                        " [guest fault kind {} vector {} error {:#x} rip {:#x}]",
                        r.fault_kind, r.fault_vector, r.fault_error, r.fault_rip
                    )
                })
                .unwrap_or_default();
            Error::InMode {
                mode,
                detail,
                source: Box::new(e),
            }
        })?;
        outcomes[i] = Some(outcome);
        last_done = last_done.max(at);
    }
    timer_thread.stop()?;
    let wall = last_done - start;
    let vmm_cpu = process_cpu_time().saturating_sub(cpu_start);

    let timer_refs: Vec<&Arc<Timer>> = timers.iter().map(|(t, _)| t).collect();
    let (results, lateness_cycles) =
        collect_results(mode, &mem, &timer_refs, pvm_native, hostile_vcpus)?;
    let vcpu_counters: Vec<Counters> = timers.iter().map(|(t, _)| t.timer_counters()).collect();
    let host_counters = (!vcpu_counters.is_empty()).then(|| vcpu_counters.iter().copied().sum());
    Ok(ModeRun {
        mode,
        tsc_khz,
        pvm_native,
        vcpus: outcomes.into_iter().map(|o| o.unwrap()).collect(),
        results,
        lateness_cycles,
        host_counters,
        vcpu_counters,
        hostile_vcpus,
        wall,
        vmm_cpu,
    })
}

/// Reads and checks every vCPU's results after DONE: the registration
/// against `timers` (by vCPU index; none without a routing), and the
/// lateness samples.
pub(crate) fn collect_results(
    mode: Mode,
    mem: &GuestMemoryMmap,
    timers: &[&Arc<Timer>],
    pvm_native: bool,
    hostile_vcpus: u32,
) -> Result<(Vec<Results>, Vec<u64>), Error> {
    let spec = mode.spec();
    let mut results = Vec::new();
    let mut lateness_cycles = Vec::new();
    let bad = |what: String| Error::Results { mode, what };
    for cpu in 0..mem_vcpus(mem)? {
        let r = read_results(mem, cpu)?;
        if r.done != 1 {
            return Err(bad(format!("vCPU {cpu} signalled done without results")));
        }
        if r.native_switched != u64::from(pvm_native) {
            return Err(bad(format!(
                "vCPU {cpu} did not switch to native execution as told"
            )));
        }
        let timer = timers.get(cpu as usize).copied();
        check_registration(spec, cpu, &r, timer, cpu < hostile_vcpus)?;
        let base = SAMPLES_GPA + u64::from(cpu) * SAMPLES_PER_CPU * 8;
        for s in 0..r.samples {
            let v: u64 = mem
                .read_obj(GuestAddress(base + s * 8))
                .map_err(Error::memory("reading lateness samples"))?;
            lateness_cycles.push(v);
        }
        results.push(r);
    }
    Ok((results, lateness_cycles))
}

/// The number of vCPUs, from the parameters in guest memory.
fn mem_vcpus(mem: &GuestMemoryMmap) -> Result<u32, Error> {
    let offset = std::mem::offset_of!(Params, vcpus) as u64;
    let n: u64 = mem
        .read_obj(GuestAddress(PARAMS_GPA + offset))
        .map_err(Error::memory("reading the parameters"))?;
    Ok(n as u32)
}

/// Checks what the guest says it registered against what the host timer
/// holds: where the mode's guest registers, an honest vCPU did, and the
/// host reports the same struct through the registration MSR; otherwise
/// nothing registered. (A hostile vCPU re-registers and disables at will:
/// not checked.)
fn check_registration(
    spec: &ModeSpec,
    cpu: u32,
    r: &Results,
    timer: Option<&Arc<Timer>>,
    hostile: bool,
) -> Result<(), Error> {
    if hostile {
        return Ok(());
    }
    let mode = spec.mode;
    let wanted = u64::from(spec.registration != Registration::Never);
    if r.lazy_registered != wanted {
        return Err(Error::Results {
            mode,
            what: format!("vCPU {cpu} reports lazy_registered = {}", r.lazy_registered),
        });
    }
    if let (1, Some(t)) = (wanted, timer) {
        let host = t
            .with_timer(|t| t.read_msr(MSR_KVM_LAZY_TSCDEADLINE))
            .map_err(|e| Error::Results {
                mode,
                what: format!("reading the registration MSR: {e}"),
            })?;
        if host != r.lazy_gpa | 1 {
            return Err(Error::Results {
                mode,
                what: format!(
                    "vCPU {cpu} registered its struct at {:#x} but the host holds {host:#x}",
                    r.lazy_gpa
                ),
            });
        }
    }
    Ok(())
}

/// User + system CPU time of the whole VMM process so far.
pub(crate) fn process_cpu_time() -> Duration {
    // SAFETY: `getrusage` only writes the zero-initialised struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
