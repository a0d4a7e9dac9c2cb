//! Turning observed states into verdicts, shared by every scenario and backend.

use std::collections::BTreeMap;

use vcpu_reset_spec::{self as spec, Applies, CpuModel, Event, Field, VcpuState};

use super::report::{FieldResult, Report, View};
use super::verdict::{Judge, Observed, Owner, judge};
use crate::probe;

/// What one observation of one vCPU in one scenario is judged against.
pub struct Expectation<'a> {
    /// Scenario name.
    pub scenario: &'a str,
    /// Whose behaviour is observed.
    pub owner: Owner,
    /// Host or guest view.
    pub view: View,
    /// `bsp` / `ap1` ...
    pub vcpu: String,
    /// The CPU model the vCPU presents: its vendor's table applies, and its capability MSRs
    /// say which fields exist ([`CpuModel::applies`]).
    pub model: &'a CpuModel,
    /// Which table.
    pub event: Event,
    /// The spec's expected state.
    pub expected: &'a VcpuState,
    /// The state before the event (INIT), for the spec's `preserved` alternatives.
    pub prior: Option<&'a VcpuState>,
}

/// Judge every field `observe` reports on, appending to `report`.
pub fn judge_all(
    report: &mut Report,
    e: &Expectation<'_>,
    mut observe: impl FnMut(Field) -> Option<Observed>,
) {
    for field in Field::all() {
        let Some(observed) = observe(field) else {
            continue;
        };
        let observed = match (e.model.applies(field), observed) {
            (Applies::No(why), _) => Observed::NotApplicable(why.into()),
            (Applies::NotKnown(why), Observed::Value(_)) => Observed::Unobservable(why.into()),
            (_, o) => o,
        };
        let expected = field.get(e.expected);
        let (verdict, reason) = judge(
            field,
            Judge {
                vendor: e.model.vendor,
                event: e.event,
                expected,
                prior: e.prior.map(|p| field.get(p)),
                owner: e.owner,
                observed: &observed,
            },
        );
        let row = spec::row(field, e.model.vendor, e.event);
        report.results.push(FieldResult {
            scenario: e.scenario.to_string(),
            view: e.view,
            vcpu: e.vcpu.clone(),
            field: field.name(),
            class: field.class().name().to_string(),
            verdict,
            expected: spec::hex(field, expected),
            actual: match observed {
                Observed::Value(v) => Some(spec::hex(field, v)),
                Observed::Unobservable(_) | Observed::NotApplicable(_) => None,
            },
            citation: row.citation.to_string(),
            reason,
        });
    }
}

/// What run `index` of the probe output in `log` saw; see [`observe_run`].
pub fn observe_probe_run(
    log: &[u8],
    index: usize,
    expected: &VcpuState,
    not_implemented: impl Fn(Field) -> Option<String>,
) -> Result<BTreeMap<Field, Observed>, String> {
    let runs = probe::parse(log).map_err(|e| format!("probe output: {e}"))?;
    let run = runs.get(index).ok_or_else(|| {
        format!(
            "probe output has {} run(s), wanted run {}",
            runs.len(),
            index + 1
        )
    })?;
    observe_run(run, expected, not_implemented)
}

/// What one probe run saw, as observations of every field: bits the probe cannot see (e.g.
/// RAX\[63:32\] in real mode) are taken as expected; a faulting read, an unmeasured value and a
/// field the probe does not record are host limits with the reason, and so is every field for
/// which `not_implemented` gives a reason.
pub fn observe_run(
    run: &probe::ProbeRun,
    expected: &VcpuState,
    not_implemented: impl Fn(Field) -> Option<String>,
) -> Result<BTreeMap<Field, Observed>, String> {
    let seen = run.fields().map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for f in Field::all() {
        if let Some(why) = not_implemented(f) {
            out.insert(f, Observed::Unobservable(why));
            continue;
        }
        let o = match seen.get(&f) {
            Some(probe::Seen::Value { value, mask }) => {
                Observed::Value((value & mask) | (f.get(expected) & f.mask() & !mask))
            }
            Some(probe::Seen::Fault(fault)) => Observed::Unobservable(format!(
                "the guest's read faulted ({}): the vCPU does not implement it",
                fault.code()
            )),
            Some(probe::Seen::NotAvailable) => {
                Observed::Unobservable("the probe could not measure it".into())
            }
            None => Observed::Unobservable("not observable by a real-mode guest probe".into()),
        };
        out.insert(f, o);
    }
    Ok(out)
}

/// Run scenario `name`'s cases in order with `case`, stopping at the first that fails, and
/// record the scenario (with that case's label and error, if any).
pub fn run_cases<C>(
    report: &mut Report,
    name: &str,
    owner: Owner,
    cases: impl IntoIterator<Item = (String, C)>,
    mut case: impl FnMut(&mut Report, C) -> Result<(), String>,
) {
    let mut error = None;
    for (label, c) in cases {
        if let Err(e) = case(report, c) {
            error = Some(format!("{label}: {e}"));
            break;
        }
    }
    report.scenarios.push(super::ScenarioInfo {
        name: name.into(),
        owner,
        error,
    });
}

/// `bsp` for vCPU 0, `ap<N>` otherwise.
pub fn vcpu_label(id: u32) -> String {
    if id == 0 {
        "bsp".into()
    } else {
        format!("ap{id}")
    }
}
