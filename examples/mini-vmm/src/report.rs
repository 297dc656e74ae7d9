//! Turning the runs into numbers: the comparison table, ratios, JSON, and
//! the protocol checks that decide the exit status.

use std::process::ExitCode;

use serde_json::{json, Value};

use crate::mode::{ExpectedExits, Mode, Registration};
use crate::vm::ModeRun;

/// The most guest cycles per deadline write stock mode may cost per cycle
/// of kernel mode's (in the same run): a guest that never registers must
/// not pay for the feature.
pub const STOCK_KERNEL_BOUND: f64 = 1.3;

/// The figures of one mode. `None` means "not measurable in this mode",
/// never zero.
#[derive(Clone, Debug)]
pub struct ModeReport {
    /// Guest cycles per deadline write of every run of this mode (several
    /// with `compare --repeat`), in run order; the report's other figures
    /// are those of the run with the median cycles per write.
    pub runs_cycles_per_write: Vec<f64>,
    /// The mode.
    pub mode: Mode,
    /// VM exits of all kinds, from KVM's vCPU statistics (`exits`).
    pub total_exits: Option<u64>,
    /// Returns from KVM_RUN to the VMM.
    pub userspace_exits: u64,
    /// MSR-write exits (to userspace; KVM keeps no per-MSR statistic).
    pub msr_write_exits: Option<u64>,
    /// IA32_TSC_DEADLINE write exits seen by the VMM (counted by its exit
    /// handler; `None` without a routing).
    pub tsc_deadline_exits: Option<u64>,
    /// Of those, the ones of vCPUs whose struct was registered (modes whose
    /// guest registers).
    pub tsc_deadline_exits_registered: Option<u64>,
    /// Necessary traps the guest made after registering (modes whose guest
    /// registers).
    pub necessary_traps_registered: Option<u64>,
    /// Deadline writes the guest made after registering.
    pub deadline_writes_registered: Option<u64>,
    /// Mid-run registrations made with a deadline armed (the guest read
    /// `IA32_TSC_DEADLINE` just before) / after which `IA32_TSC_DEADLINE`
    /// still read a deadline (the registration keeps it: as many expected,
    /// unless one fired in between).
    pub armed_at_registration: Option<(u64, u64)>,
    /// Times a vCPU's TSC-deadline timer was taken over from KVM by the
    /// VMM (`lazy-tscdeadline-kvm`'s counters; modes with a routing).
    pub takeovers: Option<u64>,
    /// Times it was handed back to KVM.
    pub handbacks: Option<u64>,
    /// Timer interrupts that completed a wait.
    pub timer_interrupts: u64,
    /// Interrupts for deadlines replaced after they passed (benign race).
    pub stale_interrupts: u64,
    /// `set_next_deadline` calls.
    pub deadline_writes: u64,
    /// Writes the protocol had to trap.
    pub necessary_traps: u64,
    /// Requests awaited.
    pub waits: u64,
    /// Requests cancelled.
    pub cancels: u64,
    /// Waits whose deadline never fired within the bound (a violation).
    pub missed: u64,
    /// Timer interrupts before the current deadline (a violation).
    pub early: u64,
    /// The most microseconds an early interrupt came before its deadline.
    pub early_by_max_us: f64,
    /// Timer interrupts with nothing armed (a violation).
    pub spurious: u64,
    /// Lateness p50/p99/max in microseconds.
    pub lateness_us: Option<[f64; 3]>,
    /// Guest TSC cycles per `set_next_deadline`, measured by the guest
    /// around each call.
    pub cycles_per_write: f64,
    /// Wall time of the workload in seconds.
    pub wall_s: f64,
    /// Host timer expiries that re-armed from `pending` without an
    /// interrupt (eager and lazy; `None` in kernel mode).
    pub host_rearms: Option<u64>,
    /// Grace periods ended by their own expiry / those of them that found a
    /// new deadline in `pending` (eager and lazy; 0 without the policy).
    pub host_grace: Option<(u64, u64)>,
    /// Host timer expiries, each handed to the vCPU thread (a signal out of
    /// `KVM_RUN`, the LVT read, `kick()`; eager and lazy).
    pub timer_expiries: Option<u64>,
    /// VMM TSC cycles per expiry on the vCPU thread (LVT read and `kick()`,
    /// not the exit itself).
    pub expiry_cycles: Option<f64>,
    /// Timer interrupts the host timer injected (eager and lazy).
    pub host_injections: Option<u64>,
    /// KVM statistics whose name mentions MSRs (summed over vCPUs).
    pub kvm_msr_stats: Vec<(String, u64)>,
    /// Instructions KVM executed in its instruction emulator (KVM's
    /// `insn_emulation` statistic): every guest instruction when KVM emulates
    /// the guest, only the trapping ones when it runs natively.
    pub insn_emulation: Option<u64>,
    /// Watchdog wake-up interrupts the guests took: the VMM sends one to a
    /// guest still waiting well past its deadline, which then counts a miss.
    pub watchdog_wakes: u64,
    /// Trapping instructions the guest counted itself over the same span.
    pub trapping_insns: u64,
    /// Whether the guest was told to switch to native execution (PVM host).
    pub pvm_native: bool,
    /// IA32_TSC_DEADLINE write exits the VMM saw during boot (the probe
    /// write that proves the MSR reaches userspace; eager and lazy only).
    pub boot_probe_exits: Option<u64>,
}

