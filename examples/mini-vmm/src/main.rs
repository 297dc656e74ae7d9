//! `mini-vmm`: runs a small Rust guest under KVM to measure the lazy TSC
//! deadline protocol against eager userspace emulation and KVM's in-kernel
//! LAPIC timer.
//!
//! Subcommands `run` (the default), `compare`, `hostile`, `lvt-mask` and
//! `sweep` (see `mini-vmm --help` and [`cli`]). Exit status: 0 on success, 1
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
mod stats;
mod sweep;
mod tsc;
mod vcpu;
mod vm;

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
