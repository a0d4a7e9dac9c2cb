//! Runs the probe as QEMU firmware (`-bios`, TCG) and parses what it printed to the
//! `-debugcon` log (port 0xE9) and to the serial console (port 0x3F8).
//!
//! Skips (with `skipped: no qemu-system-x86_64 (<reason>)` on stderr) when QEMU is not
//! installed, unless `VCPU_RESET_REQUIRE_QEMU=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vcpu_reset_selftest::probe::{self, ProbeEnd, ProbeOptions, ProbeRun};

const QEMU: &str = "qemu-system-x86_64";
const EXIT_VALUE: u8 = 0x10;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vcpu-reset-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs QEMU on `rom`; `None` if QEMU is not there (and not required).
fn run_qemu(dir: &Path, accel: &str, rom: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Option<i32>)> {
    let bios = dir.join("probe.rom");
    let debugcon = dir.join("debugcon.log");
    let serial = dir.join("serial.log");
    std::fs::write(&bios, rom).expect("write ROM");
    let spawned = Command::new(QEMU)
        .args([
            "-accel", accel, "-display", "none", "-monitor", "none", "-bios",
        ])
        .arg(&bios)
        .arg("-debugcon")
        .arg(format!("file:{}", debugcon.display()))
        .args(["-global", "isa-debugcon.iobase=0xe9"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("VCPU_RESET_REQUIRE_QEMU").as_deref() == Ok("1") {
                panic!("VCPU_RESET_REQUIRE_QEMU=1 but {QEMU} cannot be run: {e}");
            }
            eprintln!("skipped: no {QEMU} ({e})");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait().expect("wait for QEMU") {
            Some(s) => break s,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{QEMU} did not exit within 60 s");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    Some((read(&debugcon), read(&serial), status.code()))
}

fn parse_one(log: &[u8]) -> ProbeRun {
    let text = String::from_utf8_lossy(log);
    let mut runs = probe::parse(log).unwrap_or_else(|e| panic!("{e}; log:\n{text}"));
    assert_eq!(runs.len(), 1, "log:\n{text}");
    runs.remove(0)
}

fn options(tag: &str) -> ProbeOptions {
    let mut o = ProbeOptions::reset_vector(tag);
    o.out_ports = vec![0xe9, 0x3f8];
    o.exit = ProbeEnd::Out {
        port: 0xf4,
        value: EXIT_VALUE,
    };
    o.msrs.push(0xdead);
    o
}

/// Runs the probe under `accel` and checks what every QEMU reset gives; returns the run.
fn run_and_check_common(accel: &str, tag: &str) -> Option<ProbeRun> {
    let rom = probe::firmware_image(&options(tag)).expect("probe assembles");
    let dir = TempDir::new(tag);
    let (debugcon, serial, code) = run_qemu(&dir.0, accel, &rom)?;
    // isa-debug-exit makes QEMU exit with (value << 1) | 1.
    assert_eq!(
        code,
        Some(i32::from(EXIT_VALUE) * 2 + 1),
        "debugcon:\n{}",
        String::from_utf8_lossy(&debugcon)
    );
    let r = parse_one(&debugcon);
    assert_eq!(
        parse_one(&serial),
        r,
        "the serial console carries the same run"
    );
    let n = |k: &str| r.number(k).unwrap_or_else(|| panic!("{k}: {:?}", r.get(k)));
    assert_eq!(r.tag, tag);
    assert_eq!(n("rax"), 0);
    assert_ne!(n("rdx"), 0, "QEMU puts CPUID.1.EAX in EDX");
    assert_eq!(n("rflags"), 2);
    assert_eq!(n("cs.selector"), 0xf000);
    assert_eq!(n("cr0"), 0x6000_0010);
    assert_eq!(n("cr4"), 0);
    assert_eq!(n("efer"), 0);
    assert_eq!(n("dr6"), 0xffff_0ff0);
    assert_eq!(n("dr7"), 0x400);
    assert_eq!(n("gdtr.limit"), 0xffff);
    assert_eq!(n("idtr.limit"), 0xffff);
    assert_eq!(n("msr.ia32_pat"), 0x0007_0406_0007_0406);
    assert_eq!(n("msr.ia32_apic_base"), 0xfee0_0900);
    assert_eq!(n("lapic.svr"), 0xff);
    // QEMU loads its own APIC reset state: BSP LINT0 masked, unlike bare KVM's 0x700.
    assert_eq!(n("lapic.lvt_lint0"), 0x1_0000);
    // QEMU's x87 deviation, as KVM's: the FINIT state.
    assert_eq!(n("x87.fcw"), 0x037f);
    let fx = r.fxsave().expect("fxsave").expect("decodes");
    assert_eq!(fx.ftw(), 0xffff);
    assert_eq!(fx.mxcsr, 0x1f80);
    Some(r)
}

#[test]
fn probe_runs_as_qemu_firmware_under_tcg() {
    let Some(r) = run_and_check_common("tcg", "qemu-tcg") else {
        return;
    };
    // TCG ignores RDMSR of an MSR it does not know (reads 0) instead of raising #GP.
    assert_eq!(r.number("msr.0xdead"), Some(0));
    assert_eq!(r.number("msr.ia32_tsc"), Some(0), "TCG starts the TSC at 0");
}

#[test]
fn probe_runs_as_qemu_firmware_under_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        if std::env::var("VCPU_RESET_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("VCPU_RESET_REQUIRE_KVM=1 but /dev/kvm cannot be opened: {e}");
        }
        eprintln!("skipped: no /dev/kvm ({e})");
        return;
    }
    let Some(r) = run_and_check_common("kvm", "qemu-kvm") else {
        return;
    };
    assert_eq!(
        r.get("msr.0xdead"),
        Some(&probe::Value::Fault(probe::Fault::Gp))
    );
}

/// Verdicts (`scenario field` → verdict) from `vcpu-reset check --from-log` on `log`.
fn verdicts_from_log(dir: &Path, log: &[u8]) -> std::collections::BTreeMap<String, String> {
    let path = dir.join("judge.log");
    std::fs::write(&path, log).expect("write log");
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["check", "--format", "json", "--from-log"])
        .arg(&path)
        .output()
        .expect("run vcpu-reset check --from-log");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    for s in v["scenarios"].as_array().expect("scenarios") {
        assert!(
            s["error"].is_null(),
            "scenario {} could not be judged: {}",
            s["name"],
            s["error"]
        );
    }
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {}",
                    r["scenario"].as_str().unwrap_or(""),
                    r["field"].as_str().unwrap_or("")
                ),
                r["verdict"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The image `vcpu-reset probe-image --reboot cf9-hard` writes, booted in QEMU under TCG and
/// under KVM; `check --from-log` judges both logs, and the verdicts agree on the architectural
/// core of the RESET state (QEMU gives the same reset state whichever accelerator runs it).
#[test]
fn probe_image_in_qemu_tcg_and_kvm_gives_the_same_core_verdicts() {
    let dir = TempDir::new("qemu-verdicts");
    let rom_path = dir.0.join("image.rom");
    let status = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["probe-image", "--reboot", "cf9-hard", "-o"])
        .arg(&rom_path)
        .status()
        .expect("run vcpu-reset probe-image");
    assert!(status.success());
    let rom = std::fs::read(&rom_path).expect("read image");
    assert_eq!(rom.len(), 64 << 10);
    let mut per_accel = Vec::new();
    for accel in ["tcg", "kvm"] {
        if accel == "kvm" && std::fs::File::open("/dev/kvm").is_err() {
            eprintln!("skipped: no /dev/kvm (QEMU -accel kvm part)");
            continue;
        }
        let Some((debugcon, serial, code)) = run_qemu(&dir.0, accel, &rom) else {
            return;
        };
        assert_eq!(
            code,
            Some(1),
            "isa-debug-exit with 0 exits QEMU with 1 ({accel})"
        );
        assert_eq!(
            debugcon, serial,
            "port 0xE9 and COM1 carry the same records ({accel})"
        );
        let v = verdicts_from_log(&dir.0, &debugcon);
        for scenario in ["power-on", "reboot-cf9-hard"] {
            for field in [
                "cr0",
                "cr2",
                "cr3",
                "cr4",
                "efer",
                "dr6",
                "dr7",
                "gdtr.limit",
                "idtr.limit",
                "cs.selector",
                "msr.ia32_pat",
                "msr.ia32_mtrr_def_type",
                "msr.ia32_apic_base",
                "mxcsr",
                "lapic.svr",
            ] {
                let key = format!("{scenario} {field}");
                assert_eq!(
                    v.get(&key).map(String::as_str),
                    Some("pass"),
                    "{key} under {accel}"
                );
            }
            // QEMU resets the x87 unit to the FINIT state, not the power-up state.
            assert_eq!(
                v.get(&format!("{scenario} x87.fcw")).map(String::as_str),
                Some("finding")
            );
        }
        // Every finding is a real deviation of QEMU: the FINIT x87 state, and under KVM the
        // TSC, which QEMU does not reset. No false ones (VMX MSRs, SMBASE, LVT CMCI, RDX).
        let findings: Vec<&String> = v
            .iter()
            .filter(|(_, verdict)| verdict.as_str() == "finding")
            .map(|(k, _)| k)
            .collect();
        for k in &findings {
            let field = k.split(' ').nth(1).unwrap_or_default();
            let allowed = matches!(field, "x87.fcw" | "x87.ftw")
                || (accel == "kvm" && field == "msr.ia32_tsc");
            assert!(allowed, "{k} is a finding under {accel}: {findings:?}");
        }
        per_accel.push((accel, v));
    }
    if let [(_, tcg), (_, kvm)] = per_accel.as_slice() {
        let core: Vec<&String> = tcg
            .keys()
            .filter(|k| !k.contains("msr.") && !k.contains(" rdx") && !k.contains("lapic."))
            .collect();
        let differ: Vec<String> = core
            .iter()
            // The CPU models differ (qemu64 under TCG has no XSAVE): what does not apply to
            // one of them is not compared.
            .filter(|k| {
                let na = |v: Option<&String>| v.is_some_and(|v| v == "not-applicable");
                !na(tcg.get(**k)) && !na(kvm.get(**k))
            })
            .filter(|k| tcg.get(**k) != kvm.get(**k))
            .map(|k| format!("{k}: tcg {:?} kvm {:?}", tcg.get(*k), kvm.get(*k)))
            .collect();
        assert!(
            differ.is_empty(),
            "TCG and KVM verdicts differ: {differ:#?}"
        );
    }
}
