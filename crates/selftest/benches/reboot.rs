//! Criterion: a warm reboot in place (`Vm::reboot(Reset)` after invalidating every vCPU cache)
//! against dropping and rebuilding the VM, for 1, 2 and 32 vCPUs (see
//! `vcpu_reset_selftest::bench::reboot`). Only the reboot itself is timed; the BSP's run to its first
//! exit between reboots and opening `/dev/kvm` for a new VM are not.
//!
//! Skips (printing `skipped: no /dev/kvm (...)`) where KVM cannot be opened.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use vcpu_reset_selftest::bench::reboot::{DEFAULT_VCPUS, RebootRig, RebootSample};
use vcpu_reset_selftest::host::kvm_for_tests;

fn total(
    iters: u64,
    mut once: impl FnMut() -> Result<RebootSample, vcpu_reset_selftest::bench::BenchError>,
) -> Duration {
    (0..iters)
        .map(|_| match once() {
            Ok(sample) => sample.elapsed,
            Err(e) => panic!("reboot bench: {e}"),
        })
        .sum()
}

fn main() {
    let Some(host) = kvm_for_tests() else { return };
    drop(host);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("reboot");
    for vcpus in DEFAULT_VCPUS {
        let rig = vcpu_reset_selftest::host::open()
            .map_err(vcpu_reset_selftest::bench::BenchError::from)
            .and_then(|host| RebootRig::new(host, vcpus));
        let mut rig = match rig {
            Ok(rig) => rig,
            Err(e) => {
                eprintln!("skipped: {vcpus} vCPUs ({e})");
                continue;
            }
        };
        group.bench_function(BenchmarkId::new("in_place", vcpus), |b| {
            b.iter_custom(|iters| total(iters, || rig.in_place()))
        });
        group.bench_function(BenchmarkId::new("recreate", vcpus), |b| {
            b.iter_custom(|iters| total(iters, || rig.recreate()))
        });
    }
    group.finish();
    c.final_summary();
}
