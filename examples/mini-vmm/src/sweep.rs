//! `mini-vmm sweep`: the comparison of the three modes over a grid of
//! reprogramming depths (pushes per request) and request timeouts, in one
//! process.
//!
//! Every point of the grid boots one VM per mode with [`vm::run`] and
//! summarises it with [`ModeReport::from_run`], exactly as `compare` does.
//! The sweep writes `sweep.json` (every report of every point),
//! `sweep.md` (one table row per point, plus the protocol targets checked
//! against the measurements) and `sweep.svg` (exits and guest cycles per
//! deadline write against depth) into its output directory, and prints the
//! markdown to stdout.
//!
//! ```text
//! mini-vmm sweep [--out DIR] [--requests N] [--vcpus N] [--seed N]
//!                [--depths 1,2,4,8,16,64,256] [--timeouts-us 200,5000]
//!                [--execution native|emulated|auto]
//! ```
//! Exit status: 0 on success, 1 if any run reports a protocol violation
//! (the files are still written), 2 on any error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};

use crate::cli::SweepCli;
use crate::error::Error;
use crate::plot::{self, Line, Panel};
use crate::report::{self, ModeReport};
use crate::vm::{self, Mode, Program, Workload};

/// Reprogramming depths swept by default (pushes per request): dense at
/// the shallow end, where lazy mode's break-even with kernel mode lies.
pub const DEFAULT_DEPTHS: [u64; 7] = [1, 2, 4, 8, 16, 64, 256];

/// Request timeouts swept by default, in microseconds. The guest moves
/// the deadline to "now + timeout" on every push, while the host's timer
/// stays armed for the deadline it last published. With 200 us that timer
/// can expire while the guest is still pushing (natively on a PVM host an
/// eager push costs about 40 us, an in-kernel one about 8 us, a lazy one
/// without a trap well under 1 us; emulated, 50 to 120 us each): the host
/// then re-arms it from `pending`, and whenever the vCPU was held up for
/// longer than the timeout the host injects and the guest's next write
/// traps again. With 5000 us the timer rarely expires before the request
/// is done.
pub const DEFAULT_TIMEOUTS_US: [u64; 2] = [200, 5000];

/// Requests per vCPU at every point by default: the whole default sweep
/// (42 VM runs) then takes about three minutes on a 2-core PVM host running
/// the guest natively, and the shallowest point still makes thousands of
/// deadline writes.
pub const DEFAULT_REQUESTS: u64 = 1000;

/// The depth at which the exit and cycle targets are stated.
const TARGET_DEPTH: u64 = 64;
/// Target: lazy TSC-deadline exits at most this many times the necessary
/// traps (the protocol floor).
const FLOOR_TARGET: f64 = 1.05;
/// Target: lazy TSC-deadline exits at [`TARGET_DEPTH`] at most this share
/// of eager's.
const EXIT_TARGET: f64 = 0.03;
/// Target: lazy guest cycles per write at [`TARGET_DEPTH`] at most this
/// share of kernel mode's.
const CYCLE_TARGET: f64 = 0.1;

/// The sweep's settings.
#[derive(Clone, Debug)]
pub struct SweepArgs {
    /// Output directory.
    pub out: PathBuf,
    /// Depths, ascending, without duplicates, all at least 1.
    pub depths: Vec<u64>,
    /// Timeouts in microseconds, ascending, without duplicates, all at
    /// least 1.
    pub timeouts_us: Vec<u64>,
    /// The workload's fixed parameters; `depth` and `timeout_us` are set
    /// per point.
    pub base: Workload,
}

/// The reports of all modes at one point of the grid.
#[derive(Clone, Debug)]
pub struct Point {
    /// Pushes per request.
    pub depth: u64,
    /// Request timeout in microseconds.
    pub timeout_us: u64,
    /// One report per mode, in [`Mode::SWEEP`] order.
    pub reports: Vec<ModeReport>,
}

impl Point {
    /// The report of `mode`, if it ran.
    pub fn mode(&self, mode: Mode) -> Option<&ModeReport> {
        self.reports.iter().find(|r| r.mode == mode)
    }

    /// Lazy over eager IA32_TSC_DEADLINE exits.
    pub fn lazy_eager_exits(&self) -> Option<f64> {
        let lazy = self.mode(Mode::Lazy)?.tsc_deadline_exits?;
        let eager = self.mode(Mode::Eager)?.tsc_deadline_exits?;
        quotient(lazy as f64, eager as f64)
    }