/// Emulated instructions per trapping guest instruction above which the
/// guest counts as emulated (see [`ModeReport::native`]).
pub const NATIVE_EMULATION_BOUND: f64 = 2.0;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl ModeReport {
    /// Summarises one run.
    pub fn from_run(run: &ModeRun) -> Self {
        let sum = |f: fn(&crate::layout::Results) -> u64| run.results.iter().map(f).sum::<u64>();
        let spec = run.mode.spec();
        let userspace = run.mode.routed();
        let registers = spec.registration != Registration::Never;
        let crate_counter = |f: fn(&lazy_tscdeadline_kvm::VcpuCounters) -> u64| {
            userspace.then(|| {
                run.vcpus
                    .iter()
                    .filter_map(|v| v.timer_counters.as_ref())
                    .map(f)
                    .sum()
            })
        };
        let kvm_stat = |name: &str| {
            run.vcpus
                .iter()
                .map(|v| v.kvm_stats.as_ref().and_then(|s| s.get(name).copied()))
                .sum::<Option<u64>>()
        };
        let total_exits = kvm_stat("exits");
        let mut kvm_msr_stats: Vec<(String, u64)> = Vec::new();
        for v in &run.vcpus {
            for (k, val) in v.kvm_stats.iter().flatten() {
                if k.contains("msr") {
                    match kvm_msr_stats.iter_mut().find(|(n, _)| n == k) {
                        Some((_, acc)) => *acc += val,
                        None => kvm_msr_stats.push((k.clone(), *val)),
                    }
                }
            }
        }
        let mut samples = run.lateness_cycles.clone();
        samples.sort_unstable();
        let to_us = |c: u64| c as f64 * 1000.0 / run.tsc_khz as f64;
        let lateness_us = (!samples.is_empty()).then(|| {
            [
                to_us(percentile(&samples, 0.50)),
                to_us(percentile(&samples, 0.99)),
                to_us(*samples.last().unwrap()),
            ]
        });
        let writes = sum(|r| r.deadline_writes);
        ModeReport {
            runs_cycles_per_write: vec![sum(|r| r.write_cycles) as f64 / writes.max(1) as f64],
            mode: run.mode,
            total_exits,
            userspace_exits: run.vcpus.iter().map(|v| v.exits.total).sum(),
            msr_write_exits: userspace.then(|| run.vcpus.iter().map(|v| v.exits.msr_writes).sum()),
            tsc_deadline_exits: userspace
                .then(|| run.vcpus.iter().map(|v| v.exits.tsc_deadline_writes).sum()),
            tsc_deadline_exits_registered: (userspace && registers).then(|| {
                run.vcpus
                    .iter()
                    .map(|v| v.exits.tsc_deadline_writes_registered)
                    .sum()
            }),
            necessary_traps_registered: registers.then(|| sum(|r| r.traps_after_registration)),
            deadline_writes_registered: registers.then(|| sum(|r| r.writes_after_registration)),
            armed_at_registration: (spec.registration == Registration::MidRun).then(|| {
                let count = |f: fn(&crate::layout::Results) -> u64| {
                    run.results.iter().filter(|r| f(r) != 0).count() as u64
                };
                (
                    count(|r| r.deadline_before_registration),
                    count(|r| r.deadline_after_registration),
                )
            }),
            takeovers: crate_counter(|c| c.takeovers),
            handbacks: crate_counter(|c| c.handbacks),
            timer_interrupts: sum(|r| r.timer_interrupts),
            stale_interrupts: sum(|r| r.stale_interrupts),
            deadline_writes: writes,
            necessary_traps: sum(|r| r.necessary_traps),
            waits: sum(|r| r.waits),
            cancels: sum(|r| r.cancels),
            missed: sum(|r| r.missed),
            early: sum(|r| r.early),
            early_by_max_us: to_us(
                run.results
                    .iter()
                    .map(|r| r.early_by_max_cycles)
                    .max()
                    .unwrap_or(0),
            ),
            spurious: sum(|r| r.spurious),
            lateness_us,
            cycles_per_write: sum(|r| r.write_cycles) as f64 / writes.max(1) as f64,
            wall_s: run.wall.as_secs_f64(),
            host_rearms: run.host_counters.map(|c| c.rearms),
            host_grace: run.host_counters.map(|c| (c.grace_expiries, c.grace_hits)),
            timer_expiries: userspace
                .then(|| run.vcpus.iter().map(|v| v.exits.timer_expiries).sum()),
            expiry_cycles: userspace.then(|| {
                let n: u64 = run.vcpus.iter().map(|v| v.exits.timer_expiries).sum();
                let c: u64 = run.vcpus.iter().map(|v| v.exits.expiry_cycles).sum();
                c as f64 / n.max(1) as f64
            }),
            host_injections: run.host_counters.map(|c| c.injections),
            kvm_msr_stats,
            insn_emulation: kvm_stat("insn_emulation"),
            trapping_insns: sum(|r| r.trapping_insns),
            watchdog_wakes: sum(|r| r.watchdog_wakes),
            pvm_native: run.pvm_native,
            boot_probe_exits: userspace
                .then(|| run.vcpus.iter().map(|v| v.boot_tsc_deadline_writes).sum()),
        }
    }

    /// Host timer expiries per request of the workload (awaited or
    /// cancelled): each is a wake-up of the VMM's timer thread and an exit of
    /// the vCPU to its thread. `None` in kernel mode or without requests.
    pub fn host_events_per_request(&self) -> Option<f64> {
        let requests = self.waits + self.cancels;
        (requests > 0).then_some(self.timer_expiries? as f64 / requests as f64)
    }

    /// Whether the guest ran natively, measured: KVM emulated at most
    /// [`NATIVE_EMULATION_BOUND`] instructions per trapping instruction the
    /// guest executed (natively about one, the trapping instruction itself;
    /// emulated, every instruction of the workload, tens per trapping one).
    /// `None` without KVM's statistics.
    pub fn native(&self) -> Option<bool> {
        self.insn_emulation
            .map(|n| n as f64 <= NATIVE_EMULATION_BOUND * self.trapping_insns.max(1) as f64)
    }

    /// Protocol violations and measurement inconsistencies of this mode.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (n, what) in [
            (self.missed, "missed"),
            (self.early, "early"),
            (self.spurious, "spurious"),
        ] {
            if n > 0 {
                v.push(format!("{}: {n} {what} timer interrupt(s)", self.mode));
            }
            if n > 0 && what == "early" {
                v.push(format!(
                    "{}: the earliest came {:.2} us before its deadline",
                    self.mode, self.early_by_max_us
                ));
            }
        }
        if self.timer_interrupts + self.missed != self.waits {
            v.push(format!(
                "{}: {} waits but {} completing interrupts and {} misses",
                self.mode, self.waits, self.timer_interrupts, self.missed
            ));
        }
        let exits = self.tsc_deadline_exits.unwrap_or(0);
        match self.mode.spec().exits {
            ExpectedExits::NotRouted => {}
            ExpectedExits::EveryTrap => {
                if exits != self.necessary_traps {
                    v.push(format!(
                        "{}: {exits} IA32_TSC_DEADLINE exits but the guest made {} necessary traps",
                        self.mode, self.necessary_traps
                    ));
                }
            }
            ExpectedExits::None => {
                if exits != 0 {
                    v.push(format!(
                        "{}: {exits} IA32_TSC_DEADLINE exits reached the VMM although the guest \
                         never registered",
                        self.mode
                    ));
                }
            }
            ExpectedExits::TrapsAfterRegistration => {
                let (after, traps) = (
                    self.tsc_deadline_exits_registered.unwrap_or(0),
                    self.necessary_traps_registered.unwrap_or(0),
                );
                if after != traps {
                    v.push(format!(
                        "{}: {after} IA32_TSC_DEADLINE exits after registration but the guest made \
                         {traps} necessary traps after registering",
                        self.mode
                    ));
                }
            }
        }
        v
    }

    /// This report as one JSON object (an element of [`to_json`]'s
    /// `modes`; `null` where a figure is not measurable in this mode).
    pub fn json(&self) -> Value {
        let lat = |i: usize| self.lateness_us.map(|l| l[i]);
        json!({
            "mode": self.mode.to_string(),
            "tsc_deadline_exits": self.tsc_deadline_exits,
            "tsc_deadline_exits_after_registration": self.tsc_deadline_exits_registered,
            "necessary_traps_after_registration": self.necessary_traps_registered,
            "deadline_writes_after_registration": self.deadline_writes_registered,
            "takeovers": self.takeovers,
            "armed_before_registration": self.armed_at_registration.map(|a| a.0),
            "armed_after_registration": self.armed_at_registration.map(|a| a.1),
            "handbacks": self.handbacks,
            "advertised": self.mode.spec().advertised,
            "routing": self.mode.spec().routing.map(|p| format!("{p:?}")),
            "msr_write_exits": self.msr_write_exits,
            "total_exits": self.total_exits,
            "userspace_exits": self.userspace_exits,
            "timer_interrupts": self.timer_interrupts,
            "stale_interrupts": self.stale_interrupts,
            "deadline_writes": self.deadline_writes,
            "necessary_traps": self.necessary_traps,
            "waits": self.waits,
            "cancels": self.cancels,
            "missed": self.missed,
            "early": self.early,
            "early_by_max_us": self.early_by_max_us,
            "spurious": self.spurious,
            "lateness_us_p50": lat(0),
            "lateness_us_p99": lat(1),
            "lateness_us_max": lat(2),
            "cycles_per_write": self.cycles_per_write,
            "runs_cycles_per_write": self.runs_cycles_per_write,
            "wall_s": self.wall_s,
            "host_rearms": self.host_rearms,
            "grace_expiries": self.host_grace.map(|g| g.0),
            "grace_hits": self.host_grace.map(|g| g.1),
            "host_injections": self.host_injections,
            "timer_expiries": self.timer_expiries,
            "host_events_per_request": self.host_events_per_request(),
            "vmm_cycles_per_expiry": self.expiry_cycles,
            "boot_probe_exits": self.boot_probe_exits,
            "insn_emulation": self.insn_emulation,
            "trapping_insns": self.trapping_insns,
            "watchdog_wakes": self.watchdog_wakes,
            "native": self.native(),
            "pvm_native_switch": self.pvm_native,
        })
    }
}

