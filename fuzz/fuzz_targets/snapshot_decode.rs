//! Snapshot state decoded from arbitrary bytes (JSON, any version) or built
//! from arbitrary fields: decoding and `from_state` return typed errors or a
//! timer that, once resumed, is consistent with its host timer and with the
//! `armed` it wrote into guest memory; never a panic.
#![no_main]

use lazy_tscdeadline_abi::ARMED_OFFSET;
use lazy_tscdeadline_fuzz::FuzzPolicy;
use lazy_tscdeadline_host::{
    GraceState, StateError, TimerSnapshot, TimerState, MAX_KICK_ROUNDS, STATE_VERSION,
};
use lazy_tscdeadline_sim::{FakeTimer, RecordingIrq, Scenario, SimHost, VirtualClock};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

fn restore(state: &TimerState, now: u64) {
    let mem = Scenario::memory();
    let clock = VirtualClock::default();
    clock.set(now);
    let timer = FakeTimer::default();
    let r = SimHost::from_state(
        mem.clone(),
        timer.clone(),
        clock.clone(),
        RecordingIrq::new(clock),
        state,
    );
    let mut t = match r {
        Ok(t) => t,
        Err(StateError::Invalid(_)) => return,
        Err(e) => panic!("from_state can only find a state invalid: {e:?}"),
    };
    // Paused: no host timer until resume.
    assert_eq!(timer.deadline(), None);
    assert_eq!(t.is_paused(), t.deadline() != 0);
    if let Some(gpa) = t.registration().gpa() {
        let armed: u64 = mem.read_obj(GuestAddress(gpa + ARMED_OFFSET)).unwrap();
        let want = if t.is_published() {
            t.timer_deadline()
        } else {
            0
        };
        assert_eq!(armed, want, "armed rewritten from the host's copy");
    }
    t.resume().unwrap();
    assert!(!t.is_paused());
    assert_eq!(
        timer.deadline(),
        (t.timer_deadline() != 0).then_some(t.timer_deadline())
    );
    // Expiries settle in a bounded number of kicks, whatever `pending` holds.
    for _ in 0..=MAX_KICK_ROUNDS + 1 {
        if !timer.force_expire() {
            break;
        }
        t.kick().unwrap();
        assert_eq!(
            timer.deadline(),
            (t.timer_deadline() != 0).then_some(t.timer_deadline())
        );
        assert!(t.deadline() == 0 || t.grace_deadline() == 0);
    }
}

fuzz_target!(|input: (
    &[u8],
    u32,
    u64,
    bool,
    u64,
    bool,
    u64,
    FuzzPolicy,
    (u64, u64, u64)
)| {
    let (bytes, lvt_timer, deadline, published, registration, lazy_advertised, now, policy, grace) =
        input;
    if let Ok(snapshot) = serde_json::from_slice::<TimerSnapshot>(bytes) {
        match snapshot.into_state() {
            Ok(state) => restore(&state, now),
            // Only a version newer than this crate's is refused by number.
            Err(StateError::UnsupportedVersion(v)) => assert!(v > STATE_VERSION),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let mut state = TimerState::default();
    state.lvt_timer = lvt_timer;
    state.deadline = deadline;
    state.published = published;
    state.registration = registration;
    state.lazy_advertised = lazy_advertised;
    let policy = policy.to_policy();
    state.grace_policy = policy.grace;
    state.exitless_cancel = policy.exitless_offered;
    let mut g = GraceState::default();
    (g.deadline, g.stale, g.cycles) = grace;
    state.grace = g;
    restore(&state, now);
});
