//! The crate's errors, one type per kind of caller decision.
//!
//! - [`SetupError`]: the VM cannot use the lazy TSC deadline feature (a
//!   missing capability, a kernel that bypasses the MSR filter): do not
//!   advertise it and leave the TSC-deadline timer to KVM.
//! - [`ExitError`]: handling an exit or an expiry failed in the VMM (an
//!   ioctl, the host timer, the interrupt injection). Not the guest's fault;
//!   the VMM usually stops the VM. Guest faults are not errors: they are
//!   answered with #GP through the exit and reported as
//!   [`MsrOutcome::GuestFault`](crate::MsrOutcome::GuestFault).
//! - [`RestoreError`]: saved timers could not be restored.

use lazy_tscdeadline_host::{BackendError, StateError};

/// A KVM ioctl's error (an errno).
pub type KvmError = kvm_ioctls::Error;

/// Why the VM cannot use the lazy TSC deadline feature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// `/dev/kvm` lacks a capability the feature needs.
    #[error("/dev/kvm lacks {0}, which the lazy TSC deadline timer needs")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("{op}: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// Its error.
        #[source]
        source: KvmError,
    },
    /// A guest write of `IA32_TSC_DEADLINE` did not reach the VMM although
    /// the MSR filter denies it: this kernel handles the MSR in its exit
    /// fastpath without consulting the filter. Leave the timer to KVM and do
    /// not advertise the feature.
    #[error(
        "a guest write of IA32_TSC_DEADLINE did not reach the VMM although the MSR filter denies it \
         (the probe saw {seen}): this kernel handles it in its exit fastpath; keep KVM's in-kernel \
         timer and do not advertise the lazy TSC deadline feature"
    )]
    FilterBypassed {
        /// What the probe vCPU did instead.
        seen: String,
    },
    /// The CPUID table has no room for the leaves to add.
    #[error("the CPUID table is full")]
    CpuidFull,
    /// The guest TSC does not run at the host TSC's rate: converting guest
    /// deadlines to host time would need the scaling ratio.
    #[error("the guest TSC runs {ratio:.6} times as fast as the host TSC (TSC scaling is not supported)")]
    TscScaling {
        /// Guest TSC ticks per host TSC tick.
        ratio: f64,
    },
    /// A timerfd could not be created or configured.
    #[error("timerfd: {0}")]
    TimerFd(#[source] std::io::Error),
    /// The probe VM's memory could not be set up.
    #[error("probe VM memory: {0}")]
    ProbeMemory(String),
}

impl SetupError {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(KvmError) -> SetupError {
        move |source| SetupError::Kvm { op, source }
    }
}

/// Handling an exit or an expiry failed in the VMM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExitError {
    /// A vCPU or VM ioctl failed.
    #[error("{op}: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// Its error.
        #[source]
        source: KvmError,
    },
    /// The host timer or the interrupt injection failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl ExitError {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(KvmError) -> ExitError {
        move |source| ExitError::Kvm { op, source }
    }
}

/// Saved timers could not be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A vCPU's timer state is invalid or from a newer crate.
    #[error("vCPU {vcpu}: {source}")]
    Timer {
        /// The vCPU index.
        vcpu: u32,
        /// Why.
        #[source]
        source: StateError,
    },
    /// The saved state has a different number of vCPUs than the VM.
    #[error("saved state has {saved} vCPUs, the VM {vm}")]
    VcpuCount {
        /// vCPUs in the saved state.
        saved: usize,
        /// vCPUs in the VM.
        vm: usize,
    },
    /// Re-installing the MSR routing failed.
    #[error("{op}: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// Its error.
        #[source]
        source: KvmError,
    },
}
