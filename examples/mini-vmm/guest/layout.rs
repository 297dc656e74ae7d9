//! Guest-physical memory layout and the parameter/result pages shared by the
//! VMM and the guest program. This file is compiled into both: into the VMM
//! as a module, and into the freestanding guest by `build.rs`.

/// GDT (built by the VMM).
pub const GDT_GPA: u64 = 0x1000;
/// One 128-byte TSS per vCPU (built by the VMM).
pub const TSS_GPA: u64 = 0x2000;
/// Size reserved per TSS.
pub const TSS_STRIDE: u64 = 128;
/// Workload parameters, written by the VMM before the guest starts.
pub const PARAMS_GPA: u64 = 0x3000;
/// Per-vCPU result pages, `RESULTS_GPA + cpu * RESULTS_STRIDE`.
pub const RESULTS_GPA: u64 = 0x10000;
/// Size of one result page.
pub const RESULTS_STRIDE: u64 = 0x1000;
/// Identity-mapping page tables (PML4, PDPT, PD).
pub const PML4_GPA: u64 = 0x20000;
/// Per-vCPU PVM "VIF" pages, `VIF_GPA + cpu * 0x1000` (zeroed RAM): once a
/// vCPU switched to native execution, byte 0 of its page is its virtual
/// interrupt flag and byte 1 is set by the host while it holds an
/// interrupt for the vCPU.
pub const VIF_GPA: u64 = 0x30000;
/// Where the flat guest image is loaded; also its entry point.
pub const IMAGE_GPA: u64 = 0x10_0000;
/// Largest image (code + data + bss) the layout leaves room for.
pub const IMAGE_MAX: u64 = 0xf0_0000;
/// Per-vCPU stacks: `STACKS_GPA + cpu * STACK_STRIDE`; the main stack is the
/// upper part, the interrupt (IST1) stack the lower `IST_SIZE` bytes.
pub const STACKS_GPA: u64 = 0x100_0000;
/// Stack space per vCPU.
pub const STACK_STRIDE: u64 = 0x4_0000;
/// Size of the IST1 stack inside each vCPU's stack area.
pub const IST_SIZE: u64 = 0x1_0000;
/// Per-vCPU lateness samples (u64 guest TSC cycles each).
pub const SAMPLES_GPA: u64 = 0x200_0000;
/// Samples stored per vCPU at most.
pub const SAMPLES_PER_CPU: u64 = 256 * 1024;
/// Most vCPUs the layout supports.
pub const MAX_CPUS: usize = 16;

/// Guest writes its vCPU index here once booted (x2APIC, IDT, registration
/// and the 0x6e0 probe write done).
pub const PORT_READY: u16 = 0x500;
/// Guest writes its vCPU index here when its results are complete.
pub const PORT_DONE: u16 = 0x501;
/// Guest writes its vCPU index here after an unexpected exception or a
/// panic; details are in its result page.
pub const PORT_FAULT: u16 = 0x502;

/// MSR through which a guest on a PVM host (the `kvm_pvm` module: software
/// virtualization without VMX/SVM) switches its CPL0 code from KVM's
/// instruction emulator to native execution by writing the guest-physical
/// address of its VIF page.
pub const MSR_PVM_VIF_PAGE: u32 = 0x4b56_4d10;
/// MSR that reads [`PVM_SIGNATURE`] on a PVM host (read by the VMM with
/// `KVM_GET_MSRS`).
pub const MSR_PVM_SIGNATURE: u32 = 0x4b56_4d11;
/// "PVM".
pub const PVM_SIGNATURE: u64 = 0x4d_5650;

/// Vector the guest programs into its LVT timer.
pub const TIMER_VECTOR: u8 = 0xec;
/// Vector the VMM's watchdog sends to wake a guest stuck waiting for a
/// deadline that never fired (so a miss is reported instead of a hang).
pub const WAKE_VECTOR: u8 = 0xed;

/// `Params::magic`.
pub const PARAMS_MAGIC: u64 = 0x6c61_7a79_5453_4344;

