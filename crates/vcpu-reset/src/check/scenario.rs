//! Turning observed states into verdicts, shared by every scenario and backend.

use vcpu_reset_spec::{self as spec, Event, Field, VcpuState, Vendor};

use super::report::{FieldResult, Report, View};
use super::verdict::{Judge, Observed, Owner, judge};

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
    /// Vendor whose table applies.
    pub vendor: Vendor,
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
        let expected = field.get(e.expected);
        let (verdict, reason) = judge(
            field,
            Judge {
                vendor: e.vendor,
                event: e.event,
                expected,
                prior: e.prior.map(|p| field.get(p)),
                owner: e.owner,
                observed: &observed,
            },
        );
        let row = spec::row(field, e.vendor, e.event);
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
                Observed::Unobservable(_) => None,
            },
            citation: row.citation.to_string(),
            reason,
        });
    }
}

/// `bsp` for vCPU 0, `ap<N>` otherwise.
pub fn vcpu_label(id: u32) -> String {
    if id == 0 {
        "bsp".into()
    } else {
        format!("ap{id}")
    }
}