    /// Lazy over lazy-rfc IA32_TSC_DEADLINE exits: what the host policies
    /// save over the RFC's host.
    pub fn lazy_rfc_exits(&self) -> Option<f64> {
        let lazy = self.mode(Mode::Lazy)?.tsc_deadline_exits?;
        let rfc = self.mode(Mode::LazyRfc)?.tsc_deadline_exits?;
        quotient(lazy as f64, rfc as f64)
    }

    /// Lazy over kernel-mode guest cycles per deadline write.
    pub fn lazy_kernel_cycles(&self) -> Option<f64> {
        self.kernel_cycles_ratio(Mode::Lazy)
    }

    /// `mode`'s guest cycles per deadline write over kernel mode's.
    pub fn kernel_cycles_ratio(&self, mode: Mode) -> Option<f64> {
        let m = self.mode(mode)?.cycles_per_write;
        let kernel = self.mode(Mode::Kernel)?.cycles_per_write;
        quotient(m, kernel)
    }

    /// Lazy IA32_TSC_DEADLINE exits over the traps the protocol required
    /// (the floor: 1.0 means no write exited that the protocol could have
    /// deferred). 1.0 when both are zero.
    pub fn lazy_exits_per_trap(&self) -> Option<f64> {
        let lazy = self.mode(Mode::Lazy)?;
        let exits = lazy.tsc_deadline_exits?;
        if exits == 0 && lazy.necessary_traps == 0 {
            return Some(1.0);
        }
        quotient(exits as f64, lazy.necessary_traps as f64)
    }

    fn json(&self) -> Value {
        json!({
            "depth": self.depth,
            "timeout_us": self.timeout_us,
            "lazy_eager_tsc_deadline_exits": self.lazy_eager_exits(),
            "lazy_kernel_cycles_per_write": self.lazy_kernel_cycles(),
            "lazy_lazy_rfc_tsc_deadline_exits": self.lazy_rfc_exits(),
            "lazy_exits_per_necessary_trap": self.lazy_exits_per_trap(),
            "modes": self.reports.iter().map(ModeReport::json).collect::<Vec<_>>(),
        })
    }
}

/// Where lazy mode's guest cost per deadline write meets kernel mode's, for
/// one timeout. Below the break-even depth a request's writes are too few
/// to amortise lazy mode's trap to the VMM (the first write of every
/// request, an exit to userspace) against KVM's in-kernel path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BreakEven {
    /// Lazy already costs no more than kernel mode at the shallowest depth.
    AtOrBelow(u64),
    /// Lazy/kernel cycles per write crosses 1 between two swept depths; the
    /// depth is interpolated linearly in log2(depth).
    Between {
        /// The deepest swept depth where lazy still cost more.
        above: u64,
        /// The next swept depth, where it costs no more.
        below: u64,
        /// The interpolated break-even depth.
        depth: f64,
    },
    /// Lazy costs more at every swept depth, up to this one.
    NotReached(u64),
}

impl BreakEven {
    /// The break-even of lazy mode at `timeout_us` over `points` (None: no
    /// point has both modes).
    pub fn find(points: &[Point], timeout_us: u64) -> Option<BreakEven> {
        Self::find_for(points, timeout_us, Mode::Lazy)
    }

    /// The break-even of `mode` against kernel mode at `timeout_us`.
    pub fn find_for(points: &[Point], timeout_us: u64, mode: Mode) -> Option<BreakEven> {
        let mut curve: Vec<(u64, f64)> = points
            .iter()
            .filter(|p| p.timeout_us == timeout_us)
            .filter_map(|p| Some((p.depth, p.kernel_cycles_ratio(mode)?)))
            .collect();
        curve.sort_by_key(|&(d, _)| d);
        let &(first, r0) = curve.first()?;
        if r0 <= 1.0 {
            return Some(BreakEven::AtOrBelow(first));
        }
        for w in curve.windows(2) {
            let ((d1, r1), (d2, r2)) = (w[0], w[1]);
            if r1 > 1.0 && r2 <= 1.0 {
                let (l1, l2) = ((d1 as f64).log2(), (d2 as f64).log2());
                let l = l1 + (r1 - 1.0) / (r1 - r2) * (l2 - l1);
                return Some(BreakEven::Between {
                    above: d1,
                    below: d2,
                    depth: l.exp2(),
                });
            }
        }
        Some(BreakEven::NotReached(curve.last()?.0))
    }

