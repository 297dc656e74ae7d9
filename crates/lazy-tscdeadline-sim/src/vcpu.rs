//! One simulated vCPU: the real guest setter wired to the real host timer.

use std::cell::{Ref, RefCell};
use std::rc::Rc;

use lazy_tscdeadline_abi::{
    ARMED_OFFSET, FLAGS_OFFSET, LAZY_TSCDEADLINE_SIZE, MSR_KVM_LAZY_TSCDEADLINE, PENDING_OFFSET,
};
use lazy_tscdeadline_guest::{DeadlineSetter, WriteOutcome};
use lazy_tscdeadline_host::{
    Config, GracePolicy, GuestClock, KickOutcome, LvtTimer, ReadMsrError, StateError,
    TimerSnapshot, TscDeadlineTimer, WriteMsrError,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{FakeTimer, Interrupt, MemShared, RecordingIrq, TrapBridge, VirtualClock};

/// Guest memory as the simulator shares it between guest and host.
pub type SimMemory = Rc<GuestMemoryMmap>;

/// The host timer type the simulator instantiates.
pub type SimHost = TscDeadlineTimer<SimMemory, FakeTimer, VirtualClock, RecordingIrq>;

/// The policies of one simulated vCPU: the host's grace policy and exitless
/// cancel offer, and whether the guest honours the offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The host's grace policy.
    pub grace: GracePolicy,
    /// Whether the host offers exitless cancel (sets the flag).
    pub exitless_offered: bool,
    /// Whether the guest's setter honours the offer (false: an RFC guest).
    pub guest_exitless: bool,
}

impl Default for Policy {
    /// The crates' defaults: [`Config::new`]'s policies, a guest that
    /// honours exitless cancel.
    fn default() -> Self {
        let c = Config::new();
        Policy {
            grace: c.grace,
            exitless_offered: c.exitless_cancel,
            guest_exitless: true,
        }
    }
}

impl Policy {
    /// The RFC on both sides.
    pub const RFC: Policy = Policy {
        grace: GracePolicy::Off,
        exitless_offered: false,
        guest_exitless: false,
    };

    /// Every combination the tests cover: host grace off, fixed short,
    /// fixed long, adaptive (small bounds, so that it moves within
    /// simulated time scales) and the crate default, times exitless cancel
    /// offered or not, times an RFC or a new guest.
    pub fn all() -> Vec<Policy> {
        let graces = [
            GracePolicy::Off,
            GracePolicy::Fixed(1),
            GracePolicy::Fixed(40),
            GracePolicy::Fixed(3_000),
            GracePolicy::Adaptive {
                initial: 50,
                min: 2,
                max: 2_000,
            },
            GracePolicy::DEFAULT,
        ];
        let mut v = Vec::new();
        for grace in graces {
            for exitless_offered in [false, true] {
                for guest_exitless in [false, true] {
                    v.push(Policy {
                        grace,
                        exitless_offered,
                        guest_exitless,
                    });
                }
            }
        }
        v
    }

    /// Whether exitless cancel is in force once the guest registered.
    pub fn exitless_negotiated(&self) -> bool {
        self.exitless_offered && self.guest_exitless
    }

    /// The host configuration.
    pub fn config(&self, lazy_advertised: bool) -> Config {
        Config::new()
            .with_lazy_advertised(lazy_advertised)
            .with_grace(self.grace)
            .with_exitless_cancel(self.exitless_offered)
    }
}

/// What the simulated collaborators return: they never fail.
const INFALLIBLE: &str = "the simulator's host timer and interrupt sink do not fail";

/// The host timer, shared by the vCPU and the guest's trap bridge. Every
/// host operation runs through [`HostCell::with`], which checks that it
/// changed no byte of guest memory but `armed` of a registered struct, and
/// `flags` of the struct a successful enabling registration registered (to
/// exactly the flags the host offers).
#[derive(Clone, Debug)]
pub struct HostCell {
    host: Rc<RefCell<SimHost>>,
    mem: SimMemory,
    /// The guest's own struct, always watched.
    watch: u64,
    /// Descriptions of writes outside `armed`, in order.
    violations: Rc<RefCell<Vec<String>>>,
}

