//! Verdicts from a probe log written by any VMM or emulator (`vcpu-reset check --from-log`).
//!
//! `vcpu-reset probe-image` writes a firmware image that probes the vCPU at the reset vector
//! and prints its records on port 0xE9 and COM1; optionally it then dirties state and reboots
//! itself once. The log's first run is judged against the spec's RESET state (the VMM's
//! power-on); a second run against RESET or INIT, depending on the mechanism named in the run's
//! tag (`...-cf9-hard` is a hard reset, `cf9-soft`, `port92` and `kbc` raise INIT). What the log
//! shows is the VMM's behaviour, so deviations are findings.
//!
//! The judge takes the vCPU as the VMM presents it, not as this machine is:
//!
//! - the CPU model comes from the first run's CPUID records ([`Advertised`]): vendor,
//!   signature (so RDX is judged), performance counters, SGX launch control; `--vendor` and
//!   `--signature` ([`LogOptions`]) override them;
//! - a field whose feature the VMM does not advertise is not applicable
//!   ([`advertised::not_applicable`]), and so is IA32_SMBASE, which only SMM can read;
//! - values the spec says are configured per model (the VMX capability MSRs, IA32_MTRRCAP, the
//!   APIC version) are the ones the first run read: RESET must restore them, INIT keep them;
//! - INIT expectations start from the state the first run observed, changed as the probe
//!   documents before it reboots ([`super::dirty::before_probe_reboot`]).

use std::collections::BTreeMap;

use vcpu_reset_spec::{
    self as spec, CpuModel, Event, Field, Gpr, Msr, Transition, VcpuIdentity, VcpuState, Vendor,
};

use super::advertised::{self, Advertised};
use super::dirty::before_probe_reboot;
use super::report::{Report, ScenarioInfo, View};
use super::scenario::{Expectation, judge_all, observe_run};
use super::verdict::{Observed, Owner, Verdict};
use crate::probe::{self, LogFormat, ProbeRun, RebootVia, Value};

/// What the user says about the vCPU, overriding what the log says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The vendor whose documents apply; `None`: the vendor of the log's CPUID (Intel when the
    /// log has none, as format 1 logs).
    pub vendor: Option<Vendor>,
    /// CPUID.01H:EAX, to judge RDX by; `None`: the log's CPUID leaf 1 (RDX is a host limit when
    /// the log has none).
    pub signature: Option<u32>,
}

/// Judges every probe run in `log` into a new report; see [`judge`].
pub fn judge_log(log: &[u8], opts: &LogOptions) -> Report {
    let mut report = Report::default();
    judge(&mut report, log, opts);
    report
}

/// Judges every probe run in `log`, appending scenarios (`power-on`, `reboot-<mechanism>`),
/// verdicts and host facts to `report`.
///
/// Nothing judged ([`Report::exit_code`] 2): a damaged log, no run, a run without records, or
/// a reboot image whose second run is missing (then `report.incomplete` says so). A reboot run
/// is judged against what the first run observed, so when the first run cannot be judged (a
/// record that does not decode, no records) the reboot run is not judged either: its scenario
/// is listed as not run, saying why. Runs after
/// the second, or a second run whose mechanism the first run's tag does not name, are ignored
/// with a note in `report.host["ignored"]`; a format 1 log is judged with a warning in
/// `report.host["warning"]`.
pub fn judge(report: &mut Report, log: &[u8], opts: &LogOptions) {
    report.host.insert("backend".into(), "probe log".into());
    let Some(runs) = parse_runs(report, log) else {
        return;
    };
    let first = &runs[0];
    let adv = Advertised::from_run(first);
    let (model, signature_known) = cpu_model(report, &adv, first, opts);
    let via = RebootVia::ALL
        .into_iter()
        .find(|v| first.tag.ends_with(v.name()));
    let judged = if via.is_some() { 2 } else { 1 };
    note_ignored(report, &runs, judged);
    let context = LogContext {
        reset: spec::expected_state(&model, VcpuIdentity::new(0), Transition::Reset),
        mtrr_cap: first
            .number(&Field::Msr(Msr::MtrrCap).name())
            .and_then(|v| u64::try_from(v).ok()),
        model,
        adv,
        signature_known,
    };
    let mut first_seen: Option<BTreeMap<Field, Observed>> = None;
    for (index, run) in runs.iter().enumerate().take(judged) {
        if index > 0
            && first_seen.is_none()
            && let Some(via) = via
        {
            first_run_not_judged(report, via);
            break;
        }
        let Some(scenario) = context.scenario(index, via, first_seen.as_ref()) else {
            break;
        };
        let seen = judge_run(report, &context, index, run, scenario);
        if index == 0 {
            first_seen = seen;
        }
    }
    if let Some(via) = via
        && runs.len() < 2
    {
        no_second_run(report, via);
    }
}