    /// One sentence for the markdown.
    fn describe(&self) -> String {
        match *self {
            BreakEven::AtOrBelow(d) => {
                format!("no more than kernel mode already at depth {d}, the shallowest swept")
            }
            BreakEven::Between {
                above,
                below,
                depth,
            } => format!(
                "depth {depth:.1} (costs more than kernel mode at depth {above}, no more at depth {below})"
            ),
            BreakEven::NotReached(d) => {
                format!("not reached: costs more than kernel mode at every depth up to {d}")
            }
        }
    }

    fn json(&self) -> Value {
        match *self {
            BreakEven::AtOrBelow(d) => json!({ "at_or_below": d }),
            BreakEven::Between {
                above,
                below,
                depth,
            } => json!({ "depth": depth, "above": above, "below": below }),
            BreakEven::NotReached(d) => json!({ "not_reached_up_to": d }),
        }
    }
}

fn quotient(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

impl SweepArgs {
    /// The sweep the command line asks for.
    pub fn from_cli(c: SweepCli) -> SweepArgs {
        SweepArgs {
            out: c.out,
            depths: c.depths.0,
            timeouts_us: c.timeouts_us.0,
            // The fixed parameters are those `compare` uses by default.
            base: Workload {
                requests: c.requests,
                depth: 0,
                timeout_us: 0,
                seed: c.seed,
                vcpus: c.vcpus,
                early_per_mille: 10,
                cancel_one_in: 8,
                execution: c.execution,
                program: Program::Requests,
                grace: None,
            },
        }
    }
}

/// Runs every mode at every point, in order (timeout, then depth, then
/// mode), reporting progress on stderr.
pub fn run_points(a: &SweepArgs) -> Result<Vec<Point>, Error> {
    let total = a.depths.len() * a.timeouts_us.len() * Mode::SWEEP.len();
    let mut done = 0;
    let mut points = Vec::new();
    for &timeout_us in &a.timeouts_us {
        for &depth in &a.depths {
            let w = Workload {
                depth,
                timeout_us,
                ..a.base
            };
            let mut reports = Vec::new();
            for mode in Mode::SWEEP {
                let run = vm::run(mode, &w).map_err(|e| Error::AtPoint {
                    depth,
                    timeout_us,
                    source: Box::new(e),
                })?;
                let r = ModeReport::from_run(&run);
                done += 1;
                eprintln!(
                    "[{done}/{total}] depth {depth}, timeout {timeout_us} us, {mode}: {:.2} s",
                    r.wall_s
                );
                reports.push(r);
            }
            points.push(Point {
                depth,
                timeout_us,
                reports,
            });
        }
    }
    Ok(points)
}

/// Every protocol violation of every run, prefixed with its point.
pub fn violations(points: &[Point]) -> Vec<String> {
    points
        .iter()
        .flat_map(|p| {
            p.reports
                .iter()
                .flat_map(ModeReport::violations)
                .map(|v| format!("depth {}, timeout {} us: {v}", p.depth, p.timeout_us))
        })
        .collect()
}

/// The JSON document: the workload, then every point with its ratios and
/// the full report of each mode.
pub fn to_json(a: &SweepArgs, points: &[Point], sweep_wall_s: f64) -> String {
    let w = &a.base;
    let doc = json!({
        "workload": {
            "requests": w.requests,
            "vcpus": w.vcpus,
            "seed": w.seed,
            "early_per_mille": w.early_per_mille,
            "cancel_one_in": w.cancel_one_in,
        },
        "depths": a.depths,
        "timeouts_us": a.timeouts_us,
        "sweep_wall_s": sweep_wall_s,
        "points": points.iter().map(Point::json).collect::<Vec<_>>(),
        "break_even": a.timeouts_us.iter().map(|&t| json!({
            "timeout_us": t,
            "break_even": BreakEven::find(points, t).map(|b| b.json()),
            "break_even_lazy_rfc": BreakEven::find_for(points, t, Mode::LazyRfc).map(|b| b.json()),
        })).collect::<Vec<_>>(),
        "violations": violations(points),
    });
    serde_json::to_string_pretty(&doc).expect("JSON values always serialise")
}

/// `k / e / r / l` cells: `f` of each mode in [`Mode::SWEEP`] order.
fn per_mode(p: &Point, f: impl Fn(&ModeReport) -> String) -> String {
    Mode::SWEEP
        .iter()
        .map(|&m| p.mode(m).map_or_else(|| "-".to_string(), &f))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn fmt_ratio(r: Option<f64>, digits: usize) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.digits$}"))
}