impl HostCell {
    fn window(&self, gpa: u64) -> Option<[u8; LAZY_TSCDEADLINE_SIZE]> {
        let mut b = [0u8; LAZY_TSCDEADLINE_SIZE];
        self.mem
            .read_slice(&mut b, GuestAddress(gpa))
            .ok()
            .map(|()| b)
    }

    /// Runs a host operation. `extra` names one more struct to watch (a
    /// registration target). Compares the 64 bytes of the guest's struct, of
    /// the struct registered before and after, and of `extra`, before and
    /// after the operation: only the `armed` field of the struct registered
    /// before or after may change (the guest does not run meanwhile).
    ///
    /// `flags` (bytes 16..20) of the struct registered after the operation
    /// may change only if the operation was a successful enabling
    /// registration (the host's `registrations` counter grew), and only to
    /// the flags its configuration offers.
    pub fn with<R>(&self, extra: Option<u64>, f: impl FnOnce(&mut SimHost) -> R) -> R {
        let before_area = self.host.borrow().registration().gpa();
        let registrations_before = self.host.borrow().counters().registrations;
        let mut gpas = vec![self.watch];
        gpas.extend(before_area);
        gpas.extend(extra);
        gpas.sort_unstable();
        gpas.dedup();
        let before: Vec<_> = gpas.iter().map(|&g| (g, self.window(g))).collect();
        let r = f(&mut self.host.borrow_mut());
        let after_area = self.host.borrow().registration().gpa();
        let registered = self.host.borrow().counters().registrations > registrations_before;
        let offered = self.host.borrow().config().offered_flags().to_le_bytes();
        let flags = FLAGS_OFFSET as usize..FLAGS_OFFSET as usize + 4;
        for (gpa, old) in before {
            let (Some(old), Some(new)) = (old, self.window(gpa)) else {
                continue;
            };
            let armed_allowed = Some(gpa) == before_area || Some(gpa) == after_area;
            let flags_allowed = registered && Some(gpa) == after_area;
            if flags_allowed && new[flags.clone()] != offered {
                self.violations.borrow_mut().push(format!(
                    "registration at {gpa:#x} left flags {:x?}, the host offers {offered:x?}",
                    &new[flags.clone()]
                ));
            }
            for (i, (a, b)) in old.iter().zip(new.iter()).enumerate() {
                let in_armed = (ARMED_OFFSET as usize..ARMED_OFFSET as usize + 8).contains(&i);
                let in_flags = flags.contains(&i);
                if a != b && !(armed_allowed && in_armed) && !(flags_allowed && in_flags) {
                    self.violations.borrow_mut().push(format!(
                        "the host wrote byte {i} of the struct at {gpa:#x} ({a:#x} -> {b:#x}); registered before {before_area:x?}, after {after_area:x?}"
                    ));
                }
            }
        }
        r
    }

    /// A WRMSR into the host (watching a registration target).
    pub fn write_msr(&self, index: u32, value: u64) -> Result<(), WriteMsrError> {
        let target = (index == MSR_KVM_LAZY_TSCDEADLINE && value & 1 != 0).then_some(value & !0x3f);
        self.with(target, |h| h.write_msr(index, value))
    }

    /// Writes outside `armed` seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations.borrow().clone()
    }
}

/// Vector the simulated guest programs into its LVT timer.
pub const TIMER_VECTOR: u8 = 0xec;

/// A simulated vCPU: guest setter, host timer, clock, fake devices.
#[derive(Debug)]
pub struct SimVcpu {
    clock: VirtualClock,
    timer: FakeTimer,
    irq: RecordingIrq,
    host: HostCell,
    guest: DeadlineSetter<MemShared, TrapBridge>,
    mem: SimMemory,
    gpa: u64,
}

impl SimVcpu {
    /// A vCPU whose struct (when registered) lives at `gpa` in `mem`, with
    /// the default [`Policy`].
    pub fn new(mem: SimMemory, gpa: u64, lazy_advertised: bool) -> Self {
        Self::with_policy(mem, gpa, lazy_advertised, Policy::default())
    }