/// Notes that the reboot run through `via` is not judged because the first run could not be:
/// there is nothing to judge it against.
fn first_run_not_judged(report: &mut Report, via: RebootVia) {
    not_run(
        report,
        &format!("reboot-{}", via.name()),
        "not judged: the first run could not be judged, and a reboot run is judged against what the first run observed".into(),
    );
}

/// Notes that the log of an image that reboots through `via` holds only the first run: the
/// reboot scenario is not run.
fn no_second_run(report: &mut Report, via: RebootVia) {
    let why = format!(
        "the probe image reboots through {} but the log holds no second run: the VMM did not reboot, or the log was cut",
        via.name()
    );
    report.incomplete.push(why.clone());
    not_run(report, &format!("reboot-{}", via.name()), why);
}

/// The log's probe runs, with a warning in `report.host` for format 1; `None` (the scenario
/// `log` not run, saying why) when the log is damaged or holds no run.
fn parse_runs(report: &mut Report, log: &[u8]) -> Option<Vec<ProbeRun>> {
    let runs = match probe::parse(log) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            not_run(report, "log", no_run_because(log));
            return None;
        }
        Err(e) => {
            not_run(
                report,
                "log",
                format!("the log's probe output is damaged: {e}"),
            );
            return None;
        }
    };
    if runs.iter().any(|r| r.format == LogFormat::V1) {
        report.host.insert(
            "warning".into(),
            "format 1 log: its checksum is a 16-bit byte sum, which misses swapped digits, reordered lines and cancelling changes; rebuild the probe image with this version (format 2, CRC-32)".into(),
        );
    }
    Some(runs)
}

/// Why a log in which the parser found no marker line holds no probe run: probe output with
/// every byte doubled (port 0xE9 and COM1 both written to one stream, as `vcpu-reset run
/// probe.bin > probe.log` does), other probe output without a run, or none at all.
fn no_run_because(log: &[u8]) -> String {
    let holds = |needle: &[u8]| log.windows(needle.len()).any(|w| w == needle);
    const FIX: &str = "write the log with `vcpu-reset run probe.bin --output probe.log` (port 0xE9 alone), or have the VMM log port 0xE9 or COM1, not both to one file";
    if holds(b"##VVRR") {
        format!(
            "the log holds no probe run: every byte of its probe output is doubled (\"##VVRR\"), as when port 0xE9 and COM1 both go to one stream (`vcpu-reset run probe.bin > probe.log`) — {FIX}"
        )
    } else if holds(b"#VR") {
        format!(
            "the log holds probe output (\"#VR\") but no probe run (no \"#VR2 begin\" or \"#VR1 begin\" line): it is mangled or mixed with other output — {FIX}"
        )
    } else {
        "the log holds no probe run (no \"#VR2 begin\" or \"#VR1 begin\" line)".into()
    }
}

/// Notes in `report.host["ignored"]` the runs after the first `judged`, with up to four of
/// their tags.
fn note_ignored(report: &mut Report, runs: &[ProbeRun], judged: usize) {
    if runs.len() <= judged {
        return;
    }
    let mut tags: Vec<String> = runs[judged..]
        .iter()
        .take(4)
        .map(|r| probe::record::quote(r.tag.as_bytes()))
        .collect();
    if runs.len() > judged + 4 {
        tags.push("...".into());
    }
    report.host.insert(
        "ignored".into(),
        format!(
            "{} run(s) after the {} ignored (tags: {}): {}",
            runs.len() - judged,
            if judged == 1 { "first" } else { "second" },
            tags.join(", "),
            if judged == 1 {
                "the first run's tag names no reboot mechanism"
            } else {
                "a probe image reboots once"
            }
        ),
    );
}

/// What every run of one log is judged with: the vCPU as the log presents it.
struct LogContext {
    model: CpuModel,
    adv: Advertised,
    /// IA32_MTRRCAP as the first run read it.
    mtrr_cap: Option<u64>,
    /// Whether the processor signature is known, so that RDX can be judged.
    signature_known: bool,
    /// The spec's RESET state of the model.
    reset: VcpuState,
}

