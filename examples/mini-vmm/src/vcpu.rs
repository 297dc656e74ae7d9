//! vCPU set-up (64-bit mode straight from the VMM) and the vCPU thread's
//! run loop with the MSR exits of eager and lazy modes.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{
    kvm_device_attr, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_segment, CpuId, Msrs,
    KVM_MP_STATE_RUNNABLE, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::{handles_msr, ReadMsrError, WriteMsrError};

use crate::layout::*;
use crate::stats::VcpuStats;
use crate::timer::{rdtsc, VcpuTimer};
use crate::vm::Mode;

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
/// LVT timer register offset in the LAPIC page.
const APIC_LVTT: usize = 0x320;
/// `_IOW(KVMIO, 0xe1, struct kvm_device_attr)`.
const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_aee1;
/// `_IOW(KVMIO, 0xe3, struct kvm_device_attr)`.
const KVM_HAS_DEVICE_ATTR: libc::c_ulong = 0x4018_aee3;
/// `IA32_TSC`.
const MSR_IA32_TSC: u32 = 0x10;

/// Puts `vcpu` (index `index`) in 64-bit mode at the guest entry point with
/// its own stack and TSS, sets its CPUID, makes its TSC equal to the host's,
/// and makes it runnable.
pub fn configure(vcpu: &VcpuFd, index: u32, cpuid: &CpuId, gdt_limit: u16) -> Result<(), String> {
    vcpu.set_cpuid2(cpuid)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;

    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
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
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| format!("KVM_SET_FPU: {e}"))?;

    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = IMAGE_GPA;
    // As if `_start` had been called: RSP + 8 is 16-byte aligned.
    regs.rsp = STACKS_GPA + u64::from(index + 1) * STACK_STRIDE - 8;
    regs.rdi = u64::from(index);
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    set_tsc_offset_zero(vcpu)?;

    if index != 0 {
        // APs start directly in 64-bit mode: no INIT/SIPI.
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .map_err(|e| format!("KVM_SET_MP_STATE: {e}"))?;
    }
    Ok(())
}

