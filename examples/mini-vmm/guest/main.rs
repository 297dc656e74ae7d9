//! The mini-VMM's guest: a freestanding x86-64 program, built by `build.rs`
//! with the host target (`no_std`, static, flat image at `IMAGE_GPA`).
//!
//! Each vCPU enters `_start` in 64-bit mode with its index in RDI and its
//! stack already set up by the VMM. It installs an IDT, enables the x2APIC
//! with the LVT timer in TSC-deadline mode, registers the lazy struct when
//! told to (and advertised: at boot, or in the middle of the workload), then runs the seeded deadline workload through
//! `lazy_tscdeadline_guest::DeadlineSetter` and reports into its result page.
#![no_std]
#![no_main]

mod arch;
mod hostile;
mod masking;
#[allow(dead_code)]
mod layout;

use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use lazy_tscdeadline_abi::{
    LazyTscDeadline, KVM_CPUID_FEATURES, KVM_FEATURE_LAZY_TSCDEADLINE, MSR_IA32_TSC_DEADLINE,
};
use lazy_tscdeadline_guest::x86::{rdtsc, X86Msr};
use lazy_tscdeadline_guest::{AtomicSharedFields, DeadlineSetter, MsrWriter};

use layout::*;

/// State shared between a vCPU's workload and its interrupt handler. The
/// workload only changes it with interrupts disabled.
pub(crate) struct CpuState {
    /// Deadline the workload currently wants (0: none).
    current: AtomicU64,
    /// Set by the handler when `current` was reached.
    pub(crate) fired: AtomicBool,
    /// Every timer-vector interrupt taken, whatever it was for.
    pub(crate) all_timer_irqs: AtomicU64,
    /// Deadlines that passed before being replaced: an interrupt for each
    /// may still be delivered and is not a protocol violation.
    stale_credit: AtomicU64,
    interrupts: AtomicU64,
    stale: AtomicU64,
    early: AtomicU64,
    /// The most cycles an early interrupt came before its deadline.
    early_by_max: AtomicU64,
    spurious: AtomicU64,
    wakes: AtomicU64,
    samples: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const CPU_STATE_INIT: CpuState = CpuState {
    current: AtomicU64::new(0),
    fired: AtomicBool::new(false),
    all_timer_irqs: AtomicU64::new(0),
    stale_credit: AtomicU64::new(0),
    interrupts: AtomicU64::new(0),
    stale: AtomicU64::new(0),
    early: AtomicU64::new(0),
    early_by_max: AtomicU64::new(0),
    spurious: AtomicU64::new(0),
    wakes: AtomicU64::new(0),
    samples: AtomicU64::new(0),
};

/// Page-aligned wrapper keeping hot data off pages shared with other data.
#[repr(C, align(4096))]
struct PageAligned<T>(T);

static STATES: PageAligned<[CpuState; MAX_CPUS]> = PageAligned([CPU_STATE_INIT; MAX_CPUS]);

/// The per-vCPU structs registered with the host (lazy and optin modes).
static mut LAZY: PageAligned<[LazyTscDeadline; MAX_CPUS]> = PageAligned(
    [LazyTscDeadline {
        armed: 0,
        pending: 0,
        flags: 0,
        pad: [0; 11],
    }; MAX_CPUS],
);

/// Entry point of every vCPU (placed first in the image by the linker
/// script).
#[no_mangle]
#[link_section = ".text.start"]
pub extern "C" fn _start(cpu: u64) -> ! {
    let cpu = cpu as usize;
    arch::install_idt(cpu);
    arch::enable_x2apic(arch::TIMER_VECTOR);
    // SAFETY: the VMM wrote the parameter page before starting any vCPU and
    // never changes it afterwards.
    let params: Params = unsafe { core::ptr::read_volatile(PARAMS_GPA as *const Params) };
    if params.magic != PARAMS_MAGIC || cpu >= MAX_CPUS {
        panic!("bad parameter page");
    }
    run(cpu, &params);
    arch::outl(PORT_DONE, cpu as u32);
    arch::halt_forever()
}

pub(crate) fn results(cpu: usize) -> *mut Results {
    (RESULTS_GPA + cpu as u64 * RESULTS_STRIDE) as *mut Results
}

/// Writes one field of this vCPU's result page.
#[macro_export]
macro_rules! report {
    ($cpu:expr, $field:ident, $value:expr) => {{
        let value: u64 = $value;
        let page: *mut $crate::layout::Results = $crate::results($cpu);
        // SAFETY: the result page of each vCPU is identity-mapped RAM that
        // only this vCPU writes; the VMM only reads it.
        unsafe { core::ptr::addr_of_mut!((*page).$field).write_volatile(value) }
    }};
}

/// Small deterministic PRNG (xorshift64*).
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64, cpu: usize) -> Self {
        let s = seed ^ (cpu as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        XorShift(if s == 0 { 0x2545_f491 } else { s })
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A vCPU's deadline writer and waiter, shared by the programs.
pub(crate) struct Workload<'a> {
    pub(crate) cpu: usize,
    pub(crate) state: &'a CpuState,
    setter: DeadlineSetter<AtomicSharedFields, X86Msr>,
    write_cycles: u64,
    /// A registration still to make (`REGISTER_MID_RUN`): the struct and
    /// its guest-physical address.
    deferred: Option<(*mut LazyTscDeadline, u64)>,
    /// The setter's (writes, traps) at the registration.
    at_registration: Option<(u64, u64)>,
}

impl Workload<'_> {
    /// Makes the deferred registration, if one is still to make: from now
    /// on deadlines go through the shared struct. Interrupts are disabled.
    fn register_deferred(&mut self) {
        if let Some((area, gpa)) = self.deferred.take() {
            // The deadline armed before registering (by KVM's LAPIC, or by
            // the VMM if another vCPU's registration routed 0x6e0 first),
            // then after: the same, as a registration leaves the timer
            // alone (docs/PROTOCOL.md §4.1), as on hardware and in the RFC.
            report!(
                self.cpu,
                deadline_before_registration,
                arch::rdmsr(MSR_IA32_TSC_DEADLINE)
            );
            register(&mut self.setter, self.cpu, area, gpa);
            // The registration WRMSR (not a deadline write) traps too.
            arch::count_traps(1);
            report!(
                self.cpu,
                deadline_after_registration,
                arch::rdmsr(MSR_IA32_TSC_DEADLINE)
            );
            let stats = self.setter.stats();
            self.at_registration = Some((stats.writes, stats.traps));
            // No re-programming: the deadline armed before the registration
            // stays armed in the VMM (unpublished, `armed` reads 0) and
            // fires on its own; the next deadline write traps and replaces
            // it.
        }
    }

    /// Sets the next deadline through the protocol's setter (interrupts are
    /// disabled), timing the call.
    pub(crate) fn set(&mut self, deadline: u64) {
        let old = self.state.current.load(Relaxed);
        self.state.current.store(deadline, Relaxed);
        let t0 = rdtsc();
        self.setter.set_next_deadline(deadline);
        let t1 = rdtsc();
        self.write_cycles += t1.wrapping_sub(t0);
        if old != 0 && t1 >= old {
            // The old deadline had passed: its interrupt may already be
            // pending (or be delivered by the host right now).
            self.state.stale_credit.fetch_add(1, Relaxed);
        }
    }

    /// Waits with interrupts enabled until `deadline` fired; false on a miss.
    pub(crate) fn wait(&mut self, deadline: u64, bound: u64) -> bool {
        report!(self.cpu, waiting_for, deadline);
        let ok = loop {
            if self.state.fired.load(Relaxed) {
                break true;
            }
            if rdtsc() > deadline.saturating_add(bound) {
                break false;
            }
            arch::wait_for_interrupt(self.cpu);
        };
        report!(self.cpu, waiting_for, 0);
        ok
    }
}

