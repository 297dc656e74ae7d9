//! How much work one KICK does when the guest rewrites `pending` between
//! every two reads of it: the bound `docs/PROTOCOL.md` states.

use std::cell::Cell;
use std::convert::Infallible;

use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::{
    Config, GracePolicy, GuestClock, HostTimer, InterruptSink, KickOutcome, LvtTimer, SharedMemory,
    TscDeadlineTimer, MAX_KICK_ROUNDS,
};

/// A registered struct whose `pending` the guest changes before every read
/// (always a later deadline; with `alternate`, a deadline 1000 + n for the
/// n-th read when n is even, 9000 + n when odd), counting the host's
/// accesses.
#[derive(Default)]
struct RacingGuest {
    reads: Cell<u32>,
    publishes: Cell<u32>,
    last_armed: Cell<u64>,
    alternate: bool,
    /// If not empty: the n-th read returns `script[n - 1]` (the last entry
    /// once past the end).
    script: Vec<u64>,
}

impl SharedMemory for &RacingGuest {
    fn struct_in_ram(&self, _: u64) -> bool {
        true
    }
    fn publish_armed(&self, _: u64, armed: u64) -> bool {
        self.publishes.set(self.publishes.get() + 1);
        self.last_armed.set(armed);
        true
    }
    fn load_pending(&self, _: u64) -> Option<u64> {
        let n = self.reads.get() + 1;
        self.reads.set(n);
        if let Some(last) = self.script.last() {
            return Some(*self.script.get(n as usize - 1).unwrap_or(last));
        }
        let far = if self.alternate && n % 2 == 1 {
            8000
        } else {
            0
        };
        Some(1000 + far + u64::from(n))
    }
    fn write_flags(&self, _: u64, _: u32) -> bool {
        true
    }
}

#[derive(Default)]
struct Clock(Cell<u64>);
impl GuestClock for Clock {
    fn now(&self) -> u64 {
        self.0.get()
    }
}
struct Nop;
impl HostTimer for Nop {
    type Error = Infallible;
    fn arm(&mut self, _: u64) -> Result<(), Infallible> {
        Ok(())
    }
    fn disarm(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}
impl InterruptSink for Nop {
    type Error = Infallible;
    fn inject(&mut self, _: u8) -> Result<(), Infallible> {
        Ok(())
    }
}

#[test]
fn a_racing_guest_gets_max_kick_rounds_plus_two_reads() {
    let guest = RacingGuest::default();
    let clock = Clock::default();
    let mut t = TscDeadlineTimer::new(
        &guest,
        Nop,
        &clock,
        Nop,
        LvtTimer::tsc_deadline(0xec),
        Config::rfc().with_lazy_advertised(true),
    );
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap();
    t.write_msr(MSR_IA32_TSC_DEADLINE, 50).unwrap();
    let (reads, publishes) = (guest.reads.get(), guest.publishes.get());
    assert_eq!(reads, 0, "UPDATE and registration do not read pending");
    // The host timer fires, late.
    clock.0.set(100);
    let outcome = t.kick().unwrap();
    let reads = guest.reads.get() - reads;
    // One read, one re-read per round, one more after the fallback.
    assert_eq!(reads, MAX_KICK_ROUNDS + 2);
    assert_eq!(reads, 6);
    // One publication per round and the fallback's 0.
    assert_eq!(guest.publishes.get() - publishes, MAX_KICK_ROUNDS + 1);
    assert_eq!(t.counters().kick_fallbacks, 1);
    // It settled on the last value it read, unpublished: the guest's next
    // write traps (armed is 0).
    assert_eq!(outcome, KickOutcome::Rearmed(1006));
    assert_eq!(guest.last_armed.get(), 0);
    assert!(!t.is_published());
}

/// A timer with a fixed grace length of 100 over `guest`, registered, with
/// deadline 50 trapped and the guest TSC at 5000: its next kick delivers.
fn graced_and_due<'a>(
    guest: &'a RacingGuest,
    clock: &'a Clock,
) -> TscDeadlineTimer<&'a RacingGuest, Nop, &'a Clock, Nop> {
    let mut t = TscDeadlineTimer::new(
        guest,
        Nop,
        clock,
        Nop,
        LvtTimer::tsc_deadline(0xec),
        Config::new()
            .with_lazy_advertised(true)
            .with_grace(GracePolicy::Fixed(100)),
    );
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap();
    t.write_msr(MSR_IA32_TSC_DEADLINE, 50).unwrap();
    clock.0.set(5000);
    t
}

