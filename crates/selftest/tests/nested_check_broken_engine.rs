//! The nested scenarios of `check`: the real engine passes them; a deliberately broken engine
//! that keeps the current-VMCS pointer across RESET fails on exactly that field; one that
//! ignores the VMX-root INIT block makes the INIT scenario fail.

use vcpu_reset::backend::model::ModelVcpu;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{self, Event, Transition};
use vcpu_reset_selftest::check::{Report, Verdict, model, nested};

fn run(apply: model::Apply) -> Report {
    let mut report = Report::default();
    nested::run_model(&mut report, apply);
    report
}

/// (scenario, vcpu, field) of every failure.
fn failures(r: &Report) -> Vec<(String, String, String)> {
    r.results
        .iter()
        .filter(|x| x.verdict == Verdict::Fail)
        .map(|x| (x.scenario.clone(), x.vcpu.clone(), x.field.clone()))
        .collect()
}

/// A correct RESET, after which the current-VMCS pointer is put back: "keeps the current VMCS
/// pointer across RESET".
fn reset_keeps_current_vmcs(v: &mut Vcpu<ModelVcpu>, e: Event) -> Result<(), String> {
    let kept = v.cache().backend().nested().current_vmcs_pointer();
    model::engine(v, e)?;
    if e == Event::Reset {
        v.cache_mut()
            .backend_mut()
            .nested_mut()
            .force_current_vmcs_pointer(kept);
    }
    Ok(())
}

/// INIT that ignores the blocking rules: the INIT table applied whatever the nested state.
fn init_ignores_blocking(v: &mut Vcpu<ModelVcpu>, e: Event) -> Result<(), String> {
    if e == Event::Reset {
        return model::engine(v, e);
    }
    let prior = *v.cache_mut().state().map_err(|x| x.to_string())?;
    let target = spec::expected_state(v.model(), v.identity(), Transition::Init(&prior));
    v.cache_mut().write_state(&target);
    v.cache_mut().flush().map_err(|x| x.to_string())
}

#[test]
fn real_engine_passes_both_nested_scenarios() {
    let r = run(model::engine);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    let names: Vec<&str> = r.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["nested-reset", "nested-init"]);
    assert!(
        r.scenarios.iter().all(|s| s.error.is_none()),
        "{:?}",
        r.scenarios
    );
    assert_eq!(r.exit_code(false), 0);
    // Three RESET columns and seven INIT columns, every field judged in each.
    let columns: std::collections::BTreeSet<String> =
        r.results.iter().map(|x| x.column()).collect();
    assert_eq!(columns.len(), 3 + 7, "{columns:?}");
    assert_eq!(r.results.len(), 10 * spec::Field::all().len());
    assert_eq!(r.summary().pass, r.results.len());
}

#[test]
fn reset_that_keeps_the_current_vmcs_fails_on_exactly_that_field() {
    let r = run(reset_keeps_current_vmcs);
    let pair = |v: &str| {
        (
            "nested-reset".to_string(),
            v.to_string(),
            "nested.current_vmcs_pointer".to_string(),
        )
    };
    assert_eq!(
        failures(&r),
        vec![pair("bsp-vmx-non-root"), pair("ap1-vmx-root")]
    );
    assert_eq!(r.exit_code(false), 1);
    let f = r
        .results
        .iter()
        .find(|x| x.verdict == Verdict::Fail)
        .unwrap();
    assert_eq!(f.expected, "0xffffffffffffffff");
    assert_eq!(f.actual.as_deref(), Some("0x0000000000002000"));
    assert!(f.citation.contains("§25.1"), "{}", f.citation);
}

#[test]
fn init_that_ignores_the_vmx_root_block_fails_the_init_scenario() {
    let r = run(init_ignores_blocking);
    let init = r
        .scenarios
        .iter()
        .find(|s| s.name == "nested-init")
        .unwrap();
    let error = init.error.as_deref().unwrap_or("");
    assert!(
        error.contains("bsp-vmx-root") && error.contains("was not held"),
        "{error}"
    );
    assert_eq!(r.exit_code(false), 1);
}
