//! Replaying operation sequences on a simulated vCPU and the reference model.

use std::rc::Rc;

use lazy_tscdeadline_guest::{GuestStats, WriteOutcome};
use lazy_tscdeadline_host::Counters;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::reference::{masked, tsc_deadline_mode, LVT_RESET, MASK_BIT};
use crate::{EagerModel, Interrupt, Policy, SimVcpu, TIMER_VECTOR};

/// Upper bound on the host timer expiries one time step may deliver. The
/// host must settle every deadline in a bounded number of kicks; reaching
/// this bound is reported as [`ScenarioError::Unbounded`].
pub const MAX_KICKS_PER_ADVANCE: u64 = 8;

/// Where the simulated guest RAM is: two regions with a hole between them.
const RAM: [(u64, usize); 2] = [(0, 0x8000), (0xc000, 0x4000)];
/// The struct's guest-physical address.
const STRUCT_GPA: u64 = 0x1000;

/// Which guest runs the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestKind {
    /// The feature is advertised; `Register` ops register the struct.
    Lazy,
    /// The feature is not advertised; the guest writes the MSR every time
    /// and `Register`-type ops are skipped (as a guest that checked CPUID).
    Eager,
}

/// One step of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Put the LVT timer in unmasked TSC-deadline mode.
    LvtDeadline,
    /// Set the LVT timer's mask bit (mode and vector unchanged).
    Mask,
    /// Clear the LVT timer's mask bit.
    Unmask,
    /// Set the LVT timer to a raw value (masked, other modes, ...).
    Lvt(u32),
    /// The guest registers its struct.
    Register,
    /// The guest unregisters.
    Unregister,
    /// INIT/RESET of the vCPU.
    Reset,
    /// Deadline `now + d` (0: due right now).
    WriteIn(u64),
    /// Deadline `last + d`: push the last written deadline later.
    WriteLater(u64),
    /// Deadline `last - d` (at least 1): move it earlier.
    WriteEarlier(u64),
    /// The last written deadline again.
    WriteSame,
    /// Deadline `now - d` (at least 1): already passed.
    WritePast(u64),
    /// Deadline 0: cancel.
    WriteZero,
    /// Time passes by `d`; host expiries are delivered on time.
    Advance(u64),
    /// Time passes by `d` and the host does not notice yet.
    AdvanceLate(u64),
    /// The host delivers every expiry that is due now.
    Expire,
    /// A host timer wake-up when nothing is due (stray or early).
    StrayExpiry,
    /// Snapshot the host timer and restore it into a fresh instance.
    Snapshot,
    /// Hostile: write `value` into the struct at byte offset `offset`.
    Scribble {
        /// Byte offset, taken modulo 64 and rounded down to 8.
        offset: u8,
        /// Value.
        value: u64,
    },
    /// Hostile: store `pending` without the fence, the load of `armed` or
    /// a trap (e.g. 0: an exitless cancel, whether offered or not).
    StorePendingOnly(u64),
    /// Hostile: WRMSR of any MSR and value straight to the host.
    RawWrmsr {
        /// MSR index.
        index: u32,
        /// Value.
        value: u64,
    },
}

/// Everything a scenario run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Interrupts the host injected, with virtual times.
    pub interrupts: Vec<Interrupt>,
    /// Interrupts the eager reference model fired for the same guest writes.
    pub reference: Vec<Interrupt>,
    /// `IA32_TSC_DEADLINE` writes the host received.
    pub host_trapped_writes: u64,
    /// Writes the protocol requires to trap (every write while the guest is
    /// not registered, else `armed == 0 || t < armed` with `armed` the
    /// deadline (or grace deadline) the host has published, except a
    /// cancellation with `armed != 0` under negotiated exitless cancel).
    pub necessary_traps: u64,
    /// Guest setter counters.
    pub guest: GuestStats,
    /// Host counters.
    pub counters: Counters,
}

/// A property the scenario found broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScenarioError {
    /// The setter trapped when the protocol did not require it, or not when
    /// it did.
    WrongTrap {
        /// Op index.
        step: usize,
        /// Deadline written.
        deadline: u64,
        /// The deadline the host had published as `armed` before the
        /// write (0: none, or not registered).
        armed: u64,
    },
    /// One time step needed more than [`MAX_KICKS_PER_ADVANCE`] kicks.
    Unbounded {
        /// Op index.
        step: usize,
    },
    /// Host state inconsistent after a step.
    Inconsistent {
        /// Op index.
        step: usize,
        /// What.
        what: String,
    },
    /// An interrupt fired before the guest's latest deadline.
    Early {
        /// Op index.
        step: usize,
        /// Injection time.
        time: u64,
        /// The guest's latest deadline.
        deadline: u64,
    },
    /// An interrupt was delivered while the LVT timer was masked.
    Masked {
        /// Op index.
        step: usize,
        /// Injection time.
        time: u64,
    },
    /// An interrupt fired with no deadline outstanding (nothing written
    /// since the last one fired, or the deadline was cancelled): spurious
    /// or duplicated.
    Spurious {
        /// Op index.
        step: usize,
        /// Injection time.
        time: u64,
    },
    /// The host handled its timer after the guest's latest deadline had
    /// passed, and no interrupt came.
    Lost {
        /// Op index.
        step: usize,
        /// The deadline.
        deadline: u64,
    },
    /// An honest operation was refused.
    Refused {
        /// Op index.
        step: usize,
        /// The error.
        what: String,
    },
}