/// Stock mode's guest cycles per deadline write over kernel mode's, if
/// both ran.
pub fn stock_kernel_ratio(reports: &[ModeReport]) -> Option<f64> {
    let find = |m: Mode| reports.iter().find(|r| r.mode == m);
    let (stock, kernel) = (find(Mode::Stock)?, find(Mode::Kernel)?);
    (kernel.cycles_per_write > 0.0).then(|| stock.cycles_per_write / kernel.cycles_per_write)
}

/// One report per mode from the runs of each mode: the run with the median
/// guest cycles per write (the lower middle one for an even count), with the
/// cycles of every run in [`ModeReport::runs_cycles_per_write`].
pub fn median_runs(runs: Vec<Vec<ModeReport>>) -> Vec<ModeReport> {
    runs.into_iter()
        .filter_map(|mut mode_runs| {
            let all: Vec<f64> = mode_runs.iter().map(|r| r.cycles_per_write).collect();
            mode_runs.sort_by(|a, b| a.cycles_per_write.total_cmp(&b.cycles_per_write));
            let mid = mode_runs.len().checked_sub(1)? / 2;
            let mut median = mode_runs.swap_remove(mid);
            median.runs_cycles_per_write = all;
            Some(median)
        })
        .collect()
}

/// `{"modes": [...]}`, plus `stock_kernel_cycles_ratio` when both ran.
pub fn to_json(reports: &[ModeReport]) -> String {
    let modes: Vec<Value> = reports.iter().map(ModeReport::json).collect();
    let mut out = json!({ "modes": modes });
    if let Some(r) = stock_kernel_ratio(reports) {
        out["stock_kernel_cycles_ratio"] = json!(r);
    }
    serde_json::to_string_pretty(&out).unwrap()
}

