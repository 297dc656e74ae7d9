//! The value of the registration MSR, decoded and validated.

use core::fmt;

use crate::KVM_MSR_ENABLED;

/// Bits 1..=5 of the registration value: reserved, must be zero. Together
/// with the enable bit they force the struct to be 64-byte aligned, so it can
/// never straddle a page boundary.
const RESERVED_MASK: u64 = 0x3e;
/// Bits holding the guest-physical address.
const GPA_MASK: u64 = !0x3f;

/// A decoded value of
/// [`MSR_KVM_LAZY_TSCDEADLINE`](crate::MSR_KVM_LAZY_TSCDEADLINE).
///
/// The raw value is `gpa | KVM_MSR_ENABLED`; a value with bit 0 clear
/// disables the feature (0 is what guests write). Bits 1..=5 are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "u64", into = "u64"))]
pub struct Registration(u64);

/// Why a registration value was rejected. A host answers it with #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationError {
    /// One of the reserved bits 1..=5 is set (the raw value is carried).
    ReservedBits(u64),
    /// The address is not 64-byte aligned (only from [`Registration::enabled`]).
    Misaligned(u64),
}

impl fmt::Display for RegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits(v) => {
                write!(f, "reserved bits 1..=5 set in registration value {v:#x}")
            }
            Self::Misaligned(gpa) => write!(f, "struct address {gpa:#x} is not 64-byte aligned"),
        }
    }
}

impl core::error::Error for RegistrationError {}

impl Registration {
    /// The disabled registration (raw value 0).
    pub const DISABLED: Registration = Registration(0);

    /// Decodes a value written to the registration MSR.
    pub const fn from_msr(value: u64) -> Result<Self, RegistrationError> {
        if value & RESERVED_MASK != 0 {
            return Err(RegistrationError::ReservedBits(value));
        }
        Ok(Registration(value))
    }

    /// An enabled registration of the struct at guest-physical `gpa`.
    pub const fn enabled(gpa: u64) -> Result<Self, RegistrationError> {
        if gpa & !GPA_MASK != 0 {
            return Err(RegistrationError::Misaligned(gpa));
        }
        Ok(Registration(gpa | KVM_MSR_ENABLED))
    }

    /// The raw MSR value (what RDMSR returns).
    pub const fn to_msr(self) -> u64 {
        self.0
    }

    /// Whether the enable bit is set.
    pub const fn is_enabled(self) -> bool {
        self.0 & KVM_MSR_ENABLED != 0
    }

    /// Guest-physical address of the struct, if the registration is enabled.
    pub const fn gpa(self) -> Option<u64> {
        if self.is_enabled() {
            Some(self.0 & GPA_MASK)
        } else {
            None
        }
    }
}

impl TryFrom<u64> for Registration {
    type Error = RegistrationError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Registration::from_msr(value)
    }
}

impl From<Registration> for u64 {
    fn from(r: Registration) -> u64 {
        r.to_msr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_disables() {
        let r = Registration::from_msr(0).unwrap();
        assert!(!r.is_enabled());
        assert_eq!(r.gpa(), None);
        assert_eq!(r, Registration::DISABLED);
    }

    #[test]
    fn every_reserved_bit_is_rejected() {
        for bit in 1..=5 {
            let v = 0x1000 | 1 | (1 << bit);
            assert_eq!(
                Registration::from_msr(v),
                Err(RegistrationError::ReservedBits(v))
            );
        }
    }

    #[test]
    fn enabled_round_trips_and_rejects_misalignment() {
        let r = Registration::enabled(0xfff_ffc0).unwrap();
        assert_eq!(r.to_msr(), 0xfff_ffc1);
        assert_eq!(r.gpa(), Some(0xfff_ffc0));
        assert_eq!(
            Registration::enabled(0x1020),
            Err(RegistrationError::Misaligned(0x1020))
        );
        assert_eq!(
            Registration::enabled(0x1001),
            Err(RegistrationError::Misaligned(0x1001))
        );
    }

    #[test]
    fn aligned_struct_never_crosses_a_page() {
        for v in [0x0u64, 0xfc0, 0x1fc0, GPA_MASK] {
            let gpa = Registration::enabled(v).unwrap().gpa().unwrap();
            assert_eq!(gpa / 4096, (gpa + 63) / 4096);
        }
    }
}
