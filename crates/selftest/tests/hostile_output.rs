//! What vcpu-reset prints and writes when its input is hostile or careless (issue 20): control
//! bytes from a peer, a log or a file name; output files that are also inputs, or that are
//! named before the other arguments are checked; probe logs that cannot be judged; and
//! messages that must say what to do. Each test asserts the exit status, the message, and the
//! absence of what must not be left: a raw control byte, an overwritten input, a truncated
//! file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vcpu_reset_selftest::probe::record::format_run;
use vcpu_reset_selftest::probe::{self, Value};
use vcpu_reset_selftest::tempdir::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vcpu-reset");

/// `vcpu-reset ARGS`, stdin closed, its output collected.
fn vcpu_reset(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vcpu-reset")
}

/// Like [`vcpu_reset`], with `VCPU_RESET_KVM_DEVICE` set to `device`.
fn vcpu_reset_with_device(device: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("VCPU_RESET_KVM_DEVICE", device)
        .stdin(Stdio::null())
        .output()
        .expect("run vcpu-reset")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first control byte in `bytes` other than a newline (C0, DEL, or a C1 character in
/// UTF-8), with its offset.
fn raw_control(bytes: &[u8]) -> Option<(usize, u8)> {
    bytes.iter().enumerate().find_map(|(i, &b)| {
        let c1 = b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n));
        ((b < 0x20 && b != b'\n') || b == 0x7f || c1).then_some((i, b))
    })
}

/// Asserts that neither stdout nor stderr of `out` holds a raw control byte.
fn assert_no_raw_control(out: &Output) {
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        if let Some((at, b)) = raw_control(bytes) {
            let from = at.saturating_sub(60);
            panic!(
                "raw control byte {b:#04x} at {at} of {name}: {:?}",
                text(&bytes[from..(at + 20).min(bytes.len())])
            );
        }
    }
}

/// A `--vmm-cmd` peer that prints a terminal title sequence, a bell and a bare CR followed by
/// a fake TAP line, then fails; the template itself ends with a raw ESC sequence.
const HOSTILE_PEER: &str =
    "printf 'x\\033]0;PWNED\\007y\\rnot ok 999 fake\\n' >&2; exit 3; : {image} {log} #\x1b[31m";

#[test]
fn a_peers_control_bytes_are_escaped_in_the_table_and_on_stderr() {
    let out = vcpu_reset(&["check", "--backend", "model", "--vmm-cmd", HOSTILE_PEER]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stdout.contains("not run: vmm-cmd:reboot-cf9-hard: vmm-cmd: exited (exit status: 3)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("x\\u{1b}]0;PWNED\\u{7}y\\rnot ok 999 fake"),
        "{stdout}"
    );
    assert!(stdout.contains("#\\u{1b}[31m"), "the template: {stdout}");
    assert!(
        stderr.contains("not judged") && stderr.contains("y\\rnot ok 999"),
        "{stderr}"
    );
    assert_no_raw_control(&out);
}

