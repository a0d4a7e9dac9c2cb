//! The nested scenarios on KVM: every nested field is judged, and where the host does not hold
//! one (no KVM_CAP_NESTED_STATE, no nested VMX, no SGX launch control, as on the project's
//! machines) it is a host limit with the reason — never a failure, never silently missing.

use vcpu_reset::engine::NESTED_FIELDS;
use vcpu_reset_selftest::check::{Report, Verdict, nested};
use vcpu_reset_selftest::host::kvm_for_tests;

#[test]
fn nested_scenarios_on_kvm_are_judged_or_host_limits() {
    let Some(host) = kvm_for_tests() else { return };
    let mut report = Report::default();
    nested::run_kvm(&mut report);
    for s in &report.scenarios {
        assert!(s.error.is_none(), "{}: {:?}", s.name, s.error);
    }
    for scenario in [nested::NESTED_RESET, nested::NESTED_INIT] {
        let results: Vec<_> = report
            .results
            .iter()
            .filter(|r| r.scenario == scenario)
            .collect();
        // Every nested field, once.
        assert_eq!(results.len(), NESTED_FIELDS.len(), "{scenario}");
        for f in NESTED_FIELDS {
            assert!(
                results.iter().any(|r| r.field == f.name()),
                "{scenario}: {f} missing"
            );
        }
        for r in &results {
            assert_ne!(r.verdict, Verdict::Fail, "{scenario} {}: {:?}", r.field, r);
            if r.verdict == Verdict::HostLimit {
                let why = r.reason.as_deref().unwrap_or("");
                assert!(!why.is_empty(), "{} has no reason", r.field);
            }
        }
        let state = results
            .iter()
            .find(|r| r.field == "nested.state")
            .map(|r| (r.verdict, r.reason.clone()));
        if host.caps().nested_state == 0 {
            let (v, why) = state.unwrap_or((Verdict::Pass, None));
            assert_eq!(v, Verdict::HostLimit);
            assert!(
                why.unwrap_or_default().contains("KVM_CAP_NESTED_STATE = 0"),
                "{scenario}"
            );
        }
    }
    assert_eq!(report.exit_code(false), 0);
}
