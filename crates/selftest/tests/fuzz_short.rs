//! A short pass of the fuzzer over every target (`src/fuzz.rs`), from the committed seed corpus
//! (real probe logs from QEMU TCG, QEMU KVM, Bochs and `vcpu-reset run`). CI sets
//! `VCPU_RESET_FUZZ_SECS=60`; without it the pass takes a few seconds. The long run is
//! `cargo run --release -p vcpu-reset --example fuzz -- --seconds N` (README).

use std::path::PathBuf;
use std::time::Duration;

use vcpu_reset_selftest::fuzz::{FuzzOptions, Target, fuzz, seeds};

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

#[test]
fn every_committed_seed_log_parses() {
    let logs = seeds(Target::ProbeLog, Some(&seed_dir()));
    // 11 committed logs plus the built-in ones.
    assert!(logs.len() >= 11, "{} seed logs", logs.len());
    for log in &logs {
        assert!(
            vcpu_reset_selftest::probe::parse(log).is_ok_and(|runs| !runs.is_empty()),
            "a seed log parses"
        );
    }
}

#[test]
fn a_short_fuzz_pass_finds_no_crash() {
    let secs = std::env::var("VCPU_RESET_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(3);
    let report = fuzz(&FuzzOptions {
        max_time: Duration::from_secs(secs),
        seed: 12,
        seed_dir: Some(seed_dir()),
        crash_dir: Some(std::env::temp_dir().join("vcpu-reset-fuzz-crashes")),
        ..FuzzOptions::default()
    });
    eprint!("{}", report.to_text());
    assert_eq!(report.crashes(), 0, "{}", report.to_text());
    for (t, s) in &report.targets {
        assert!(s.execs > 0, "{} ran", t.name());
    }
}
