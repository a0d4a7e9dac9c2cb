//! The report of a `check` run and its three renderings: a readable table, JSON, and TAP as
//! kselftest prints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::verdict::{Owner, Verdict};
use crate::files::escape;

/// Where a value was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum View {
    /// Read by the host (through the register cache).
    Host,
    /// Recorded by the guest itself (a probe program).
    Guest,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Host => "host",
            View::Guest => "guest",
        }
    }
}

/// One field's verdict in one scenario, view and vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldResult {
    /// Scenario name (`create`, `kvm-init`, `reset`, `init`, `reboot-…`).
    pub scenario: String,
    /// Host or guest view.
    pub view: View,
    /// `bsp` or `ap<N>`.
    pub vcpu: String,
    /// Dotted spec field name.
    pub field: String,
    /// Spec class.
    pub class: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Expected value (`0x…`).
    pub expected: String,
    /// Observed value (`0x…`), absent when not observable.
    pub actual: Option<String>,
    /// The spec's citation for the field.
    pub citation: String,
    /// Why (for host limits, spec-allows, findings and failures).
    pub reason: Option<String>,
}

impl FieldResult {
    /// `scenario/view/vcpu` — one column of the table.
    pub fn column(&self) -> String {
        format!("{}/{}/{}", self.scenario, self.view.name(), self.vcpu)
    }
}

/// A scenario that ran (or could not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    /// Name.
    pub name: String,
    /// Whose behaviour it checks.
    pub owner: Owner,
    /// Set when the scenario could not run, with the reason.
    pub error: Option<String>,
}

/// Counts per verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Passes.
    pub pass: usize,
    /// Fields that do not apply to the vCPU as presented.
    pub not_applicable: usize,
    /// Differences the spec allows.
    pub spec_allows: usize,
    /// Host limits.
    pub host_limit: usize,
    /// Findings about the host.
    pub finding: usize,
    /// Failures of vcpu-reset.
    pub fail: usize,
    /// Scenarios that could not run.
    pub scenarios_not_run: usize,
}

/// A whole `check` run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Which backend and host (free-form facts, e.g. `backend`, `vendor`, `kvm`).
    pub host: BTreeMap<String, String>,
    /// The scenarios.
    pub scenarios: Vec<ScenarioInfo>,
    /// Every verdict.
    pub results: Vec<FieldResult>,
    /// Why the run could not judge everything it was asked to (e.g. a probe log whose reboot
    /// run is missing): the exit status is then 2.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
}