fn opt(v: Option<u64>, why: &str) -> String {
    v.map_or_else(|| why.to_string(), |v| v.to_string())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.4}", a / b),
        _ => "n/a".into(),
    }
}

/// The human-readable table, one column per mode, then the ratios.
pub fn to_table(reports: &[ModeReport]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&ModeReport) -> String| {
        rows.push((label.to_string(), reports.iter().map(f).collect()));
    };
    row("VM exits total (KVM stats)", &|r| {
        opt(r.total_exits, "n/a[1]")
    });
    row("exits to VMM (KVM_RUN returns)", &|r| {
        r.userspace_exits.to_string()
    });
    row("MSR-write exits", &|r| opt(r.msr_write_exits, "n/a[2]"));
    row("TSC-deadline MSR-write exits", &|r| {
        opt(r.tsc_deadline_exits, "n/a[2]")
    });
    row("  after registration", &|r| {
        opt(r.tsc_deadline_exits_registered, "n/a")
    });
    row("timer interrupts (waits done)", &|r| {
        r.timer_interrupts.to_string()
    });
    row("  stale interrupts [3]", &|r| {
        r.stale_interrupts.to_string()
    });
    row("deadline writes", &|r| r.deadline_writes.to_string());
    row("necessary traps", &|r| r.necessary_traps.to_string());
    row("  after registration", &|r| {
        opt(r.necessary_traps_registered, "n/a")
    });
    row("waits / cancels", &|r| format!("{}/{}", r.waits, r.cancels));
    row("missed/early/spurious", &|r| {
        format!("{}/{}/{}", r.missed, r.early, r.spurious)
    });
    row("  watchdog wake-ups", &|r| r.watchdog_wakes.to_string());
    let lat = |i: usize| {
        move |r: &ModeReport| {
            r.lateness_us
                .map_or("n/a".into(), |l| format!("{:.1}", l[i]))
        }
    };
    row("lateness p50 (us)", &lat(0));
    row("lateness p99 (us)", &lat(1));
    row("lateness max (us)", &lat(2));
    row("guest cycles per deadline write", &|r| {
        format!("{:.0}", r.cycles_per_write)
    });
    if reports.iter().any(|r| r.runs_cycles_per_write.len() > 1) {
        row("  every run [8]", &|r| {
            r.runs_cycles_per_write
                .iter()
                .map(|&c| {
                    if c < 1000.0 {
                        format!("{c:.0}")
                    } else {
                        format!("{:.0}k", c / 1000.0)
                    }
                })
                .collect::<Vec<_>>()
                .join("/")
        });
    }
    row(
        "host re-arms / injections",
        &|r| match (r.host_rearms, r.host_injections) {
            (Some(a), Some(b)) => format!("{a}/{b}"),
            _ => "n/a (kernel)".into(),
        },
    );
    row(
        "take-overs / hand-backs [6]",
        &|r| match (r.takeovers, r.handbacks) {
            (Some(a), Some(b)) => format!("{a}/{b}"),
            _ => "n/a (kernel)".into(),
        },
    );
    row("  armed at registration [7]", &|r| {
        r.armed_at_registration
            .map_or("n/a".into(), |(b, a)| format!("{b} -> {a}"))
    });
    row("  grace expiries / hits", &|r| {
        r.host_grace
            .map_or("n/a".into(), |(e, h)| format!("{e}/{h}"))
    });
    row("host timer expiries [5]", &|r| {
        opt(r.timer_expiries, "n/a (kernel)")
    });
    row("  per request", &|r| {
        r.host_events_per_request()
            .map_or("n/a".into(), |v| format!("{v:.2}"))
    });
    row("  VMM cycles per expiry", &|r| {
        r.expiry_cycles.map_or("n/a".into(), |c| format!("{c:.0}"))
    });
    row("wall time (s)", &|r| format!("{:.2}", r.wall_s));
    row("guest execution (measured) [4]", &|r| {
        match r.native() {
            Some(true) => "native",
            Some(false) => "EMULATED",
            None => "unknown",
        }
        .into()
    });
    row("  KVM emulated / trapping insns", &|r| {
        r.insn_emulation
            .map_or("n/a".into(), |n| format!("{n}/{}", r.trapping_insns))
    });

    let mut out = String::new();
    out.push_str(&format!("{:<34}", "mode"));
    for r in reports {
        out.push_str(&format!("{:>16}", r.mode.to_string()));
    }
    out.push('\n');
    for (label, cells) in rows {
        out.push_str(&format!("{label:<34}"));
        for c in cells {
            out.push_str(&format!("{c:>16}"));
        }
        out.push('\n');
    }

    let find = |m: Mode| reports.iter().find(|r| r.mode == m);
    if let Some(lazy) = find(Mode::Lazy) {
        out.push('\n');
        for base in [find(Mode::LazyRfc), find(Mode::Eager), find(Mode::Kernel)]
            .into_iter()
            .flatten()
        {
            let b = base.mode;
            out.push_str(&format!(
                "lazy/{b}: total exits {}, TSC-deadline exits {}, cycles per write {}\n",
                ratio(
                    lazy.total_exits.map(|v| v as f64),
                    base.total_exits.map(|v| v as f64)
                ),
                ratio(
                    lazy.tsc_deadline_exits.map(|v| v as f64),
                    base.tsc_deadline_exits.map(|v| v as f64)
                ),
                ratio(Some(lazy.cycles_per_write), Some(base.cycles_per_write)),
            ));
        }
    }
    if let Some(ratio) = stock_kernel_ratio(reports) {
        out.push_str(&format!(
            "stock/kernel: cycles per write {ratio:.4} ({} the {STOCK_KERNEL_BOUND} bound; kernel mode's own cost varies run to run)\n",
            if ratio <= STOCK_KERNEL_BOUND { "within" } else { "ABOVE" }
        ));
    }
    out.push('\n');
    if reports.iter().any(|r| r.total_exits.is_none()) {
        out.push_str("[1] KVM_GET_STATS_FD unavailable.\n");
    }
    out.push_str(
        "[2] kernel mode: IA32_TSC_DEADLINE is handled inside KVM, which keeps no per-MSR exit statistic;\n    \
         natively every write is a VM exit handled in the kernel, counted in its total exits.\n",
    );
    out.push_str(
        "[3] interrupts for a deadline that expired while interrupts were off and was then replaced\n    \
         (benign in every mode; not counted as early/spurious).\n",
    );
    if reports.iter().any(|r| r.runs_cycles_per_write.len() > 1) {
        out.push_str(
            "[8] --repeat: every mode ran once per round, rounds in sequence; each column shows the run with the\n    \
             median guest cycles per write, and this row every run's (k: thousands).\n",
        );
    }
    let msr_stats: Vec<String> = reports
        .iter()
        .filter(|r| !r.kvm_msr_stats.is_empty())
        .map(|r| {
            let s: Vec<String> = r
                .kvm_msr_stats
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{}: {}", r.mode, s.join(", "))
        })
        .collect();
    if !msr_stats.is_empty() {
        out.push_str(&format!(
            "KVM MSR-related stats: {}\n",
            msr_stats.join("; ")
        ));
    }
    out.push_str(&format!(
        "[4] native: KVM's insn_emulation statistic is at most {NATIVE_EMULATION_BOUND} per trapping instruction\n    \
         the guest counted (wrmsr, rdmsr, hlt, sti, cli, out); emulated guests execute every instruction in KVM.\n"
    ));
    out.push_str(
        "[5] modes routed to the VMM: each expiry of the host timer is handed to the vCPU thread (a signal out\n    \
         of KVM_RUN), which reads the LVT from the in-kernel LAPIC and calls kick(): no interrupt while the LVT\n    \
         is masked or out of TSC-deadline mode, even when the guest changed it without an exit.\n",
    );
    out.push_str(
        "[6] a vCPU's TSC-deadline timer taken over from KVM's LAPIC by the VMM (with Always routing at its first\n    \
         exit; with OptIn routing once a vCPU registered, with the deadline armed in KVM) / handed back.\n",
    );
    if reports.iter().any(|r| r.armed_at_registration.is_some()) {
        out.push_str(
            "[7] optin: vCPUs whose IA32_TSC_DEADLINE read a deadline just before registering -> just after (the\n    \
             registration keeps it, docs/PROTOCOL.md §4.1, so the same unless it fired in between).\n",
        );
    }
    let emulated: Vec<String> = reports
        .iter()
        .filter(|r| r.native() == Some(false))
        .map(|r| {
            format!(
                "{} ({} instructions for {} trapping ones)",
                r.mode,
                r.insn_emulation.unwrap_or(0),
                r.trapping_insns
            )
        })
        .collect();
    if !emulated.is_empty() {
        out.push_str(&format!(
            "WARNING: KVM executed the guest in its instruction emulator: {}.\n    \
             Cycle costs are those of emulated instructions, not of hardware, and an in-kernel WRMSR is\n    \
             emulated without a VM exit (KVM's `exits` statistic misses kernel-mode IA32_TSC_DEADLINE writes).\n    \
             Exit counts to userspace are exact. On a PVM host, `--execution auto` (the default) runs natively.\n",
            emulated.join(", ")
        ));
    }
    out
}

/// The exit status for a finished run: success without violations, else 1
/// after printing each one to stderr as `mini-vmm: {what}: {violation}`.
pub fn exit_status(violations: &[String], what: &str) -> ExitCode {
    for v in violations {
        eprintln!("mini-vmm: {what}: {v}");
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
