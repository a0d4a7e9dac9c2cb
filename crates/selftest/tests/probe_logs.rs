//! Probe logs captured from QEMU (TCG and KVM) and Bochs (`tests/data/probe-logs/`), judged
//! by `check --from-log`: every true deviation of those VMMs is a finding, and nothing else
//! is. Format 1 logs (written before the CRC-32) still parse and are judged with a warning.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use vcpu_reset_selftest::check::Verdict;
use vcpu_reset_selftest::check::probe_log::{LogOptions, judge_log};
use vcpu_reset_selftest::probe::{self, LogFormat};

fn log(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/probe-logs")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `scenario field` of every finding in the judged log.
fn findings(name: &str) -> BTreeSet<String> {
    let report = judge_log(&log(name), &LogOptions::default());
    for s in &report.scenarios {
        assert!(
            s.error.is_none(),
            "{name}: {} not judged: {:?}",
            s.name,
            s.error
        );
    }
    assert!(
        report.incomplete.is_empty(),
        "{name}: {:?}",
        report.incomplete
    );
    assert_eq!(report.summary().fail, 0);
    report
        .results
        .iter()
        .filter(|r| r.verdict == Verdict::Finding)
        .map(|r| format!("{} {}", r.scenario, r.field))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

const QEMU_FINIT: [&str; 2] = ["power-on x87.fcw", "power-on x87.ftw"];

#[test]
fn qemu_tcg_findings_are_its_finit_state_and_its_soft_reset() {
    assert_eq!(findings("qemu-tcg-power-on.log"), set(&QEMU_FINIT));
    // 0xCF9 with 0x04 should raise INIT; QEMU does a full RESET.
    let mut soft = set(&QEMU_FINIT);
    soft.extend(set(&[
        "reboot-cf9-soft cr0",
        "reboot-cf9-soft msr.ia32_pat",
        "reboot-cf9-soft msr.ia32_sysenter_cs",
    ]));
    assert_eq!(findings("qemu-tcg-cf9-soft.log"), soft);
    let mut hard = set(&QEMU_FINIT);
    hard.extend(set(&["reboot-cf9-hard x87.fcw", "reboot-cf9-hard x87.ftw"]));
    assert_eq!(findings("qemu-tcg-cf9-hard.log"), hard);
}

#[test]
fn qemu_kvm_findings_add_its_running_tsc() {
    let mut power_on = set(&QEMU_FINIT);
    power_on.insert("power-on msr.ia32_tsc".into());
    assert_eq!(findings("qemu-kvm-power-on.log"), power_on);
    let mut soft = power_on.clone();
    soft.extend(set(&[
        "reboot-cf9-soft cr0",
        "reboot-cf9-soft msr.ia32_pat",
        "reboot-cf9-soft msr.ia32_sysenter_cs",
    ]));
    assert_eq!(findings("qemu-kvm-cf9-soft.log"), soft);
    let mut hard = power_on.clone();
    hard.extend(set(&[
        "reboot-cf9-hard x87.fcw",
        "reboot-cf9-hard x87.ftw",
        "reboot-cf9-hard msr.ia32_tsc",
    ]));
    assert_eq!(findings("qemu-kvm-cf9-hard.log"), hard);
}

#[test]
fn bochs_findings_are_its_edx_and_its_soft_reset_cr0() {
    assert_eq!(findings("bochs-power-on.log"), set(&["power-on rdx"]));
    assert_eq!(
        findings("bochs-cf9-soft.log"),
        set(&["power-on rdx", "reboot-cf9-soft rdx", "reboot-cf9-soft cr0"])
    );
    assert_eq!(
        findings("bochs-cf9-hard.log"),
        set(&["power-on rdx", "reboot-cf9-hard rdx"])
    );
    assert_eq!(
        findings("bochs-skylake-cf9-soft.log"),
        set(&["power-on rdx", "reboot-cf9-soft rdx", "reboot-cf9-soft cr0"])
    );
}

/// Values that once read as false findings (configured MSRs, SMBASE, CMCI), each judged as what it is.
#[test]
fn the_false_findings_are_gone() {
    let verdict = |name: &str, opts: &LogOptions, key: &str| {
        let report = judge_log(&log(name), opts);
        report
            .results
            .iter()
            .find(|r| format!("{} {}", r.scenario, r.field) == key)
            .map(|r| r.verdict)
            .unwrap_or_else(|| panic!("{name}: {key} not judged"))
    };
    let intel = LogOptions {
        vendor: Some(vcpu_reset::spec::Vendor::Intel),
        signature: None,
    };
    let auto = LogOptions::default();
    // No VMX advertised (qemu64): the VMX MSRs do not exist, even judged by Intel's documents.
    assert_eq!(
        verdict(
            "qemu-tcg-power-on.log",
            &intel,
            "power-on msr.ia32_vmx_basic"
        ),
        Verdict::NotApplicable
    );
    // Bochs' own VMX configuration: what the first run read, kept by INIT.
    for name in ["bochs-skylake-cf9-soft.log"] {
        for key in [
            "power-on msr.ia32_vmx_basic",
            "reboot-cf9-soft msr.ia32_vmx_basic",
            "reboot-cf9-soft msr.ia32_vmx_procbased_ctls2",
        ] {
            assert_eq!(verdict(name, &auto, key), Verdict::Pass, "{name} {key}");
        }
    }
    // SMBASE is readable only in SMM.
    assert_eq!(
        verdict("bochs-power-on.log", &auto, "power-on msr.ia32_smbase"),
        Verdict::NotApplicable
    );
    // Six LVT entries: no CMCI (QEMU-KVM reads garbage there).
    assert_eq!(
        verdict("qemu-kvm-power-on.log", &intel, "power-on lapic.lvt_cmci"),
        Verdict::NotApplicable
    );
    // After an INIT-type reboot, MSRs are kept from the first run (Bochs: MCi_CTL 0).
    for key in [
        "reboot-cf9-soft msr.ia32_mc0_ctl",
        "reboot-cf9-soft msr.ia32_fmask",
        "reboot-cf9-soft msr.ia32_misc_enable",
    ] {
        assert_eq!(
            verdict("bochs-cf9-soft.log", &intel, key),
            Verdict::Pass,
            "{key}"
        );
    }
    // RDX is judged from the log's CPUID leaf 1; --signature overrides it.
    assert_eq!(
        verdict("qemu-tcg-power-on.log", &auto, "power-on rdx"),
        Verdict::Pass
    );
    let sig0 = LogOptions {
        vendor: None,
        signature: Some(0),
    };
    assert_eq!(
        verdict("bochs-power-on.log", &sig0, "power-on rdx"),
        Verdict::Pass
    );
}

#[test]
fn format_1_logs_still_parse_and_are_judged_with_a_warning() {
    for name in [
        "qemu-tcg-cf9-soft.v1.log",
        "qemu-kvm-cf9-soft.v1.log",
        "bochs-cf9-soft.v1.log",
    ] {
        let runs = probe::parse(&log(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(runs.len(), 2, "{name}");
        assert!(runs.iter().all(|r| r.format == LogFormat::V1));
        let report = judge_log(&log(name), &LogOptions::default());
        assert!(
            report.host["warning"].contains("16-bit byte sum"),
            "{name}: {:?}",
            report.host
        );
        assert_eq!(report.exit_code(false), 0, "{name}");
        // The LVT count is in format 1 logs too; CPUID is not.
        let cmci = report
            .results
            .iter()
            .find(|r| r.field == "lapic.lvt_cmci")
            .expect("judged");
        assert_eq!(cmci.verdict, Verdict::NotApplicable, "{name}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["check", "--from-log"])
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/probe-logs/bochs-cf9-soft.v1.log"),
        )
        .output()
        .expect("run vcpu-reset");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("warning: format 1 log"), "{stdout}");
}

/// What the probe's CRC-32 guards: one record's value changed in a real log is refused.
#[test]
fn a_changed_value_in_a_real_log_is_refused() {
    let text = String::from_utf8(log("qemu-tcg-power-on.log")).expect("ASCII");
    let changed = text.replacen("#VR2 cr0 60000010", "#VR2 cr0 60000011", 1);
    assert_ne!(changed, text);
    let report = judge_log(changed.as_bytes(), &LogOptions::default());
    assert_eq!(report.exit_code(false), 2);
    let e = report.scenarios[0].error.as_deref().unwrap_or_default();
    assert!(e.contains("CRC-32"), "{e}");
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("vcpu-reset-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).expect("write temp file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `vcpu-reset check --from-log` on `bytes`: exit status, stdout, stderr.
fn check_cli(name: &str, bytes: &[u8]) -> (Option<i32>, String, String) {
    let f = TempFile::new(name, bytes);
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["check", "--from-log"])
        .arg(&f.0)
        .output()
        .expect("run vcpu-reset");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first run of a real reboot log, alone: the reboot run is missing.
#[test]
fn a_missing_reboot_run_exits_2() {
    let full = log("qemu-tcg-cf9-soft.log");
    let runs = String::from_utf8(full).expect("ASCII");
    let second = runs.rfind("\n#VR2 begin").expect("two runs");
    let (code, out, _) = check_cli("missing-reboot", &runs.as_bytes()[..=second]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(
            "incomplete: the probe image reboots through cf9-soft but the log holds no second run"
        ),
        "{out}"
    );
}

#[test]
fn a_run_without_records_exits_2() {
    let log = probe::record::format_run("probe", &[]);
    let (code, out, _) = check_cli("no-records", log.as_bytes());
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("has no records"), "{out}");
}

#[test]
fn runs_after_the_second_are_ignored_with_a_note() {
    let mut three = log("qemu-tcg-cf9-hard.log");
    three.extend_from_slice(&log("qemu-tcg-power-on.log"));
    let (code, out, _) = check_cli("three-runs", &three);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ignored: 1 run(s) after the second ignored (tags: probe)"),
        "{out}"
    );
}

/// A malformed 20 MB line is quoted, not echoed.
#[test]
fn a_huge_malformed_line_is_quoted_in_80_bytes() {
    let mut bad = b"#VR2 begin probe\n#VR2 ".to_vec();
    bad.extend(std::iter::repeat_n(b'x', 20 << 20));
    bad.extend_from_slice(b" 1 2\n#VR2 end 0001 00000000\n");
    let (code, out, err) = check_cli("huge-line", &bad);
    assert_eq!(code, Some(2));
    assert!(
        out.len() + err.len() < 2000,
        "{} bytes of output",
        out.len() + err.len()
    );
    assert!(out.contains("... (20971529 bytes)"), "{out}");
}

mod mutations {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any real log with bytes changed, cut or repeated is judged or refused, never a
        /// panic, and a verdict never comes from a run whose CRC does not match.
        #[test]
        fn mutated_real_logs_are_judged_or_refused(
            which in 0usize..4,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let name = ["qemu-tcg-cf9-soft.log", "qemu-kvm-power-on.log", "bochs-cf9-soft.log", "bochs-cf9-soft.v1.log"][which];
            let mut bytes = log(name);
            for (at, b) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *b;
            }
            if edits.len() == 3 {
                bytes.truncate(cut.index(bytes.len()));
            }
            let report = judge_log(&bytes, &LogOptions::default());
            let code = report.exit_code(false);
            prop_assert!(code <= 2);
            if name.ends_with(".v1.log") || edits.is_empty() {
                return Ok(());
            }
            // A format 2 log with a changed byte inside a run is refused, unless the byte was
            // noise outside every run.
            if !report.results.is_empty() {
                let original = judge_log(&log(name), &LogOptions::default());
                let verdicts = |r: &vcpu_reset_selftest::check::Report| -> Vec<(String, String, Verdict)> {
                    r.results.iter().map(|x| (x.scenario.clone(), x.field.clone(), x.verdict)).collect()
                };
                if edits.len() < 3 {
                    prop_assert_eq!(verdicts(&report), verdicts(&original));
                }
            }
        }
    }
}
