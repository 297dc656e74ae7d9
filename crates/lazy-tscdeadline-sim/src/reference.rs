//! The reference model: plain, eager `IA32_TSC_DEADLINE` semantics.

use lazy_tscdeadline_host::LvtTimer;

use crate::Interrupt;

/// What a guest would see with no protocol at all: one deadline register
/// that every write replaces, firing once when the TSC reaches it.
///
/// It follows the same rules the host crate documents for the LVT (writes
/// are ignored unless it is in live TSC-deadline mode; masking or leaving
/// that mode drops the deadline) and, when `registration_cancels` is set,
/// drops the deadline on every registration MSR write, as the host does.
/// Before either drops a deadline, a deadline already due fires: a host
/// catches up with a late timer before it acts on such a write.
#[derive(Clone, Debug)]
pub struct EagerModel {
    lvt: LvtTimer,
    deadline: u64,
    registration_cancels: bool,
    fired: Vec<Interrupt>,
    served: Vec<u64>,
}

impl EagerModel {
    /// A model in the reset state.
    pub fn new(registration_cancels: bool) -> Self {
        EagerModel {
            lvt: LvtTimer::RESET,
            deadline: 0,
            registration_cancels,
            fired: Vec::new(),
            served: Vec::new(),
        }
    }
    /// The guest wrote `t` at time `now`.
    pub fn write(&mut self, t: u64, now: u64) {
        if !self.lvt.deadline_live() {
            return;
        }
        self.deadline = t;
        self.expire(now);
    }
    /// Time is `now` and the host looks at its timer: fire if due.
    pub fn expire(&mut self, now: u64) {
        if self.deadline != 0 && self.deadline <= now {
            self.fired.push(Interrupt {
                time: now,
                vector: self.lvt.vector(),
            });
            self.served.push(self.deadline);
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
        self.lvt = LvtTimer::from_raw(raw);
        if !self.lvt.deadline_live() {
            self.deadline = 0;
        }
    }
    /// The guest wrote the registration MSR (successfully).
    /// A deadline already due is delivered first.
    pub fn registration_write(&mut self, now: u64) {
        if self.registration_cancels {
            self.expire(now);
            self.deadline = 0;
        }
    }
    /// INIT/RESET.
    pub fn reset(&mut self) {
        self.deadline = 0;
        self.lvt = LvtTimer::RESET;
    }
    /// The deadline each fired interrupt was for, in firing order.
    pub fn served(&self) -> &[u64] {
        &self.served
    }
    /// Interrupts fired so far.
    pub fn fired(&self) -> &[Interrupt] {
        &self.fired
    }
}
