//! Property tests of the protocol invariants, over the real guest and host
//! crates in the simulator. Each property runs 1000 cases unless
//! `PROPTEST_CASES` says otherwise.

use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::GracePolicy;
use lazy_tscdeadline_sim::{GuestKind, Op, Policy, Scenario};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 1000;
    }
    c
}

/// Deltas around the interesting scales: 0, tiny, typical, huge.
fn delta() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..4,
        6 => 1u64..200,
        3 => 200u64..5_000,
        1 => Just(u64::MAX / 2),
    ]
}

fn lvt_raw() -> impl Strategy<Value = u32> {
    // mode x mask x vector (vector kept at the simulator's).
    (0u32..4, any::<bool>())
        .prop_map(|(mode, masked)| (mode << 17) | (u32::from(masked) << 16) | 0xec)
}

/// Honest operations, weighted like a timer-heavy guest: mostly pushes
/// later, with time passing, expiries on time (and late ones when `late`),
/// and every kind of disturbance now and then.
fn honest_op(late: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => delta().prop_map(Op::WriteLater),
        4 => delta().prop_map(Op::WriteIn),
        2 => delta().prop_map(Op::WriteEarlier),
        1 => Just(Op::WriteSame),
        1 => delta().prop_map(Op::WritePast),
        1 => Just(Op::WriteZero),
        6 => delta().prop_map(Op::Advance),
        2 => delta().prop_map(move |d| if late { Op::AdvanceLate(d) } else { Op::Advance(d) }),
        2 => Just(Op::Expire),
        1 => Just(Op::StrayExpiry),
        2 => Just(Op::LvtDeadline),
        2 => Just(Op::Mask),
        2 => Just(Op::Unmask),
        1 => lvt_raw().prop_map(Op::Lvt),
        2 => Just(Op::Register),
        1 => Just(Op::Unregister),
        1 => Just(Op::Reset),
        2 => Just(Op::Snapshot),
    ]
}

/// A scenario: set up a live LVT and (for lazy) register, run the ops, then
/// let enough time pass that anything still armed fires.
fn scenario(late: bool) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(honest_op(late), 1..80).prop_map(|body| {
        let mut ops = vec![Op::LvtDeadline, Op::Register];
        ops.extend(body);
        ops.push(Op::Expire);
        ops.push(Op::Advance(u64::MAX / 2 + 1));
        ops
    })
}

/// One of the policy combinations of [`Policy::all`].
fn policy() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::all())
}