/// The markdown table, one row per point.
pub fn to_table(points: &[Point]) -> String {
    let mut s = String::new();
    s.push_str(
        "| depth | timeout (us) | deadline writes | TSC-deadline exits (k / e / r / l) \
         | necessary traps (k / e / r / l) | guest cycles per write (k / e / r / l) \
         | lateness p99 us (k / e / r / l) | wall s (k / e / r / l) \
         | host timer events per request (e / r / l) | lazy/lazy-rfc exits \
         | lazy/eager exits | lazy/kernel cycles per write | lazy exits / necessary traps |\n",
    );
    s.push_str("|---:|---:|---:|---|---|---|---|---|---|---:|---:|---:|---:|\n");
    for p in points {
        let writes = p.reports.first().map_or(0, |r| r.deadline_writes);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.depth,
            p.timeout_us,
            writes,
            per_mode(p, |r| r
                .tsc_deadline_exits
                .map_or_else(|| "n/a".into(), |v| v.to_string())),
            per_mode(p, |r| r.necessary_traps.to_string()),
            per_mode(p, |r| format!("{:.0}", r.cycles_per_write)),
            per_mode(p, |r| r
                .lateness_us
                .map_or_else(|| "n/a".into(), |l| format!("{:.0}", l[1]))),
            per_mode(p, |r| format!("{:.2}", r.wall_s)),
            [Mode::Eager, Mode::LazyRfc, Mode::Lazy]
                .iter()
                .map(|&m| p
                    .mode(m)
                    .and_then(ModeReport::host_events_per_request)
                    .map_or_else(|| "-".into(), |v| format!("{v:.2}")))
                .collect::<Vec<_>>()
                .join(" / "),
            fmt_ratio(p.lazy_rfc_exits(), 3),
            fmt_ratio(p.lazy_eager_exits(), 4),
            fmt_ratio(p.lazy_kernel_cycles(), 3),
            fmt_ratio(p.lazy_exits_per_trap(), 3),
        );
    }
    s
}

/// The protocol targets, each checked against the measurements.
pub fn targets(points: &[Point]) -> String {
    let mut s = String::new();
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };

    let floor: Vec<(u64, u64, Option<f64>)> = points
        .iter()
        .map(|p| (p.depth, p.timeout_us, p.lazy_exits_per_trap()))
        .collect();
    let worst = floor
        .iter()
        .filter_map(|&(d, t, r)| r.map(|r| (d, t, r)))
        .max_by(|a, b| a.2.total_cmp(&b.2));
    let all_ok = floor
        .iter()
        .all(|&(_, _, r)| r.is_some_and(|r| r <= FLOOR_TARGET));
    match worst {
        Some((d, t, r)) => {
            let _ = writeln!(
                s,
                "- lazy trapped writes within 5% of the protocol floor (necessary traps) at every point: \
                 {} (worst lazy exits / necessary traps {r:.3}, at depth {d}, timeout {t} us)",
                mark(all_ok)
            );
        }
        None => s.push_str("- lazy trapped writes within 5% of the protocol floor: not measured\n"),
    }

    let at_target: Vec<&Point> = points.iter().filter(|p| p.depth == TARGET_DEPTH).collect();
    if at_target.is_empty() {
        let _ = writeln!(
            s,
            "- depth {TARGET_DEPTH} targets: depth {TARGET_DEPTH} not in this sweep"
        );
        return s;
    }
    for p in &at_target {
        let r = p.lazy_eager_exits();
        let _ = writeln!(
            s,
            "- TSC-deadline exits at depth {TARGET_DEPTH}, timeout {} us, at most 3% of eager's: {} \
             (lazy/eager {})",
            p.timeout_us,
            mark(r.is_some_and(|r| r <= EXIT_TARGET)),
            fmt_ratio(r, 4)
        );
    }
    for p in &at_target {
        let r = p.lazy_kernel_cycles();
        let _ = writeln!(
            s,
            "- guest cycles per deadline write at depth {TARGET_DEPTH}, timeout {} us, at least 10x lower \
             in lazy than in kernel mode: {} (lazy/kernel {})",
            p.timeout_us,
            mark(r.is_some_and(|r| r <= CYCLE_TARGET)),
            fmt_ratio(r, 3)
        );
    }
    s
}