impl Report {
    /// Counts per verdict.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for r in &self.results {
            match r.verdict {
                Verdict::Pass => s.pass += 1,
                Verdict::NotApplicable => s.not_applicable += 1,
                Verdict::SpecAllows => s.spec_allows += 1,
                Verdict::HostLimit => s.host_limit += 1,
                Verdict::Finding => s.finding += 1,
                Verdict::Fail => s.fail += 1,
            }
        }
        s.scenarios_not_run = self.scenarios.iter().filter(|s| s.error.is_some()).count();
        s
    }

    /// Exit status: 2 when nothing could run or the run is [`Report::incomplete`], 1 on any failure (and, with `strict`, on any
    /// finding) or when a vcpu-reset scenario could not run, 0 otherwise.
    pub fn exit_code(&self, strict: bool) -> u8 {
        let s = self.summary();
        let ran = self.scenarios.iter().any(|s| s.error.is_none());
        if !ran || self.results.is_empty() || !self.incomplete.is_empty() {
            return 2;
        }
        let own_not_run = self
            .scenarios
            .iter()
            .any(|s| s.error.is_some() && s.owner == Owner::VcpuReset);
        if s.fail > 0 || own_not_run || (strict && s.finding > 0) {
            1
        } else {
            0
        }
    }

    /// The JSON rendering (every verdict with expected, actual and citation).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            host: &'a BTreeMap<String, String>,
            scenarios: &'a [ScenarioInfo],
            summary: Summary,
            results: &'a [FieldResult],
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            incomplete: &'a [String],
        }
        serde_json::to_string_pretty(&Out {
            host: &self.host,
            scenarios: &self.scenarios,
            summary: self.summary(),
            results: &self.results,
            incomplete: &self.incomplete,
        })
    }

    /// The readable rendering: a field × scenario table grouped by class, then every
    /// finding and failure with expected, actual and citation, then a summary line. Text that
    /// can come from outside (host facts, scenario names and errors, reasons) is escaped
    /// ([`escape`]), so no control character reaches the terminal.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.host {
            let _ = writeln!(out, "{}: {}", escape(k), escape(v));
        }
        let mut columns: Vec<String> = Vec::new();
        for r in &self.results {
            let c = r.column();
            if !columns.contains(&c) {
                columns.push(c);
            }
        }
        // field -> column -> verdict, keeping first-seen field order.
        let mut order: Vec<(String, String)> = Vec::new();
        let mut cells: BTreeMap<(String, String), Verdict> = BTreeMap::new();
        for r in &self.results {
            let key = (r.class.clone(), r.field.clone());
            if !order.contains(&key) {
                order.push(key);
            }
            cells.insert((r.field.clone(), r.column()), r.verdict);
        }
        let fw = order.iter().map(|(_, f)| f.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(
            out,
            "\nlegend: . pass  / not applicable  ~ spec-allows  - host-limit  F finding (host)  X FAIL (vcpu-reset)"
        );
        for (i, c) in columns.iter().enumerate() {
            let _ = writeln!(out, "  [{}] {}", i + 1, escape(c));
        }
        let mut header = format!("{:<fw$}", "field");
        for i in 0..columns.len() {
            let _ = write!(header, " {:>3}", i + 1);
        }
        let mut class = String::new();
        for (cl, field) in &order {
            if *cl != class {
                class.clone_from(cl);
                let _ = writeln!(out, "\n-- {class}\n{header}");
            }
            let _ = write!(out, "{field:<fw$}");
            for c in &columns {
                let sym = match cells.get(&(field.clone(), c.clone())) {
                    None => " ",
                    Some(Verdict::Pass) => ".",
                    Some(Verdict::NotApplicable) => "/",
                    Some(Verdict::SpecAllows) => "~",
                    Some(Verdict::HostLimit) => "-",
                    Some(Verdict::Finding) => "F",
                    Some(Verdict::Fail) => "X",
                };
                let _ = write!(out, " {sym:>3}");
            }
            out.push('\n');
        }
        let notable: Vec<&FieldResult> = self
            .results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Fail | Verdict::Finding))
            .collect();
        if !notable.is_empty() {
            let _ = writeln!(out, "\nfindings and failures:");
            for r in notable {
                let line = format!(
                    "{} {}: expected {}, got {} ({})",
                    r.column(),
                    r.field,
                    r.expected,
                    r.actual.as_deref().unwrap_or("-"),
                    r.citation
                );
                let _ = writeln!(out, "  {:<7} {}", r.verdict.name(), escape(&line));
            }
        }
        for s in &self.scenarios {
            if let Some(e) = &s.error {
                let _ = writeln!(out, "  not run: {}: {}", escape(&s.name), escape(e));
            }
        }
        for why in &self.incomplete {
            let _ = writeln!(out, "  incomplete: {}", escape(why));
        }
        let s = self.summary();
        let _ = writeln!(
            out,
            "\nsummary: {} pass, {} not applicable, {} spec-allows, {} host-limit, {} finding, {} fail; {} scenario(s) not run",
            s.pass,
            s.not_applicable,
            s.spec_allows,
            s.host_limit,
            s.finding,
            s.fail,
            s.scenarios_not_run
        );
        out
    }

    /// TAP version 13 as kselftest prints it: one test point per verdict; host limits are
    /// `# SKIP`, findings `# XFAIL` unless `strict`, failures `not ok`; a kselftest totals
    /// line closes it. Every test point is one line: text from outside is escaped
    /// ([`escape`]), so a CR or LF in it cannot start a line of its own.
    pub fn to_tap(&self, strict: bool) -> String {
        let mut out = String::from("TAP version 13\n");
        let n = self.results.len() + self.scenarios.iter().filter(|s| s.error.is_some()).count();
        let _ = writeln!(out, "1..{n}");
        let (mut pass, mut fail, mut xfail, mut skip) = (0, 0, 0, 0);
        let mut i = 0;
        for s in &self.scenarios {
            if let Some(e) = &s.error {
                i += 1;
                let own = s.owner == Owner::VcpuReset;
                let (name, e) = (escape(&s.name), escape(e));
                if own {
                    fail += 1;
                    let _ = writeln!(out, "not ok {i} {name} # could not run: {e}");
                } else {
                    skip += 1;
                    let _ = writeln!(out, "ok {i} {name} # SKIP {e}");
                }
            }
        }
        for r in &self.results {
            i += 1;
            let name = format!("{}: {}", r.column(), r.field);
            let detail = format!(
                "expected {} got {}",
                r.expected,
                r.actual.as_deref().unwrap_or("-")
            );
            let line = match r.verdict {
                Verdict::Pass => {
                    pass += 1;
                    format!("ok {i} {name}")
                }
                Verdict::SpecAllows => {
                    pass += 1;
                    format!("ok {i} {name} # spec-allows: {detail}")
                }
                Verdict::NotApplicable => {
                    skip += 1;
                    format!(
                        "ok {i} {name} # SKIP not applicable: {}",
                        r.reason.as_deref().unwrap_or("the vCPU does not have it")
                    )
                }
                Verdict::HostLimit => {
                    skip += 1;
                    format!(
                        "ok {i} {name} # SKIP host limit: {}",
                        r.reason.as_deref().unwrap_or("not observable")
                    )
                }
                Verdict::Finding if !strict => {
                    xfail += 1;
                    format!("ok {i} {name} # XFAIL host deviates: {detail}")
                }
                Verdict::Finding | Verdict::Fail => {
                    fail += 1;
                    format!("not ok {i} {name} # {detail} ({})", r.citation)
                }
            };
            out.push_str(&escape(&line));
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "# Totals: pass:{pass} fail:{fail} xfail:{xfail} xpass:0 skip:{skip} error:0"
        );
        if self.exit_code(strict) == 2 {
            // Nothing (or not all that was asked) could be judged: a harness must not read
            // the skips above as a pass.
            let why = if self.incomplete.is_empty() {
                "nothing could be judged".to_string()
            } else {
                self.incomplete.join("; ")
            };
            let _ = writeln!(out, "Bail out! {}", escape(&why));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(verdict: Verdict, field: &str) -> FieldResult {
        FieldResult {
            scenario: "reset".into(),
            view: View::Host,
            vcpu: "bsp".into(),
            field: field.into(),
            class: "control".into(),
            verdict,
            expected: "0x10".into(),
            actual: Some("0x11".into()),
            citation: "SDM".into(),
            reason: None,
        }
    }

    fn report(verdicts: &[Verdict]) -> Report {
        Report {
            host: BTreeMap::new(),
            scenarios: vec![ScenarioInfo {
                name: "reset".into(),
                owner: Owner::VcpuReset,
                error: None,
            }],
            results: verdicts
                .iter()
                .enumerate()
                .map(|(i, v)| result(*v, &format!("f{i}")))
                .collect(),
            incomplete: Vec::new(),
        }
    }

    #[test]
    fn exit_code_is_zero_when_own_scenarios_pass() {
        let r = report(&[
            Verdict::Pass,
            Verdict::SpecAllows,
            Verdict::HostLimit,
            Verdict::Finding,
        ]);
        assert_eq!(r.exit_code(false), 0);
        assert_eq!(r.exit_code(true), 1, "--strict fails on findings");
    }

    #[test]
    fn exit_code_is_one_on_failure_and_two_when_nothing_ran() {
        assert_eq!(report(&[Verdict::Pass, Verdict::Fail]).exit_code(false), 1);
        let mut none = report(&[]);
        none.scenarios[0].error = Some("no /dev/kvm".into());
        assert_eq!(none.exit_code(false), 2);
    }

    #[test]
    fn tap_follows_kselftest_conventions() {
        let tap = report(&[
            Verdict::Pass,
            Verdict::HostLimit,
            Verdict::Finding,
            Verdict::Fail,
        ])
        .to_tap(false);
        let lines: Vec<&str> = tap.lines().collect();
        assert_eq!(lines[0], "TAP version 13");
        assert_eq!(lines[1], "1..4");
        assert_eq!(lines[2], "ok 1 reset/host/bsp: f0");
        assert!(lines[3].starts_with("ok 2 reset/host/bsp: f1 # SKIP host limit"));
        assert!(lines[4].starts_with("ok 3 reset/host/bsp: f2 # XFAIL"));
        assert!(lines[5].starts_with("not ok 4 reset/host/bsp: f3 # expected 0x10 got 0x11"));
        assert_eq!(
            lines[6],
            "# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:0"
        );
    }

    #[test]
    fn table_lists_failures_and_a_summary() {
        let t = report(&[Verdict::Pass, Verdict::Fail]).to_table();
        assert!(
            t.contains("fail    reset/host/bsp f1: expected 0x10, got 0x11 (SDM)"),
            "{t}"
        );
        assert!(t.contains(
            "summary: 1 pass, 0 not applicable, 0 spec-allows, 0 host-limit, 0 finding, 1 fail"
        ));
    }

    #[test]
    fn json_has_every_verdict_with_expected_actual_and_citation() {
        let j = report(&[Verdict::Fail]).to_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let r = &v["results"][0];
        assert_eq!(r["verdict"], "fail");
        assert_eq!(r["expected"], "0x10");
        assert_eq!(r["actual"], "0x11");
        assert_eq!(r["citation"], "SDM");
        assert_eq!(v["summary"]["fail"], 1);
    }
}
