//! `vcpu-reset check --backend model` in its three formats, run as a user would.

use std::process::Command;

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .arg("check")
        .args(["--backend", "model"])
        .args(args)
        .output()
        .expect("the vcpu-reset binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn table_ends_with_a_summary_and_exits_zero() {
    let (code, out) = check(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("backend: model"), "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("summary: "), "{last}");
    assert!(last.contains(" 0 fail;"), "{last}");
    assert!(out.contains("cr0 "), "{out}");
}

#[test]
fn tap_is_kselftest_shaped() {
    let (code, out) = check(&["--format", "tap"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "TAP version 13");
    let n: usize = lines[1].trim_start_matches("1..").parse().unwrap();
    let points = lines
        .iter()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .count();
    assert_eq!(n, points);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok ") && l.ends_with("reset/host/bsp: cr0"))
    );
    assert!(lines.last().unwrap().starts_with("# Totals: pass:"));
}

#[test]
fn json_lists_every_verdict_with_expected_actual_and_citation() {
    let (code, out) = check(&["--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert!(results.len() > 1000);
    let cr3 = results
        .iter()
        .find(|r| r["scenario"] == "init" && r["vcpu"] == "ap1" && r["field"] == "cr3")
        .unwrap();
    assert_eq!(cr3["verdict"], "pass");
    assert_eq!(cr3["expected"], "0x0000000000000000");
    assert!(cr3["citation"].as_str().unwrap().contains("Table 10-1"));
    assert_eq!(v["summary"]["fail"], 0);
}

fn check_log(log: &[u8]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!(
        "vcpu-reset-log-{}-{}",
        std::process::id(),
        log.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("probe.log");
    std::fs::write(&path, log).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["check", "--from-log"])
        .arg(&path)
        .output()
        .expect("the vcpu-reset binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn from_log_without_a_probe_run_exits_two_and_says_why() {
    let (code, out) = check_log(b"SeaBIOS (version 1.16)\nBooting from ROM...\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no probe run"), "{out}");
}

#[test]
fn from_log_with_a_damaged_run_exits_two_and_says_why() {
    let (code, out) = check_log(b"#VR1 begin probe\n#VR1 cr0 60000010\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("damaged"), "{out}");
}

#[test]
fn from_log_of_a_missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["check", "--from-log", "/nonexistent/probe.log"])
        .output()
        .expect("the vcpu-reset binary runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn a_kvm_device_the_user_named_that_fails_is_an_error_not_a_fallback_to_the_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .arg("check")
        .env("VCPU_RESET_KVM_DEVICE", "/dev/null")
        .output()
        .expect("the vcpu-reset binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("/dev/null is not a KVM device"), "{text}");
    assert!(!text.contains("software model instead"), "{text}");
}

#[test]
fn a_log_with_nothing_to_judge_bails_out_in_tap_and_says_so_on_stderr() {
    let dir = std::env::temp_dir().join(format!("vcpu-reset-bail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("garbage.log");
    std::fs::write(&log, "not a probe log\n").expect("write log");
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["check", "--format", "tap", "--from-log"])
        .arg(&log)
        .output()
        .expect("the vcpu-reset binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("Bail out! "),
        "{stdout}"
    );
    assert!(stderr.contains("not judged"), "{stderr}");
    assert!(stderr.contains("holds no probe run"), "{stderr}");
}
