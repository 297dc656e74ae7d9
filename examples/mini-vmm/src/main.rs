//! `mini-vmm`: runs a small Rust guest under KVM to measure the lazy TSC
//! deadline protocol against eager userspace emulation and KVM's in-kernel
//! LAPIC timer.
//!
//! Subcommands `run` (the default), `compare`, `snapshot`, `hostile`,
//! `lvt-mask` and `sweep` (see `mini-vmm --help` and [`cli`]). Exit status: 0 on success, 1
//! on a protocol violation, 2 on any error (including a missing /dev/kvm or
//! KVM capability).
// The report's JSON object has more fields than serde_json's `json!`
// expands at the default recursion limit.
#![recursion_limit = "256"]

// Module dependencies (acyclic; each arrow is "uses"):
//   main -> cli; main -> sweep, hostile, masking -> report -> vm -> expiry -> vcpu
//   sweep -> plot; vcpu -> stats, tsc; expiry -> tsc
//   (all) -> error -> mode -> layout
mod cli;
mod error;
mod expiry;
mod hostile;
#[path = "../guest/layout.rs"]
#[allow(dead_code)]
mod layout;
mod masking;
mod mode;
mod plot;
mod report;
mod snapshot;
mod stats;
mod sweep;
mod tsc;
mod vcpu;
mod vm;
mod vmstate;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use mode::Mode;
use report::ModeReport;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, compare) = match cli.command {
        None => (cli.run, false),
        Some(Command::Run(a)) => (a, false),
        Some(Command::Compare(a)) => (a, true),
        Some(Command::Snapshot(a)) => return snapshot_main(&a),
        Some(Command::Hostile(a)) => return hostile::main(a),
        Some(Command::LvtMask(a)) => return masking::main(a),
        Some(Command::Sweep(a)) => return sweep::main(a),
    };
    let modes: Vec<Mode> = if compare {
        Mode::all().collect()
    } else {
        vec![args.mode]
    };
    let workload = args.workload();
    // Every round runs every mode once, in table order, so that a drift of
    // the machine's costs over time touches all modes alike.
    let mut runs: Vec<Vec<ModeReport>> = vec![Vec::new(); modes.len()];
    for _ in 0..args.repeat {
        for (i, &mode) in modes.iter().enumerate() {
            match vm::run(mode, &workload) {
                Ok(run) => {
                    // Debugging aid: every KVM statistic of every vCPU.
                    if std::env::var_os("MINI_VMM_DUMP_STATS").is_some() {
                        for v in &run.vcpus {
                            eprintln!(
                                "{mode} vCPU {}: userspace {:?}, KVM stats {:?}",
                                v.index, v.exits, v.kvm_stats
                            );
                        }
                    }
                    runs[i].push(ModeReport::from_run(&run))
                }
                Err(e) => {
                    eprintln!("mini-vmm: error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let violations: Vec<String> = runs
        .iter()
        .flatten()
        .flat_map(ModeReport::violations)
        .collect();
    let reports = report::median_runs(runs);
    if args.common.json {
        println!("{}", report::to_json(&reports));
    } else {
        let w = &workload;
        println!(
            "workload: {} vCPUs x {} requests, depth {}, timeout {} us, seed {}, early {}/1000, cancel 1/{}\n",
            w.vcpus, w.requests, w.depth, w.timeout_us, w.seed, w.early_per_mille, w.cancel_one_in
        );
        print!("{}", report::to_table(&reports));
    }
    report::exit_status(&violations, "protocol violation")
}

/// `mini-vmm snapshot`: one run of `--mode` paused, saved, torn down and
/// restored into a fresh VM mid-workload (see `snapshot.rs`), reported as
/// `run` reports, with the pause's figures.
fn snapshot_main(args: &cli::SnapshotArgs) -> ExitCode {
    let at = args.pause_at();
    let w = args.run.workload();
    let mode = args.run.mode;
    let (run, figures) = match snapshot::snapshot(mode, &w, at) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mini-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = ModeReport::from_run(&run);
    if args.run.common.json {
        let mut out: serde_json::Value =
            serde_json::from_str(&report::to_json(std::slice::from_ref(&report)))
                .expect("the report is JSON");
        out["snapshot"] = figures.json();
        println!("{out}");
    } else {
        println!(
            "workload: {} vCPUs x {} requests, depth {}, timeout {} us, seed {}, early {}/1000, cancel 1/{}\n",
            w.vcpus, w.requests, w.depth, w.timeout_us, w.seed, w.early_per_mille, w.cancel_one_in
        );
        print!("{}", report::to_table(std::slice::from_ref(&report)));
        print!("\n{}", figures.table());
    }
    let mut violations = report.violations();
    // Mid-workload: every vCPU had started requests and had some left.
    if figures
        .requests_before
        .iter()
        .any(|&n| n == 0 || n >= w.requests)
    {
        violations.push(format!(
            "{mode}: the snapshot was not taken mid-workload (requests started per vCPU: {:?} of {})",
            figures.requests_before, w.requests
        ));
    }
    let bound_ms = vm::MISS_BOUND_MS as f64;
    if report.missed > 0 && figures.pause_ms > bound_ms {
        violations.push(format!(
            "{mode}: the guest was stopped {:.0} ms, longer than its {bound_ms} ms miss bound: a \
             deadline armed across the pause came that late by the guest's TSC (which runs on \
             while the VM is stopped) and counts as missed",
            figures.pause_ms
        ));
    }
    if run.pvm_native && report.native() == Some(false) {
        violations.push(format!(
            "{mode}: the guest switched to native execution but ran emulated after the restore"
        ));
    }
    report::exit_status(&violations, "protocol violation")
}
