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

    /// Whether `IA32_TSC_DEADLINE` writes can arm a timer: TSC-deadline
    /// mode and not masked.
    pub const fn deadline_live(self) -> bool {
        matches!(self.mode(), TimerMode::TscDeadline) && !self.masked()
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
        assert!(l.deadline_live());
        assert!(!LvtTimer::from_raw(l.raw() | 1 << 16).deadline_live());
        assert_eq!(LvtTimer::from_raw(1 << 17).mode(), TimerMode::Periodic);
        assert_eq!(LvtTimer::from_raw(3 << 17).mode(), TimerMode::Reserved);
        assert!(LvtTimer::RESET.masked());
    }
}
