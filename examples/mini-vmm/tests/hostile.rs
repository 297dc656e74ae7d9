//! End-to-end on real KVM: a hostile vCPU next to an honest one in the same
//! lazy-mode VM (`mini-vmm hostile`). Skipped (with a visible message) when
//! /dev/kvm cannot be opened.

mod common;

use serde_json::Value;

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing or not a number: {cur}"))
}

#[test]
fn hostile_guest_gets_gp_where_the_spec_says_and_cannot_disturb_an_honest_vcpu() {
    if !common::kvm_usable("the hostile-guest KVM test") {
        return;
    }
    let stdout = common::mini_vmm(["hostile", "--json", "--requests", "600", "--seed", "3"]);
    let j: Value = serde_json::from_str(&stdout).expect("JSON output");
    assert_eq!(j["violations"].as_array().map(Vec::len), Some(0), "{j}");

    // The hostile program ran to the end and really attacked.
    assert_eq!(num(&j, &["hostile", "ops"]), 600);
    assert!(num(&j, &["hostile", "stores"]) > 100, "{j}");
    assert!(num(&j, &["hostile", "msr_writes"]) > 100, "{j}");

    // #GP exactly where the spec says: every bad registration value, no
    // other access; the VMM injected exactly those and rejected them.
    let expected = num(&j, &["hostile", "gp_expected"]);
    assert!(expected > 20, "too few bad registrations tried: {j}");
    assert_eq!(num(&j, &["hostile", "gp_taken"]), expected);
    assert_eq!(num(&j, &["hostile", "gp_injected"]), expected);
    assert_eq!(num(&j, &["hostile", "rejected_registrations"]), expected);
    assert_eq!(num(&j, &["hostile", "gp_mismatch"]), 0);

    // Host work stays proportional to what the guest does.
    assert!(num(&j, &["hostile", "host_events"]) <= num(&j, &["hostile", "host_event_bound"]));

    // The honest vCPU keeps perfect timer behaviour, as without the attack.
    for run in ["honest", "baseline"] {
        let r = &j[run];
        assert_eq!(num(r, &["missed"]), 0, "{run}: {r}");
        assert_eq!(num(r, &["early"]), 0, "{run}: {r}");
        assert_eq!(num(r, &["spurious"]), 0, "{run}: {r}");
        assert!(num(r, &["waits"]) > 0, "{run}: {r}");
        assert_eq!(
            num(r, &["timer_interrupts"]),
            num(r, &["waits"]),
            "{run}: {r}"
        );
        assert_eq!(
            num(r, &["tsc_deadline_exits"]),
            num(r, &["necessary_traps"]),
            "{run}: {r}"
        );
    }
}