    /// A vCPU with the given policies.
    pub fn with_policy(mem: SimMemory, gpa: u64, lazy_advertised: bool, policy: Policy) -> Self {
        let clock = VirtualClock::default();
        let timer = FakeTimer::default();
        let irq = RecordingIrq::new(clock.clone());
        let host = HostCell {
            host: Rc::new(RefCell::new(TscDeadlineTimer::new(
                mem.clone(),
                timer.clone(),
                clock.clone(),
                irq.clone(),
                LvtTimer::RESET,
                policy.config(lazy_advertised),
            ))),
            mem: mem.clone(),
            watch: gpa,
            violations: Rc::default(),
        };
        let guest = DeadlineSetter::new(TrapBridge::new(host.clone()))
            .with_exitless_cancel(policy.guest_exitless);
        SimVcpu {
            clock,
            timer,
            irq,
            host,
            guest,
            mem,
            gpa,
        }
    }

    /// The virtual guest TSC.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The guest programs deadline `t` through the real setter.
    pub fn write_deadline(&mut self, t: u64) -> WriteOutcome {
        self.guest.set_next_deadline(t)
    }

    /// The guest registers its struct. Returns the #GP, if the host raised one.
    pub fn register(&mut self) -> Result<(), WriteMsrError> {
        self.guest.reset();
        self.guest.msr_mut().take_fault();
        self.guest
            .register(MemShared::new(self.mem.clone(), self.gpa), self.gpa)
            .expect("simulator struct address is aligned");
        if let Some(fault) = self.guest.msr_mut().take_fault() {
            self.guest.reset();
            return Err(fault);
        }
        Ok(())
    }

    /// The guest unregisters.
    pub fn unregister(&mut self) {
        self.guest.unregister();
    }

    /// A raw WRMSR from the guest, bypassing the setter (hostile guests).
    pub fn raw_msr_write(&mut self, index: u32, value: u64) -> Result<(), WriteMsrError> {
        self.host.write_msr(index, value)
    }

    /// A raw RDMSR from the guest.
    pub fn raw_msr_read(&self, index: u32) -> Result<u64, ReadMsrError> {
        self.host.with(None, |h| h.read_msr(index))
    }

    /// The guest stores `pending` without the fence, the load of `armed`
    /// or any trap (hostile guests: e.g. an exitless cancel the host did
    /// not offer).
    pub fn store_pending_only(&mut self, value: u64) {
        let _ = self
            .mem
            .write_obj(value, GuestAddress(self.gpa + PENDING_OFFSET));
    }

    /// The guest writes an arbitrary value at `offset` (0..64, rounded down
    /// to 8) of its struct (hostile guests).
    pub fn scribble(&mut self, offset: u64, value: u64) {
        let off = (offset % 64) & !7;
        let _ = self.mem.write_obj(value, GuestAddress(self.gpa + off));
    }

    /// The LVT timer register changed.
    pub fn set_lvt(&mut self, raw: u32) {
        self.host
            .with(None, |h| h.set_lvt_timer(raw))
            .expect(INFALLIBLE);
    }

    /// INIT/RESET of the vCPU: both sides forget the registration.
    pub fn reset(&mut self) {
        self.host.with(None, |h| h.reset()).expect(INFALLIBLE);
        self.guest.reset();
    }

    /// Delivers host timer expiries that are due now; returns how many
    /// kicks ran.
    pub fn expire_due(&mut self) -> u64 {
        let mut kicks = 0;
        while kicks < crate::MAX_KICKS_PER_ADVANCE && self.timer.take_expired(self.clock.now()) {
            self.host.with(None, |h| h.kick()).expect(INFALLIBLE);
            kicks += 1;
        }
        kicks
    }

    /// A host timer expiry that arrives although the timer is not due (a
    /// stray or early wake-up). Returns the kick's outcome.
    pub fn stray_expiry(&mut self) -> KickOutcome {
        self.timer.force_expire();
        self.host.with(None, |h| h.kick()).expect(INFALLIBLE)
    }