/// The scenario one run is judged as.
struct RunScenario {
    name: String,
    event: Event,
    expected: VcpuState,
    /// For INIT: the state before it.
    prior: Option<VcpuState>,
}

impl LogContext {
    /// The scenario of run `index`: the first is the power-on (RESET); the second the reboot
    /// through `via`, RESET for a hard reset, INIT from the state the first run observed
    /// (`first_seen`) otherwise. `None` for a later run without a reboot mechanism.
    fn scenario(
        &self,
        index: usize,
        via: Option<RebootVia>,
        first_seen: Option<&BTreeMap<Field, Observed>>,
    ) -> Option<RunScenario> {
        let reset = |name| RunScenario {
            name,
            event: Event::Reset,
            expected: self.reset,
            prior: None,
        };
        if index == 0 {
            return Some(reset("power-on".to_string()));
        }
        let via = via?;
        let name = format!("reboot-{}", via.name());
        if via == RebootVia::Cf9Hard {
            return Some(reset(name));
        }
        let prior = before_probe_reboot(&observed_state(&self.reset, first_seen));
        let init =
            spec::expected_state(&self.model, VcpuIdentity::new(0), Transition::Init(&prior));
        Some(RunScenario {
            name,
            event: Event::Init,
            expected: init,
            prior: Some(prior),
        })
    }

    /// What `run` shows of each field, a field the VMM does not advertise not applicable;
    /// `Err` when its records do not decode.
    fn observe(
        &self,
        run: &ProbeRun,
        expected: &VcpuState,
    ) -> Result<BTreeMap<Field, Observed>, String> {
        let not_known = |f: Field| {
            (!self.signature_known && f == Field::Gpr(Gpr::Rdx)).then(|| {
                "the processor signature is not known: the log has no CPUID leaf 1; pass --signature"
                    .to_string()
            })
        };
        let mut obs = observe_run(run, expected, not_known)?;
        for (f, o) in obs.iter_mut() {
            if let Some(why) = advertised::not_applicable(&self.adv, self.mtrr_cap, *f) {
                *o = Observed::NotApplicable(why);
            }
        }
        Ok(obs)
    }

    /// Adds a verdict on every field to `report`, a field `obs` lacks unobservable.
    fn judge_observed(
        &self,
        report: &mut Report,
        scenario: &RunScenario,
        obs: &BTreeMap<Field, Observed>,
    ) {
        judge_all(
            report,
            &Expectation {
                scenario: &scenario.name,
                owner: Owner::Host,
                view: View::Guest,
                vcpu: "bsp".into(),
                model: &self.model,
                event: scenario.event,
                expected: &scenario.expected,
                prior: scenario.prior.as_ref(),
            },
            |f| {
                Some(
                    obs.get(&f)
                        .cloned()
                        .unwrap_or(Observed::Unobservable(String::new())),
                )
            },
        );
    }
}

/// Judges run `index` as `scenario`, adding the scenario, its verdicts and any gap to
/// `report`; what the run showed, when its records could be judged.
fn judge_run(
    report: &mut Report,
    context: &LogContext,
    index: usize,
    run: &ProbeRun,
    scenario: RunScenario,
) -> Option<BTreeMap<Field, Observed>> {
    let quoted_tag = || probe::record::quote(run.tag.as_bytes());
    if run.records.is_empty() {
        let why = format!("run {} ({:?}) has no records", index + 1, quoted_tag());
        report.incomplete.push(why.clone());
        not_run(report, &scenario.name, why);
        return None;
    }
    let judged_before = report.results.len();
    let result = context.observe(run, &scenario.expected);
    if let Ok(obs) = &result {
        context.judge_observed(report, &scenario, obs);
        if report.results[judged_before..]
            .iter()
            .all(|r| matches!(r.verdict, Verdict::HostLimit | Verdict::NotApplicable))
        {
            report.incomplete.push(format!(
                "run {} ({:?}) records no field of the spec that could be judged",
                index + 1,
                quoted_tag()
            ));
        }
    }
    let (seen, error) = match result {
        Ok(obs) => (Some(obs), None),
        Err(e) => (None, Some(e)),
    };
    report.scenarios.push(ScenarioInfo {
        name: scenario.name,
        owner: Owner::Host,
        error,
    });
    seen
}

