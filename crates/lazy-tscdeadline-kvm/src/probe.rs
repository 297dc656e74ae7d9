//! The start-up probe: does a filtered guest write of `IA32_TSC_DEADLINE`
//! reach userspace on this kernel?
//!
//! Kernels that handle 0x6e0 in their VM-exit fastpath (with the VMX
//! preemption timer as the TSC-deadline timer) may never consult the MSR
//! filter for it. The probe runs a few instructions on a scratch VM with an
//! in-kernel LAPIC: enable x2APIC, put the LVT timer in TSC-deadline mode
//! (which is what enables the fastpath), write a far deadline to 0x6e0 with
//! the filter denying it, then `out` to a port. The first exit must be the
//! WRMSR; the port write means KVM took the MSR itself.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuExit};
use lazy_tscdeadline_abi::MSR_IA32_TSC_DEADLINE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::error::SetupError;

/// Where the probe's code starts.
const CODE: u64 = 0x10000;
/// Its page tables: PML4, PDPT, PD (one 2 MiB page).
const PML4: u64 = 0x1000;
/// The port the probe writes when the MSR did not exit.
const PORT: u16 = 0x501;

/// The probe program (64-bit code at [`CODE`]).
#[rustfmt::skip]
const PROGRAM: &[u8] = &[
    0xb9, 0x1b, 0x00, 0x00, 0x00,       // mov ecx, IA32_APIC_BASE
    0x0f, 0x32,                         // rdmsr
    0x0d, 0x00, 0x0c, 0x00, 0x00,       // or eax, x2APIC | enable
    0x0f, 0x30,                         // wrmsr
    0xb9, 0x0f, 0x08, 0x00, 0x00,       // mov ecx, x2APIC SVR
    0xb8, 0xff, 0x01, 0x00, 0x00,       // mov eax, enabled | vector 0xff
    0x31, 0xd2,                         // xor edx, edx
    0x0f, 0x30,                         // wrmsr
    0xb9, 0x32, 0x08, 0x00, 0x00,       // mov ecx, x2APIC LVT timer
    0xb8, 0xec, 0x00, 0x04, 0x00,       // mov eax, TSC-deadline mode | vector 0xec
    0x0f, 0x30,                         // wrmsr
    0xb9, 0xe0, 0x06, 0x00, 0x00,       // mov ecx, IA32_TSC_DEADLINE
    0xb8, 0xff, 0xff, 0xff, 0xff,       // mov eax, 0xffffffff
    0xba, 0xff, 0xff, 0xff, 0x7f,       // mov edx, 0x7fffffff (a far deadline)
    0x0f, 0x30,                         // wrmsr: must exit
    0x66, 0xba, 0x01, 0x05,             // mov dx, PORT
    0xee,                               // out dx, al: the MSR did not exit
    0xeb, 0xfe,                         // jmp $
];

/// Exits the probe waits through at most before it gives up.
const MAX_EXITS: usize = 16;

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SetupError {
    SetupError::kvm(op)
}

/// Runs the probe; `Err(FilterBypassed)` names what happened instead of the
/// exit.
pub(crate) fn filter_reaches_userspace(kvm: &Kvm) -> Result<(), SetupError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM (probe)"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(kvm_err("KVM_SET_TSS_ADDR (probe)"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP (probe)"))?;
    crate::routing::enable_filter_exits(&vm)?;
    let deny = [0u8];
    vm.set_msr_filter(
        MsrFilterDefaultAction::ALLOW,
        &[MsrFilterRange {
            flags: MsrFilterRangeFlags::WRITE,
            base: MSR_IA32_TSC_DEADLINE,
            msr_count: 1,
            bitmap: &deny,
        }],
    )
    .map_err(kvm_err("KVM_X86_SET_MSR_FILTER (probe)"))?;

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)])
        .map_err(|e| SetupError::ProbeMemory(e.to_string()))?;
    let write = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| SetupError::ProbeMemory(e.to_string()))
    };
    // Identity map of the first 2 MiB; present, writable and user at every
    // level (a PVM host runs guest code in user mode).
    write(PML4 + 0x1000 + 0x7, PML4)?;
    write(PML4 + 0x2000 + 0x7, PML4 + 0x1000)?;
    write(0x87, PML4 + 0x2000)?;
    mem.write_slice(PROGRAM, GuestAddress(CODE))
        .map_err(|e| SetupError::ProbeMemory(e.to_string()))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| SetupError::ProbeMemory(e.to_string()))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: 2 << 20,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping owned by `mem`, which outlives
    // the VM (both are dropped at the end of this function, the VM first).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (probe)"))?;

    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(kvm_err("KVM_CREATE_VCPU (probe)"))?;
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID (probe)"))?;
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= (1 << 24) | (1 << 21); // TSC-deadline, x2APIC
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(kvm_err("KVM_SET_CPUID2 (probe)"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS (probe)"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3,
        l: 0,
        db: 1,
        ..code
    };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr0 = 0x8005_0033; // PG, WP, NE, ET, MP, PE
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = 0x500; // LMA, LME
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err("KVM_SET_SREGS (probe)"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS (probe)"))?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(kvm_err("KVM_SET_REGS (probe)"))?;

    for _ in 0..MAX_EXITS {
        let seen = match vcpu.run() {
            Ok(VcpuExit::X86Wrmsr(exit)) if exit.index == MSR_IA32_TSC_DEADLINE => return Ok(()),
            Ok(VcpuExit::IoOut(PORT, _)) => "the guest's next instruction, not an exit".to_string(),
            Ok(other) => format!("{other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => format!("KVM_RUN error {e}"),
        };
        return Err(SetupError::FilterBypassed { seen });
    }
    Err(SetupError::FilterBypassed {
        seen: format!("{MAX_EXITS} interrupted runs"),
    })
}
