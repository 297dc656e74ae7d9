//! Registration hardening, memory containment and snapshot validation of the
//! host timer, with small local fakes.

use std::cell::Cell;

use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::{
    Config, Error, GuestClock, HostTimer, InterruptSink, KickOutcome, LvtTimer, TimerState,
    TscDeadlineTimer, STATE_VERSION,
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
    fn arm(&mut self, d: u64) {
        self.0 = Some(d)
    }
    fn disarm(&mut self) {
        self.0 = None
    }
}
#[derive(Default, Debug)]
struct Irq(u32);
impl InterruptSink for Irq {
    fn inject(&mut self, _: u8) {
        self.0 += 1
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
    let mut t = TscDeadlineTimer::new(
        mem,
        Timer::default(),
        clock,
        Irq::default(),
        Config {
            lazy_advertised: advertised,
        },
    );
    t.set_lvt_timer(LvtTimer::tsc_deadline(0xec).raw());
    t
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
    assert_eq!(
        t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1001),
        Err(Error::FeatureNotAdvertised)
    );
    assert_eq!(
        t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0),
        Err(Error::FeatureNotAdvertised)
    );
    assert_eq!(
        t.read_msr(MSR_KVM_LAZY_TSCDEADLINE),
        Err(Error::FeatureNotAdvertised)
    );
    assert_eq!(t.write_msr(0x10, 1), Err(Error::UnknownMsr(0x10)));
    // IA32_TSC_DEADLINE still works eagerly.
    t.write_msr(MSR_IA32_TSC_DEADLINE, 10).unwrap();
    assert_eq!(t.read_msr(MSR_IA32_TSC_DEADLINE), Ok(10));
}

#[test]
fn host_writes_only_armed_of_the_registered_struct() {
    let mem = memory();
    // Canary everywhere.
    let canary = vec![0xa5u8; 0x8000];
    mem.write_slice(&canary, GuestAddress(0)).unwrap();
    let mut t = timer(&mem, true);
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x2041).unwrap();
    // Guest stores pending (its own field) then traps, the host re-arms on
    // the later pending, then the guest disables.
    mem.write_obj(900u64, GuestAddress(0x2048)).unwrap();
    t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap();
    mem.write_obj(900u64, GuestAddress(0x2048)).unwrap();
    let _ = t.kick();
    t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0).unwrap();
    t.reset();
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

#[test]
fn host_never_trusts_armed_in_guest_memory() {
    let mem = memory();
    let mut t = registered_and_armed(&mem);
    // The guest scribbles `armed`; pending stays at the real deadline.
    mem.write_obj(100u64, GuestAddress(0x1008)).unwrap();
    mem.write_obj(7u64, GuestAddress(0x1000)).unwrap();
    assert_eq!(t.read_msr(MSR_IA32_TSC_DEADLINE), Ok(100));
    // A kick before 100 is an early host expiry: re-armed, no interrupt.
    assert_eq!(t.kick(), KickOutcome::TooEarly);
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
        assert_eq!(t.kick(), want, "pending {pending}");
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
fn snapshot_versions_and_inconsistencies_are_rejected() {
    let mem = memory();
    let t = registered_and_armed(&mem);
    let good = t.state();
    assert_eq!(good.version, STATE_VERSION);
    let restore = |s: &TimerState| {
        TscDeadlineTimer::from_state(&mem, Timer::default(), Clock::default(), Irq::default(), s)
            .map(|t| t.deadline())
    };
    assert_eq!(restore(&good), Ok(100));
    let bad: [(TimerState, &str); 6] = [
        (
            TimerState {
                version: 99,
                ..good
            },
            "version",
        ),
        (
            TimerState {
                registration: 0x1003,
                ..good
            },
            "reserved bits",
        ),
        (
            TimerState {
                registration: 0x8001,
                ..good
            },
            "outside RAM",
        ),
        (
            TimerState {
                lazy_advertised: false,
                ..good
            },
            "not advertised",
        ),
        (
            TimerState {
                deadline: 0,
                ..good
            },
            "published without deadline",
        ),
        (
            TimerState {
                lvt_timer: 1 << 16,
                ..good
            },
            "masked LVT with deadline",
        ),
    ];
    for (s, why) in bad {
        let e = restore(&s).unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnsupportedStateVersion(99) | Error::InvalidState(_)
            ),
            "{why}: {e:?}"
        );
    }
    // The restored timer re-arms the host timer and re-publishes armed.
    mem.write_obj(0u64, GuestAddress(0x1000)).unwrap();
    let r = TscDeadlineTimer::from_state(
        &mem,
        Timer::default(),
        Clock::default(),
        Irq::default(),
        &good,
    )
    .unwrap();
    assert_eq!(r.host_timer().0, Some(100));
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 100);
}

#[cfg(feature = "serde")]
#[test]
fn state_round_trips_through_json() {
    let mem = memory();
    let t = registered_and_armed(&mem);
    let s = t.state();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<TimerState>(&json).unwrap(), s);
    assert!(serde_json::from_str::<TimerState>("{\"version\":1}").is_err());
}
