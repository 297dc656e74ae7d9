//! The crate's error types, one per kind of caller decision.
//!
//! - [`GuestFault`]: the guest did something the architecture answers with
//!   #GP. The VMM injects #GP and carries on.
//! - [`BackendError`]: a collaborator the VMM plugged in ([`HostTimer`],
//!   [`InterruptSink`]) failed. Not the guest's fault: the VMM decides
//!   (usually: stop the VM).
//! - `UnknownMsr`, in [`WriteMsrError`] and [`ReadMsrError`]: the VMM routed
//!   an MSR to the timer that [`handles_msr`] does not accept: a bug in the
//!   VMM, not a guest fault.
//! - [`StateError`]: a snapshot could not be restored.
//!
//! Each operation returns only the errors it can produce, so a `match` on
//! its error has no unreachable arm.
//!
//! [`HostTimer`]: crate::HostTimer
//! [`InterruptSink`]: crate::InterruptSink
//! [`handles_msr`]: crate::handles_msr

use lazy_tscdeadline_abi::RegistrationError;

/// The boxed error of a collaborator, as carried by [`BackendError`].
pub type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A guest action that the VMM must answer with #GP.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuestFault {
    /// The guest accessed `MSR_KVM_LAZY_TSCDEADLINE` but the VMM did not
    /// advertise the feature.
    #[error("lazy TSC deadline accessed but not advertised in CPUID")]
    FeatureNotAdvertised,
    /// The registration value is malformed.
    #[error("invalid registration value: {0}")]
    Registration(#[from] RegistrationError),
    /// The registered struct would not lie entirely in guest RAM.
    #[error("lazy TSC deadline struct at {0:#x} is not in guest RAM")]
    OutsideGuestMemory(u64),
}

/// A collaborator of the timer failed. The timer's own state is complete and
/// consistent (as if the collaborator had succeeded); what is missing is the
/// effect of the failed call: a host timer that is not armed, or an
/// interrupt that was not raised. See
/// [`TscDeadlineTimer`](crate::TscDeadlineTimer#collaborator-errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// [`HostTimer::arm`](crate::HostTimer::arm) or
    /// [`HostTimer::disarm`](crate::HostTimer::disarm) failed.
    #[error("host timer failed: {0}")]
    HostTimer(#[source] BoxedError),
    /// [`InterruptSink::inject`](crate::InterruptSink::inject) failed.
    #[error("timer interrupt injection failed: {0}")]
    Interrupt(#[source] BoxedError),
}

/// Why [`TscDeadlineTimer::write_msr`](crate::TscDeadlineTimer::write_msr)
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteMsrError {
    /// The guest's write faults: inject #GP.
    #[error(transparent)]
    GuestFault(#[from] GuestFault),
    /// The write was emulated but a collaborator failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The MSR is not one the timer emulates (see
    /// [`handles_msr`](crate::handles_msr)): the VMM routed it wrongly.
    #[error("MSR {0:#x} is not handled by the TSC-deadline timer")]
    UnknownMsr(u32),
}

impl WriteMsrError {
    /// Whether this is a [`GuestFault`] (the VMM injects #GP).
    pub fn is_guest_fault(&self) -> bool {
        matches!(self, WriteMsrError::GuestFault(_))
    }
}

/// Why [`TscDeadlineTimer::read_msr`](crate::TscDeadlineTimer::read_msr)
/// failed.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadMsrError {
    /// The guest's read faults: inject #GP.
    #[error(transparent)]
    GuestFault(#[from] GuestFault),
    /// The MSR is not one the timer emulates (see
    /// [`handles_msr`](crate::handles_msr)): the VMM routed it wrongly.
    #[error("MSR {0:#x} is not handled by the TSC-deadline timer")]
    UnknownMsr(u32),
}

impl ReadMsrError {
    /// Whether this is a [`GuestFault`] (the VMM injects #GP).
    pub fn is_guest_fault(&self) -> bool {
        matches!(self, ReadMsrError::GuestFault(_))
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// The snapshot carries a format version this crate does not know (one
    /// written by a newer crate).
    #[error("unsupported timer state version {0}")]
    UnsupportedVersion(u32),
    /// The snapshot is internally inconsistent.
    #[error("inconsistent timer state: {0}")]
    Invalid(&'static str),
}
