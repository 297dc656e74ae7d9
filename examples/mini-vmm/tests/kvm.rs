//! End-to-end: runs a short seeded workload in every mode (kernel, eager,
//! lazy, stock, optin) with the built `mini-vmm` binary and checks the
//! protocol's properties. Skipped (with a
//! visible message) when /dev/kvm cannot be opened.

mod common;

use serde_json::Value;

fn field(mode: &Value, name: &str) -> u64 {
    mode[name].as_u64().unwrap_or_else(|| {
        panic!(
            "{}: {name} missing or not measured: {}",
            mode["mode"], mode[name]
        )
    })
}

#[test]
fn every_mode_runs_and_lazy_traps_only_when_needed() {
    if !common::kvm_usable("the mini-vmm KVM test") {
        return;
    }
    // A generous timeout: on a slow (emulating) host a deadline could
    // otherwise expire while the guest is still pushing it, which adds
    // legitimate traps and blurs the lazy/eager ratio.
    let stdout = common::mini_vmm([
        "compare",
        "--json",
        "--requests",
        "150",
        "--vcpus",
        "2",
        "--seed",
        "7",
        "--timeout-us",
        "4000",
    ]);
    let json: Value = serde_json::from_str(&stdout).expect("JSON output");
    let modes = json["modes"].as_array().expect("modes");
    let by = |name: &str| {
        modes
            .iter()
            .find(|m| m["mode"] == name)
            .unwrap_or_else(|| panic!("mode {name} missing"))
    };
    let (kernel, eager, lazy) = (by("kernel"), by("eager"), by("lazy"));
    let (lazy_rfc, stock, optin) = (by("lazy-rfc"), by("stock"), by("optin"));
    let all = [kernel, eager, lazy_rfc, lazy, stock, optin];
    assert_eq!(modes.len(), all.len());

    for m in all {
        for v in ["missed", "early", "spurious"] {
            assert_eq!(field(m, v), 0, "{}: {v}", m["mode"]);
        }
        assert!(field(m, "deadline_writes") > 0);
        assert_eq!(
            field(m, "timer_interrupts"),
            field(kernel, "timer_interrupts"),
            "{}",
            m["mode"]
        );
        // The same writes in every mode: optin's guest does not re-program
        // its deadline after registering (the registration keeps it).
        assert_eq!(
            field(m, "deadline_writes"),
            field(kernel, "deadline_writes"),
            "{}",
            m["mode"]
        );
    }
    assert!(field(kernel, "timer_interrupts") > 0);
    // Kernel mode: the MSR never reaches userspace, and this is said, not 0.
    assert!(kernel["tsc_deadline_exits"].is_null());

    // Eager and the lazy modes really saw 0x6e0 in userspace, from boot on.
    for m in [eager, lazy_rfc, lazy] {
        assert!(
            field(m, "boot_probe_exits") >= 2,
            "{}: boot probe not seen",
            m["mode"]
        );
    }
    assert!(field(eager, "tsc_deadline_exits") > 0);
    assert!(field(lazy_rfc, "tsc_deadline_exits") > 0);
    assert_eq!(
        field(eager, "tsc_deadline_exits"),
        field(eager, "deadline_writes")
    );
    assert_eq!(
        field(eager, "necessary_traps"),
        field(eager, "deadline_writes")
    );

    // Both lazy modes: exactly the necessary traps, and few of them.
    for m in [lazy_rfc, lazy] {
        let exits = field(m, "tsc_deadline_exits");
        assert_eq!(exits, field(m, "necessary_traps"), "{}", m["mode"]);
        let ratio = exits as f64 / field(eager, "tsc_deadline_exits") as f64;
        assert!(
            ratio <= 0.03,
            "{}: lazy/eager TSC-deadline exits {ratio:.4} > 3%",
            m["mode"]
        );
    }
    // The RFC's host never begins a grace period; this project's does, after
    // deliveries, and its guest then cancels without trapping where offered
    // (every cancel after the first deadline of a request would trap on the
    // RFC's host). How many traps that saves depends on timing: measured by
    // `compare`, not asserted here.
    assert_eq!(field(lazy_rfc, "grace_expiries"), 0);
    assert!(field(lazy, "grace_expiries") > 0);
    assert!(field(lazy, "grace_hits") <= field(lazy, "grace_expiries"));

    // Stock: the feature advertised with opt-in routing, a guest that never
    // registers: its 0x6e0 writes stay in KVM (the VMM's exit handler counted
    // none: measured, not null), nothing is taken over.
    assert_eq!(field(stock, "tsc_deadline_exits"), 0);
    assert_eq!(field(stock, "takeovers"), 0);
    assert_eq!(
        field(stock, "necessary_traps"),
        field(stock, "deadline_writes")
    );
    assert_eq!(stock["advertised"], true);

    // Optin: plain writes in KVM, then every vCPU registers with a deadline
    // armed in KVM, which the VMM takes over once per vCPU; from the
    // registration on, the VMM sees exactly the guest's necessary traps.
    assert_eq!(field(optin, "takeovers"), 2, "one take-over per vCPU");
    assert_eq!(field(optin, "handbacks"), 0);
    // The vCPUs registered with a deadline armed (read back just before;
    // only a delay of more than the 4 ms timeout between the write and the
    // read lets it fire first, so not asserted for both), and the
    // registration kept it (docs/PROTOCOL.md §4.1): RDMSR just after reads
    // it still armed (in the VMM, taken over from KVM), for no vCPU that
    // had none before.
    let before = field(optin, "armed_before_registration");
    let kept = field(optin, "armed_after_registration");
    assert!(before >= 1);
    assert!(kept >= 1 && kept <= before, "{before} -> {kept}");
    let after = field(optin, "tsc_deadline_exits_after_registration");
    assert_eq!(after, field(optin, "necessary_traps_after_registration"));
    assert!(after > 0);
    // Registered for about two thirds of the writes, lazily.
    let writes_after = field(optin, "deadline_writes_after_registration");
    assert!(writes_after > field(optin, "deadline_writes") / 2);
    assert!(
        after < writes_after / 10,
        "{after} traps for {writes_after} writes"
    );
    assert!(field(optin, "tsc_deadline_exits") >= after);

    // The guest ran natively (a PVM host switches it, hardware
    // virtualization always does), measured: KVM emulated no more than two
    // instructions per trapping instruction the guest counted. Cycle
    // figures (e.g. stock against kernel) are not asserted here: timing
    // belongs to benchmarks, and `compare` reports them.
    for m in all {
        assert_eq!(m["native"], true, "{}: guest not native: {m}", m["mode"]);
        assert!(field(m, "trapping_insns") > 0);
    }
}

