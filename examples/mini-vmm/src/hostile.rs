//! `mini-vmm hostile`: one VM in lazy mode where vCPU 0 runs the hostile
//! guest program (garbage in the shared struct, `pending` below `armed`
//! without a trap, re-registration loops, registration values that must
//! fault) while the other vCPUs run the honest workload. The same VM is
//! first run with every vCPU honest, as the baseline.
//!
//! Checked (exit status 1 otherwise): the VMM keeps running; the hostile
//! vCPU takes #GP exactly on the accesses the spec says fault, and the VMM
//! injected exactly those; the host's timer work for the hostile vCPU stays
//! within a constant per guest action; and the honest vCPUs' timers stay
//! perfect (no missed, early or spurious interrupt, traps equal to the
//! protocol's necessary ones).

use std::process::ExitCode;

use lazy_tscdeadline_host::Counters;
use serde_json::json;

use crate::cli::HostileArgs;
use crate::layout::Results;
use crate::report::{self, ModeReport};
use crate::vm::{self, Mode, ModeRun, Program, Workload};

/// Host timer events (expiries handled, re-arms, immediate injections) the
/// hostile vCPU may cause per store or MSR write it makes, plus
/// [`EVENT_SLACK`]: a KICK consumes a `pending` value, so without new guest
/// actions the host timer goes quiet.
const EVENTS_PER_ACTION: u64 = 4;
/// Allowance for expiries of deadlines armed before the hostile loop.
const EVENT_SLACK: u64 = 64;

/// What the hostile vCPU did and what the host did about it.
struct HostileFigures {
    results: Results,
    gp_injected: u64,
    counters: Counters,
}

impl HostileFigures {
    /// Timer events the host handled for this vCPU.
    fn host_events(&self) -> u64 {
        let c = &self.counters;
        // Grace expiries that found something new are counted as the
        // re-arm or injection they led to; the others (and masked
        // expiries) are wake-ups of their own.
        c.rearms
            + c.early_expiries
            + c.stale_expiries
            + c.kick_cancels
            + c.injections
            + c.masked_expiries
            + c.grace_expiries.saturating_sub(c.grace_hits)
    }

    fn actions(&self) -> u64 {
        self.results.hostile_stores + self.results.hostile_msr_writes
    }

    fn violations(&self, requests: u64) -> Vec<String> {
        let r = &self.results;
        let mut v = Vec::new();
        if r.hostile_ops != requests {
            v.push(format!(
                "hostile vCPU ran {} of {requests} iterations",
                r.hostile_ops
            ));
        }
        if r.gp_mismatch != 0 {
            v.push(format!(
                "hostile vCPU: {} accesses faulted (or not) against the spec",
                r.gp_mismatch
            ));
        }
        if r.gp_taken != r.gp_expected || self.gp_injected != r.gp_expected {
            v.push(format!(
                "hostile vCPU: {} #GPs required, {} taken, {} injected by the VMM",
                r.gp_expected, r.gp_taken, self.gp_injected
            ));
        }
        let bound = EVENTS_PER_ACTION * self.actions() + EVENT_SLACK;
        if self.host_events() > bound {
            v.push(format!(
                "hostile vCPU: {} host timer events for {} guest actions (bound {bound})",
                self.host_events(),
                self.actions()
            ));
        }
        v
    }
}

/// Splits a run into the honest vCPUs (as a run of their own) and the
/// hostile ones.
fn split(run: ModeRun) -> (ModeRun, Vec<HostileFigures>) {
    let n = run.hostile_vcpus as usize;
    let mut vcpus = run.vcpus;
    let mut results = run.results;
    let mut counters = run.vcpu_counters;
    let honest_vcpus = vcpus.split_off(n);
    let honest_results = results.split_off(n);
    let honest_counters = counters.split_off(n);
    let hostile = vcpus
        .into_iter()
        .zip(results)
        .zip(counters)
        .map(|((v, results), counters)| HostileFigures {
            results,
            gp_injected: v.exits.gp_injected,
            counters,
        })
        .collect();
    let honest = ModeRun {
        mode: run.mode,
        tsc_khz: run.tsc_khz,
        pvm_native: run.pvm_native,
        vcpus: honest_vcpus,
        results: honest_results,
        lateness_cycles: run.lateness_cycles,
        host_counters: Some(honest_counters.iter().copied().sum()),
        vcpu_counters: honest_counters,
        hostile_vcpus: 0,
        wall: run.wall,
        vmm_cpu: run.vmm_cpu,
    };
    (honest, hostile)
}