/// What a program did with its deadlines.
pub(crate) struct Counts {
    /// Deadlines awaited.
    pub(crate) waits: u64,
    /// Deadlines cancelled.
    pub(crate) cancels: u64,
    /// Waits that ended without their interrupt.
    pub(crate) missed: u64,
}

/// The request/response workload: per request a timeout armed, pushed
/// `depth` times, then awaited or cancelled.
fn requests(w: &mut Workload<'_>, p: &Params) -> Counts {
    let state = w.state;
    let mut rng = XorShift::new(p.seed, w.cpu);
    let timeout = p.timeout_tsc.max(1);
    let mut c = Counts {
        waits: 0,
        cancels: 0,
        missed: 0,
    };
    for request in 0..p.requests {
        report!(w.cpu, requests_started, request + 1);
        state.fired.store(false, Relaxed);
        w.set(rdtsc() + timeout);
        if request == p.register_after {
            // Optin mode: the deadline just armed is in KVM's LAPIC timer;
            // registering now makes the host take it over, and the pushes
            // below go through the shared struct.
            w.register_deferred();
        }
        for _ in 0..p.depth {
            let earlier = rng.next() % 1000 < p.early_per_mille;
            let d = rdtsc() + if earlier { timeout / 2 } else { timeout };
            w.set(d);
        }
        // Drawn whether or not cancels are on, so that the deadlines of a
        // seed do not depend on the cancel rate.
        let draw = rng.next();
        if p.cancel_one_in != 0 && draw.is_multiple_of(p.cancel_one_in) {
            w.set(0);
            c.cancels += 1;
        } else {
            c.waits += 1;
            let d = state.current.load(Relaxed);
            if !w.wait(d, p.miss_bound_tsc) {
                c.missed += 1;
                w.set(0);
            }
        }
    }
    c
}