/// Whether this host is a PVM host, from a run that asked for emulation:
/// only a PVM host can be told to emulate; elsewhere `mini-vmm` refuses
/// with a message that names the requirement.
fn emulated_run(args: &[&str]) -> Option<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mini-vmm"))
        .args(args)
        .output()
        .expect("spawning mini-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("needs a PVM host") {
        let msg = "SKIPPED: this /dev/kvm is not a PVM host (kvm_pvm), so the guest cannot be \
                   told to run emulated; the emulated-execution test did not run";
        println!("{msg}");
        eprintln!("{msg}");
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mini-vmm failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    Some(serde_json::from_str(&stdout).expect("JSON output"))
}

#[test]
fn emulated_execution_still_works_and_says_so() {
    if !common::kvm_usable("the mini-vmm emulated-execution test") {
        return;
    }
    let args = [
        "compare",
        "--json",
        "--execution",
        "emulated",
        "--requests",
        "30",
        "--depth",
        "8",
        "--vcpus",
        "2",
        "--seed",
        "3",
        "--timeout-us",
        "4000",
    ];
    let Some(json) = emulated_run(&args) else {
        return;
    };
    for m in json["modes"].as_array().expect("modes") {
        for v in ["missed", "early", "spurious"] {
            assert_eq!(field(m, v), 0, "{}: {v}", m["mode"]);
        }
        assert_eq!(m["pvm_native_switch"], false, "{}", m["mode"]);
        assert_eq!(
            m["native"], false,
            "{}: not measured as emulated: {m}",
            m["mode"]
        );
        // Emulated, KVM runs every instruction of the workload, far more
        // than the trapping ones.
        assert!(
            field(m, "insn_emulation") > 10 * field(m, "trapping_insns"),
            "{m}"
        );
    }
    // The table says it too, with the warning; a native run has neither.
    let table_args: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
    let table = common::mini_vmm(&table_args);
    assert!(
        table.contains("WARNING: KVM executed the guest in its instruction emulator"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("guest execution (measured)"))
        .expect("execution row");
    assert_eq!(row.matches("EMULATED").count(), 6, "all six modes: {row}");
    let native_args: Vec<&str> = table_args
        .iter()
        .map(|a| if *a == "emulated" { "native" } else { a })
        .collect();
    let native = common::mini_vmm(&native_args);
    assert!(!native.contains("WARNING"), "{native}");
    assert!(!native.contains("EMULATED"), "{native}");
}
