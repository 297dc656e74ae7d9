//! The x86-64 implementation (feature `x86_64`): `wrmsr` and `rdtsc`.
//!
//! These execute privileged instructions and are meant for code running at
//! CPL 0 inside the guest.

use crate::MsrWriter;

/// Writes MSRs with the `wrmsr` instruction.
#[derive(Clone, Copy, Debug, Default)]
pub struct X86Msr;

impl MsrWriter for X86Msr {
    #[inline(always)]
    fn write_msr(&mut self, index: u32, value: u64) {
        // SAFETY: `wrmsr` only touches the named MSR. The caller of the
        // setter runs at CPL 0 (module documentation); writing the TSC
        // deadline and the pv registration MSR has no memory-safety effect.
        unsafe {
            core::arch::asm!(
                "wrmsr",
                in("ecx") index,
                in("eax") value as u32,
                in("edx") (value >> 32) as u32,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Reads an MSR with `rdmsr`.
///
/// # Safety
/// Must run at CPL 0, and `index` must be an MSR the CPU (or hypervisor)
/// implements, or the instruction raises #GP.
#[inline(always)]
pub unsafe fn read_msr(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees CPL 0 and a valid MSR.
    unsafe {
        core::arch::asm!(
            "rdmsr",
            in("ecx") index,
            out("eax") lo,
            out("edx") hi,
            options(nostack, preserves_flags, nomem),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The current TSC (`rdtsc`).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects; it is available at every CPL
    // unless CR4.TSD is set, which this guest-kernel code does not do.
    unsafe { core::arch::x86_64::_rdtsc() }
}