/// When the guest registers its lazy struct (`Params::register`): never;
/// every deadline is a plain `IA32_TSC_DEADLINE` write (kernel, eager and
/// stock modes).
pub const REGISTER_NEVER: u64 = 0;
/// At boot, before READY, after checking the CPUID bit (lazy mode).
pub const REGISTER_AT_BOOT: u64 = 1;
/// In the middle of request number `Params::register_after` (counted from
/// 0), right after that request armed its deadline with a plain write, so
/// that the host takes over a deadline armed in KVM; the CPUID bit is
/// checked at boot (optin mode).
pub const REGISTER_MID_RUN: u64 = 2;

/// Programs the honest vCPUs run (`Params::program`): the request/response
/// timer workload.
pub const PROGRAM_REQUESTS: u64 = 0;
/// The LVT-mask check (`guest/masking.rs`).
pub const PROGRAM_LVT_MASK: u64 = 1;

/// Fault kinds in `Results::fault_kind`.
pub const FAULT_EXCEPTION: u64 = 1;
/// The guest panicked.
pub const FAULT_PANIC: u64 = 2;
/// Registration requested but CPUID does not advertise the feature.
pub const FAULT_NO_LAZY_CPUID: u64 = 3;

/// Workload parameters (all `u64`, so the layout is identical everywhere).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Params {
    /// [`PARAMS_MAGIC`].
    pub magic: u64,
    /// When to register the lazy struct: one of the `REGISTER_*` values.
    pub register: u64,
    /// With [`REGISTER_MID_RUN`]: the request during which to register
    /// (requests before it use plain writes).
    pub register_after: u64,
    /// Requests per vCPU.
    pub requests: u64,
    /// Times each request's deadline is pushed later.
    pub depth: u64,
    /// Request timeout in guest TSC cycles.
    pub timeout_tsc: u64,
    /// Base seed; each vCPU mixes in its index.
    pub seed: u64,
    /// Per-mille of pushes that move the deadline earlier instead.
    pub early_per_mille: u64,
    /// One request in `cancel_one_in` is cancelled instead of awaited (0:
    /// none is).
    pub cancel_one_in: u64,
    /// A wait that lasts longer than deadline + this is a miss.
    pub miss_bound_tsc: u64,
    /// Number of vCPUs.
    pub vcpus: u64,
    /// vCPUs `0..hostile_vcpus` run the hostile program instead of the
    /// workload (registration at boot only).
    pub hostile_vcpus: u64,
    /// Size of guest RAM (one region from 0), for the hostile program's
    /// out-of-RAM registrations.
    pub mem_size: u64,
    /// 1: switch to native execution through [`MSR_PVM_VIF_PAGE`] after the
    /// CPUID checks and the lazy registration (PVM hosts only).
    pub native: u64,
    /// What the honest vCPUs run: a `PROGRAM_*` value.
    pub program: u64,
}