fn not_run(report: &mut Report, name: &str, error: String) {
    report.scenarios.push(ScenarioInfo {
        name: name.into(),
        owner: Owner::Host,
        error: Some(error),
    });
}

/// A capability MSR as the first run read it: its value, 0 where RDMSR faulted (the vCPU has no
/// such MSR, so none of what it would announce), `None` where the log does not say (an older
/// probe): what it decides is then not judged.
fn capability_msr(first: &ProbeRun, index: u32) -> Option<u64> {
    match first.get(&probe::record::msr_key(index))? {
        Value::Fault(_) => Some(0),
        v => v.number().and_then(|n| u64::try_from(n).ok()),
    }
}

/// The CPU model the log describes, with the user's overrides; whether the signature is known.
/// Records the model's facts in `report.host`.
fn cpu_model(
    report: &mut Report,
    adv: &Advertised,
    first: &ProbeRun,
    opts: &LogOptions,
) -> (CpuModel, bool) {
    let vendor = opts.vendor.or(adv.vendor).unwrap_or(Vendor::Intel);
    let mut model = CpuModel::generic(vendor);
    let signature = opts.signature.or(adv.signature);
    if let Some(s) = signature {
        model.signature = s;
    }
    model.gp_counters = adv.gp_counters();
    model.sgx_launch_control = adv.sgx_launch_control();
    // Configured per model: what the first run read.
    if let Some(v) = adv.apic_version {
        model.apic_version = v;
    }
    if let Some(v) = first
        .number(&Field::Msr(Msr::MtrrCap).name())
        .and_then(|v| u64::try_from(v).ok())
    {
        model.mtrr_cap = v;
    }
    model.mcg_cap = capability_msr(first, probe::MSR_IA32_MCG_CAP);
    model.arch_capabilities = capability_msr(first, probe::MSR_IA32_ARCH_CAPABILITIES);
    for (i, cap) in model.vmx_capabilities.iter_mut().enumerate() {
        let Ok(i) = u8::try_from(i) else { break };
        *cap = first
            .number(&Field::VmxCap(i).name())
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
    }
    report.host.insert(
        "vendor".into(),
        match (opts.vendor, adv.vendor) {
            (Some(v), Some(a)) if v != a => {
                format!("{} (--vendor; the log's CPUID says {})", v.name(), a.name())
            }
            (Some(v), _) => format!("{} (--vendor)", v.name()),
            (None, Some(a)) => format!("{} (the log's CPUID)", a.name()),
            (None, None) => format!(
                "{} (the log's CPUID names no known vendor{}; pass --vendor)",
                vendor.name(),
                adv.vendor_id
                    .as_deref()
                    .map_or_else(String::new, |id| format!(": {id:?}"))
            ),
        },
    );
    report.host.insert(
        "signature".into(),
        match (opts.signature, adv.signature) {
            (Some(s), _) => format!("{s:#x} (--signature)"),
            (None, Some(s)) => format!("{s:#x} (the log's CPUID.01H:EAX)"),
            (None, None) => "unknown: RDX is not judged (pass --signature)".into(),
        },
    );
    report.host.insert("cpuid".into(), adv.describe());
    (model, signature.is_some())
}