    /// Advances time by `delta`, delivering each host expiry on time.
    /// Returns how many kicks ran.
    pub fn advance(&mut self, delta: u64) -> u64 {
        let target = self.clock.now().saturating_add(delta);
        let mut kicks = 0;
        while kicks < crate::MAX_KICKS_PER_ADVANCE {
            match self.timer.deadline() {
                Some(d) if d <= target => {
                    self.clock.set(d);
                    kicks += self.expire_due();
                }
                _ => break,
            }
        }
        self.clock.set(target);
        kicks
    }

    /// Advances time by `delta` without delivering expiries (the host is
    /// late); a later [`expire_due`](Self::expire_due) delivers them.
    pub fn advance_late(&mut self, delta: u64) {
        self.clock.advance(delta);
    }

    /// Snapshots the host timer (through its serialized, versioned form)
    /// and restores it into a fresh instance with a fresh host timer over
    /// the same memory, then resumes it (the virtual TSC needs no restore).
    pub fn snapshot_restore(&mut self) -> Result<(), StateError> {
        let snapshot = TimerSnapshot::from(self.host.host.borrow().state());
        let text = serde_json::to_string(&snapshot).expect("state serializes");
        let snapshot: TimerSnapshot = serde_json::from_str(&text).expect("state deserializes");
        let timer = FakeTimer::default();
        let restored = self.host.with(None, |_| {
            TscDeadlineTimer::from_state(
                self.mem.clone(),
                timer.clone(),
                self.clock.clone(),
                self.irq.clone(),
                &snapshot.into_state()?,
            )
        })?;
        self.timer = timer;
        self.host
            .with(None, |h| {
                *h = restored;
                h.resume()
            })
            .expect(INFALLIBLE);
        Ok(())
    }

    /// The host timer.
    pub fn host(&self) -> Ref<'_, SimHost> {
        self.host.host.borrow()
    }

    /// The guest setter.
    pub fn guest(&self) -> &DeadlineSetter<MemShared, TrapBridge> {
        &self.guest
    }

    /// The fake host timer.
    pub fn timer(&self) -> &FakeTimer {
        &self.timer
    }

    /// Interrupts injected so far.
    pub fn interrupts(&self) -> Vec<Interrupt> {
        self.irq.log()
    }

    /// The struct's `(armed, pending)` in guest memory.
    pub fn shared_fields(&self) -> (u64, u64) {
        let rd = |off| {
            self.mem
                .read_obj::<u64>(GuestAddress(self.gpa + off))
                .unwrap_or(0)
        };
        (rd(ARMED_OFFSET), rd(PENDING_OFFSET))
    }

    /// Checks the host's internal consistency; with `honest`, also that the
    /// guest-visible `armed` is what the host published.
    /// Always: the host wrote nothing in guest memory but `armed` of a
    /// registered struct (see [`HostCell::with`]).
    pub fn check_invariants(&self, honest: bool) -> Result<(), String> {
        if let Some(v) = self.host.violations().first() {
            return Err(v.clone());
        }
        let host = self.host.host.borrow();
        let (d, g) = (host.deadline(), host.grace_deadline());
        if d != 0 && g != 0 {
            return Err(format!("deadline {d} and grace deadline {g} both armed"));
        }
        let target = d.max(g);
        match (target, self.timer.deadline()) {
            (0, None) => {}
            (d, Some(t)) if d == t && d != 0 => {}
            (d, t) => return Err(format!("host timer target {d} but host timer {t:?}")),
        }
        if host.is_published() && !host.registration().is_enabled() {
            return Err("published without a registration".into());
        }
        if g != 0 && !host.is_published() {
            return Err(format!("grace deadline {g} not published"));
        }
        if g != 0 && !host.config().grace.is_on() {
            return Err(format!("grace deadline {g} with the grace policy off"));
        }
        if honest && host.registration().is_enabled() {
            let armed = self.shared_fields().0;
            let want = if host.is_published() { target } else { 0 };
            if armed != want || host.armed() != want {
                return Err(format!(
                    "armed in memory {armed}, host published {want} (armed() says {})",
                    host.armed()
                ));
            }
        }
        Ok(())
    }
}