#[test]
fn a_peers_control_bytes_cannot_forge_a_tap_line() {
    let out = vcpu_reset(&[
        "check",
        "--backend",
        "model",
        "--format",
        "tap",
        "--vmm-cmd",
        HOSTILE_PEER,
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        stdout.contains("# SKIP vmm-cmd: exited (exit status: 3)"),
        "{stdout}"
    );
    // A TAP reader that splits lines at CR as well as LF.
    let forged: Vec<&str> = stdout
        .split(['\r', '\n'])
        .filter(|l| l.starts_with("not ok 999"))
        .collect();
    assert!(forged.is_empty(), "forged TAP lines: {forged:?}");
    assert_no_raw_control(&out);
}

#[test]
fn short_file_names_are_escaped_in_every_message() {
    let dir = TempDir::new("escape-names").expect("temp dir");
    let base = dir.path();
    let named = |name: &str| base.join(name).to_str().expect("UTF-8").to_string();

    let out = vcpu_reset(&["check", "--from-log", &named("log\x1b[31mred\rx")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("log\\u{1b}[31mred\\rx: cannot read it: no such file"),
        "{}",
        text(&out.stderr)
    );
    assert_no_raw_control(&out);

    let out = vcpu_reset(&["run", &named("fw\x1b]0;t\x07.bin")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("fw\\u{1b}]0;t\\u{7}.bin"),
        "{}",
        text(&out.stderr)
    );
    assert_no_raw_control(&out);

    let image = named("probe\x1b[2J\r.bin");
    let out = vcpu_reset(&["probe-image", "-o", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wrote ")
            && text(&out.stderr).contains("probe\\u{1b}[2J\\r.bin"),
        "{}",
        text(&out.stderr)
    );
    assert_no_raw_control(&out);

    let device = base.join("kvm\x1b[5m\r");
    let out = vcpu_reset_with_device(&device, &["run", &image]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("kvm\\u{1b}[5m\\r"),
        "{}",
        text(&out.stderr)
    );
    assert_no_raw_control(&out);
}

/// A recorded QEMU log of the given name, from `tests/data/probe-logs/`.
fn recorded(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/probe-logs")
        .join(name)
}

#[test]
fn an_html_page_over_the_probe_log_is_refused() {
    let dir = TempDir::new("html-over-log").expect("temp dir");
    let log = dir.path().join("probe.log");
    let original = std::fs::read(recorded("qemu-kvm-cf9-soft.log")).expect("recorded log");
    std::fs::write(&log, &original).expect("write log");
    let link = dir.path().join("page.html");
    std::os::unix::fs::symlink(&log, &link).expect("symlink");
    let hard = dir.path().join("hard.html");
    std::fs::hard_link(&log, &hard).expect("hard link");
    for html in [&log, &link, &hard] {
        let out = vcpu_reset(&[
            "check",
            "--from-log",
            log.to_str().expect("UTF-8"),
            "--html",
            html.to_str().expect("UTF-8"),
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", html.display());
        assert!(
            stderr.contains("--html") && stderr.contains("is the probe log"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing judged before the refusal");
        assert_eq!(
            std::fs::read(&log).expect("the log"),
            original,
            "the probe log is unchanged"
        );
    }
}

#[test]
fn run_opens_its_output_files_only_after_every_argument_is_valid() {
    let dir = TempDir::new("run-outputs").expect("temp dir");
    let image = dir.path().join("probe.bin");
    let out = vcpu_reset(&["probe-image", "-o", image.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let precious = dir.path().join("precious.txt");
    for flag in ["--output", "--serial"] {
        std::fs::write(&precious, b"precious\n").expect("write");
        let out = vcpu_reset(&[
            "run",
            image.to_str().expect("UTF-8"),
            "--vcpus",
            "0",
            flag,
            precious.to_str().expect("UTF-8"),
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        if vcpu_reset_selftest::host::kvm_for_tests().is_some() {
            assert!(stderr.contains("0 vCPUs asked for"), "{stderr}");
        }
        assert_eq!(
            std::fs::read(&precious).expect("the file"),
            b"precious\n",
            "{flag}: the file is not truncated"
        );
    }
    // A file that does not exist is not created either.
    let fresh = dir.path().join("fresh.txt");
    let out = vcpu_reset(&[
        "run",
        image.to_str().expect("UTF-8"),
        "--vcpus",
        "0",
        "--output",
        fresh.to_str().expect("UTF-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        !fresh.exists(),
        "no output file made for a run that never starts"
    );
}

/// The runs of the recorded log `name`: tag and records.
fn recorded_runs(name: &str) -> Vec<(String, Vec<(String, Value)>)> {
    let bytes = std::fs::read(recorded(name)).expect("recorded log");
    probe::parse(&bytes)
        .expect("the recorded log parses")
        .into_iter()
        .map(|r| (r.tag, r.records))
        .collect()
}

/// A log of `runs`, each printed as the probe prints it.
fn log_of(runs: &[(String, Vec<(String, Value)>)]) -> String {
    runs.iter()
        .map(|(tag, recs)| format_run(tag, recs))
        .collect()
}

/// Sets the value of record `key` in `records` with `f`.
fn change(records: &mut [(String, Value)], key: &str, f: impl Fn(&str) -> String) {
    let (_, v) = records
        .iter_mut()
        .find(|(k, _)| k == key)
        .expect("the record is there");
    let Value::Hex(digits) = v else {
        panic!("{key} is not hex")
    };
    *v = Value::Hex(f(digits));
}

/// `check --from-log` of `log` as JSON: the exit status, the report, and stderr.
fn judge_json(dir: &TempDir, log: &str) -> (Option<i32>, serde_json::Value, String) {
    let path = dir.path().join("probe.log");
    std::fs::write(&path, log).expect("write log");
    let out = vcpu_reset(&[
        "check",
        "--from-log",
        path.to_str().expect("UTF-8 path"),
        "--format",
        "json",
    ]);
    let report = serde_json::from_slice(&out.stdout).expect("a JSON report");
    (out.status.code(), report, text(&out.stderr))
}

/// The error of scenario `name` in a JSON report (`None`: it ran), and whether it is there.
fn scenario_error(report: &serde_json::Value, name: &str) -> Option<Option<String>> {
    report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["error"].as_str().map(str::to_string))
}

/// The number of verdicts of scenario `name` in a JSON report.
fn verdicts_of(report: &serde_json::Value, name: &str) -> usize {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["scenario"] == name)
        .count()
}

#[test]
fn a_first_run_that_cannot_be_judged_leaves_the_reboot_unjudged() {
    let dir = TempDir::new("first-run").expect("temp dir");
    let mut runs = recorded_runs("qemu-kvm-cf9-soft.log");
    change(&mut runs[0].1, "fxsave", |d| d[..d.len() - 2].to_string());
    let (code, report, stderr) = judge_json(&dir, &log_of(&runs));
    assert_eq!(code, Some(2), "{stderr}");
    let power_on = scenario_error(&report, "power-on").expect("power-on listed");
    assert!(
        power_on.as_deref().is_some_and(|e| e.contains("fxsave")),
        "{power_on:?}"
    );
    let reboot = scenario_error(&report, "reboot-cf9-soft").expect("reboot listed");
    assert!(
        reboot
            .as_deref()
            .is_some_and(|e| e.contains("the first run could not be judged")),
        "{reboot:?}"
    );
    assert_eq!(verdicts_of(&report, "reboot-cf9-soft"), 0, "no verdict");
    assert!(
        stderr.contains("the first run could not be judged"),
        "{stderr}"
    );
}

#[test]
fn an_fxsave_image_of_odd_length_is_an_error() {
    let dir = TempDir::new("odd-fxsave").expect("temp dir");
    let mut runs = recorded_runs("qemu-kvm-power-on.log");
    change(&mut runs[0].1, "fxsave", |d| d[..d.len() - 1].to_string());
    let (code, report, stderr) = judge_json(&dir, &log_of(&runs));
    assert_eq!(code, Some(2), "{stderr}");
    let error = scenario_error(&report, "power-on").expect("power-on listed");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("fxsave blob has 1023 hex digits")),
        "{error:?}"
    );
    assert_eq!(verdicts_of(&report, "power-on"), 0, "no verdict");
}

#[test]
fn an_msr_recorded_under_its_name_and_its_index_is_refused() {
    let dir = TempDir::new("msr-twice").expect("temp dir");
    let mut runs = recorded_runs("qemu-kvm-power-on.log");
    runs[0]
        .1
        .push(("msr.0x277".into(), Value::Hex("0".repeat(16))));
    let (code, report, stderr) = judge_json(&dir, &log_of(&runs));
    assert_eq!(code, Some(2), "{stderr}");
    let error = scenario_error(&report, "log").expect("the log is refused");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("key \"msr.0x277\"")
                && e.contains("records the same MSR as \"msr.ia32_pat\"")),
        "{error:?}"
    );
    assert_eq!(report["results"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_signature_is_one_optional_0x_and_hex_digits() {
    let log = recorded("qemu-kvm-power-on.log");
    let log = log.to_str().expect("UTF-8");
    for bad in ["0x0x0x60fb1", "+60fb1", "0x", "", "60 fb1", "0x+1"] {
        let out = vcpu_reset(&["check", "--from-log", log, "--signature", bad]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("--signature"), "{bad:?}: {stderr}");
        assert!(stderr.contains("hex"), "{bad:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad:?}: nothing judged");
    }
    for good in ["0x60fb1", "0X60FB1", "60fb1", "000060fb1"] {
        let out = vcpu_reset(&["check", "--from-log", log, "--signature", good]);
        assert_eq!(out.status.code(), Some(0), "{good}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("signature: 0x60fb1 (--signature)"),
            "{good}"
        );
    }
}

#[test]
fn a_log_of_run_stdout_says_to_use_run_output() {
    let dir = TempDir::new("doubled").expect("temp dir");
    let recorded = std::fs::read(recorded("qemu-kvm-power-on.log")).expect("recorded log");
    // What `run probe.bin > probe.log` writes: each byte on port 0xE9, then on COM1.
    let doubled: Vec<u8> = recorded.iter().flat_map(|&b| [b, b]).collect();
    // Probe output without a complete run: its records, but no `begin` or `end` line.
    let headless: String = String::from_utf8_lossy(&recorded)
        .lines()
        .filter(|l| l.starts_with("#VR2 ") && !l.contains(" begin ") && !l.contains(" end "))
        .take(3)
        .map(|l| format!("{}\n", l.replace("#VR2 ", "#VR ")))
        .collect();
    for (name, log) in [("doubled", doubled), ("headless", headless.into_bytes())] {
        let path = dir.path().join(name);
        std::fs::write(&path, &log).expect("write");
        let out = vcpu_reset(&["check", "--from-log", path.to_str().expect("UTF-8")]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("vcpu-reset run probe.bin --output probe.log"),
            "{name}: {stderr}"
        );
        assert!(
            text(&out.stdout).contains("--output probe.log"),
            "{name}: the table says it too"
        );
    }
}

#[test]
fn an_unwritable_html_path_keeps_the_report() {
    let dir = TempDir::new("html-unwritable").expect("temp dir");
    let page = dir.path().join("no-such-dir").join("page.html");
    let log = recorded("qemu-kvm-cf9-soft.log");
    let out = vcpu_reset(&[
        "check",
        "--from-log",
        log.to_str().expect("UTF-8"),
        "--html",
        page.to_str().expect("UTF-8"),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot create the HTML report") && stderr.contains("page.html"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("summary: ") && stdout.contains("reboot-cf9-soft/guest/bsp"),
        "the table is printed: {stdout}"
    );
    assert!(!page.exists());
}
