//! The vCPU ioctls the crate issues while the VMM holds kvm-ioctls'
//! borrowed `VcpuExit`: on its own duplicate of the vCPU file descriptor,
//! so they need no borrow of the `VcpuFd`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use kvm_bindings::{kvm_lapic_state, kvm_msr_entry, Msrs, KVMIO};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use crate::error::{ExitError, KvmError, SetupError};

ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_bindings::kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_bindings::kvm_msrs);

/// Offset of the LVT timer register in the LAPIC page.
const APIC_LVTT: usize = 0x320;

/// A duplicate of a vCPU's file descriptor for the ioctls the crate makes
/// on the vCPU's own thread.
#[derive(Debug)]
pub(crate) struct VcpuIoctls {
    fd: OwnedFd,
}

impl VcpuIoctls {
    /// Duplicates `vcpu`'s file descriptor (close-on-exec).
    pub(crate) fn new(vcpu: &VcpuFd) -> Result<Self, SetupError> {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor `vcpu` owns and keeps open
        // for this call returns a new descriptor or -1.
        let fd = unsafe { libc::fcntl(vcpu.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(SetupError::Kvm {
                op: "dup(vCPU fd)",
                source: KvmError::last(),
            });
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(VcpuIoctls { fd })
    }

    /// The LVT timer register of the vCPU's in-kernel LAPIC.
    pub(crate) fn lvt_timer(&self) -> Result<u32, ExitError> {
        let mut lapic = kvm_lapic_state::default();
        // SAFETY: KVM_GET_LAPIC writes one `kvm_lapic_state`, which we own,
        // through a valid vCPU descriptor.
        let ret = unsafe { ioctl_with_mut_ref(&self.fd, KVM_GET_LAPIC(), &mut lapic) };
        if ret != 0 {
            return Err(ExitError::Kvm {
                op: "KVM_GET_LAPIC",
                source: KvmError::last(),
            });
        }
        let r = &lapic.regs[APIC_LVTT..APIC_LVTT + 4];
        Ok(u32::from_le_bytes([
            r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8,
        ]))
    }

    /// Host-initiated RDMSR (not subject to the MSR filter).
    pub(crate) fn get_msr(&self, index: u32) -> Result<u64, ExitError> {
        let mut msrs = one_msr(index, 0)?;
        // SAFETY: KVM_GET_MSRS reads the header and entries of `msrs`, a
        // well-formed FAM struct we own, and writes the entries' data.
        let n = unsafe { ioctl_with_mut_ref(&self.fd, KVM_GET_MSRS(), msrs.as_mut_fam_struct()) };
        one_done("KVM_GET_MSRS", n)?;
        Ok(msrs.as_slice()[0].data)
    }

    /// Host-initiated WRMSR (not subject to the MSR filter).
    pub(crate) fn set_msr(&self, index: u32, value: u64) -> Result<(), ExitError> {
        let msrs = one_msr(index, value)?;
        // SAFETY: KVM_SET_MSRS only reads `msrs`, a well-formed FAM struct.
        let n = unsafe { ioctl_with_ref(&self.fd, KVM_SET_MSRS(), msrs.as_fam_struct_ref()) };
        one_done("KVM_SET_MSRS", n)
    }
}

/// The result of a `KVM_GET_MSRS`/`KVM_SET_MSRS` of one MSR, which returns
/// the number of MSRs done (-1 and errno on failure).
fn one_done(op: &'static str, n: i32) -> Result<(), ExitError> {
    match n {
        1 => Ok(()),
        n if n < 0 => Err(ExitError::Kvm {
            op,
            source: KvmError::last(),
        }),
        // KVM refused the MSR (its handler failed).
        _ => Err(ExitError::Kvm {
            op,
            source: KvmError::new(libc::EINVAL),
        }),
    }
}

fn one_msr(index: u32, data: u64) -> Result<Msrs, ExitError> {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|_| ExitError::Kvm {
        op: "building kvm_msrs",
        source: KvmError::new(libc::ENOMEM),
    })
}
