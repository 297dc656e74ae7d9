//! x86-64 plumbing of the guest: interrupt entry stubs, the IDT, the x2APIC,
//! port I/O, and the two ways of waiting for an interrupt: `sti; hlt` when
//! KVM runs (or emulates) the guest with a real interrupt flag, and the PVM
//! virtual interrupt flag once the guest switched to native execution on a
//! PVM host.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::layout::{MAX_CPUS, MSR_PVM_VIF_PAGE, STACKS_GPA, STACK_STRIDE, VIF_GPA};

/// x2APIC MSRs.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// x2APIC task priority register.
pub const X2APIC_TPR: u32 = 0x808;
/// x2APIC end-of-interrupt register.
pub const X2APIC_EOI: u32 = 0x80b;
/// x2APIC spurious-interrupt vector register.
pub const X2APIC_SVR: u32 = 0x80f;
/// x2APIC LVT timer register.
pub const X2APIC_LVT_TIMER: u32 = 0x832;
/// Spurious interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Registers saved by `isr_common`, lowest address first, followed by what
/// the stub and the CPU pushed.
#[repr(C)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Entry stubs. Every stub runs on IST1 (see `install_idt`), so the red zone
// of the interrupted code, which host-target code uses, is never touched.
// The stub pushes a zero error code where the CPU does not push one, then
// the vector, and jumps to `isr_common`, which saves every general-purpose
// register and the SSE state (Rust code may use XMM registers), calls
// `isr_dispatch(&Frame)` and restores everything.
global_asm!(
    r#"
.macro ISR_STUB vec, has_err
    .global isr_stub_\vec
isr_stub_\vec:
    .if \has_err == 0
    push 0
    .endif
    push \vec
    jmp isr_common
.endm

    .section .text.isr, "ax"
isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    mov rbp, rsp
    and rsp, -64
    sub rsp, 512
    fxsave64 [rsp]
    cld
    call isr_dispatch
    fxrstor64 [rsp]
    mov rsp, rbp
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq

    ISR_STUB 0, 0
    ISR_STUB 1, 0
    ISR_STUB 2, 0
    ISR_STUB 3, 0
    ISR_STUB 4, 0
    ISR_STUB 5, 0
    ISR_STUB 6, 0
    ISR_STUB 7, 0
    ISR_STUB 8, 1
    ISR_STUB 9, 0
    ISR_STUB 10, 1
    ISR_STUB 11, 1
    ISR_STUB 12, 1
    ISR_STUB 13, 1
    ISR_STUB 14, 1
    ISR_STUB 15, 0
    ISR_STUB 16, 0
    ISR_STUB 17, 1
    ISR_STUB 18, 0
    ISR_STUB 19, 0
    ISR_STUB 20, 0
    ISR_STUB 21, 1
    ISR_STUB 22, 0
    ISR_STUB 23, 0
    ISR_STUB 24, 0
    ISR_STUB 25, 0
    ISR_STUB 26, 0
    ISR_STUB 27, 0
    ISR_STUB 28, 0
    ISR_STUB 29, 1
    ISR_STUB 30, 1
    ISR_STUB 31, 0
    ISR_STUB 236, 0
    ISR_STUB 237, 0
    ISR_STUB 255, 0

    .section .rodata.isr_table, "a"
    .balign 8
    .global isr_table
isr_table:
    .quad isr_stub_0, isr_stub_1, isr_stub_2, isr_stub_3
    .quad isr_stub_4, isr_stub_5, isr_stub_6, isr_stub_7
    .quad isr_stub_8, isr_stub_9, isr_stub_10, isr_stub_11
    .quad isr_stub_12, isr_stub_13, isr_stub_14, isr_stub_15
    .quad isr_stub_16, isr_stub_17, isr_stub_18, isr_stub_19
    .quad isr_stub_20, isr_stub_21, isr_stub_22, isr_stub_23
    .quad isr_stub_24, isr_stub_25, isr_stub_26, isr_stub_27
    .quad isr_stub_28, isr_stub_29, isr_stub_30, isr_stub_31
    .quad isr_stub_236, isr_stub_237, isr_stub_255
"#
);

