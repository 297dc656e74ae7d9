//! The LAPIC LVT timer register, as far as the TSC-deadline timer cares.

/// Timer mode, bits 18:17 of the LVT timer register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// 0b00.
    OneShot,
    /// 0b01.
    Periodic,
    /// 0b10: the mode in which `IA32_TSC_DEADLINE` is live.
    TscDeadline,
    /// 0b11 (reserved).
    Reserved,
}

/// A raw LVT timer register value (APIC offset 0x320, x2APIC MSR 0x832).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LvtTimer(u32);

const MASK_BIT: u32 = 1 << 16;
const MODE_SHIFT: u32 = 17;

impl LvtTimer {
    /// The value after INIT/RESET: masked, one-shot, vector 0.
    pub const RESET: LvtTimer = LvtTimer(MASK_BIT);

    /// Wraps a raw register value.
    pub const fn from_raw(raw: u32) -> Self {
        LvtTimer(raw)
    }

    /// An unmasked TSC-deadline LVT with `vector`.
    pub const fn tsc_deadline(vector: u8) -> Self {
        LvtTimer((0b10 << MODE_SHIFT) | vector as u32)
    }

    /// The raw register value.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The interrupt vector.
    pub const fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Whether the timer interrupt is masked.
    pub const fn masked(self) -> bool {
        self.0 & MASK_BIT != 0
    }

    /// The timer mode.
    pub const fn mode(self) -> TimerMode {
        match (self.0 >> MODE_SHIFT) & 0b11 {
            0b00 => TimerMode::OneShot,
            0b01 => TimerMode::Periodic,
            0b10 => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }

    /// The same register with the mask bit set (`true`) or clear.
    pub const fn with_masked(self, masked: bool) -> Self {
        if masked {
            LvtTimer(self.0 | MASK_BIT)
        } else {
            LvtTimer(self.0 & !MASK_BIT)
        }
    }

    /// Whether the timer is in TSC-deadline mode, the mode in which
    /// `IA32_TSC_DEADLINE` writes arm it and reads return the deadline,
    /// whether the LVT is masked or not (the mask only suppresses the
    /// interrupt; SDM vol. 3A, "TSC-Deadline Mode").
    pub const fn is_tsc_deadline(self) -> bool {
        matches!(self.mode(), TimerMode::TscDeadline)
    }

    /// Whether an expiry now delivers the interrupt: TSC-deadline mode and
    /// not masked.
    pub const fn delivers(self) -> bool {
        self.is_tsc_deadline() && !self.masked()
    }
}

impl From<u32> for LvtTimer {
    fn from(raw: u32) -> Self {
        LvtTimer::from_raw(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields() {
        let l = LvtTimer::tsc_deadline(0xec);
        assert_eq!(l.raw(), 0x400ec);
        assert_eq!(
            (l.vector(), l.masked(), l.mode()),
            (0xec, false, TimerMode::TscDeadline)
        );
        assert!(l.is_tsc_deadline() && l.delivers());
        let masked = l.with_masked(true);
        assert_eq!(masked.raw(), l.raw() | 1 << 16);
        assert!(masked.is_tsc_deadline() && !masked.delivers());
        assert_eq!(masked.with_masked(false), l);
        assert!(!LvtTimer::from_raw(1 << 17).is_tsc_deadline());
        assert_eq!(LvtTimer::from_raw(1 << 17).mode(), TimerMode::Periodic);
        assert_eq!(LvtTimer::from_raw(3 << 17).mode(), TimerMode::Reserved);
        assert!(LvtTimer::RESET.masked());
    }
}
