//! VM set-up: the capabilities the feature needs, the CPUID bit, and 32-bit
//! x2APIC IDs in MSIs.

use kvm_bindings::{kvm_cpuid_entry2, kvm_enable_cap, CpuId, KVM_X2APIC_API_USE_32BIT_IDS};
use kvm_ioctls::{Cap, Kvm, VmFd};
use lazy_tscdeadline_abi::{KVM_CPUID_FEATURES, KVM_FEATURE_LAZY_TSCDEADLINE};

use crate::error::SetupError;

/// CPUID leaf with the hypervisor signature and the highest KVM leaf.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;

/// The capabilities the feature needs, with their names.
pub const REQUIRED_CAPABILITIES: [(Cap, &str); 6] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP (an in-kernel LAPIC)"),
    (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
    (Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR"),
    (Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER"),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
    (Cap::GetTscKhz, "KVM_CAP_GET_TSC_KHZ"),
];

/// Checks that `/dev/kvm` has every capability in
/// [`REQUIRED_CAPABILITIES`]; the error names the first one missing.
pub fn check_capabilities(kvm: &Kvm) -> Result<(), SetupError> {
    match REQUIRED_CAPABILITIES
        .iter()
        .find(|(cap, _)| !kvm.check_extension(*cap))
    {
        Some((_, name)) => Err(SetupError::MissingCapability(name)),
        None => Ok(()),
    }
}

/// Advertises the feature: sets bit [`KVM_FEATURE_LAZY_TSCDEADLINE`] of EAX
/// in CPUID leaf `0x40000001`, adding that leaf, and the KVM signature leaf
/// `0x40000000` if missing (raising its highest-leaf value to `0x40000001`
/// when lower). Only advertise it to a guest whose two MSRs the VMM handles
/// (see [`MsrRouting`](crate::MsrRouting)).
pub fn advertise(cpuid: &mut CpuId) -> Result<(), SetupError> {
    set_feature_bit(cpuid, true)
}

/// Clears the feature bit (the leaves stay).
pub fn withdraw(cpuid: &mut CpuId) -> Result<(), SetupError> {
    set_feature_bit(cpuid, false)
}

fn set_feature_bit(cpuid: &mut CpuId, on: bool) -> Result<(), SetupError> {
    let bit = 1u32 << KVM_FEATURE_LAZY_TSCDEADLINE;
    let sig = |s: &[u8; 4]| u32::from_le_bytes(*s);
    let mut have_signature = false;
    let mut have_features = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            KVM_CPUID_SIGNATURE => {
                have_signature = true;
                e.eax = e.eax.max(KVM_CPUID_FEATURES);
            }
            KVM_CPUID_FEATURES => {
                have_features = true;
                e.eax = if on { e.eax | bit } else { e.eax & !bit };
            }
            _ => {}
        }
    }
    if !have_signature {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: KVM_CPUID_SIGNATURE,
                eax: KVM_CPUID_FEATURES,
                ebx: sig(b"KVMK"),
                ecx: sig(b"VMKV"),
                edx: sig(b"M\0\0\0"),
                ..Default::default()
            })
            .map_err(|_| SetupError::CpuidFull)?;
    }
    if !have_features {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: KVM_CPUID_FEATURES,
                eax: if on { bit } else { 0 },
                ..Default::default()
            })
            .map_err(|_| SetupError::CpuidFull)?;
    }
    Ok(())
}

/// Makes KVM read x2APIC IDs above 255 from MSIs (`KVM_CAP_X2APIC_API` with
/// `KVM_X2APIC_API_USE_32BIT_IDS`), which
/// [`MsiInjector`](crate::MsiInjector) uses for such vCPUs. Call before
/// creating vCPUs; VMs with at most 256 vCPUs (IDs 0..=255) do not need it.
pub fn enable_32bit_apic_ids(vm: &VmFd) -> Result<(), SetupError> {
    let cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_X2APIC_API,
        args: [u64::from(KVM_X2APIC_API_USE_32BIT_IDS), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .map_err(SetupError::kvm("KVM_ENABLE_CAP(KVM_CAP_X2APIC_API)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cpuid: &CpuId, function: u32) -> Option<kvm_cpuid_entry2> {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .copied()
    }

    #[test]
    fn advertise_adds_missing_leaves_and_withdraw_clears_only_the_bit() {
        let mut cpuid = CpuId::new(0).unwrap();
        advertise(&mut cpuid).unwrap();
        let sig = leaf(&cpuid, KVM_CPUID_SIGNATURE).unwrap();
        assert_eq!(sig.eax, 0x4000_0001);
        assert_eq!(&sig.ebx.to_le_bytes(), b"KVMK");
        assert_eq!(leaf(&cpuid, 0x4000_0001).unwrap().eax, 1 << 18);

        // Other feature bits stay; a higher highest-leaf value stays.
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: KVM_CPUID_SIGNATURE,
                eax: 0x4000_0010,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: 0b1011,
                ..Default::default()
            },
        ])
        .unwrap();
        advertise(&mut cpuid).unwrap();
        assert_eq!(leaf(&cpuid, 0x4000_0001).unwrap().eax, 0b1011 | 1 << 18);
        assert_eq!(leaf(&cpuid, KVM_CPUID_SIGNATURE).unwrap().eax, 0x4000_0010);
        assert_eq!(cpuid.as_slice().len(), 2);
        withdraw(&mut cpuid).unwrap();
        assert_eq!(leaf(&cpuid, 0x4000_0001).unwrap().eax, 0b1011);
    }
}