pub use crate::layout::{TIMER_VECTOR, WAKE_VECTOR};
const _: () = assert!(
    TIMER_VECTOR == 236 && WAKE_VECTOR == 237,
    "update the ISR stubs"
);

extern "C" {
    static isr_table: [u64; 35];
}

/// One IDT gate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_hi: u32,
    zero: u32,
}

const EMPTY_GATE: Gate = Gate {
    offset_lo: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_hi: 0,
    zero: 0,
};

/// One IDT per vCPU: each is written only by its own vCPU before `lidt`.
/// Page-aligned (each IDT is exactly one page) so that no other data shares
/// a page with an IDT: a hypervisor may write-protect descriptor tables.
#[repr(C, align(4096))]
struct Idts([[Gate; 256]; crate::layout::MAX_CPUS]);

static mut IDTS: Idts = Idts([[EMPTY_GATE; 256]; crate::layout::MAX_CPUS]);

/// Code segment selector set up by the VMM.
const KERNEL_CS: u16 = 0x08;

/// Fills this vCPU's IDT (all gates on IST1) and loads it.
pub fn install_idt(cpu: usize) {
    // SAFETY: `IDTS[cpu]` is touched only by vCPU `cpu`, here, before any
    // interrupt can arrive; `isr_table` is read-only data from global_asm.
    unsafe {
        let idt = &mut (*core::ptr::addr_of_mut!(IDTS)).0[cpu];
        let table = &*core::ptr::addr_of!(isr_table);
        for (i, &handler) in table.iter().enumerate() {
            let vector = if i < 32 {
                i
            } else {
                [TIMER_VECTOR, WAKE_VECTOR, SPURIOUS_VECTOR][i - 32] as usize
            };
            idt[vector] = Gate {
                offset_lo: handler as u16,
                selector: KERNEL_CS,
                ist: 1,
                type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (handler >> 16) as u16,
                offset_hi: (handler >> 32) as u32,
                zero: 0,
            };
        }
        let pointer: [u16; 5] = {
            let base = idt.as_ptr() as u64;
            [
                (256 * 16 - 1) as u16,
                base as u16,
                (base >> 16) as u16,
                (base >> 32) as u16,
                (base >> 48) as u16,
            ]
        };
        asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(readonly, nostack, preserves_flags));
    }
}

/// The vCPU whose stack `sp` lies on (all stacks, including IST1, lie in
/// the vCPU's own stack area).
pub fn cpu_from_stack(sp: u64) -> usize {
    (sp.wrapping_sub(STACKS_GPA) / STACK_STRIDE) as usize % MAX_CPUS
}

