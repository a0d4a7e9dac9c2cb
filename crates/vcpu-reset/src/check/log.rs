//! Verdicts from a probe log written by any VMM or emulator (`vcpu-reset check --from-log`).
//!
//! `vcpu-reset probe-image` writes a firmware image that probes the vCPU at the reset vector
//! and prints its records on port 0xE9 and COM1; optionally it then dirties state and reboots
//! itself once. The log's first run is judged against the spec's RESET state (the VMM's
//! power-on); a second run against RESET or INIT, depending on the mechanism named in the run's
//! tag (`...-cf9-hard` is a hard reset, `cf9-soft`, `port92` and `kbc` raise INIT). What the log
//! shows is the VMM's behaviour, so deviations are findings.

use vcpu_reset_spec::{self as spec, CpuModel, Event, Field, Gpr, Transition, VcpuIdentity};

use super::dirty::before_probe_reboot;
use super::report::{Report, ScenarioInfo, View};
use super::scenario::{Expectation, judge_all, observe_probe_run};
use super::verdict::{Observed, Owner};
use crate::probe::{self, RebootVia};

/// Judge every probe run in `log` for a VMM presenting `model`. Without a known signature
/// (`signature_known = false`) RDX is reported as a host limit.
pub fn run(report: &mut Report, log: &[u8], model: &CpuModel, signature_known: bool) {
    report.host.insert("backend".into(), "probe log".into());
    report
        .host
        .insert("vendor".into(), model.vendor.name().into());
    let runs = match probe::parse(log) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            report.scenarios.push(ScenarioInfo {
                name: "log".into(),
                owner: Owner::Host,
                error: Some("the log holds no probe run (no \"#VR1 begin\" line)".into()),
            });
            return;
        }
        Err(e) => {
            report.scenarios.push(ScenarioInfo {
                name: "log".into(),
                owner: Owner::Host,
                error: Some(format!("the log's probe output is damaged: {e}")),
            });
            return;
        }
    };
    let ident = VcpuIdentity::new(0);
    let reset = spec::expected_state(model, ident, Transition::Reset);
    let via = RebootVia::ALL
        .into_iter()
        .find(|v| runs[0].tag.ends_with(v.name()));
    let not_known = |f: Field| {
        (!signature_known && f == Field::Gpr(Gpr::Rdx))
            .then(|| "the processor signature is not known: pass --signature".to_string())
    };
    for (index, _) in runs.iter().enumerate().take(2) {
        let (name, event, expected, prior) = if index == 0 {
            ("power-on".to_string(), Event::Reset, reset, None)
        } else {
            let Some(via) = via else { break };
            let mut prior = before_probe_reboot(&reset);
            if let Some(tsc) = runs[0].number(&probe::record::msr_key(0x10)) {
                prior.msrs.tsc = tsc as u64;
            }
            match via {
                RebootVia::Cf9Hard => (format!("reboot-{}", via.name()), Event::Reset, reset, None),
                _ => (
                    format!("reboot-{}", via.name()),
                    Event::Init,
                    spec::expected_state(model, ident, Transition::Init(&prior)),
                    Some(prior),
                ),
            }
        };
        let result = observe_probe_run(log, index, &expected, not_known).map(|obs| {
            judge_all(
                report,
                &Expectation {
                    scenario: &name,
                    owner: Owner::Host,
                    view: View::Guest,
                    vcpu: "bsp".into(),
                    vendor: model.vendor,
                    event,
                    expected: &expected,
                    prior: prior.as_ref(),
                },
                |f| {
                    Some(
                        obs.get(&f)
                            .cloned()
                            .unwrap_or(Observed::Unobservable(String::new())),
                    )
                },
            );
        });
        report.scenarios.push(ScenarioInfo {
            name,
            owner: Owner::Host,
            error: result.err(),
        });
    }
    if via.is_some() && runs.len() < 2 {
        report.scenarios.push(ScenarioInfo {
            name: "reboot".into(),
            owner: Owner::Host,
            error: Some("the probe asked for a reboot but the log holds no second run".into()),
        });
    }
}
