//! A deliberately broken engine makes `check` fail on exactly the field it breaks, and on
//! nothing else; the real engine passes.

use vcpu_reset::backend::model::ModelVcpu;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{Event, Field};
use vcpu_reset_selftest::check::{Report, Verdict, model};

fn run(apply: model::Apply) -> Report {
    let mut report = Report::default();
    model::run(&mut report, &model::default_model(), apply);
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

/// After a correct INIT, put CR3 back to what it was: "forgets CR3 on INIT".
fn init_forgets_cr3(v: &mut Vcpu<ModelVcpu>, e: Event) -> Result<(), String> {
    let before = v.cache_mut().get(Field::Cr3).map_err(|x| x.to_string())?;
    model::engine(v, e)?;
    if e == Event::Init {
        v.cache_mut()
            .set(Field::Cr3, before)
            .map_err(|x| x.to_string())?;
        v.cache_mut().flush().map_err(|x| x.to_string())?;
    }
    Ok(())
}

/// After a correct INIT, set CR0.CD/NW as RESET would: "sets CD/NW on INIT".
fn init_sets_cd_nw(v: &mut Vcpu<ModelVcpu>, e: Event) -> Result<(), String> {
    model::engine(v, e)?;
    if e == Event::Init {
        let cr0 = v.cache_mut().get(Field::Cr0).map_err(|x| x.to_string())?;
        v.cache_mut()
            .set(Field::Cr0, cr0 | 0x6000_0000)
            .map_err(|x| x.to_string())?;
        v.cache_mut().flush().map_err(|x| x.to_string())?;
    }
    Ok(())
}

fn pair(s: &str, vcpu: &str, f: &str) -> (String, String, String) {
    (s.into(), vcpu.into(), f.into())
}

#[test]
fn real_engine_passes_everything() {
    let r = run(model::engine);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    assert_eq!(r.exit_code(false), 0);
    assert!(r.summary().pass > 1000);
}

#[test]
fn init_that_forgets_cr3_fails_on_cr3_only() {
    let r = run(init_forgets_cr3);
    assert_eq!(
        failures(&r),
        vec![pair("init", "bsp", "cr3"), pair("init", "ap1", "cr3")]
    );
    assert_eq!(r.exit_code(false), 1);
    let cr3 = r
        .results
        .iter()
        .find(|x| x.verdict == Verdict::Fail)
        .unwrap();
    assert_eq!(cr3.expected, "0x0000000000000000");
    assert_eq!(cr3.actual.as_deref(), Some("0x0000000000005000"));
    assert!(cr3.citation.contains("Table 10-1"), "{}", cr3.citation);
}

#[test]
fn init_that_sets_cd_nw_fails_on_cr0_only() {
    let r = run(init_sets_cd_nw);
    assert_eq!(
        failures(&r),
        vec![pair("init", "bsp", "cr0"), pair("init", "ap1", "cr0")]
    );
    let cr0 = r
        .results
        .iter()
        .find(|x| x.verdict == Verdict::Fail)
        .unwrap();
    assert_eq!(cr0.expected, "0x0000000000000010");
    assert_eq!(cr0.actual.as_deref(), Some("0x0000000060000010"));
}