/// The vCPU running this code.
fn this_cpu() -> usize {
    let sp: u64;
    // SAFETY: reads the stack pointer, nothing else.
    unsafe { asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    cpu_from_stack(sp)
}

/// Per-vCPU count of executed instructions that trap to KVM (see
/// `Results::trapping_insns`), except the protocol's own deadline WRMSRs,
/// which `DeadlineSetter` counts.
pub static TRAPPING: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Counts `n` trapping instructions of this vCPU (also for protocol WRMSRs
/// that `DeadlineSetter` does not count, such as a registration).
pub fn count_traps(n: u64) {
    TRAPPING[this_cpu()].fetch_add(n, Relaxed);
}

/// Whether each vCPU switched to native execution (see [`go_native`]).
static NATIVE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// This vCPU's VIF page (identity mapped).
fn vif(cpu: usize) -> *mut u8 {
    (VIF_GPA + cpu as u64 * 0x1000) as *mut u8
}

/// Switches vCPU `cpu` to native execution on a PVM host: from now on its
/// CPL0 code runs at hardware speed, `cpuid` returns the host's raw CPUID
/// (so every CPUID check must come before), and `sti`/`cli` no longer change
/// the interrupt flag: byte 0 of the VIF page does.
pub fn go_native(cpu: usize) {
    wrmsr(MSR_PVM_VIF_PAGE, vif(cpu) as u64);
    NATIVE[cpu].store(true, Relaxed);
}

/// Whether vCPU `cpu` switched to native execution.
pub fn is_native(cpu: usize) -> bool {
    NATIVE[cpu].load(Relaxed)
}

/// Writes an MSR that is not part of the protocol (APIC set-up, EOI).
pub fn wrmsr(index: u32, value: u64) {
    use lazy_tscdeadline_guest::MsrWriter;
    count_traps(1);
    lazy_tscdeadline_guest::x86::X86Msr.write_msr(index, value);
}

/// Reads an MSR.
pub fn rdmsr(index: u32) -> u64 {
    count_traps(1);
    // SAFETY: the guest runs at CPL 0 and only reads MSRs the (virtual) CPU
    // implements.
    unsafe { lazy_tscdeadline_guest::x86::read_msr(index) }
}

/// `cpuid`.
pub fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Enables the x2APIC, software-enables it and programs the LVT timer in
/// TSC-deadline mode with `vector`.
pub fn enable_x2apic(vector: u8) {
    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | (1 << 11) | (1 << 10));
    wrmsr(X2APIC_SVR, (1 << 8) | u64::from(SPURIOUS_VECTOR));
    wrmsr(X2APIC_TPR, 0);
    set_lvt_timer(vector, false);
}

/// Programs the LVT timer in TSC-deadline mode with `vector`, masked or
/// not. A VMM with an in-kernel LAPIC never sees this write.
pub fn set_lvt_timer(vector: u8, masked: bool) {
    wrmsr(
        X2APIC_LVT_TIMER,
        (0b10 << 17) | (u64::from(masked) << 16) | u64::from(vector),
    );
}

/// Signals end of interrupt.
pub fn eoi() {
    wrmsr(X2APIC_EOI, 0);
}

/// `out dx, eax`.
pub fn outl(port: u16, value: u32) {
    count_traps(1);
    // SAFETY: port I/O to the VMM's signalling ports has no memory effect.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

// The native wait: virtual IF on, `hlt`, virtual IF off. An interrupt that
// is delivered anywhere from the first instruction up to the `hlt` (a PVM
// host delivers a held interrupt at the trapping `hlt`, with RIP still on
// it) must not return into the `hlt`, or the vCPU would sleep past the
// wake-up it just took: `resume_after_native_wait` moves such a frame's RIP
// to `native_wait_end`.
global_asm!(
    r#"
    .section .text.native_wait, "ax"
    .global native_wait
native_wait:
    mov byte ptr [rdi], 1
    .global native_wait_hlt
native_wait_hlt:
    hlt
    .global native_wait_end
native_wait_end:
    mov byte ptr [rdi], 0
    ret
"#
);

extern "C" {
    /// Waits for one interrupt with the PVM virtual IF (`vif` = VIF page).
    fn native_wait(vif: *mut u8);
    static native_wait_hlt: u8;
    static native_wait_end: u8;
}

/// Called first for every interrupt and exception: if it interrupted the
/// native wait before its `hlt` completed, resumes after the `hlt`.
pub fn resume_after_native_wait(frame: &mut Frame) {
    let start = native_wait as *const () as u64;
    let (hlt, end) = (
        core::ptr::addr_of!(native_wait_hlt) as u64,
        core::ptr::addr_of!(native_wait_end) as u64,
    );
    if (start..=hlt).contains(&frame.rip) {
        frame.rip = end;
    }
}

/// Enables interrupts and halts until one arrives, then disables them again:
/// `sti; hlt; cli` (atomic: `sti` takes effect after `hlt` starts), or the
/// virtual-IF wait once this vCPU runs natively on a PVM host.
pub fn wait_for_interrupt(cpu: usize) {
    if is_native(cpu) {
        count_traps(1);
        // SAFETY: the VIF page of this vCPU is identity-mapped RAM reserved
        // for it; `native_wait` only writes its byte 0 and halts.
        unsafe { native_wait(vif(cpu)) }
    } else {
        count_traps(3);
        // SAFETY: masking/unmasking interrupts is sound at CPL 0 (not
        // `nomem`: it orders memory accesses around the wait); the handlers
        // run on IST1 and preserve all state.
        unsafe { asm!("sti", "hlt", "cli", options(nostack)) }
    }
}

/// Halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stops this vCPU; nothing to preserve.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Per-vCPU "a #GP is allowed now" flags for [`wrmsr_catch_gp`] and
/// [`rdmsr_catch_gp`]: the #GP handler clears the flag and skips the
/// faulting instruction instead of reporting a fault.
pub static EXPECT_GP: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Called by the #GP handler: if `cpu` allowed a #GP and the faulting
/// instruction is a WRMSR or RDMSR, skips it and returns true.
pub fn skip_caught_gp(cpu: usize, frame: &mut Frame) -> bool {
    if !EXPECT_GP[cpu].load(Relaxed) {
        return false;
    }
    // SAFETY: the faulting RIP points into the identity-mapped guest image
    // (the only code there is); two bytes are readable there.
    let insn = unsafe { core::ptr::read_volatile(frame.rip as *const [u8; 2]) };
    if insn != [0x0f, 0x30] && insn != [0x0f, 0x32] {
        return false;
    }
    EXPECT_GP[cpu].store(false, Relaxed);
    frame.rip += 2;
    true
}

/// WRMSR that reports whether it raised #GP instead of faulting.
pub fn wrmsr_catch_gp(cpu: usize, index: u32, value: u64) -> bool {
    count_traps(1);
    EXPECT_GP[cpu].store(true, Relaxed);
    // SAFETY: CPL 0; a #GP is caught by `skip_caught_gp`, which resumes after
    // this instruction. Not `nomem`: the handler writes `EXPECT_GP`.
    unsafe {
        asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
    !EXPECT_GP[cpu].swap(false, Relaxed)
}

/// RDMSR that returns `None` if it raised #GP instead of faulting.
pub fn rdmsr_catch_gp(cpu: usize, index: u32) -> Option<u64> {
    count_traps(1);
    EXPECT_GP[cpu].store(true, Relaxed);
    let (lo, hi): (u32, u32);
    // SAFETY: as for `wrmsr_catch_gp`; on #GP the outputs keep the zeros
    // loaded here.
    unsafe {
        asm!("xor eax, eax", "xor edx, edx", "rdmsr", in("ecx") index, out("eax") lo, out("edx") hi,
             options(nostack))
    }
    let gp = !EXPECT_GP[cpu].swap(false, Relaxed);
    (!gp).then_some(u64::from(hi) << 32 | u64::from(lo))
}

/// Lets pending interrupts in for one instruction (natively: virtual IF on,
/// a trapping `sti` if the host holds an interrupt, virtual IF off).
pub fn interrupt_window(cpu: usize) {
    if is_native(cpu) {
        let v = vif(cpu);
        // SAFETY: the VIF page of this vCPU is identity-mapped RAM reserved
        // for it, shared with the host; volatile accesses keep the order.
        unsafe {
            v.write_volatile(1);
            if v.add(1).read_volatile() != 0 {
                count_traps(1);
                asm!("sti", options(nostack));
            }
            v.write_volatile(0);
        }
    } else {
        count_traps(2);
        // SAFETY: as for `wait_for_interrupt`, without halting.
        unsafe { asm!("sti", "nop", "cli", options(nostack)) }
    }
}
