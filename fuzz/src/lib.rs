//! Shared pieces of the fuzz targets: an `Arbitrary` mirror of the
//! simulator's operations.

use arbitrary::Arbitrary;
use lazy_tscdeadline_host::GracePolicy;
use lazy_tscdeadline_sim::{Op, Policy};

/// A fuzzer-chosen policy combination: host grace (off, fixed, adaptive,
/// with fuzzed lengths), exitless cancel offered or not, guest honouring
/// it or not.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct FuzzPolicy {
    grace: u8,
    a: u16,
    b: u16,
    c: u16,
    exitless_offered: bool,
    guest_exitless: bool,
}

impl FuzzPolicy {
    /// The simulator's policy.
    pub fn to_policy(self) -> Policy {
        let (a, b, c) = (u64::from(self.a), u64::from(self.b), u64::from(self.c));
        let grace = match self.grace % 4 {
            0 => GracePolicy::Off,
            1 => GracePolicy::Fixed(a),
            2 => GracePolicy::Adaptive {
                initial: a,
                min: b,
                max: c,
            },
            _ => GracePolicy::DEFAULT,
        };
        Policy {
            grace,
            exitless_offered: self.exitless_offered,
            guest_exitless: self.guest_exitless,
        }
    }
}

/// A fuzzer-chosen operation, mapped onto [`Op`].
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FuzzOp {
    /// Live TSC-deadline LVT.
    LvtDeadline,
    /// Raw LVT value (mode/mask bits only).
    Lvt(u8),
    /// Register.
    Register,
    /// Unregister.
    Unregister,
    /// INIT/RESET.
    Reset,
    /// Writes, by kind and delta.
    Write(u8, u16),
    /// Time passes on time.
    Advance(u16),
    /// Time passes, host late.
    AdvanceLate(u16),
    /// Host catches up.
    Expire,
    /// Stray wake-up.
    StrayExpiry,
    /// Snapshot/restore.
    Snapshot,
    /// Hostile: scribble.
    Scribble(u8, u64),
    /// Hostile: any MSR write.
    RawWrmsr(bool, u64),
    /// Hostile: store `pending` only (no fence, no trap), e.g. an exitless
    /// cancel that was not offered.
    StorePendingOnly(u64),
}

impl FuzzOp {
    /// The simulator op; `None` for hostile ops when `honest`.
    pub fn to_op(self, honest: bool) -> Option<Op> {
        let d = |x: u16| u64::from(x);
        Some(match self {
            FuzzOp::LvtDeadline => Op::LvtDeadline,
            FuzzOp::Lvt(b) => Op::Lvt((u32::from(b & 7) << 16) | 0xec),
            FuzzOp::Register => Op::Register,
            FuzzOp::Unregister => Op::Unregister,
            FuzzOp::Reset => Op::Reset,
            FuzzOp::Write(kind, x) => match kind % 6 {
                0 => Op::WriteLater(d(x)),
                1 => Op::WriteIn(d(x)),
                2 => Op::WriteEarlier(d(x)),
                3 => Op::WriteSame,
                4 => Op::WritePast(d(x)),
                _ => Op::WriteZero,
            },
            FuzzOp::Advance(x) => Op::Advance(d(x)),
            FuzzOp::AdvanceLate(x) => Op::AdvanceLate(d(x)),
            FuzzOp::Expire => Op::Expire,
            FuzzOp::StrayExpiry => Op::StrayExpiry,
            FuzzOp::Snapshot => Op::Snapshot,
            FuzzOp::Scribble(..) | FuzzOp::RawWrmsr(..) | FuzzOp::StorePendingOnly(..)
                if honest =>
            {
                return None
            }
            FuzzOp::StorePendingOnly(value) => Op::StorePendingOnly(value),
            FuzzOp::Scribble(offset, value) => Op::Scribble { offset, value },
            FuzzOp::RawWrmsr(deadline, value) => Op::RawWrmsr {
                index: if deadline { 0x6e0 } else { 0x4b56_4d09 },
                value,
            },
        })
    }
}
