//! KVM's own state of a vCPU, saved from one VM and restored into a fresh
//! one (the mini-VMM's `snapshot`; the timers the VMM emulates are saved by
//! `lazy-tscdeadline-kvm` next to it).
//!
//! The order of a restore, which [`restore`] follows for one vCPU (after
//! the caller set its CPUID and its guest TSC): special registers (with
//! the APIC base, so that the LAPIC is in x2APIC mode before its state is
//! written), registers, FPU, the LAPIC (so that the LVT timer is in
//! TSC-deadline mode before `IA32_TSC_DEADLINE` is written), the MSRs
//! (`IA32_TSC_DEADLINE` among them: it carries KVM's deadline for a vCPU
//! whose timer KVM emulates, and reads 0 for one the VMM emulates), then
//! the pending events and the MP state. The guest TSC is not restored from
//! `IA32_TSC`: the mini-VMM keeps every guest TSC equal to the host's
//! (offset 0, `vcpu::configure`), which the fresh VM's vCPUs are set to
//! before this, so the guest sees the time the VM was stopped pass, as
//! after a live migration.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use lazy_tscdeadline_abi::MSR_IA32_TSC_DEADLINE;

use crate::error::Error;
use crate::layout::MSR_PVM_VIF_PAGE;

/// `IA32_TSC` and `IA32_TSC_ADJUST`: not restored (see the module docs).
const TSC_MSRS: [u32; 2] = [0x10, 0x3b];
/// Bit a host-initiated write of the PVM VIF page MSR must carry (measured
/// on this project's PVM hosts: a bare guest-physical address is refused
/// from userspace). `KVM_GET_MSRS` already returns the MSR with it (e.g.
/// `0x30400` for a VIF page at `0x30000`, `0x400` before the switch), so
/// this only makes sure.
const PVM_VIF_HOST_WRITE: u64 = 0x400;

/// KVM's state of one vCPU.
#[derive(Clone, Debug)]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    lapic: kvm_lapic_state,
    msrs: Vec<kvm_msr_entry>,
    events: kvm_vcpu_events,
    mp_state: kvm_mp_state,
    /// Whether `KVM_GET_MSR_INDEX_LIST` listed the PVM VIF page MSR.
    pub vif_listed: bool,
}

/// The MSRs to save: KVM's list of MSRs to save and restore, less the TSC,
/// plus the PVM VIF page MSR on a PVM host (listed or not). Also returns
/// whether KVM listed the VIF page MSR.
fn msr_indices(kvm: &Kvm, pvm: bool) -> Result<(Vec<u32>, bool), Error> {
    let list = kvm
        .get_msr_index_list()
        .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?;
    let mut indices: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|i| !TSC_MSRS.contains(i))
        .collect();
    let listed = indices.contains(&MSR_PVM_VIF_PAGE);
    if pvm && !listed {
        indices.push(MSR_PVM_VIF_PAGE);
    }
    Ok((indices, listed))
}

fn msrs_of(entries: &[kvm_msr_entry]) -> Result<Msrs, Error> {
    Msrs::from_entries(entries).map_err(|_| Error::Kvm {
        op: "building kvm_msrs",
        source: kvm_ioctls::Error::new(libc::ENOMEM),
    })
}

/// Reads `indices` one by one, keeping those KVM can read (the list names
/// MSRs a given vCPU model may not have).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut out = Vec::new();
    for &index in indices {
        let mut msrs = msrs_of(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])?;
        if let Ok(1) = vcpu.get_msrs(&mut msrs) {
            out.push(msrs.as_slice()[0]);
        }
    }
    Ok(out)
}

/// Saves `vcpu`'s state; the vCPU must be out of `KVM_RUN` (its thread
/// stopped). `pvm`: the host is a PVM host.
pub fn save(kvm: &Kvm, vcpu: &VcpuFd, pvm: bool) -> Result<VcpuState, Error> {
    let (indices, vif_listed) = msr_indices(kvm, pvm)?;
    Ok(VcpuState {
        regs: vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?,
        fpu: vcpu.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?,
        lapic: vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?,
        msrs: read_msrs(vcpu, &indices)?,
        events: vcpu
            .get_vcpu_events()
            .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?,
        mp_state: vcpu
            .get_mp_state()
            .map_err(Error::kvm("KVM_GET_MP_STATE"))?,
        vif_listed,
    })
}

/// Restores `state` into `vcpu` of a fresh VM (its CPUID and guest TSC set,
/// before it first runs). Returns the MSRs KVM refused to take back (left
/// at their reset values), with the value written.
pub fn restore(vcpu: &VcpuFd, state: &VcpuState) -> Result<Vec<(u32, u64)>, Error> {
    vcpu.set_sregs(&state.sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&state.regs)
        .map_err(Error::kvm("KVM_SET_REGS"))?;
    vcpu.set_fpu(&state.fpu)
        .map_err(Error::kvm("KVM_SET_FPU"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(Error::kvm("KVM_SET_LAPIC"))?;
    let mut refused = Vec::new();
    for e in &state.msrs {
        let mut e = *e;
        if e.index == MSR_PVM_VIF_PAGE && e.data != 0 {
            e.data |= PVM_VIF_HOST_WRITE;
        }
        // One at a time: KVM_SET_MSRS stops at the first refused entry.
        if !matches!(vcpu.set_msrs(&msrs_of(&[e])?), Ok(1)) {
            refused.push((e.index, e.data));
        }
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
    vcpu.set_mp_state(state.mp_state)
        .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
    Ok(refused)
}

impl VcpuState {
    /// KVM's saved `IA32_TSC_DEADLINE` (0 while the VMM owns the timer, or
    /// when nothing is armed).
    pub fn tsc_deadline(&self) -> u64 {
        self.msr(MSR_IA32_TSC_DEADLINE).unwrap_or(0)
    }

    /// The saved PVM VIF page MSR (None: not saved, not a PVM host).
    pub fn vif_page(&self) -> Option<u64> {
        self.msr(MSR_PVM_VIF_PAGE)
    }

    /// How many MSRs were saved.
    pub fn msr_count(&self) -> usize {
        self.msrs.len()
    }

    fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|e| e.index == index).map(|e| e.data)
    }
}