/// Makes the guest TSC equal to the host TSC (offset 0, no scaling), so the
/// host reads guest time with `rdtsc`, and checks it took effect.
fn set_tsc_offset_zero(vcpu: &VcpuFd) -> Result<(), String> {
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
            return Err(format!(
                "KVM lacks the KVM_VCPU_TSC_CTRL/KVM_VCPU_TSC_OFFSET vCPU attribute ({what}: {}); \
                 cannot make guest TSC == host TSC",
                std::io::Error::last_os_error()
            ));
        }
    }
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|e| format!("{e:?}"))?;
    let before = rdtsc();
    vcpu.get_msrs(&mut msrs)
        .map_err(|e| format!("KVM_GET_MSRS(IA32_TSC): {e}"))?;
    let after = rdtsc();
    let guest = msrs.as_slice()[0].data;
    if guest < before || guest > after {
        return Err(format!(
            "guest TSC {guest} is not the host TSC (read between {before} and {after}) after setting offset 0 (TSC scaling active?)"
        ));
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
    /// WRMSR exits for the registration MSR.
    pub registration_writes: u64,
    /// #GP injected for an MSR access.
    pub gp_injected: u64,
    /// Host timer expiries handled on this vCPU's thread (LVT read, then
    /// `kick()`).
    pub timer_expiries: u64,
    /// VMM TSC cycles spent handling them (reading the LAPIC, `kick()`).
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

/// How the thread ended, if not with PORT_DONE.
fn fault_message(index: u32, what: &str) -> String {
    format!("vCPU {index}: {what}")
}

/// The LVT timer register of `vcpu`'s in-kernel LAPIC.
fn read_lvt_timer(vcpu: &VcpuFd) -> Result<u32, String> {
    let lapic = vcpu
        .get_lapic()
        .map_err(|e| format!("KVM_GET_LAPIC: {e}"))?;
    let r = &lapic.regs[APIC_LVTT..APIC_LVTT + 4];
    Ok(u32::from_le_bytes([
        r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8,
    ]))
}

/// Handles an expiry of the host timer on the vCPU thread: the LVT as the
/// guest has it now, then KICK (which injects only in TSC-deadline mode and
/// unmasked).
fn handle_expiry(
    vcpu: &VcpuFd,
    index: u32,
    t: &VcpuTimer,
    exits: &mut ExitCounts,
) -> Result<(), String> {
    let start = rdtsc();
    let lvt = read_lvt_timer(vcpu)?;
    {
        let mut timer = t.timer.lock().unwrap();
        // Read now, not when it changed: delivery is decided by this value.
        timer
            .observe_lvt_timer(lvt)
            .map_err(|e| fault_message(index, &format!("LVT update: {e}")))?;
        timer
            .kick()
            .map_err(|e| fault_message(index, &format!("timer expiry: {e}")))?;
    }
    exits.timer_expiries += 1;
    exits.expiry_cycles += rdtsc().wrapping_sub(start);
    Ok(())
}

/// Runs vCPU `index` until the guest reports done.
pub fn run(
    mut vcpu: VcpuFd,
    index: u32,
    mode: Mode,
    timer: Option<Arc<VcpuTimer>>,
) -> Result<VcpuOutcome, String> {
    if let Some(t) = &timer {
        t.attach(vcpu.get_kvm_run());
    }
    let outcome = run_loop(&mut vcpu, index, mode, timer.as_deref());
    if let Some(t) = &timer {
        t.detach();
    }
    outcome
}

fn run_loop(
    vcpu: &mut VcpuFd,
    index: u32,
    mode: Mode,
    timer: Option<&VcpuTimer>,
) -> Result<VcpuOutcome, String> {
    let stats = VcpuStats::open(vcpu).ok();
    let mut snapshot: Option<BTreeMap<String, u64>> = None;
    let mut exits = ExitCounts::default();
    let mut boot_probe = 0u64;
    let mut ready = false;
    loop {
        if let Some(t) = timer {
            if t.take_expiry() {
                handle_expiry(vcpu, index, t, &mut exits)?;
            }
        }
        // MSR writes to the emulated timer need KVM_GET_LAPIC, which cannot
        // be called while the exit (borrowing the vCPU) is alive: decode
        // first, handle after.
        let mut pending_write: Option<(u32, u64)> = None;
        match vcpu.run() {
            Ok(exit) => {
                exits.total += 1;
                match exit {
                    VcpuExit::IoOut(port, data) => {
                        let value = data.first().copied().unwrap_or(0);
                        match port {
                            PORT_READY => {
                                if mode != Mode::Kernel && boot_probe == 0 {
                                    return Err(format!(
                                        "vCPU {index}: the guest's boot-time write of IA32_TSC_DEADLINE (0x6e0) never \
                                         reached userspace although the MSR filter denies it: KVM handled it in its \
                                         exit fastpath (handle_fastpath_set_msr_irqoff / TSC-deadline fastpath) without \
                                         consulting the filter, so {mode} mode cannot be measured on this kernel"
                                    ));
                                }
                                ready = true;
                                exits = ExitCounts::default();
                                snapshot = stats.as_ref().and_then(|s| s.read().ok());
                            }
                            PORT_DONE => {
                                exits.total -= 1;
                                let end = stats.as_ref().and_then(|s| s.read().ok());
                                let kvm_stats = match (snapshot, end) {
                                    (Some(a), Some(b)) => Some(
                                        b.into_iter()
                                            .map(|(k, v)| {
                                                let d =
                                                    v.wrapping_sub(a.get(&k).copied().unwrap_or(0));
                                                (k, d)
                                            })
                                            .collect(),
                                    ),
                                    _ => None,
                                };
                                return Ok(VcpuOutcome {
                                    index,
                                    exits,
                                    boot_tsc_deadline_writes: boot_probe,
                                    kvm_stats,
                                });
                            }
                            PORT_FAULT => {
                                return Err(fault_message(
                                    index,
                                    &format!("guest fault reported (cpu byte {value})"),
                                ))
                            }
                            _ => {
                                return Err(fault_message(
                                    index,
                                    &format!("unexpected port write {port:#x}"),
                                ))
                            }
                        }
                    }
                    VcpuExit::X86Rdmsr(exit) => {
                        exits.msr_reads += 1;
                        let result = match timer {
                            Some(t) if handles_msr(exit.index) => {
                                t.timer.lock().unwrap().read_msr(exit.index)
                            }
                            _ => Err(ReadMsrError::UnknownMsr(exit.index)),
                        };
                        match result {
                            Ok(v) => *exit.data = v,
                            // Also MSRs not routed to the timer: #GP.
                            Err(_) => {
                                exits.gp_injected += 1;
                                *exit.error = 1;
                            }
                        }
                    }
                    VcpuExit::X86Wrmsr(exit) => {
                        exits.msr_writes += 1;
                        match exit.index {
                            MSR_IA32_TSC_DEADLINE => {
                                exits.tsc_deadline_writes += 1;
                                if !ready {
                                    boot_probe += 1;
                                }
                            }
                            MSR_KVM_LAZY_TSCDEADLINE => exits.registration_writes += 1,
                            _ => {}
                        }
                        if timer.is_some() && handles_msr(exit.index) {
                            pending_write = Some((exit.index, exit.data));
                        } else {
                            exits.gp_injected += 1;
                            *exit.error = 1;
                        }
                    }
                    VcpuExit::Hlt => return Err(fault_message(index, "unexpected HLT exit")),
                    VcpuExit::Shutdown => {
                        return Err(fault_message(index, "triple fault (KVM_EXIT_SHUTDOWN)"))
                    }
                    VcpuExit::FailEntry(reason, cpu) => {
                        return Err(fault_message(
                            index,
                            &format!("KVM_EXIT_FAIL_ENTRY reason {reason:#x} on cpu {cpu}"),
                        ))
                    }
                    VcpuExit::InternalError => {
                        return Err(fault_message(index, &internal_error(vcpu)))
                    }
                    other => {
                        return Err(fault_message(index, &format!("unexpected exit {other:?}")))
                    }
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // The kick signal (host timer expired) or another one; the
                // expiry is handled at the top of the loop.
                vcpu.set_kvm_immediate_exit(0);
                exits.total += 1;
                continue;
            }
            Err(e) => return Err(fault_message(index, &format!("KVM_RUN: {e}"))),
        }
        if let (Some((msr, value)), Some(t)) = (pending_write, timer) {
            let lvt = if msr == MSR_IA32_TSC_DEADLINE {
                Some(read_lvt_timer(vcpu)?)
            } else {
                None
            };
            let result = {
                let mut t = t.timer.lock().unwrap();
                if let Some(lvt) = lvt {
                    t.set_lvt_timer(lvt)
                        .map_err(|e| fault_message(index, &format!("LVT update: {e}")))?;
                }
                t.write_msr(msr, value)
            };
            if let Err(e @ (WriteMsrError::Backend(_) | WriteMsrError::UnknownMsr(_))) = &result {
                return Err(fault_message(index, &format!("WRMSR {msr:#x}: {e}")));
            }
            if result.is_err() {
                exits.gp_injected += 1;
                let run = vcpu.get_kvm_run();
                // The last exit was KVM_EXIT_X86_WRMSR, so `msr` is the
                // active member of the exit union; setting `error` makes KVM
                // inject #GP on the next KVM_RUN.
                run.__bindgen_anon_1.msr.error = 1;
            }
        }
    }
}
