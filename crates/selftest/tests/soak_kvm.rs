//! The soak benchmark's smoke run (`vcpu-reset bench soak` with small counts): the counts are
//! exact and fds and threads do not grow. The full run (100 000 each) is in the README.

use vcpu_reset_selftest::bench::soak::{SoakOptions, run};
use vcpu_reset_selftest::host::kvm_for_tests;

#[test]
fn a_small_soak_keeps_fds_and_threads_constant() {
    let Some(host) = kvm_for_tests() else { return };
    let report = run(
        host,
        &SoakOptions {
            cycles: 300,
            reboots: 1500,
        },
    )
    .unwrap();
    let text = report.to_text();
    assert_eq!(report.phases.len(), 2, "{text}");
    assert_eq!(report.phases[0].done, 300, "{text}");
    assert_eq!(report.phases[1].done, 1500, "{text}");
    for p in &report.phases {
        let (a, z) = (p.samples[0], p.samples[2]);
        assert_eq!(a.fds, z.fds, "{text}");
        assert_eq!(a.threads, z.threads, "{text}");
        assert!(p.per_second() > 0.0);
    }
}

#[test]
fn soak_counts_out_of_range_are_refused() {
    let Some(host) = kvm_for_tests() else { return };
    let e = run(
        host,
        &SoakOptions {
            cycles: 0,
            reboots: 1,
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--cycles 0 is out of range — choose 1 to 100000000"
    );
}