fn lazy_advertised() -> bool {
    let sig = arch::cpuid(0x4000_0000);
    let kvm = sig[1] == u32::from_le_bytes(*b"KVMK")
        && sig[2] == u32::from_le_bytes(*b"VMKV")
        && sig[3] == u32::from_le_bytes(*b"M\0\0\0");
    kvm && sig[0] >= KVM_CPUID_FEATURES
        && arch::cpuid(KVM_CPUID_FEATURES)[0] & (1 << KVM_FEATURE_LAZY_TSCDEADLINE) != 0
}

/// Registers `area` (at guest-physical `gpa`) through `setter` and reports
/// it.
fn register(
    setter: &mut DeadlineSetter<AtomicSharedFields, X86Msr>,
    cpu: usize,
    area: *mut LazyTscDeadline,
    gpa: u64,
) {
    // SAFETY: `area` is `LAZY[cpu]`, a static, 64-byte aligned struct used
    // by this vCPU only, and from now on only through the atomics of
    // `AtomicSharedFields` (and by the host).
    let shared = unsafe { AtomicSharedFields::new(area) };
    shared.reset();
    if setter.register(shared, gpa).is_err() {
        panic!("registration rejected");
    }
    report!(cpu, lazy_registered, 1);
    report!(cpu, lazy_gpa, gpa);
}

fn run(cpu: usize, p: &Params) {
    let state = &STATES.0[cpu];
    let mut setter = DeadlineSetter::new(X86Msr);
    let mut lazy_area = None;
    let mut deferred = None;
    if p.register != REGISTER_NEVER {
        // The CPUID check is made at boot in any case: natively `cpuid`
        // shows the host's CPUID.
        if !lazy_advertised() {
            report!(cpu, fault_kind, FAULT_NO_LAZY_CPUID);
            arch::outl(PORT_FAULT, cpu as u32);
            arch::halt_forever();
        }
        // SAFETY: `LAZY[cpu]` is a static used by this vCPU only; only its
        // address is taken here.
        let area = unsafe { addr_of_mut!(LAZY.0[cpu]) };
        let gpa = area as u64; // identity mapped
        if p.register == REGISTER_AT_BOOT {
            register(&mut setter, cpu, area, gpa);
            lazy_area = Some((area, gpa));
        } else {
            deferred = Some((area, gpa));
        }
    }
    // Every CPUID check and the registration are done: only now may the
    // guest leave the emulator (natively, `cpuid` shows the host's CPUID).
    if p.native == 1 {
        arch::go_native(cpu);
        report!(cpu, native_switched, 1);
    }
    // Boot probe: one direct write of 0 (disarm) to IA32_TSC_DEADLINE, so
    // the VMM can check the MSR really exits to userspace before the
    // workload. Not a deadline write of the workload.
    X86Msr.write_msr(MSR_IA32_TSC_DEADLINE, 0);
    arch::outl(PORT_READY, cpu as u32);
    // Trapping instructions from here to DONE (KVM's statistics are read
    // at the READY and DONE exits), plus the DONE `out` itself.
    let traps_at_ready = arch::TRAPPING[cpu].load(Relaxed);
    let trapping_since_ready =
        move |protocol_traps: u64| arch::TRAPPING[cpu].load(Relaxed) - traps_at_ready + protocol_traps + 1;
    if (cpu as u64) < p.hostile_vcpus {
        match lazy_area {
            Some((area, gpa)) => {
                hostile::run(cpu, p, area, gpa);
                report!(cpu, trapping_insns, trapping_since_ready(0));
                return;
            }
            None => panic!("the hostile program needs lazy mode"),
        }
    }

    let mut w = Workload {
        cpu,
        state,
        setter,
        write_cycles: 0,
        deferred,
        at_registration: None,
    };
    let Counts {
        waits,
        cancels,
        missed,
    } = if p.program == PROGRAM_LVT_MASK {
        masking::run(&mut w, p, lazy_area.map(|(area, _)| area))
    } else {
        requests(&mut w, p)
    };
    // A mid-run registration the workload was too short to reach.
    w.register_deferred();
    let stats = w.setter.stats();
    if let Some((writes, traps)) = w.at_registration {
        report!(cpu, writes_after_registration, stats.writes - writes);
        report!(cpu, traps_after_registration, stats.traps - traps);
    } else if lazy_area.is_some() {
        report!(cpu, writes_after_registration, stats.writes);
        report!(cpu, traps_after_registration, stats.traps);
    }
    report!(cpu, deadline_writes, stats.writes);
    report!(cpu, necessary_traps, stats.traps);
    report!(cpu, waits, waits);
    report!(cpu, cancels, cancels);
    report!(cpu, missed, missed);
    report!(cpu, write_cycles, w.write_cycles);
    report!(cpu, timer_interrupts, state.interrupts.load(Relaxed));
    report!(cpu, stale_interrupts, state.stale.load(Relaxed));
    report!(cpu, early, state.early.load(Relaxed));
    report!(cpu, early_by_max_cycles, state.early_by_max.load(Relaxed));
    report!(cpu, spurious, state.spurious.load(Relaxed));
    report!(cpu, watchdog_wakes, state.wakes.load(Relaxed));
    report!(
        cpu,
        samples,
        state.samples.load(Relaxed).min(SAMPLES_PER_CPU)
    );
    report!(cpu, trapping_insns, trapping_since_ready(stats.traps));
    report!(cpu, done, 1);
}