/// `reset` with every value `seen` holds: the state the first run observed.
fn observed_state(reset: &VcpuState, seen: Option<&BTreeMap<Field, Observed>>) -> VcpuState {
    let mut s = *reset;
    for (f, o) in seen.into_iter().flatten() {
        if let Observed::Value(v) = o {
            f.set(&mut s, *v);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Value;
    use crate::probe::record::{format_run, format_run_v1};
    use vcpu_reset_spec::LapicReg;

    fn recs(list: &[(&str, &str)]) -> Vec<(String, Value)> {
        list.iter()
            .map(|(k, v)| {
                let value = match *v {
                    "!gp" => Value::Fault(probe::Fault::Gp),
                    "!na" => Value::NotAvailable,
                    hex => Value::Hex(hex.to_string()),
                };
                ((*k).to_string(), value)
            })
            .collect()
    }

    /// CPUID of an AMD vCPU without VMX, SVM or XSAVE; APIC version 0x50014 (6 LVT entries).
    fn amd_cpuid() -> Vec<(&'static str, &'static str)> {
        vec![
            ("cpuid.0.0.eax", "0000000d"),
            ("cpuid.0.0.ebx", "68747541"),
            ("cpuid.0.0.ecx", "444d4163"),
            ("cpuid.0.0.edx", "69746e65"),
            ("cpuid.1.0.eax", "00060fb1"),
            ("cpuid.1.0.ecx", "80002001"),
            ("cpuid.1.0.edx", "078bfbfd"),
            ("cpuid.80000000.0.eax", "80000008"),
            ("cpuid.80000001.0.ecx", "00000001"),
            ("lapic.version", "00050014"),
        ]
    }

    fn verdicts(report: &Report, scenario: &str) -> BTreeMap<String, (Verdict, Option<String>)> {
        report
            .results
            .iter()
            .filter(|r| r.scenario == scenario)
            .map(|r| (r.field.clone(), (r.verdict, r.actual.clone())))
            .collect()
    }

    #[test]
    fn cpuid_gives_vendor_and_signature_so_rdx_is_judged() {
        let mut list = amd_cpuid();
        list.push(("rdx", "00060fb1"));
        let log = format_run("probe", &recs(&list));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert!(r.host["vendor"].starts_with("amd"), "{:?}", r.host);
        let v = verdicts(&r, "power-on");
        assert_eq!(v["rdx"].0, Verdict::Pass);
        // Bochs' EDX = 0 is a finding.
        let mut list = amd_cpuid();
        list.push(("rdx", "00000000"));
        let log = format_run("probe", &recs(&list));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert_eq!(verdicts(&r, "power-on")["rdx"].0, Verdict::Finding);
        // --signature overrides the log.
        let r = judge_log(
            log.as_bytes(),
            &LogOptions {
                vendor: None,
                signature: Some(0),
            },
        );
        assert_eq!(verdicts(&r, "power-on")["rdx"].0, Verdict::Pass);
        assert_eq!(r.exit_code(true), 0);
    }

    /// The power-on verdict of `field` = `value` in a log whose CPUID is an AMD CPU's, judged
    /// with Intel's documents (which define more than AMD's).
    fn amd_log_judged_as_intel(field: &str, value: &str) -> Verdict {
        let mut list = amd_cpuid();
        list.push((field, value));
        let log = format_run("probe", &recs(&list));
        let r = judge_log(
            log.as_bytes(),
            &LogOptions {
                vendor: Some(Vendor::Intel),
                signature: None,
            },
        );
        verdicts(&r, "power-on")[field].0
    }

    /// The verdicts of the machine-check and TSX MSRs the probe read as `values` (IA32_MCG_CTL,
    /// IA32_MCG_EXT_CTL, IA32_MC0_CTL2, IA32_MC3_STATUS, IA32_TSX_CTRL), with the capability
    /// MSRs as `caps` (records of `msr.0x179` and `msr.0x10a`).
    fn capability_verdicts(caps: &[(&'static str, &'static str)]) -> Vec<Verdict> {
        let fields = [
            "msr.ia32_mcg_ctl",
            "msr.ia32_mcg_ext_ctl",
            "msr.ia32_mc0_ctl2",
            "msr.ia32_mc3_status",
            "msr.ia32_tsx_ctrl",
        ];
        // An Intel vCPU ("GenuineIntel"): IA32_TSX_CTRL is Intel's.
        let mut list: Vec<_> = amd_cpuid()
            .into_iter()
            .map(|(k, v)| match k {
                "cpuid.0.0.ebx" => (k, "756e6547"),
                "cpuid.0.0.ecx" => (k, "6c65746e"),
                "cpuid.0.0.edx" => (k, "49656e69"),
                _ => (k, v),
            })
            .collect();
        list.extend(fields.iter().map(|f| (*f, "0000000000000000")));
        list.extend_from_slice(caps);
        let log = format_run("probe", &recs(&list));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        let v = verdicts(&r, "power-on");
        fields.iter().map(|f| v[*f].0).collect()
    }

    #[test]
    fn the_capability_msrs_the_probe_read_decide_which_msrs_apply() {
        use Verdict::{HostLimit, NotApplicable, Pass};
        // 3 banks, MCG_CTL_P and MCG_CMCI_P; IA32_ARCH_CAPABILITIES with TSX_CTRL.
        assert_eq!(
            capability_verdicts(&[
                ("msr.0x179", "0000000000000503"),
                ("msr.0x10a", "0000000000000080")
            ]),
            [Pass, NotApplicable, Pass, NotApplicable, Pass]
        );
        // RDMSR of IA32_ARCH_CAPABILITIES faulted: no such MSR, so no IA32_TSX_CTRL.
        assert_eq!(
            capability_verdicts(&[("msr.0x179", "0000000008000004"), ("msr.0x10a", "!gp")])[1..],
            [Pass, NotApplicable, Pass, NotApplicable]
        );
        // An older probe recorded neither: what they decide is not judged.
        assert_eq!(
            capability_verdicts(&[]),
            [HostLimit, HostLimit, HostLimit, Pass, HostLimit]
        );
    }

    #[test]
    fn no_vmx_means_vmx_msrs_are_not_applicable() {
        assert_eq!(
            amd_log_judged_as_intel("msr.ia32_vmx_basic", "0000000000000000"),
            Verdict::NotApplicable
        );
    }

    #[test]
    fn six_lvt_entries_mean_cmci_is_not_applicable() {
        assert_eq!(
            amd_log_judged_as_intel("lapic.lvt_cmci", "000102f0"),
            Verdict::NotApplicable
        );
    }

    #[test]
    fn a_faulting_rdmsr_is_not_observable() {
        let mut list = amd_cpuid();
        list.push(("msr.ia32_pat", "!gp"));
        let log = format_run("probe", &recs(&list));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        let pat = r
            .results
            .iter()
            .find(|x| x.field == "msr.ia32_pat")
            .expect("judged");
        assert_eq!(pat.verdict, Verdict::HostLimit);
        assert!(
            pat.reason
                .as_deref()
                .is_some_and(|w| w.contains("faulted (gp)")),
            "{pat:?}"
        );
    }

    #[test]
    fn smbase_read_outside_smm_is_not_applicable() {
        let mut list = amd_cpuid();
        list.push(("msr.ia32_smbase", "0000000000000000"));
        let log = format_run("probe", &recs(&list));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert_eq!(
            verdicts(&r, "power-on")["msr.ia32_smbase"].0,
            Verdict::NotApplicable
        );
    }

    #[test]
    fn configured_values_are_judged_against_the_first_run() {
        // A VMX vCPU with its own configuration; a hard reset that restores it, MTRRCAP too.
        let mut list = amd_cpuid();
        list.retain(|(k, _)| !k.starts_with("cpuid.0.0") && *k != "cpuid.1.0.ecx");
        list.extend([
            ("cpuid.0.0.eax", "0000000d"),
            ("cpuid.0.0.ebx", "756e6547"),
            ("cpuid.0.0.edx", "49656e69"),
            ("cpuid.0.0.ecx", "6c65746e"),
            ("cpuid.1.0.ecx", "00000020"),
            ("msr.ia32_mtrrcap", "0000000000000508"),
        ]);
        let first = {
            let mut l = list.clone();
            l.push(("msr.ia32_vmx_basic", "00d810000000002b"));
            l
        };
        let mut second = list.clone();
        second.push(("msr.ia32_vmx_basic", "00d8100000000001"));
        let log = format!(
            "{}{}",
            format_run("probe-cf9-hard", &recs(&first)),
            format_run("probe-cf9-hard", &recs(&second))
        );
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert!(r.host["vendor"].starts_with("intel"), "{:?}", r.host);
        assert_eq!(
            verdicts(&r, "power-on")["msr.ia32_vmx_basic"].0,
            Verdict::Pass
        );
        assert_eq!(
            verdicts(&r, "power-on")["msr.ia32_mtrrcap"].0,
            Verdict::Pass
        );
        assert_eq!(
            verdicts(&r, "reboot-cf9-hard")["msr.ia32_vmx_basic"].0,
            Verdict::Finding
        );
        assert_eq!(
            verdicts(&r, "reboot-cf9-hard")["msr.ia32_mtrrcap"].0,
            Verdict::Pass
        );
    }

    #[test]
    fn init_keeps_what_the_first_run_observed() {
        // MCi_CTL 0 and FMASK 0x20200 at power-on (Bochs), kept by the INIT.
        let mut list = amd_cpuid();
        list.extend([
            ("msr.ia32_mc0_ctl", "0000000000000000"),
            ("msr.ia32_fmask", "0000000000020200"),
            ("msr.ia32_pat", "0006060600060606"),
            ("cr0", "00000010"),
        ]);
        let mut first = amd_cpuid();
        first.extend([
            ("msr.ia32_mc0_ctl", "0000000000000000"),
            ("msr.ia32_fmask", "0000000000020200"),
            ("msr.ia32_pat", "0007040600070406"),
            ("cr0", "60000010"),
        ]);
        let log = format!(
            "{}{}",
            format_run("probe-cf9-soft", &recs(&first)),
            format_run("probe-cf9-soft", &recs(&list))
        );
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        let v = verdicts(&r, "reboot-cf9-soft");
        for f in ["msr.ia32_mc0_ctl", "msr.ia32_fmask", "msr.ia32_pat", "cr0"] {
            assert_eq!(v[f].0, Verdict::Pass, "{f}: {:?}", v[f]);
        }
        // A full RESET instead (QEMU's soft reset): CR0.CD/NW set and PAT back are findings.
        let log = format!(
            "{}{}",
            format_run("probe-cf9-soft", &recs(&first)),
            format_run("probe-cf9-soft", &recs(&first))
        );
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        let v = verdicts(&r, "reboot-cf9-soft");
        assert_eq!(v["cr0"].0, Verdict::Finding);
        assert_eq!(v["msr.ia32_pat"].0, Verdict::Finding);
        assert_eq!(v["msr.ia32_mc0_ctl"].0, Verdict::Pass);
    }

    #[test]
    fn nothing_judged_exits_2() {
        // A reboot image without its second run.
        let log = format_run("probe-kbc", &recs(&amd_cpuid()));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert_eq!(r.exit_code(false), 2);
        assert!(
            r.incomplete[0].contains("no second run"),
            "{:?}",
            r.incomplete
        );
        // begin/end without records.
        let log = format_run("probe", &[]);
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert_eq!(r.exit_code(false), 2);
        // No run at all.
        let r = judge_log(b"SeaBIOS\n", &LogOptions::default());
        assert_eq!(r.exit_code(false), 2);
        // Records, but none of a spec field.
        let log = format_run("probe", &recs(&[("probe.x", "01")]));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert_eq!(r.exit_code(false), 2);
        assert!(r.incomplete[0].contains("no field"), "{:?}", r.incomplete);
    }

    #[test]
    fn a_reboot_is_not_judged_when_the_first_run_is_not() {
        let mut first = amd_cpuid();
        first.push(("fxsave", "00"));
        let log = format!(
            "{}{}",
            format_run("probe-cf9-soft", &recs(&first)),
            format_run("probe-cf9-soft", &recs(&amd_cpuid()))
        );
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert!(r.results.is_empty(), "{:?}", r.results);
        let errors: Vec<(&str, &str)> = r
            .scenarios
            .iter()
            .map(|s| (s.name.as_str(), s.error.as_deref().unwrap_or("")))
            .collect();
        assert!(errors[0].1.contains("fxsave"), "{errors:?}");
        assert_eq!(errors[1].0, "reboot-cf9-soft");
        assert!(
            errors[1].1.contains("the first run could not be judged"),
            "{errors:?}"
        );
        assert_eq!(r.exit_code(false), 2);
    }

    #[test]
    fn runs_after_the_second_are_noted() {
        let one = format_run("probe-cf9-hard", &recs(&amd_cpuid()));
        let log = format!("{one}{one}{one}");
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert!(
            r.host["ignored"].starts_with("1 run(s) after the second"),
            "{:?}",
            r.host
        );
        assert_eq!(r.exit_code(false), 0);
    }

    #[test]
    fn format_1_logs_are_judged_with_a_warning() {
        let mut list = vec![("rdx", "00000600")];
        list.push(("cr0", "60000010"));
        let log = format_run_v1("probe", &recs(&list));
        let r = judge_log(
            log.as_bytes(),
            &LogOptions {
                vendor: Some(Vendor::Intel),
                signature: None,
            },
        );
        assert!(
            r.host["warning"].contains("16-bit byte sum"),
            "{:?}",
            r.host
        );
        let v = verdicts(&r, "power-on");
        assert_eq!(v["cr0"].0, Verdict::Pass);
        // No CPUID in a format 1 log: RDX needs --signature.
        assert_eq!(v["rdx"].0, Verdict::HostLimit);
    }

    #[test]
    fn lapic_version_is_configured() {
        let log = format_run("probe", &recs(&amd_cpuid()));
        let r = judge_log(log.as_bytes(), &LogOptions::default());
        assert_eq!(
            verdicts(&r, "power-on")[&Field::Lapic(LapicReg::Version).name()].0,
            Verdict::Pass
        );
    }
}
