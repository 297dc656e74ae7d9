//! Registration hardening, memory containment and snapshot validation of the
//! host timer, with small local fakes.

use std::cell::Cell;
use std::convert::Infallible;

use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::{
    Config, GuestClock, GuestFault, HostTimer, InterruptSink, KickOutcome, LvtTimer, ReadMsrError,
    StateError, TimerState, TscDeadlineTimer, WriteMsrError,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Default)]
struct Clock(Cell<u64>);
impl GuestClock for Clock {
    fn now(&self) -> u64 {
        self.0.get()
    }
}
#[derive(Default, Debug)]
struct Timer(Option<u64>);
impl HostTimer for Timer {
    type Error = Infallible;
    fn arm(&mut self, d: u64) -> Result<(), Infallible> {
        self.0 = Some(d);
        Ok(())
    }
    fn disarm(&mut self) -> Result<(), Infallible> {
        self.0 = None;
        Ok(())
    }
}
#[derive(Default, Debug)]
struct Irq(u32);
impl InterruptSink for Irq {
    type Error = Infallible;
    fn inject(&mut self, _: u8) -> Result<(), Infallible> {
        self.0 += 1;
        Ok(())
    }
}

/// RAM 0..32 KiB and 48..64 KiB: a hole in between.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8000), (GuestAddress(0xc000), 0x4000)])
        .unwrap()
}

type Host<'a> = TscDeadlineTimer<&'a GuestMemoryMmap, Timer, &'static Clock, Irq>;

fn timer(mem: &GuestMemoryMmap, advertised: bool) -> Host<'_> {
    timer_with_clock(mem, advertised, Box::leak(Box::default()))
}

/// A timer with the struct registered at 0x1000 and deadline 100 armed.
fn registered_and_armed(mem: &GuestMemoryMmap) -> Host<'_> {
    let mut t = timer(mem, true);
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap();
    t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap();
    t
}

fn timer_with_clock<'a>(
    mem: &'a GuestMemoryMmap,
    advertised: bool,
    clock: &'static Clock,
) -> Host<'a> {
    TscDeadlineTimer::new(
        mem,
        Timer::default(),
        clock,
        Irq::default(),
        LvtTimer::tsc_deadline(0xec),
        Config::rfc().with_lazy_advertised(advertised),
    )
}

#[test]
fn bad_registrations_fault_and_leave_state_alone() {
    let mem = memory();
    let mut t = timer(&mem, true);
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap();
    t.write_msr(MSR_IA32_TSC_DEADLINE, 500).unwrap();
    let cases = [
        (0x1003, "reserved bit 1"),
        (0x1021, "reserved bit 5"),
        (0x8001, "in the hole between regions"),
        (0xbfc1, "last 64 bytes of the hole"),
        (0x1_0001, "past the end of RAM"),
        (0xffff_ffff_ffff_ffc1, "top of the address space"),
    ];
    for (value, why) in cases {
        let e = t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, value).unwrap_err();
        assert!(e.is_guest_fault(), "{why}: {e}");
    }
    assert_eq!(t.counters().rejected_registrations, cases.len() as u64);
    // The earlier registration and the armed deadline are untouched.
    assert_eq!(t.read_msr(MSR_KVM_LAZY_TSCDEADLINE), Ok(0x1001));
    assert_eq!(t.deadline(), 500);
    assert!(t.is_published());
    // The last 64 bytes before the hole and the first after it are fine.
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x7fc1).unwrap();
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0xc001).unwrap();
}

#[test]
fn feature_not_advertised_faults_every_access() {
    let mem = memory();
    let mut t = timer(&mem, false);
    for value in [0x1001, 0] {
        assert!(matches!(
            t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, value),
            Err(WriteMsrError::GuestFault(GuestFault::FeatureNotAdvertised))
        ));
    }
    assert_eq!(
        t.read_msr(MSR_KVM_LAZY_TSCDEADLINE),
        Err(ReadMsrError::GuestFault(GuestFault::FeatureNotAdvertised))
    );
    // A routing bug of the VMM is not a guest fault.
    let e = t.write_msr(0x10, 1).unwrap_err();
    assert!(matches!(e, WriteMsrError::UnknownMsr(0x10)) && !e.is_guest_fault());
    let e = t.read_msr(0x10).unwrap_err();
    assert!(e == ReadMsrError::UnknownMsr(0x10) && !e.is_guest_fault());
    // IA32_TSC_DEADLINE still works eagerly.
    t.write_msr(MSR_IA32_TSC_DEADLINE, 10).unwrap();
    assert_eq!(t.read_msr(MSR_IA32_TSC_DEADLINE), Ok(10));
}

