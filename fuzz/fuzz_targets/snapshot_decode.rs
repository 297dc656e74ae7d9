//! Snapshot state decoded from arbitrary bytes (JSON) or built from
//! arbitrary fields: `from_state` returns a typed error or a timer that is
//! consistent with its host timer; never a panic.
#![no_main]

use lazy_tscdeadline_host::{Counters, Error, TimerState};
use lazy_tscdeadline_sim::{FakeTimer, RecordingIrq, Scenario, SimHost, VirtualClock};
use libfuzzer_sys::fuzz_target;

fn restore(state: &TimerState) {
    let clock = VirtualClock::default();
    let timer = FakeTimer::default();
    let r: Result<SimHost, Error> = SimHost::from_state(
        Scenario::memory(),
        timer.clone(),
        clock.clone(),
        RecordingIrq::new(clock),
        state,
    );
    match r {
        Ok(t) => {
            assert_eq!(t.deadline() != 0, timer.deadline().is_some());
            assert_eq!(t.state().deadline, state.deadline);
        }
        Err(e) => assert!(matches!(
            e,
            Error::UnsupportedStateVersion(_) | Error::InvalidState(_)
        )),
    }
}

fuzz_target!(|input: (&[u8], u32, u32, u64, bool, u64, bool)| {
    let (bytes, version, lvt_timer, deadline, published, registration, lazy_advertised) = input;
    if let Ok(state) = serde_json::from_slice::<TimerState>(bytes) {
        restore(&state);
    }
    restore(&TimerState {
        version,
        lvt_timer,
        deadline,
        published,
        registration,
        lazy_advertised,
        counters: Counters::default(),
    });
});
