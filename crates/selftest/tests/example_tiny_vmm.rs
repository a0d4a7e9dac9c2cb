//! The `tiny_vmm` example as a test: a VMM on kvm-ioctls and vm-memory boots the probe
//! firmware, and on a triple fault and on a hard reset through 0xCF9 lends its vCPU fd to the
//! `vcpu_reset::VcpuReset` it keeps and carries on; the guest's records of both boots must
//! show the exact RESET state, each RESET within the engine's cost.
//!
//! Skips (printing why) where `/dev/kvm` cannot be used, unless `VCPU_RESET_REQUIRE_KVM=1`.

#[path = "../examples/tiny_vmm.rs"]
#[allow(dead_code)]
mod tiny_vmm;

use std::sync::mpsc;
use std::time::Duration;

use vcpu_reset_selftest::host::kvm_for_tests;

#[test]
fn the_tiny_vmm_reboots_in_place_with_exact_resets() {
    let Some(host) = kvm_for_tests() else {
        return;
    };
    // A guest that stops making exits would block KVM_RUN for ever: run it on a thread.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = tiny_vmm::run(&host).map_err(|e| e.to_string());
        let _ = tx.send(result);
    });
    let outcome = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the tiny VMM finishes within 2 minutes")
        .expect("the tiny VMM runs");

    assert_eq!(outcome.exit_code, 0, "the probe ends through port 0xF4");
    let mut expected = vec!["power-on"];
    if outcome.triple_fault {
        expected.push("triple fault");
    }
    expected.push("0xCF9 hard reset");
    assert_eq!(outcome.resets, expected);
    println!(
        "resets {:?}, vCPU syscalls {:?}",
        outcome.resets, outcome.calls
    );
    // After a run, from what the first RESET learned of this host (never from its vendor): 3
    // ioctls where the host's INIT is left to the next run, 4 otherwise, one more per class the
    // host's INIT leaves wrong (the LAPIC and MP state where KVM's LINT0 quirk stays on), and
    // the KVM_RUN that completes a port-output exit; as vcpu_reset_api_kvm.rs bounds them.
    let base = if outcome.host_init_lazy { 3 } else { 4 };
    let bound = base + outcome.host_init_inexact + 1;
    println!(
        "host INIT lazy {}, inexact classes {}, LINT0 quirk off {}: at most {bound}",
        outcome.host_init_lazy, outcome.host_init_inexact, outcome.lint0_quirk_off
    );
    for (why, calls) in outcome.resets.iter().zip(&outcome.calls).skip(1) {
        assert!(
            *calls <= bound,
            "{why}: {calls} vCPU syscalls (at most {bound})"
        );
    }

    let report = tiny_vmm::judge(&outcome);
    let summary = report.summary();
    assert_eq!(summary.scenarios_not_run, 0, "{:?}", report.scenarios);
    let scenarios: Vec<&str> = report.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(scenarios, ["power-on", "reboot-cf9-hard"]);
    assert!(summary.pass > 100, "{summary:?}");
    let bad = tiny_vmm::inexact(&outcome, &report);
    assert!(bad.is_empty(), "not exact after RESET: {bad:#?}");
    // Fields a VMM gets wrong without vcpu-reset, seen exact by the guest in both boots.
    for field in ["rdx", "cr0", "msr.ia32_pat", "x87.fcw", "lapic.lvt_lint0"] {
        let passes = report
            .results
            .iter()
            .filter(|r| r.field == field && r.verdict == vcpu_reset_selftest::check::Verdict::Pass)
            .count();
        assert_eq!(passes, 2, "{field} exact in both boots");
    }
}