/// The host writes `armed` of the registered struct, and `flags` (all 32
/// bits: the offered extensions) only at an enabling registration; no other
/// byte of guest memory, whatever the policy.
#[test]
fn host_writes_only_armed_and_flags_of_the_registered_struct() {
    for (config, flags) in [
        (Config::rfc(), 0u32),
        (
            Config::new(),
            lazy_tscdeadline_abi::LAZY_FLAG_EXITLESS_CANCEL,
        ),
        (Config::new().with_exitless_cancel(false), 0),
    ] {
        let mem = memory();
        // Canary everywhere.
        let canary = vec![0xa5u8; 0x8000];
        mem.write_slice(&canary, GuestAddress(0)).unwrap();
        let clock: &'static Clock = Box::leak(Box::default());
        let mut t: Host<'_> = TscDeadlineTimer::new(
            &mem,
            Timer::default(),
            clock,
            Irq::default(),
            LvtTimer::tsc_deadline(0xec),
            config.with_lazy_advertised(true),
        );
        t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x2041).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x2050)).unwrap(), flags);
        // The guest scribbles `flags`: the host neither reads nor rewrites it
        // until the next registration.
        mem.write_obj(0xa5a5_a5a5u32, GuestAddress(0x2050)).unwrap();
        // Guest stores pending (its own field) then traps, the host re-arms
        // on the later pending, it fires (and, with grace, the grace period
        // ends), then the guest disables.
        mem.write_obj(900u64, GuestAddress(0x2048)).unwrap();
        t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap();
        clock.0.set(100);
        t.kick().unwrap();
        clock.0.set(900);
        t.kick().unwrap();
        clock.0.set(u64::MAX / 2);
        t.kick().unwrap();
        t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0).unwrap();
        t.reset().unwrap();
        let mut after = vec![0u8; 0x8000];
        mem.read_slice(&mut after, GuestAddress(0)).unwrap();
        for (i, b) in after.iter().enumerate() {
            let armed = (0x2040..0x2048).contains(&i);
            let pending = (0x2048..0x2050).contains(&i);
            if !armed && !pending {
                assert_eq!(*b, 0xa5, "byte {i:#x} outside `armed` changed");
            }
        }
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x2040)).unwrap(),
            0,
            "armed cleared"
        );
    }
}

#[test]
fn host_never_trusts_armed_in_guest_memory() {
    let mem = memory();
    let mut t = registered_and_armed(&mem);
    // The guest scribbles `armed`; pending stays at the real deadline.
    mem.write_obj(100u64, GuestAddress(0x1008)).unwrap();
    mem.write_obj(7u64, GuestAddress(0x1000)).unwrap();
    assert_eq!(t.read_msr(MSR_IA32_TSC_DEADLINE), Ok(100));
    // A kick before 100 is an early host expiry: re-armed, no interrupt.
    assert_eq!(t.kick().unwrap(), KickOutcome::TooEarly);
    assert_eq!(t.interrupts().0, 0);
    assert_eq!(t.host_timer().0, Some(100));
}

#[test]
fn hostile_pending_values_are_bounded() {
    let mem = memory();
    let clock: &'static Clock = Box::leak(Box::default());
    let mut t = timer_with_clock(&mem, true, clock);
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001).unwrap();
    let cases = [
        (0, KickOutcome::Cancelled),
        (1, KickOutcome::Injected),
        (50, KickOutcome::Injected),
        (100, KickOutcome::Injected),
        (u64::MAX, KickOutcome::Rearmed(u64::MAX)),
    ];
    for (pending, want) in cases {
        clock.0.set(0);
        t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap();
        mem.write_obj(pending, GuestAddress(0x1008)).unwrap();
        clock.0.set(100);
        assert_eq!(t.kick().unwrap(), want, "pending {pending}");
        let published = mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap();
        assert_eq!(published, t.deadline(), "armed mirrors the host's copy");
        if t.deadline() != 0 {
            // (After an injection the one-shot timer has simply expired.)
            assert_eq!(t.host_timer().0, Some(t.deadline()));
        }
    }
    assert_eq!(t.interrupts().0, 3);
}

#[test]
fn snapshot_inconsistencies_are_rejected() {
    let mem = memory();
    let t = registered_and_armed(&mem);
    let good = t.state();
    let restore = |s: &TimerState| {
        TscDeadlineTimer::from_state(&mem, Timer::default(), Clock::default(), Irq::default(), s)
            .map(|t| t.deadline())
    };
    assert_eq!(restore(&good), Ok(100));
    let change = |f: fn(&mut TimerState)| {
        let mut s = good;
        f(&mut s);
        s
    };
    let bad: [(TimerState, &str); 6] = [
        (change(|s| s.registration = 0x1003), "reserved bits"),
        (change(|s| s.registration = 0x8001), "outside RAM"),
        (change(|s| s.lazy_advertised = false), "not advertised"),
        (change(|s| s.deadline = 0), "published without deadline"),
        (
            change(|s| {
                s.published = false;
                s.registration = 0;
            }),
            "unpublished deadline, one-shot LVT",
        ),
        (
            change(|s| s.lvt_timer = 1 << 17 | 0xec),
            "periodic LVT with deadline",
        ),
    ];
    for (s, why) in bad {
        let e = restore(&s);
        if why.starts_with("unpublished") {
            // Consistent: a deadline armed before registration.
            assert_eq!(e, Ok(100), "{why}");
        } else {
            assert!(matches!(e, Err(StateError::Invalid(_))), "{why}: {e:?}");
        }
    }
    // A masked LVT in TSC-deadline mode keeps its deadline (the mask only
    // suppresses delivery).
    assert_eq!(
        restore(&change(
            |s| s.lvt_timer = LvtTimer::tsc_deadline(0xec).with_masked(true).raw()
        )),
        Ok(100)
    );
}