/// CPU time of the VMM per second of wall time.
fn cpu_share(run: &ModeRun) -> f64 {
    run.vmm_cpu.as_secs_f64() / run.wall.as_secs_f64().max(1e-9)
}

/// Entry point of `mini-vmm hostile`.
pub fn main(args: HostileArgs) -> ExitCode {
    let w = Workload {
        requests: args.requests,
        depth: 16,
        timeout_us: 2000,
        seed: args.seed,
        vcpus: args.vcpus,
        early_per_mille: 10,
        cancel_one_in: 8,
        execution: args.common.execution,
        program: Program::Requests,
        grace: None,
    };
    let json_out = args.common.json;

    let baseline = match vm::run_with(Mode::Lazy, &w, 0) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mini-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    let attacked = match vm::run_with(Mode::Lazy, &w, 1) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mini-vmm: error (hostile run): {e}");
            return ExitCode::from(2);
        }
    };
    let (base_share, attacked_share) = (cpu_share(&baseline), cpu_share(&attacked));
    let (baseline_honest, _) = split(baseline);
    let (honest, hostile) = split(attacked);
    let base_report = ModeReport::from_run(&baseline_honest);
    let report = ModeReport::from_run(&honest);

    let mut violations: Vec<String> = base_report.violations();
    violations.extend(report.violations());
    for h in &hostile {
        violations.extend(h.violations(w.requests));
    }

    if json_out {
        let h = &hostile[0];
        let out = json!({
            "vcpus": w.vcpus,
            "requests": w.requests,
            "honest": report.json(),
            "baseline": base_report.json(),
            "hostile": {
                "ops": h.results.hostile_ops,
                "stores": h.results.hostile_stores,
                "msr_writes": h.results.hostile_msr_writes,
                "gp_expected": h.results.gp_expected,
                "gp_taken": h.results.gp_taken,
                "gp_injected": h.gp_injected,
                "gp_mismatch": h.results.gp_mismatch,
                "host_events": h.host_events(),
                "host_event_bound": EVENTS_PER_ACTION * h.actions() + EVENT_SLACK,
                "kick_fallbacks": h.counters.kick_fallbacks,
                "rejected_registrations": h.counters.rejected_registrations,
                "memory_errors": h.counters.memory_errors,
            },
            "vmm_cpu_per_wall_s": { "baseline": base_share, "hostile": attacked_share },
            "violations": violations,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "hostile guest on vCPU 0, honest workload on vCPUs 1..{} ({} requests, depth {})\n",
            w.vcpus, w.requests, w.depth
        );
        for h in &hostile {
            let r = &h.results;
            println!(
                "hostile vCPU: {} iterations, {} struct stores, {} protocol WRMSRs",
                r.hostile_ops, r.hostile_stores, r.hostile_msr_writes
            );
            println!(
                "  #GP: {} required by the spec, {} taken by the guest, {} injected by the VMM, {} mismatches",
                r.gp_expected, r.gp_taken, h.gp_injected, r.gp_mismatch
            );
            println!(
                "  host timer events: {} (bound {}), KICK fallbacks {}, rejected registrations {}",
                h.host_events(),
                EVENTS_PER_ACTION * h.actions() + EVENT_SLACK,
                h.counters.kick_fallbacks,
                h.counters.rejected_registrations
            );
        }
        println!(
            "honest vCPUs: {} waits, {} timer interrupts, missed/early/spurious {}/{}/{}, \
             TSC-deadline exits {} = necessary traps {}",
            report.waits,
            report.timer_interrupts,
            report.missed,
            report.early,
            report.spurious,
            report
                .tsc_deadline_exits
                .map_or("n/a".to_string(), |e| e.to_string()),
            report.necessary_traps
        );
        println!(
            "VMM CPU time per wall second: {attacked_share:.3} with the hostile vCPU, \
             {base_share:.3} all honest (ratio {:.2})",
            attacked_share / base_share.max(1e-9)
        );
    }
    report::exit_status(&violations, "hostile check failed")
}