/// Runs scenarios.
#[derive(Debug)]
pub struct Scenario {
    vcpu: SimVcpu,
    reference: EagerModel,
    kind: GuestKind,
    policy: Policy,
    honest: bool,
    last: u64,
    /// The LVT timer register as the guest programmed it.
    lvt: u32,
    /// Whether the guest registered its struct (and has not unregistered
    /// nor been reset since), as the scenario did it.
    registered: bool,
    /// The guest's outstanding deadline (written in TSC-deadline mode, not
    /// yet expired nor cancelled), tracked independently of the host: the
    /// oracle for early / spurious / lost / masked.
    wish: Option<u64>,
    seen_interrupts: usize,
    /// Whether the current step wrote the registration MSR.
    registration_written: bool,
    necessary_traps: u64,
}

impl Scenario {
    /// Fresh guest memory for a scenario.
    pub fn memory() -> Rc<GuestMemoryMmap> {
        let ranges: Vec<_> = RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        Rc::new(GuestMemoryMmap::from_ranges(&ranges).expect("simulator RAM"))
    }

    fn new(kind: GuestKind, policy: Policy, honest: bool) -> Self {
        Scenario {
            vcpu: SimVcpu::with_policy(Self::memory(), STRUCT_GPA, kind == GuestKind::Lazy, policy),
            reference: EagerModel::new(),
            kind,
            policy,
            honest,
            last: 0,
            lvt: LVT_RESET,
            registered: false,
            wish: None,
            seen_interrupts: 0,
            registration_written: false,
            necessary_traps: 0,
        }
    }

    /// Replays `ops` with an honest guest and the default [`Policy`],
    /// checking after every step that the trap decision follows the
    /// protocol, that work stays bounded and that host and guest memory
    /// agree.
    pub fn run(kind: GuestKind, ops: &[Op]) -> Result<Outcome, ScenarioError> {
        Self::run_with(kind, Policy::default(), ops)
    }

    /// As [`run`](Self::run), with the given policies.
    pub fn run_with(kind: GuestKind, policy: Policy, ops: &[Op]) -> Result<Outcome, ScenarioError> {
        let mut s = Scenario::new(kind, policy, true);
        for (step, op) in ops.iter().enumerate() {
            s.step(step, *op)?;
        }
        Ok(s.outcome())
    }

    /// Replays `ops` with a guest that may also scribble on its struct and
    /// write arbitrary MSR values; checks only that the host stays
    /// consistent and its work bounded. Returns the final vCPU too.
    pub fn run_hostile(ops: &[Op]) -> Result<(Outcome, SimVcpu), ScenarioError> {
        Self::run_hostile_with(Policy::default(), ops)
    }