/// The whole markdown document: workload, table, targets and notes.
pub fn to_markdown(a: &SweepArgs, points: &[Point], sweep_wall_s: f64) -> String {
    let w = &a.base;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Sweep: {} vCPUs x {} requests per point, seed {}, early {}/1000, cancel 1/{}; \
         depths {:?} x timeouts {:?} us x modes kernel / eager / lazy-rfc / lazy ({} runs, {:.0} s).\n",
        w.vcpus,
        w.requests,
        w.seed,
        w.early_per_mille,
        w.cancel_one_in,
        a.depths,
        a.timeouts_us,
        points.len() * Mode::SWEEP.len(),
        sweep_wall_s
    );
    s.push_str(&to_table(points));
    s.push('\n');
    s.push_str("Break-even depth (guest cycles per write = kernel mode's):\n\n");
    for mode in [Mode::LazyRfc, Mode::Lazy] {
        for &t in &a.timeouts_us {
            let b = BreakEven::find_for(points, t, mode)
                .map_or_else(|| "not measured".into(), |b| b.describe());
            let _ = writeln!(s, "- {mode}, timeout {t} us: {b}");
        }
    }
    s.push('\n');
    s.push_str("Targets:\n\n");
    s.push_str(&targets(points));
    s.push('\n');
    s.push_str(
        "Notes: k / e / r / l = kernel / eager / lazy-rfc (the RFC's host) / lazy (this project's host \
         policies: grace re-arm, exitless cancel). Kernel mode handles IA32_TSC_DEADLINE inside KVM, \
         so its exits are not visible to the VMM (n/a). Host timer events per request: expiries of \
         the host timer (re-arms from `pending`, injections, grace expiries), each a wake-up of the \
         VMM, per request of the workload: the cost the policies move from guest exits to the host. \
         Necessary traps are the writes the guest's \
         protocol code had to trap (every write without the lazy protocol); the VMM counts the exits \
         independently and any mismatch is reported as a violation.\n",
    );
    let runs = points.iter().map(|p| p.reports.len()).sum::<usize>();
    let native = points
        .iter()
        .flat_map(|p| p.reports.iter())
        .filter(|r| r.native() == Some(true))
        .count();
    let _ = writeln!(
        s,
        "\nExecution: the guest ran natively in {native} of {runs} runs (measured: KVM's insn_emulation \
         statistic at most {} per trapping instruction the guest counted).",
        report::NATIVE_EMULATION_BOUND
    );
    let emulated = points
        .iter()
        .flat_map(|p| p.reports.iter())
        .filter(|r| r.native() == Some(false))
        .count();
    if emulated > 0 {
        let _ = writeln!(
            s,
            "\nWARNING: in {emulated} of {runs} runs KVM executed the guest in its instruction emulator \
             (KVM's insn_emulation statistic above the trapping instructions the guest counted): guest cycle figures measure \
             emulated instructions, not hardware, and the lazy/kernel cycle ratio says nothing about \
             native cost."
        );
    }
    s
}

/// Exits over depth and cycles per write over depth, one line per mode
/// and timeout.
fn panels(points: &[Point], timeouts: &[u64]) -> Vec<Panel> {
    let line = |mode: Mode, timeout_us: u64, f: &dyn Fn(&ModeReport) -> Option<f64>| Line {
        mode,
        timeout_us,
        points: points
            .iter()
            .filter(|p| p.timeout_us == timeout_us)
            .filter_map(|p| Some((p.depth as f64, f(p.mode(mode)?)?)))
            .collect(),
    };
    let mut exits = Vec::new();
    let mut cycles = Vec::new();
    for &t in timeouts {
        for mode in Mode::SWEEP {
            if mode != Mode::Kernel {
                exits.push(line(mode, t, &|r| r.tsc_deadline_exits.map(|v| v as f64)));
            }
            cycles.push(line(mode, t, &|r| Some(r.cycles_per_write)));
        }
    }
    vec![
        Panel {
            title: "IA32_TSC_DEADLINE exits to the VMM (eager: every write)".into(),
            y_desc: "exits (log)".into(),
            lines: exits,
        },
        Panel {
            title: "guest TSC cycles per deadline write".into(),
            y_desc: "cycles per write (log)".into(),
            lines: cycles,
        },
    ]
}