fn hostile_op() -> impl Strategy<Value = Op> {
    let msr = prop_oneof![
        Just(MSR_IA32_TSC_DEADLINE),
        Just(MSR_KVM_LAZY_TSCDEADLINE),
        any::<u32>()
    ];
    let reg_value = prop_oneof![
        any::<u64>(),
        (0u64..0x1_0000).prop_map(|v| v | 1),
        (0u64..0x400).prop_map(|v| (v << 6) | 1),
    ];
    prop_oneof![
        6 => honest_op(true),
        3 => (any::<u8>(), any::<u64>()).prop_map(|(offset, value)| Op::Scribble { offset, value }),
        // `flags` in particular (offset 16; the u64 covers pad[0] too).
        1 => any::<u64>().prop_map(|value| Op::Scribble { offset: 16, value }),
        // Exitless cancels whether offered or not, and other silent stores.
        2 => prop_oneof![Just(0u64), any::<u64>(), 1u64..10_000].prop_map(Op::StorePendingOnly),
        2 => (msr, reg_value).prop_map(|(index, value)| Op::RawWrmsr { index, value }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// With host expiries delivered on time, the interrupt trace of the
    /// lazy protocol (which deadlines fire, at what virtual time, with what
    /// vector) equals plain eager IA32_TSC_DEADLINE behaviour for the same
    /// guest writes, under every policy combination (host grace off /
    /// fixed short and long / adaptive / default, exitless cancel offered
    /// or not, an RFC or a new guest); so does the host crate's own eager
    /// emulation. The reference follows the SDM: masked writes arm, the
    /// mask suppresses only delivery, an expiry while masked is dropped,
    /// only a mode change, a write of 0 or reset disarm. Every run also
    /// checks each write's trap decision against the simulator's own
    /// necessary-trap oracle.
    #[test]
    fn on_time_traces_equal_eager_reference(ops in scenario(false)) {
        for policy in Policy::all() {
            let out = Scenario::run_with(GuestKind::Lazy, policy, &ops)
                .map_err(|e| TestCaseError::fail(format!("{policy:?}: {e:?}")))?;
            prop_assert_eq!(&out.interrupts, &out.reference, "{:?}", policy);
            prop_assert_eq!(out.host_trapped_writes, out.necessary_traps, "{:?}", policy);
        }
        let out = Scenario::run(GuestKind::Eager, &ops).map_err(|e| TestCaseError::fail(format!("eager: {e:?}")))?;
        prop_assert_eq!(&out.interrupts, &out.reference);
    }

    /// With late host expiries too: never early, never spurious or
    /// duplicated, never delivered while masked, never lost. The simulator's oracle tracks the guest's
    /// outstanding deadline independently of the host and fails the run if
    /// an interrupt comes before it or with none outstanding, or if the
    /// host handles its timer after that deadline passed without firing it.
    /// Lazy delivers at most what eager delivers: already-passed deadlines
    /// written while the host is late are served by the one late expiry
    /// (they never trap). The eager host matches the reference exactly.
    /// Under every policy combination.
    #[test]
    fn never_early_lost_spurious_or_duplicated(ops in scenario(true)) {
        for policy in Policy::all() {
            let out = Scenario::run_with(GuestKind::Lazy, policy, &ops)
                .map_err(|e| TestCaseError::fail(format!("{policy:?}: {e:?}")))?;
            prop_assert!(out.interrupts.len() <= out.reference.len(), "more interrupts than eager: {:?}", policy);
            prop_assert_eq!(out.counters.injections as usize, out.interrupts.len());
        }
        let eager = Scenario::run(GuestKind::Eager, &ops).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(&eager.interrupts, &eager.reference);
    }

    /// The host sees exactly the writes the protocol must trap
    /// (`armed == 0 || t < armed` at the time of the write, with `armed`
    /// what the host published, a deadline or a grace deadline; a cancel
    /// with `armed != 0` does not trap only under negotiated exitless
    /// cancel), no exit of the implementation's own, under every policy
    /// (late expiries too). Exitless cancels happen only when negotiated.
    #[test]
    fn traps_are_exactly_the_necessary_ones(ops in scenario(true)) {
        for policy in Policy::all() {
            let out = Scenario::run_with(GuestKind::Lazy, policy, &ops)
                .map_err(|e| TestCaseError::fail(format!("{policy:?}: {e:?}")))?;
            prop_assert_eq!(out.host_trapped_writes, out.necessary_traps, "{:?}", policy);
            prop_assert_eq!(out.guest.traps, out.necessary_traps, "{:?}", policy);
            if !policy.exitless_negotiated() {
                prop_assert_eq!(out.guest.exitless_cancels, 0, "{:?}", policy);
            }
            if !policy.grace.is_on() {
                prop_assert_eq!(out.counters.grace_arms + out.counters.grace_expiries, 0);
            }
        }
        let eager = Scenario::run(GuestKind::Eager, &ops).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(eager.host_trapped_writes, eager.guest.writes);
    }

    /// Snapshot/restore at any point changes nothing the guest can observe.
    #[test]
    fn snapshots_anywhere_are_invisible(ops in scenario(true), at in prop::collection::vec(any::<prop::sample::Index>(), 1..6), policy in policy()) {
        let mut with = ops.clone();
        for i in at {
            let pos = i.index(with.len());
            with.insert(pos, Op::Snapshot);
        }
        let plain: Vec<Op> = ops.into_iter().filter(|o| *o != Op::Snapshot).collect();
        let a = Scenario::run_with(GuestKind::Lazy, policy, &plain).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let b = Scenario::run_with(GuestKind::Lazy, policy, &with).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(a.interrupts, b.interrupts);
        prop_assert_eq!(a.host_trapped_writes, b.host_trapped_writes);
        // The grace state (and the adaptive length) survive the snapshot.
        prop_assert_eq!(a.counters.grace_arms, b.counters.grace_arms);
        prop_assert_eq!(a.counters.grace_hits, b.counters.grace_hits);
    }

    /// A hostile guest (garbage in its struct, arbitrary MSR values): no
    /// panic, bounded work per time step (the scenario fails with
    /// `Unbounded` otherwise), consistent host state, and the host writes
    /// nothing but `armed` of a struct it accepted (the simulator compares
    /// the guest's struct and every struct registered before or after a
    /// host operation, byte by byte, around each one; `check_invariants`
    /// reports any other change).
    #[test]
    fn hostile_guest_cannot_break_the_host(body in prop::collection::vec(hostile_op(), 1..120), policy in policy()) {
        let mut ops = vec![Op::LvtDeadline, Op::Register];
        ops.extend(body);
        ops.push(Op::Advance(u64::MAX / 2));
        let (_, vcpu) = Scenario::run_hostile_with(policy, &ops).map_err(|e| TestCaseError::fail(format!("{policy:?}: {e:?}")))?;
        // (`run_hostile` checked the host's consistency after every step.)
        // A registered struct is entirely inside RAM.
        let registration = vcpu.host().registration();
        if let Some(gpa) = registration.gpa() {
            prop_assert!(Scenario::memory().address_in_range_all(gpa));
        }
    }
}

/// Helper: whether all 64 bytes at `gpa` are in the simulator's RAM.
trait InRange {
    fn address_in_range_all(&self, gpa: u64) -> bool;
}
impl InRange for std::rc::Rc<vm_memory::GuestMemoryMmap> {
    fn address_in_range_all(&self, gpa: u64) -> bool {
        let mut buf = [0u8; 64];
        self.read_slice(&mut buf, GuestAddress(gpa)).is_ok()
    }
}

/// A prompt guest: each request programs a deadline 1000 ahead and pushes
/// it later twice as time passes; it then fires, or is cancelled 30 after
/// the request began (one request in `cancel_every`); the next request
/// comes at once.
fn prompt_guest(requests: usize, cancel_every: usize) -> Vec<Op> {
    let mut ops = vec![Op::LvtDeadline, Op::Register];
    for i in 0..requests {
        ops.push(Op::WriteIn(1_000));
        ops.push(Op::Advance(10));
        ops.push(Op::WriteIn(1_000));
        ops.push(Op::Advance(10));
        ops.push(Op::WriteIn(1_000));
        if cancel_every != 0 && i % cancel_every == 0 {
            ops.push(Op::Advance(10));
            ops.push(Op::WriteZero);
        } else {
            ops.push(Op::Advance(1_000));
        }
    }
    ops.push(Op::Advance(u64::MAX / 2));
    ops
}

/// Not vacuous: with the RFC every request's first deadline traps (and
/// every cancel); a fixed grace period that the prompt guest comes back
/// within removes all traps but the first and the cancels', at one host
/// wake-up per fired or cancelled deadline; exitless cancel removes the
/// cancels' traps only when both sides agree. Interrupts equal the
/// reference in every case.
#[test]
fn grace_and_exitless_cancel_remove_the_traps_they_should() {
    let ops = prompt_guest(20, 4);
    let run = |p: Policy| {
        let out = Scenario::run_with(GuestKind::Lazy, p, &ops).unwrap();
        assert_eq!(out.interrupts, out.reference, "{p:?}");
        assert_eq!(out.interrupts.len(), 15, "{p:?}");
        out
    };
    let rfc = run(Policy::RFC);
    // 20 first deadlines + 5 cancels.
    assert_eq!(rfc.host_trapped_writes, 25);
    let fixed = Policy {
        grace: GracePolicy::Fixed(500),
        ..Policy::RFC
    };
    let grace = run(fixed);
    // Only the very first deadline traps, and the cancels (0 < armed).
    assert_eq!(grace.host_trapped_writes, 1 + 5);
    // A grace period after each of the 15 interrupts and 5 cancels. Four
    // of them end at the trapped cancel of the next request (itself the
    // start of a new one), the others expire and find the next deadline,
    // but the last.
    assert_eq!(grace.counters.grace_arms, 20);
    assert_eq!(grace.counters.grace_expiries, 16);
    assert_eq!(grace.counters.grace_hits, 15);
    let both = run(Policy {
        exitless_offered: true,
        guest_exitless: true,
        ..fixed
    });
    assert_eq!(both.host_trapped_writes, 1);
    assert_eq!(both.guest.exitless_cancels, 5);
    // A grace period only after the interrupts now; each expires and finds
    // the next deadline, but the last.
    assert_eq!(both.counters.grace_arms, 15);
    assert_eq!(both.counters.grace_expiries, 15);
    assert_eq!(both.counters.grace_hits, 14);
    // Our guest on a host that does not offer it, and an RFC guest on a
    // host that does: the cancels trap.
    for (exitless_offered, guest_exitless) in [(false, true), (true, false)] {
        let p = Policy {
            exitless_offered,
            guest_exitless,
            ..fixed
        };
        let out = run(p);
        assert_eq!(out.host_trapped_writes, 6, "{p:?}");
        assert_eq!(out.guest.exitless_cancels, 0, "{p:?}");
    }
    // Exitless cancel alone: the cancels no longer trap, the next deadline
    // (later than the cancelled `armed`) neither.
    let exitless = run(Policy {
        exitless_offered: true,
        guest_exitless: true,
        ..Policy::RFC
    });
    assert_eq!(exitless.host_trapped_writes, 15);
    // A grace period longer than the guest's deadlines makes them trap
    // (t < armed): still correct, no saving.
    let long = run(Policy {
        grace: GracePolicy::Fixed(5_000),
        ..Policy::RFC
    });
    assert_eq!(long.host_trapped_writes, 25);
    // The adaptive policy, started far too long, learns to fit after one
    // trap: (1000 - 0) / 2 = 500.
    let adaptive = run(Policy {
        grace: GracePolicy::Adaptive {
            initial: 50_000,
            min: 1,
            max: 100_000,
        },
        ..Policy::RFC
    });
    assert_eq!(adaptive.host_trapped_writes, 1 + 1 + 5);
    // Started far too short, it learns from the trap after a missed period.
    let adaptive = run(Policy {
        grace: GracePolicy::Adaptive {
            initial: 1,
            min: 1,
            max: 100_000,
        },
        ..Policy::RFC
    });
    assert!(
        adaptive.host_trapped_writes <= 1 + 2 + 5,
        "{}",
        adaptive.host_trapped_writes
    );
}

/// Hostile guests against the new mechanisms, spelled out: a guest that
/// sets the exitless-cancel bit in `flags` itself on a host that does not
/// offer it, then cancels by storing `pending = 0` without trapping; one
/// that scribbles `flags` and `pending` during a grace period; one that
/// stores the delivered value again without trapping. No panic, bounded
/// work, only `armed` written (checked after every step by
/// `run_hostile_with`), and the host delivers nothing it should not: a
/// silent cancel just cancels (this host treats `pending == 0` at an
/// expiry as a cancel whatever it offered), and a stale value found by a
/// grace expiry is nothing new.
#[test]
fn hostile_flags_and_silent_pending_stores() {
    for policy in Policy::all() {
        let ops = [
            Op::LvtDeadline,
            Op::Register,
            Op::Scribble {
                offset: 16,
                value: u64::MAX,
            },
            Op::WriteIn(100),
            Op::StorePendingOnly(0),
            Op::Advance(1_000),
        ];
        let (out, vcpu) = Scenario::run_hostile_with(policy, &ops).unwrap();
        assert!(
            out.interrupts.is_empty(),
            "{policy:?}: {:?}",
            out.interrupts
        );
        assert_eq!(vcpu.host().deadline(), 0);
        let ops = [
            Op::LvtDeadline,
            Op::Register,
            Op::WriteIn(100),
            Op::Advance(100),
            // A grace period (if any) is running: pending still holds the
            // delivered deadline; scribble flags, store it again silently.
            Op::Scribble {
                offset: 16,
                value: 1,
            },
            Op::StorePendingOnly(100),
            Op::Advance(1_000_000_000),
        ];
        let (out, _) = Scenario::run_hostile_with(policy, &ops).unwrap();
        assert_eq!(out.interrupts.len(), 1, "{policy:?}: {:?}", out.interrupts);
    }
}
