//! Guest writes, host expiries (on time and late), LVT changes,
//! registration changes, reset and snapshot/restore; with an honest guest
//! checked against the eager reference and the early/lost/spurious oracle,
//! with a hostile one (scribbles, raw MSR values) for no panic, bounded work
//! and consistent host state; under a fuzzed policy combination (host grace
//! off / fixed / adaptive with fuzzed lengths, exitless cancel offered or
//! not, honoured by the guest or not).
#![no_main]

use lazy_tscdeadline_fuzz::{FuzzOp, FuzzPolicy};
use lazy_tscdeadline_sim::{GuestKind, Op, Scenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, FuzzPolicy, Vec<FuzzOp>)| {
    let (hostile, policy, fops) = input;
    let policy = policy.to_policy();
    let mut ops = vec![Op::LvtDeadline, Op::Register];
    ops.extend(fops.iter().filter_map(|f| f.to_op(!hostile)));
    ops.push(Op::Expire);
    ops.push(Op::Advance(u64::MAX / 2));
    if hostile {
        // `run_hostile` checks the host's consistency, bounded work and
        // that nothing but `armed` was written after every step.
        Scenario::run_hostile_with(policy, &ops).expect("hostile run stays consistent");
    } else {
        let late = ops.iter().any(|o| matches!(o, Op::AdvanceLate(_)));
        let lazy = Scenario::run_with(GuestKind::Lazy, policy, &ops).expect("honest lazy run");
        assert_eq!(lazy.host_trapped_writes, lazy.necessary_traps);
        if late {
            assert!(lazy.interrupts.len() <= lazy.reference.len());
        } else {
            assert_eq!(lazy.interrupts, lazy.reference);
        }
        let eager = Scenario::run_with(GuestKind::Eager, policy, &ops).expect("honest eager run");
        assert_eq!(eager.interrupts, eager.reference);
    }
});