fn on_timer(cpu: usize) {
    let now = rdtsc();
    let st = &STATES.0[cpu];
    st.all_timer_irqs.fetch_add(1, Relaxed);
    let current = st.current.load(Relaxed);
    if current != 0 && now >= current {
        st.current.store(0, Relaxed);
        st.fired.store(true, Relaxed);
        st.interrupts.fetch_add(1, Relaxed);
        let n = st.samples.fetch_add(1, Relaxed);
        if n < SAMPLES_PER_CPU {
            let slot = SAMPLES_GPA + (cpu as u64 * SAMPLES_PER_CPU + n) * 8;
            // SAFETY: the sample area of this vCPU is identity-mapped RAM
            // reserved by the layout; only this vCPU writes it.
            unsafe { (slot as *mut u64).write_volatile(now - current) };
        }
    } else if st.stale_credit.load(Relaxed) > 0 {
        st.stale_credit.fetch_sub(1, Relaxed);
        st.stale.fetch_add(1, Relaxed);
    } else if current == 0 {
        st.spurious.fetch_add(1, Relaxed);
    } else {
        st.early.fetch_add(1, Relaxed);
        st.early_by_max.fetch_max(current - now, Relaxed);
    }
}

/// Called by `isr_common` for every interrupt and exception.
#[no_mangle]
extern "C" fn isr_dispatch(frame: &mut arch::Frame) {
    arch::resume_after_native_wait(frame);
    let cpu = arch::cpu_from_stack(frame as *mut arch::Frame as u64);
    match frame.vector as u8 {
        arch::TIMER_VECTOR => {
            on_timer(cpu);
            arch::eoi();
        }
        arch::WAKE_VECTOR => {
            STATES.0[cpu].wakes.fetch_add(1, Relaxed);
            arch::eoi();
        }
        arch::SPURIOUS_VECTOR => {}
        13 if arch::skip_caught_gp(cpu, frame) => {}
        _ => {
            report!(cpu, fault_vector, frame.vector);
            report!(cpu, fault_error, frame.error);
            report!(cpu, fault_rip, frame.rip);
            report!(cpu, fault_kind, FAULT_EXCEPTION);
            arch::outl(PORT_FAULT, cpu as u32);
            arch::halt_forever();
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    let marker = 0u8;
    let cpu = arch::cpu_from_stack(addr_of!(marker) as u64);
    report!(cpu, fault_kind, FAULT_PANIC);
    arch::outl(PORT_FAULT, cpu as u32);
    arch::halt_forever()
}

/// The precompiled `core` of the host target carries unwind tables that
/// name this symbol; with `panic=abort` it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