/// With a grace policy, a guest that alternates between a due and a future
/// deadline before every read defeats the grace period's repeated
/// publication too: the same bound holds, and the fallback settles
/// unpublished and without a grace period (a grace period is only ever
/// published behind a re-check of `pending`).
#[test]
fn the_bound_holds_with_grace_and_the_fallback_publishes_no_grace_period() {
    let guest = RacingGuest {
        alternate: true,
        ..RacingGuest::default()
    };
    let clock = Clock::default();
    let mut t = graced_and_due(&guest, &clock);
    let (reads, publishes) = (guest.reads.get(), guest.publishes.get());
    let outcome = t.kick().unwrap();
    assert_eq!(guest.reads.get() - reads, MAX_KICK_ROUNDS + 2);
    assert_eq!(guest.publishes.get() - publishes, MAX_KICK_ROUNDS + 1);
    assert_eq!(t.counters().kick_fallbacks, 1);
    // The last read (the sixth) is due: delivered, nothing armed or
    // published, no grace period.
    assert_eq!(outcome, KickOutcome::Injected);
    assert_eq!(guest.last_armed.get(), 0);
    assert!(!t.is_published());
    assert_eq!(
        (t.deadline(), t.grace_deadline(), t.timer_deadline()),
        (0, 0, 0)
    );
    assert_eq!(t.counters().grace_arms, 0);
}

/// A delivering kick with grace: settled on a due deadline (read, publish
/// 0, re-read), delivered, then the grace publication's re-read finds a new
/// deadline the guest wrote meanwhile, which keeps moving once more: the
/// same rounds re-arm it and publish it (no grace period). Reads and stores
/// stay within the bound (here 5 and 4).
#[test]
fn a_guest_write_during_the_grace_publication_is_rearmed_by_the_same_rounds() {
    let guest = RacingGuest {
        script: vec![1001, 1001, 9000, 9100],
        ..RacingGuest::default()
    };
    let clock = Clock::default();
    let mut t = graced_and_due(&guest, &clock);
    let publishes = guest.publishes.get();
    assert_eq!(t.kick().unwrap(), KickOutcome::Injected);
    assert_eq!(guest.reads.get(), 5);
    // armed = 0 (delivery), the grace deadline, 9000, 9100.
    assert_eq!(guest.publishes.get() - publishes, 4);
    assert_eq!(guest.last_armed.get(), 9100);
    assert!(t.is_published());
    assert_eq!((t.deadline(), t.grace_deadline()), (9100, 0));
    assert_eq!(t.counters().grace_arms, 0);
    assert_eq!(t.counters().injections, 1);
    assert_eq!(t.counters().kick_fallbacks, 0);
}

/// The grace phase shares the kick's rounds: a guest that keeps moving
/// `pending` during it gets the fallback (armed 0, unpublished re-arm) and
/// the kick stays within `MAX_KICK_ROUNDS + 2` reads and
/// `MAX_KICK_ROUNDS + 1` stores.
#[test]
fn the_grace_phase_shares_the_round_budget() {
    let guest = RacingGuest {
        script: vec![1001, 1001, 9001, 9002, 9003, 9004],
        ..RacingGuest::default()
    };
    let clock = Clock::default();
    let mut t = graced_and_due(&guest, &clock);
    let publishes = guest.publishes.get();
    assert_eq!(t.kick().unwrap(), KickOutcome::Injected);
    assert_eq!(guest.reads.get(), MAX_KICK_ROUNDS + 2);
    assert_eq!(guest.publishes.get() - publishes, MAX_KICK_ROUNDS + 1);
    assert_eq!(t.counters().kick_fallbacks, 1);
    assert_eq!(guest.last_armed.get(), 0);
    assert!(!t.is_published());
    assert_eq!((t.deadline(), t.grace_deadline()), (9004, 0));
}

/// A registration change reads `pending` of the old struct at most once
/// (the guest is stopped in the WRMSR exit: the value cannot move), and only
/// when a deadline is published there; it publishes `armed = 0` in the old
/// struct and in the new one, and nothing else.
#[test]
fn a_registration_change_reads_pending_once_and_publishes_only_zero() {
    let guest = RacingGuest::default();
    let clock = Clock::default();
    let mut t = TscDeadlineTimer::new(
        &guest,
        Nop,
        &clock,
        Nop,
        LvtTimer::tsc_deadline(0xec),
        Config::rfc().with_lazy_advertised(true),
    );
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap();
    t.write_msr(MSR_IA32_TSC_DEADLINE, 50).unwrap();
    assert!(t.is_published());
    let publishes = guest.publishes.get();
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x2001).unwrap();
    assert_eq!(guest.reads.get(), 1, "one read of the old pending");
    assert_eq!(guest.publishes.get() - publishes, 2, "old and new struct");
    assert_eq!(guest.last_armed.get(), 0);
    // It settled on the one value read (1001, later than 50), unpublished.
    assert_eq!((t.deadline(), t.is_published()), (1001, false));
    // Unpublished: the next change reads nothing.
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0).unwrap();
    assert_eq!(guest.reads.get(), 1, "nothing published: no read");
    assert_eq!(t.deadline(), 1001);
}