/// Writes `sweep.json`, `sweep.md` and `sweep.svg` into `dir`.
pub fn write_files(dir: &Path, a: &SweepArgs, points: &[Point], wall_s: f64) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(Error::io(format!("writing {}", path.display())))
    };
    write("sweep.json", &to_json(a, points, wall_s))?;
    write("sweep.md", &to_markdown(a, points, wall_s))?;
    let w = &a.base;
    let caption = format!(
        "mini-vmm sweep: {} vCPUs x {} requests per point, three modes per depth and timeout",
        w.vcpus, w.requests
    );
    let svg = plot::render_svg(&caption, &panels(points, &a.timeouts_us), &a.timeouts_us)?;
    write("sweep.svg", &svg)
}

/// Entry point of `mini-vmm sweep`; `args` are the arguments after
/// `sweep`.
pub fn main(args: SweepCli) -> ExitCode {
    let a = SweepArgs::from_cli(args);
    let start = Instant::now();
    let points = match run_points(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mini-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    print!("{}", to_markdown(&a, &points, wall_s));
    if let Err(e) = write_files(&a.out, &a, &points, wall_s) {
        eprintln!("mini-vmm: error: {e}");
        return ExitCode::from(2);
    }
    eprintln!(
        "mini-vmm: sweep took {wall_s:.0} s; wrote sweep.json, sweep.md and sweep.svg to {}",
        a.out.display()
    );
    let violations = violations(&points);
    report::exit_status(&violations, "protocol violation")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of `mode` whose only meaningful figure is its cycles per
    /// write.
    fn costing(mode: Mode, cycles_per_write: f64) -> ModeReport {
        ModeReport {
            runs_cycles_per_write: vec![cycles_per_write],
            mode,
            total_exits: None,
            userspace_exits: 0,
            msr_write_exits: None,
            tsc_deadline_exits: None,
            tsc_deadline_exits_registered: None,
            necessary_traps_registered: None,
            deadline_writes_registered: None,
            armed_at_registration: None,
            takeovers: None,
            handbacks: None,
            timer_interrupts: 0,
            stale_interrupts: 0,
            deadline_writes: 0,
            necessary_traps: 0,
            waits: 0,
            cancels: 0,
            missed: 0,
            early: 0,
            early_by_max_us: 0.0,
            spurious: 0,
            lateness_us: None,
            cycles_per_write,
            wall_s: 0.0,
            host_rearms: None,
            host_grace: None,
            host_injections: None,
            timer_expiries: None,
            expiry_cycles: None,
            kvm_msr_stats: Vec::new(),
            insn_emulation: None,
            trapping_insns: 0,
            watchdog_wakes: 0,
            pvm_native: false,
            boot_probe_exits: None,
        }
    }

    /// Points of one timeout with the given (depth, lazy/kernel) ratios.
    fn curve(timeout_us: u64, ratios: &[(u64, f64)]) -> Vec<Point> {
        ratios
            .iter()
            .map(|&(depth, r)| Point {
                depth,
                timeout_us,
                reports: vec![
                    costing(Mode::Kernel, 1000.0),
                    costing(Mode::Lazy, 1000.0 * r),
                ],
            })
            .collect()
    }

    #[test]
    fn break_even_is_interpolated_in_log_depth() {
        // Out of order, with another timeout mixed in: 1.5 at depth 2 and
        // 0.5 at depth 8 meet 1.0 halfway in log2, at depth 4.
        let mut points = curve(100, &[(8, 0.5), (1, 3.0), (2, 1.5), (64, 0.1)]);
        points.extend(curve(200, &[(1, 0.9)]));
        match BreakEven::find(&points, 100) {
            Some(BreakEven::Between {
                above: 2,
                below: 8,
                depth,
            }) => assert!((depth - 4.0).abs() < 1e-9, "{depth}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(BreakEven::find(&points, 200), Some(BreakEven::AtOrBelow(1)));
        assert_eq!(
            BreakEven::find(&curve(5, &[(1, 4.0), (16, 1.01)]), 5),
            Some(BreakEven::NotReached(16))
        );
        assert_eq!(BreakEven::find(&points, 300), None);
    }
}
