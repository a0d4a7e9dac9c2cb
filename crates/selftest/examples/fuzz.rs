//! Fuzz vcpu-reset's input parsers on stable Rust:
//!
//! ```text
//! cargo run --release -p vcpu-reset --example fuzz -- --seconds 600
//! ```
//!
//! Options: `--seconds N` (default 60), `--execs N`, `--target probe-log|firmware|state-json`
//! (repeatable; default all), `--seed N` (default 1; the run is reproducible for a seed),
//! `--seeds DIR` (default: the crate's `fuzz/seeds`), `--crashes DIR` (where crashing inputs
//! are saved; default `fuzz-crashes`). Exit status 1 when any input crashed a target.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vcpu_reset_selftest::fuzz::{FuzzOptions, Target, fuzz};

#[derive(Parser)]
#[command(about = "Fuzz the probe-log parser and judge, the firmware loader and the state JSON")]
struct Args {
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop after this many executions (over all targets).
    #[arg(long)]
    execs: Option<u64>,
    /// Targets (repeatable): probe-log, firmware, state-json. Default: all.
    #[arg(long = "target", value_parser = parse_target)]
    targets: Vec<Target>,
    /// Seed of the mutator's random generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder with a sub-folder of seed inputs per target.
    #[arg(long)]
    seeds: Option<PathBuf>,
    /// Where crashing inputs are saved.
    #[arg(long, default_value = "fuzz-crashes")]
    crashes: PathBuf,
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::from_name(s).ok_or_else(|| "choose probe-log, firmware or state-json".to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = FuzzOptions {
        targets: if args.targets.is_empty() {
            Target::ALL.to_vec()
        } else {
            args.targets
        },
        max_execs: args.execs.unwrap_or(u64::MAX),
        max_time: Duration::from_secs(args.seconds),
        seed: args.seed,
        seed_dir: Some(
            args.seeds
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")),
        ),
        crash_dir: Some(args.crashes),
        progress: Some(Duration::from_secs(60)),
    };
    let report = fuzz(&options);
    print!("{}", report.to_text());
    if report.crashes() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