    /// As [`run_hostile`](Self::run_hostile), with the given policies.
    pub fn run_hostile_with(
        policy: Policy,
        ops: &[Op],
    ) -> Result<(Outcome, SimVcpu), ScenarioError> {
        let mut s = Scenario::new(GuestKind::Lazy, policy, false);
        for (step, op) in ops.iter().enumerate() {
            s.step(step, *op)?;
        }
        let out = s.outcome();
        Ok((out, s.vcpu))
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            interrupts: self.vcpu.interrupts(),
            reference: self.reference.fired().to_vec(),
            host_trapped_writes: self.vcpu.host().counters().trapped_writes,
            necessary_traps: self.necessary_traps,
            guest: self.vcpu.guest().stats(),
            counters: self.vcpu.host().counters(),
        }
    }

    fn base(&self) -> u64 {
        if self.last == 0 {
            self.vcpu.now()
        } else {
            self.last
        }
    }

    fn step(&mut self, step: usize, op: Op) -> Result<(), ScenarioError> {
        // Interrupts delivered during a step are delivered under the LVT
        // value from before it (an LVT change first expires what is due).
        let lvt_before = self.lvt;
        self.registration_written = false;
        self.apply(step, op)?;
        if self.honest {
            self.check_interrupts(step, lvt_before)?;
            let processing = matches!(
                op,
                Op::Advance(_)
                    | Op::Expire
                    | Op::StrayExpiry
                    | Op::Lvt(_)
                    | Op::LvtDeadline
                    | Op::Mask
                    | Op::Unmask
            ) || self.registration_written;
            if processing && tsc_deadline_mode(lvt_before) {
                if let Some(deadline) = self.wish.filter(|&d| d <= self.vcpu.now()) {
                    if !masked(lvt_before) {
                        return Err(ScenarioError::Lost { step, deadline });
                    }
                    // Expired while masked: nothing is delivered (any
                    // interrupt was rejected above) and it is gone.
                    self.wish = None;
                }
            }
            // Events that drop the deadline, after what they may deliver
            // first. (A registration change is not one: the deadline
            // survives it.)
            match op {
                Op::Reset => self.wish = None,
                _ if !tsc_deadline_mode(self.lvt) => self.wish = None,
                _ => {}
            }
        }
        self.vcpu
            .check_invariants(self.honest)
            .map_err(|what| ScenarioError::Inconsistent { step, what })
    }

    /// After a reset: nothing armed on the host, and `armed` cleared in the
    /// struct that was registered. (A hostile guest may have dropped the
    /// registration behind its setter's back with raw MSR writes and
    /// scribbled `armed` since; the host must not write to an unregistered
    /// struct, so `armed` is only checked for honest guests.)
    fn check_dropped(&self, step: usize, what: &str) -> Result<(), ScenarioError> {
        let deadline = self.vcpu.host().deadline();
        let timer = self.vcpu.timer().deadline();
        let (armed, _) = self.vcpu.shared_fields();
        let armed_left = self.honest && armed != 0;
        if deadline != 0 || timer.is_some() || armed_left {
            return Err(ScenarioError::Inconsistent {
                step,
                what: format!(
                    "after {what}: host deadline {deadline}, host timer {timer:?}, armed in memory {armed}"
                ),
            });
        }
        Ok(())
    }

    /// After a registration or a disable: `armed` reads 0 in the struct
    /// (the guest's one struct, registered before and, after a
    /// registration, again), nothing is published and no grace period
    /// runs, and the host keeps the guest's effective deadline as the
    /// independent eager reference has it: RDMSR reads it and the host
    /// timer is armed for it (none when it is 0). Honest guests only: a
    /// hostile one scribbles `pending` and `armed` and has no effective
    /// deadline to compare with.
    fn check_kept(&self, step: usize, what: &str) -> Result<(), ScenarioError> {
        if !self.honest {
            return Ok(());
        }
        let want = self.reference.deadline();
        let host = self.vcpu.host();
        let deadline = host.deadline();
        let grace = host.grace_deadline();
        let published = host.is_published();
        let rdmsr = host
            .read_msr(lazy_tscdeadline_abi::MSR_IA32_TSC_DEADLINE)
            .unwrap_or(u64::MAX);
        drop(host);
        let timer = self.vcpu.timer().deadline();
        let (armed, _) = self.vcpu.shared_fields();
        let want_timer = (want != 0).then_some(want);
        if deadline != want
            || rdmsr != want
            || timer != want_timer
            || armed != 0
            || published
            || grace != 0
        {
            return Err(ScenarioError::Inconsistent {
                step,
                what: format!(
                    "after {what}: the guest's deadline is {want}; host deadline {deadline}, \
                     RDMSR {rdmsr}, host timer {timer:?}, armed in memory {armed}, \
                     published {published}, grace deadline {grace}"
                ),
            });
        }
        Ok(())
    }

    /// Checks the interrupts injected during `step` against the oracle.
    fn check_interrupts(&mut self, step: usize, lvt: u32) -> Result<(), ScenarioError> {
        let log = self.vcpu.interrupts();
        for irq in &log[self.seen_interrupts..] {
            if masked(lvt) {
                return Err(ScenarioError::Masked {
                    step,
                    time: irq.time,
                });
            }
            match self.wish.take() {
                None => {
                    return Err(ScenarioError::Spurious {
                        step,
                        time: irq.time,
                    })
                }
                Some(deadline) if deadline > irq.time => {
                    return Err(ScenarioError::Early {
                        step,
                        time: irq.time,
                        deadline,
                    })
                }
                Some(_) => {}
            }
        }
        self.seen_interrupts = log.len();
        Ok(())
    }

    fn apply(&mut self, step: usize, op: Op) -> Result<(), ScenarioError> {
        let now = self.vcpu.now();
        let lazy = self.kind == GuestKind::Lazy;
        match op {
            Op::LvtDeadline => self.set_lvt((0b10 << 17) | u32::from(TIMER_VECTOR)),
            Op::Lvt(raw) => self.set_lvt(raw),
            Op::Mask => self.set_lvt(self.lvt | MASK_BIT),
            Op::Unmask => self.set_lvt(self.lvt & !MASK_BIT),
            Op::Register if lazy => match self.vcpu.register() {
                Ok(()) => {
                    self.registered = true;
                    self.registration_written = true;
                    self.reference.registration_write(now);
                    self.check_kept(step, "registration")?;
                }
                Err(e) => {
                    return Err(ScenarioError::Refused {
                        step,
                        what: e.to_string(),
                    })
                }
            },
            Op::Unregister if lazy && self.registered => {
                self.vcpu.unregister();
                self.registered = false;
                self.registration_written = true;
                self.reference.registration_write(now);
                self.check_kept(step, "disable")?;
            }
            Op::Register | Op::Unregister => {}
            Op::Reset => {
                self.vcpu.reset();
                self.reference.reset();
                self.lvt = LVT_RESET;
                self.registered = false;
                self.last = 0;
                self.check_dropped(step, "reset")?;
            }
            Op::WriteIn(d) => self.write(step, now.saturating_add(d))?,
            Op::WriteLater(d) => self.write(step, self.base().saturating_add(d))?,
            Op::WriteEarlier(d) => self.write(step, self.base().saturating_sub(d).max(1))?,
            Op::WriteSame => self.write(step, self.base())?,
            Op::WritePast(d) => self.write(step, now.saturating_sub(d).max(1))?,
            Op::WriteZero => self.write(step, 0)?,
            Op::Advance(d) => {
                let target = now.saturating_add(d);
                let due = self.reference.deadline();
                if due != 0 && due <= target {
                    self.reference.expire(due.max(now));
                }
                if self.vcpu.advance(d) >= MAX_KICKS_PER_ADVANCE {
                    return Err(ScenarioError::Unbounded { step });
                }
            }
            Op::AdvanceLate(d) => self.vcpu.advance_late(d),
            Op::Expire => self.expire(step)?,
            Op::StrayExpiry => match self.vcpu.timer().deadline() {
                // A due timer's wake-up is an ordinary expiry.
                Some(d) if d <= now => self.expire(step)?,
                _ => {
                    self.vcpu.stray_expiry();
                }
            },
            Op::Snapshot => self
                .vcpu
                .snapshot_restore()
                .map_err(|e| ScenarioError::Refused {
                    step,
                    what: e.to_string(),
                })?,
            Op::Scribble { offset, value } => {
                assert!(!self.honest, "scribbling is a hostile op");
                self.vcpu.scribble(u64::from(offset), value);
            }
            Op::StorePendingOnly(value) => {
                assert!(!self.honest, "storing pending only is a hostile op");
                self.vcpu.store_pending_only(value);
            }
            Op::RawWrmsr { index, value } => {
                assert!(!self.honest, "raw MSR writes are hostile ops");
                let _ = self.vcpu.raw_msr_write(index, value);
                let _ = self.vcpu.raw_msr_read(index);
            }
        }
        Ok(())
    }

    fn set_lvt(&mut self, raw: u32) {
        self.lvt = raw;
        self.vcpu.set_lvt(raw);
        self.reference.set_lvt(raw, self.vcpu.now());
    }

    fn expire(&mut self, step: usize) -> Result<(), ScenarioError> {
        self.reference.expire(self.vcpu.now());
        if self.vcpu.expire_due() >= MAX_KICKS_PER_ADVANCE {
            return Err(ScenarioError::Unbounded { step });
        }
        Ok(())
    }

    fn write(&mut self, step: usize, t: u64) -> Result<(), ScenarioError> {
        // The trap oracle, written from the protocol, the host's own copy of
        // what it published (a deadline or a grace deadline) and the
        // negotiated policy, not from the guest crate: a write must trap
        // iff the guest is not registered, nothing is published, or it is
        // earlier than the published `armed`; except that under exitless
        // cancel (the host offers it and the guest honours it) a cancel
        // with something published does not. (Honest guests only: a
        // hostile one scribbles `armed` and traps as it likes.)
        let armed = {
            let host = self.vcpu.host();
            if self.registered {
                host.armed()
            } else {
                0
            }
        };
        let exitless = self.registered && self.policy.exitless_negotiated();
        let necessary = if exitless && t == 0 && armed != 0 {
            false
        } else {
            armed == 0 || t < armed
        };
        let outcome = self.vcpu.write_deadline(t);
        if self.honest && (outcome == WriteOutcome::Trapped) != necessary {
            return Err(ScenarioError::WrongTrap {
                step,
                deadline: t,
                armed,
            });
        }
        self.necessary_traps += u64::from(necessary);
        self.reference.write(t, self.vcpu.now());
        self.last = t;
        if tsc_deadline_mode(self.lvt) {
            self.wish = (t != 0).then_some(t);
        }
        Ok(())
    }
}
