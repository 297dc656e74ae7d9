//! The command line (clap): one `Args` struct per subcommand, turned into
//! the [`Workload`] the VM runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lazy_tscdeadline_kvm::lazy_tscdeadline_host::GracePolicy;

use crate::mode::Mode;
use crate::snapshot::PauseAt;
use crate::sweep::{DEFAULT_DEPTHS, DEFAULT_TIMEOUTS_US};
use crate::vm::{Execution, Program, Workload};

/// `mini-vmm`: a KVM mini-VMM running a freestanding Rust guest to measure
/// the lazy TSC deadline protocol against eager userspace emulation and
/// KVM's in-kernel LAPIC timer. Exit status: 0 on success, 1 on a protocol
/// violation, 2 on any error (a missing /dev/kvm or KVM capability too).
#[derive(Debug, Parser)]
#[command(name = "mini-vmm", args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to run (without one: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The options of `run`, when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One mode on the workload.
    Run(RunArgs),
    /// Every mode on the same workload, side by side.
    Compare(RunArgs),
    /// One mode, paused mid-workload, saved, torn down, restored into a
    /// fresh VM and run to the end.
    Snapshot(SnapshotArgs),
    /// A lazy-mode VM where vCPU 0 attacks the protocol next to honest vCPUs.
    Hostile(HostileArgs),
    /// A masked LVT timer in TSC-deadline mode, in every mode, against the SDM.
    LvtMask(LvtMaskArgs),
    /// The modes over reprogramming depths and timeouts.
    Sweep(SweepCli),
}

/// Options every subcommand has.
#[derive(Clone, Copy, Debug, Args)]
pub struct Common {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How the guest's CPL0 code runs: natively where the host can (auto,
    /// native), or in KVM's instruction emulator (emulated; PVM hosts only).
    #[arg(long, value_enum, default_value_t = Execution::Auto)]
    pub execution: Execution,
}

/// `run` and `compare`.
#[derive(Clone, Copy, Debug, Args)]
pub struct RunArgs {
    /// The mode of `run`.
    #[arg(long, value_parser = parse_mode, default_value = "lazy")]
    pub mode: Mode,
    /// Requests per vCPU.
    #[arg(long, default_value_t = 1000)]
    pub requests: u64,
    /// Times each request's deadline is pushed later.
    #[arg(long, default_value_t = 64)]
    pub depth: u64,
    /// Request timeout in microseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_us: u64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Per-mille of pushes that move the deadline earlier.
    #[arg(long, default_value_t = 10)]
    pub early_per_mille: u64,
    /// One request in this many is cancelled (0: none).
    #[arg(long, default_value_t = 8)]
    pub cancel_one_in: u64,
    /// The grace policy of the modes whose host has one (lazy, stock,
    /// optin): `off`, `adaptive` (the default policy), or a fixed length in
    /// guest TSC cycles.
    #[arg(long, value_parser = parse_grace)]
    pub grace: Option<GracePolicy>,
    /// Rounds of every mode (compare): each mode's figures are its median
    /// run by guest cycles per write.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
    /// JSON and execution.
    #[command(flatten)]
    pub common: Common,
}

impl RunArgs {
    /// The workload these options describe.
    pub fn workload(&self) -> Workload {
        Workload {
            requests: self.requests,
            depth: self.depth,
            timeout_us: self.timeout_us,
            seed: self.seed,
            vcpus: self.vcpus,
            early_per_mille: self.early_per_mille,
            cancel_one_in: self.cancel_one_in,
            execution: self.common.execution,
            program: Program::Requests,
            grace: self.grace,
        }
    }
}

/// `snapshot`.
#[derive(Clone, Copy, Debug, Args)]
pub struct SnapshotArgs {
    /// Pause this many milliseconds after the vCPUs started (default 200).
    #[arg(long, conflicts_with = "at_request")]
    pub at_ms: Option<u64>,
    /// Pause once every vCPU has started request N (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub at_request: Option<u64>,
    /// The run's options.
    #[command(flatten)]
    pub run: RunArgs,
}

impl SnapshotArgs {
    /// When to pause.
    pub fn pause_at(&self) -> PauseAt {
        match (self.at_request, self.at_ms) {
            (Some(n), _) => PauseAt::Request(n),
            (None, ms) => PauseAt::Time(Duration::from_millis(ms.unwrap_or(200))),
        }
    }
}

