//! The reference model: plain, eager `IA32_TSC_DEADLINE` semantics.

use crate::Interrupt;

/// What a guest would see with no protocol at all: one deadline register
/// that every write replaces, expiring once when the TSC reaches it.
///
/// It is written from the architecture (SDM vol. 3A, "TSC-Deadline Mode"),
/// not from the host crate: writes arm it only in TSC-deadline mode, masked
/// or not, and are ignored in other modes; a change of the timer mode
/// disarms it; an expiry disarms it and delivers an interrupt only if the
/// LVT is unmasked at that moment. A write of the registration MSR (an
/// unrelated paravirtual MSR, as far as the architecture is concerned)
/// leaves the deadline alone. Before an LVT change or a registration write,
/// a deadline already due expires under the old LVT value: a host catches
/// up with a late timer before it acts on such a write.
#[derive(Clone, Debug)]
pub struct EagerModel {
    lvt: u32,
    deadline: u64,
    fired: Vec<Interrupt>,
}

/// The LVT timer's mask bit (16).
pub(crate) const MASK_BIT: u32 = 1 << 16;

/// The LVT timer register after INIT/RESET: masked, one-shot, vector 0.
pub(crate) const LVT_RESET: u32 = MASK_BIT;

/// The timer mode bits (18:17) of an LVT timer value.
fn mode(lvt: u32) -> u32 {
    (lvt >> 17) & 0b11
}

/// TSC-deadline mode is 0b10.
pub(crate) fn tsc_deadline_mode(lvt: u32) -> bool {
    mode(lvt) == 0b10
}

/// Whether the mask bit is set.
pub(crate) fn masked(lvt: u32) -> bool {
    lvt & MASK_BIT != 0
}

impl Default for EagerModel {
    fn default() -> Self {
        EagerModel::new()
    }
}

impl EagerModel {
    /// A model in the reset state.
    pub fn new() -> Self {
        EagerModel {
            lvt: LVT_RESET,
            deadline: 0,
            fired: Vec::new(),
        }
    }
    /// The guest wrote `t` at time `now`.
    pub fn write(&mut self, t: u64, now: u64) {
        if !tsc_deadline_mode(self.lvt) {
            return;
        }
        self.deadline = t;
        self.expire(now);
    }
    /// Time is `now` and the host looks at its timer: expire if due,
    /// delivering the interrupt unless masked.
    pub fn expire(&mut self, now: u64) {
        if self.deadline != 0 && self.deadline <= now {
            if !masked(self.lvt) {
                self.fired.push(Interrupt {
                    time: now,
                    vector: self.lvt as u8,
                });
            }
            self.deadline = 0;
        }
    }
    /// The armed deadline (0: none).
    pub fn deadline(&self) -> u64 {
        self.deadline
    }
    /// LVT timer register changed.
    /// A deadline already due is delivered first (`now` is the time).
    pub fn set_lvt(&mut self, raw: u32, now: u64) {
        self.expire(now);
        if mode(raw) != mode(self.lvt) {
            self.deadline = 0;
        }
        self.lvt = raw;
    }
    /// The guest wrote the registration MSR (successfully).
    /// A deadline already due is delivered (the host looks at its timer);
    /// the armed deadline is otherwise untouched.
    pub fn registration_write(&mut self, now: u64) {
        self.expire(now);
    }
    /// INIT/RESET.
    pub fn reset(&mut self) {
        self.deadline = 0;
        self.lvt = LVT_RESET;
    }
    /// Interrupts fired so far.
    pub fn fired(&self) -> &[Interrupt] {
        &self.fired
    }
}