/// Per-vCPU results (all `u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Results {
    /// Set to 1 once the guest wrote the final values.
    pub done: u64,
    /// `set_next_deadline` calls.
    pub deadline_writes: u64,
    /// Writes the protocol had to trap (every write unless lazy).
    pub necessary_traps: u64,
    /// Requests awaited.
    pub waits: u64,
    /// Requests cancelled.
    pub cancels: u64,
    /// Timer interrupts that completed a wait (deadline reached).
    pub timer_interrupts: u64,
    /// Interrupts for a deadline the guest had replaced after it passed
    /// (a benign race: the old deadline expired while interrupts were off).
    pub stale_interrupts: u64,
    /// Waits whose deadline never fired within the bound.
    pub missed: u64,
    /// Interrupts before the current deadline.
    pub early: u64,
    /// Interrupts with nothing armed.
    pub spurious: u64,
    /// Wake-ups sent by the VMM watchdog.
    pub watchdog_wakes: u64,
    /// Guest TSC cycles spent inside `set_next_deadline`, summed.
    pub write_cycles: u64,
    /// Lateness samples stored at `SAMPLES_GPA + cpu * SAMPLES_PER_CPU * 8`.
    pub samples: u64,
    /// 1 if the lazy struct was registered.
    pub lazy_registered: u64,
    /// Necessary traps (`IA32_TSC_DEADLINE` writes) made after the
    /// registration, up to DONE (0 without one).
    pub traps_after_registration: u64,
    /// Deadline writes made after the registration, up to DONE.
    pub writes_after_registration: u64,
    /// Mid-run registration: `IA32_TSC_DEADLINE` read just before it (the
    /// deadline armed in KVM's LAPIC timer).
    pub deadline_before_registration: u64,
    /// Mid-run registration: `IA32_TSC_DEADLINE` read just after it (from
    /// the VMM, which owns the timer then and kept the deadline across the
    /// registration; 0 only if it fired in between).
    pub deadline_after_registration: u64,
    /// Guest-physical address of the registered struct.
    pub lazy_gpa: u64,
    /// Non-zero after a fault (`FAULT_*`).
    pub fault_kind: u64,
    /// Exception vector.
    pub fault_vector: u64,
    /// Exception error code.
    pub fault_error: u64,
    /// Faulting RIP.
    pub fault_rip: u64,
    /// Deadline the guest is currently halted waiting for (0: not waiting);
    /// read by the VMM watchdog.
    pub waiting_for: u64,
    /// Hostile program: iterations run.
    pub hostile_ops: u64,
    /// Hostile program: stores into the registered struct (garbage,
    /// `pending` below `armed`, pushes without a trap).
    pub hostile_stores: u64,
    /// Hostile program: WRMSRs of the two protocol MSRs.
    pub hostile_msr_writes: u64,
    /// Hostile program: accesses the spec says must raise #GP.
    pub gp_expected: u64,
    /// Hostile program: #GPs taken on those accesses.
    pub gp_taken: u64,
    /// Hostile program: accesses whose #GP (or its absence), or whose
    /// RDMSR value, differed from the spec.
    pub gp_mismatch: u64,
    /// LVT-mask check: rounds run (each runs the three cases below).
    pub mask_rounds: u64,
    /// Case A, a deadline written while the LVT is masked: RDMSR of
    /// IA32_TSC_DEADLINE read that deadline back.
    pub mask_a_readback: u64,
    /// Case A: after unmasking before the deadline, its interrupt came (on
    /// time: an early one counts in `early`).
    pub mask_a_fired: u64,
    /// Case B, masked and unmasked before an armed deadline: it fired.
    pub mask_b_fired: u64,
    /// Rounds of case A whose deadline passed before the unmask (a host
    /// or scheduling delay): not counted in case A's figures.
    pub mask_void_a: u64,
    /// Rounds of case B whose deadline passed before the unmask.
    pub mask_void_b: u64,
    /// Case C, a deadline that expired while masked: timer interrupts taken
    /// from arming it until well after unmasking (the SDM says none).
    pub mask_c_irqs: u64,
    /// Case C: RDMSR of IA32_TSC_DEADLINE read 0 after the masked expiry.
    pub mask_c_readback_zero: u64,
    /// Case C, lazy mode: `armed` in the shared struct read 0 after the
    /// masked expiry (counted in every mode; not lazy: always).
    pub mask_c_armed_zero: u64,
    /// The most guest TSC cycles an early timer interrupt came before the
    /// deadline it was taken for (0 without early interrupts).
    pub early_by_max_cycles: u64,
    /// 1 if the guest switched itself to native execution (PVM).
    pub native_switched: u64,
    /// Instructions the guest executed between READY and DONE that trap to
    /// KVM (`wrmsr`, `rdmsr`, `hlt`, `sti`, `cli`, `out`), counted by the
    /// guest itself: the VMM compares KVM's `insn_emulation` with it to tell
    /// native from emulated execution.
    pub trapping_insns: u64,
    /// Requests of the workload started so far, written at the start of
    /// each (the VMM's `snapshot` reads it at the pause).
    pub requests_started: u64,
}
