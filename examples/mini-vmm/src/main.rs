//! `mini-vmm`: runs a small Rust guest under KVM to measure the lazy TSC
//! deadline protocol against eager userspace emulation and KVM's in-kernel
//! LAPIC timer.
//!
//! ```text
//! mini-vmm [run] [--mode kernel|eager|lazy|stock|optin] [options]
//! mini-vmm compare [options]
//! mini-vmm snapshot [--at-ms N | --at-request N] [--mode M] [options]
//! mini-vmm hostile [--vcpus N] [--requests N] [--seed N] [--json]
//! mini-vmm lvt-mask [--rounds N] [--timeout-us N] [--vcpus N] [--json]
//! mini-vmm sweep [--out DIR] [--requests N] [--vcpus N] [--seed N] [--depths LIST] [--timeouts-us LIST]
//! options: --requests N --depth N --timeout-us N --seed N --vcpus N
//!          --early-per-mille N --cancel-one-in N --json
//!          --execution native|emulated|auto (also for hostile and sweep)
//! ```
//! Exit status: 0 on success, 1 on a protocol violation, 2 on any error
//! (including a missing /dev/kvm or KVM capability).

// Module dependencies (acyclic; each arrow is "uses"):
//   main -> sweep, hostile, masking -> report -> vm -> expiry -> vcpu
//   sweep -> plot; vcpu -> stats, tsc; expiry -> tsc
//   (all) -> error -> mode -> layout
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
use std::time::Duration;

use error::Error;
use report::ModeReport;
use snapshot::PauseAt;
use vm::{Execution, Mode, Program, Workload};

struct Args {
    compare: bool,
    /// `snapshot`: when to pause.
    snapshot: Option<snapshot::PauseAt>,
    mode: Mode,
    json: bool,
    workload: Workload,
}

/// `snapshot`'s default `--at-ms`.
const DEFAULT_AT: Duration = Duration::from_millis(200);

const USAGE: &str =
    "usage: mini-vmm [run|compare] [--mode kernel|eager|lazy|stock|optin] [--requests N] [--depth N] \
[--timeout-us N] [--seed N] [--vcpus N] [--early-per-mille N] [--cancel-one-in N] [--json]
       [--execution native|emulated|auto]
       mini-vmm snapshot [--at-ms N | --at-request N] [run's options]
       mini-vmm hostile [--vcpus N] [--requests N] [--seed N] [--json] [--execution ..]
       mini-vmm lvt-mask [--rounds N] [--timeout-us N] [--vcpus N] [--json] [--execution ..]
       mini-vmm sweep [--out DIR] [--requests N] [--vcpus N] [--seed N] [--depths N,N,..] [--timeouts-us N,N,..]
       [--execution ..]";

fn parse_args() -> Result<Args, Error> {
    let mut a = Args {
        compare: false,
        snapshot: None,
        mode: Mode::Lazy,
        json: false,
        workload: Workload {
            requests: 1000,
            depth: 64,
            timeout_us: 1000,
            seed: 1,
            vcpus: 2,
            early_per_mille: 10,
            cancel_one_in: 8,
            execution: Execution::Auto,
            program: Program::Requests,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<u64, Error> {
            let v = it
                .next()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))?;
            v.parse()
                .map_err(|_| Error::Usage(format!("{name}: not a number: {v}")))
        };
        match arg.as_str() {
            "compare" => a.compare = true,
            "run" => a.compare = false,
            "snapshot" => {
                a.snapshot = Some(a.snapshot.unwrap_or(PauseAt::Time(DEFAULT_AT)));
            }
            "--at-ms" => {
                a.snapshot = Some(PauseAt::Time(Duration::from_millis(num("--at-ms")?)));
            }
            "--at-request" => a.snapshot = Some(PauseAt::Request(num("--at-request")?.max(1))),
            "--json" => a.json = true,
            "--mode" => {
                let v = it
                    .next()
                    .ok_or_else(|| Error::Usage("--mode needs a value".into()))?;
                a.mode =
                    Mode::parse(&v).ok_or_else(|| Error::Usage(format!("unknown mode {v}")))?;
            }
            "--requests" => a.workload.requests = num("--requests")?,
            "--depth" => a.workload.depth = num("--depth")?,
            "--timeout-us" => a.workload.timeout_us = num("--timeout-us")?.max(1),
            "--seed" => a.workload.seed = num("--seed")?,
            "--vcpus" => {
                a.workload.vcpus = u32::try_from(num("--vcpus")?)
                    .map_err(|e| Error::Usage(format!("--vcpus: {e}")))?
            }
            "--early-per-mille" => a.workload.early_per_mille = num("--early-per-mille")?,
            "--cancel-one-in" => a.workload.cancel_one_in = num("--cancel-one-in")?.max(1),
            "--execution" => a.workload.execution = Execution::parse(it.next())?,
            "-h" | "--help" => return Err(Error::Usage(USAGE.into())),
            other => return Err(Error::Usage(format!("unknown argument {other}\n{USAGE}"))),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hostile") {
        return hostile::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("lvt-mask") {
        return masking::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("sweep") {
        return sweep::main(std::env::args().skip(2));
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(at) = args.snapshot {
        return snapshot_main(&args, at);
    }
    let modes: Vec<Mode> = if args.compare {
        Mode::all().collect()
    } else {
        vec![args.mode]
    };
    let mut reports = Vec::new();
    for mode in modes {
        match vm::run(mode, &args.workload) {
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
                reports.push(ModeReport::from_run(&run))
            }
            Err(e) => {
                eprintln!("mini-vmm: error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.json {
        println!("{}", report::to_json(&reports));
    } else {
        let w = &args.workload;
        println!(
            "workload: {} vCPUs x {} requests, depth {}, timeout {} us, seed {}, early {}/1000, cancel 1/{}\n",
            w.vcpus, w.requests, w.depth, w.timeout_us, w.seed, w.early_per_mille, w.cancel_one_in
        );
        print!("{}", report::to_table(&reports));
    }
    let violations: Vec<String> = reports.iter().flat_map(ModeReport::violations).collect();
    report::exit_status(&violations, "protocol violation")
}

/// `mini-vmm snapshot`: one run of `--mode` paused, saved, torn down and
/// restored into a fresh VM mid-workload (see `snapshot.rs`), reported as
/// `run` reports, with the pause's figures.
fn snapshot_main(args: &Args, at: PauseAt) -> ExitCode {
    let (run, figures) = match snapshot::snapshot(args.mode, &args.workload, at) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mini-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = ModeReport::from_run(&run);
    let w = &args.workload;
    if args.json {
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
            "{}: the snapshot was not taken mid-workload (requests started per vCPU: {:?} of {})",
            args.mode, figures.requests_before, w.requests
        ));
    }
    let bound_ms = vm::MISS_BOUND_MS as f64;
    if report.missed > 0 && figures.pause_ms > bound_ms {
        violations.push(format!(
            "{}: the guest was stopped {:.0} ms, longer than its {bound_ms} ms miss bound: a \
             deadline armed across the pause came that late by the guest's TSC (which runs on \
             while the VM is stopped) and counts as missed",
            args.mode, figures.pause_ms
        ));
    }
    if run.pvm_native && report.native() == Some(false) {
        violations.push(format!(
            "{}: the guest switched to native execution but ran emulated after the restore",
            args.mode
        ));
    }
    report::exit_status(&violations, "protocol violation")
}