#[test]
fn restored_timer_stays_paused_until_resumed() {
    let mem = memory();
    let good = registered_and_armed(&mem).state();
    // Guest memory came back with a stale `armed`.
    mem.write_obj(0u64, GuestAddress(0x1000)).unwrap();
    let clock: &'static Clock = Box::leak(Box::default());
    clock.0.set(500);
    let mut r =
        TscDeadlineTimer::from_state(&mem, Timer::default(), clock, Irq::default(), &good).unwrap();
    assert!(r.is_paused());
    assert_eq!(r.host_timer().0, None, "no host timer before resume");
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 100);
    // The guest TSC is not restored yet: a kick must not fire the deadline.
    assert_eq!(r.kick().unwrap(), KickOutcome::Stale);
    assert_eq!(r.interrupts().0, 0);
    assert_eq!(r.deadline(), 100);
    r.resume().unwrap();
    assert!(!r.is_paused());
    assert_eq!(r.host_timer().0, Some(100));
    mem.write_obj(100u64, GuestAddress(0x1008)).unwrap();
    assert_eq!(r.kick().unwrap(), KickOutcome::Injected);
    assert_eq!(r.interrupts().0, 1);
    // `new` has nothing to resume.
    assert!(!timer(&mem, true).is_paused());
}

#[cfg(feature = "serde")]
mod serde_snapshots {
    use super::*;
    use lazy_tscdeadline_host::{TimerSnapshot, STATE_VERSION};

    /// Written by the crate before the versioned envelope (state version 1).
    const V1: &str = include_str!("data/timer-state-v1.json");

    #[test]
    fn version_1_snapshot_restores() {
        let snap: TimerSnapshot = serde_json::from_str(V1).unwrap();
        assert_eq!(snap.version(), 1);
        let state = snap.into_state().unwrap();
        assert_eq!(state.deadline, 100);
        assert!(state.published);
        assert_eq!(state.registration, 0x1001);
        assert_eq!(state.counters.trapped_writes, 2);
        assert_eq!(state.counters.kick_cancels, 1);
        assert_eq!(state.counters.masked_expiries, 0, "new counter defaults");
        let mem = memory();
        // The guest memory restored with the VM: the guest's `pending`
        // holds the deadline it trapped.
        mem.write_obj(100u64, GuestAddress(0x1008)).unwrap();
        let mut r = TscDeadlineTimer::from_state(
            &mem,
            Timer::default(),
            Clock::default(),
            Irq::default(),
            &state,
        )
        .unwrap();
        r.resume().unwrap();
        assert_eq!(r.host_timer().0, Some(100));
        assert_eq!(r.read_msr(MSR_KVM_LAZY_TSCDEADLINE), Ok(0x1001));
        assert_eq!(r.read_msr(MSR_IA32_TSC_DEADLINE), Ok(100));
    }

    #[test]
    fn current_snapshot_round_trips_and_newer_versions_are_typed_errors() {
        let mem = memory();
        let s = registered_and_armed(&mem).state();
        let json = serde_json::to_string(&TimerSnapshot::from(s)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["version"], STATE_VERSION);
        let back: TimerSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back.version(), STATE_VERSION);
        assert_eq!(back.into_state(), Ok(s));
        // A snapshot from a newer crate, whatever its layout, is reported by
        // version, not as a decoding error.
        let newer: TimerSnapshot =
            serde_json::from_str(r#"{"version": 9, "timers": [1, 2], "state": "x"}"#).unwrap();
        assert_eq!(newer.into_state(), Err(StateError::UnsupportedVersion(9)));
        // Known versions with a broken body, and no version at all, fail.
        for bad in [
            r#"{"version": 1}"#,
            r#"{"version": 2, "state": {}}"#,
            r#"{"state": {}}"#,
        ] {
            assert!(serde_json::from_str::<TimerSnapshot>(bad).is_err(), "{bad}");
        }
        // Counters missing from a state default to 0.
        let mut v2 = v.clone();
        v2["state"]["counters"]
            .as_object_mut()
            .unwrap()
            .remove("resets");
        let back: TimerSnapshot = serde_json::from_value(v2).unwrap();
        assert_eq!(back.into_state().unwrap().counters.resets, 0);
    }
}
