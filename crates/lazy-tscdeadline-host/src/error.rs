//! The crate's error type.

use lazy_tscdeadline_abi::RegistrationError;

/// Errors of the TSC-deadline timer. Those from MSR accesses are guest
/// faults: the VMM answers them with #GP (see [`Error::is_guest_fault`]).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The MSR is not one this timer emulates.
    #[error("MSR {0:#x} is not handled by the TSC-deadline timer")]
    UnknownMsr(u32),
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
    /// A snapshot carries a state version this crate does not know.
    #[error("unsupported timer state version {0}")]
    UnsupportedStateVersion(u32),
    /// A snapshot is internally inconsistent.
    #[error("inconsistent timer state: {0}")]
    InvalidState(&'static str),
}

impl Error {
    /// Whether the VMM should answer the access that caused this with #GP.
    pub fn is_guest_fault(&self) -> bool {
        matches!(
            self,
            Error::UnknownMsr(_)
                | Error::FeatureNotAdvertised
                | Error::Registration(_)
                | Error::OutsideGuestMemory(_)
        )
    }
}
