//! The host TSC. Every vCPU's TSC offset is 0 (see `vcpu::configure`), so
//! it is also the guest TSC.

/// Reads the TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects and is available in user mode on
    // the hosts KVM runs on.
    unsafe { core::arch::x86_64::_rdtsc() }
}