/// `hostile`.
#[derive(Clone, Copy, Debug, Args)]
pub struct HostileArgs {
    /// vCPUs (vCPU 0 is hostile).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub vcpus: u32,
    /// Iterations of the hostile program (and requests of the honest ones).
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// JSON and execution.
    #[command(flatten)]
    pub common: Common,
}

/// `lvt-mask`.
#[derive(Clone, Copy, Debug, Args)]
pub struct LvtMaskArgs {
    /// Rounds of the three cases per vCPU.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Deadline after each write, in microseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..))]
    pub timeout_us: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub vcpus: u32,
    /// JSON and execution.
    #[command(flatten)]
    pub common: Common,
}

/// `sweep`.
#[derive(Clone, Debug, Args)]
pub struct SweepCli {
    /// Where to write sweep.json, sweep.md and sweep.svg.
    #[arg(long, default_value = "target/sweep")]
    pub out: PathBuf,
    /// Requests per vCPU at every point.
    #[arg(long, default_value_t = crate::sweep::DEFAULT_REQUESTS)]
    pub requests: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Depths, comma-separated (sorted, duplicates dropped, each at least 1).
    #[arg(long, value_parser = parse_list, default_value_t = List(DEFAULT_DEPTHS.to_vec()))]
    pub depths: List,
    /// Timeouts in microseconds, comma-separated, as `--depths`.
    #[arg(long, value_parser = parse_list, default_value_t = List(DEFAULT_TIMEOUTS_US.to_vec()))]
    pub timeouts_us: List,
    /// How the guest runs.
    #[arg(long, value_enum, default_value_t = Execution::Auto)]
    pub execution: Execution,
}

fn parse_grace(s: &str) -> Result<GracePolicy, String> {
    match s {
        "off" => Ok(GracePolicy::Off),
        "adaptive" => Ok(GracePolicy::DEFAULT),
        n => n
            .parse()
            .map(GracePolicy::Fixed)
            .map_err(|_| format!("{n}: not off, adaptive or a number of cycles")),
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s).ok_or_else(|| {
        let names: Vec<String> = Mode::all().map(|m| m.to_string()).collect();
        format!("unknown mode {s} (one of {})", names.join(", "))
    })
}

/// A list of positive numbers, sorted, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List(pub Vec<u64>);

impl std::fmt::Display for List {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&items.join(","))
    }
}

/// A comma-separated [`List`].
pub fn parse_list(v: &str) -> Result<List, String> {
    let mut list = v
        .split(',')
        .map(|s| {
            let n: u64 = s.trim().parse().map_err(|_| format!("not a number: {s}"))?;
            if n == 0 {
                return Err("values must be at least 1".to_string());
            }
            Ok(n)
        })
        .collect::<Result<Vec<u64>, String>>()?;
    list.sort_unstable();
    list.dedup();
    Ok(List(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mini-vmm").chain(args.iter().copied()))
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_positive() {
        assert_eq!(parse_list("16,1,16,4").unwrap(), List(vec![1, 4, 16]));
        assert!(parse_list("0,4").is_err());
        assert!(parse_list("x").is_err());
        assert!(parse_list("").is_err());
    }

    #[test]
    fn defaults_and_options() {
        let cli = parse(&[]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.mode, Mode::Lazy);
        assert_eq!(cli.run.workload().requests, 1000);
        let Some(Command::Compare(a)) =
            parse(&["compare", "--cancel-one-in", "0", "--repeat", "3"])
                .unwrap()
                .command
        else {
            panic!("not compare");
        };
        assert_eq!((a.cancel_one_in, a.repeat), (0, 3));
        let Some(Command::Sweep(s)) = parse(&["sweep", "--out", "d", "--timeouts-us", "7"])
            .unwrap()
            .command
        else {
            panic!("not sweep");
        };
        assert_eq!(s.out, PathBuf::from("d"));
        assert_eq!(s.timeouts_us, List(vec![7]));
        assert_eq!(s.depths.0, DEFAULT_DEPTHS);
        assert!(parse(&["--mode", "nonsense"]).is_err());
        assert!(parse(&["hostile", "--vcpus", "1"]).is_err());
        assert!(parse(&["run", "--bogus"]).is_err());
        assert!(parse(&["--execution", "emulated", "--mode", "stock"]).is_ok());
    }
}
