//! Hostile input to the CLI (issue "Hostile input"): one test per point, each asserting the exit
//! status and the message, and that nothing panics.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vcpu_reset_selftest::host::kvm_for_tests;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `cmd`, killing it after `limit` (a hang or an endless read fails the test instead of
/// hanging it). Its output is drained while it runs, so a report larger than a pipe's buffer
/// cannot stall it.
fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let e = err.join().unwrap_or_default();
            panic!(
                "still running after {limit:?} (killed); stderr: {}",
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p =
            std::env::temp_dir().join(format!("vcpu-reset-hostile-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// A 4 KiB image with `code` at the reset vector (offset 0xFF0).
    fn image(&self, name: &str, code: &[u8]) -> PathBuf {
        let mut bytes = vec![0u8; 4096];
        bytes[0xff0..0xff0 + code.len()].copy_from_slice(code);
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// mov al, 0x2a; out 0xf4, al: exits with 42.
const EXIT_42: [u8; 4] = [0xb0, 0x2a, 0xe6, 0xf4];

fn assert_clean(o: &Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{e}");
    assert_ne!(o.status.code(), Some(101), "{e}");
}

// 1. Bounded reads.
#[test]
fn endless_and_giant_inputs_are_refused_at_once() {
    let d = Dir::new("bounded");
    let fifo = d.path("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let sparse = d.path("sparse");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let cases: [(&Path, &str); 4] = [
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (&fifo, "is a FIFO, not a regular file"),
        (&sparse, " than the "), // "more than the 16 MiB" firmware, "larger than the" log
        (&d.0, "is a directory"),
    ];
    for (path, says) in cases {
        for sub in [["run"].as_slice(), ["check", "--from-log"].as_slice()] {
            let mut cmd = bin();
            cmd.args(sub).arg(path);
            // 30 s is a hang guard, not a speed target: refusing takes milliseconds.
            let o = run_limited(cmd, Duration::from_secs(30));
            assert_eq!(o.status.code(), Some(2), "{sub:?} {path:?}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(says),
                "{sub:?} {path:?}: {}",
                stderr(&o)
            );
            assert_clean(&o);
        }
    }
    // A sparse firmware is refused by size too, and a 64 MiB + 1 log is over the log limit.
    let o = bin().arg("run").arg(&sparse).output().unwrap();
    assert!(
        stderr(&o).contains("more than the 16 MiB"),
        "{}",
        stderr(&o)
    );
    let big = d.path("big.log");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(vcpu_reset_selftest::files::MAX_LOG + 1)
        .unwrap();
    let o = bin()
        .args(["check", "--from-log"])
        .arg(&big)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("larger than the 67108864 bytes accepted"),
        "{}",
        stderr(&o)
    );
}

// 2. No panics from CLI values.
#[test]
fn absurd_timeouts_are_refused_not_panics() {
    let d = Dir::new("timeout");
    let fw = d.image("fw.bin", &EXIT_42);
    for t in ["1e300", "1.8e19", "NaN", "inf", "-1", "0", "31536001"] {
        let o = bin()
            .arg("run")
            .arg(&fw)
            .arg(format!("--timeout={t}"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{t}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("seconds is out of range — give more than 0 and at most"),
            "{t}: {}",
            stderr(&o)
        );
        assert_clean(&o);
    }
    let o = bin()
        .arg("run")
        .arg(&fw)
        .args(["--timeout", "ten"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("\"ten\" is not a number of seconds"));
}

// 2. No panics from library arguments: Duration::MAX is "no limit".
#[test]
fn a_library_timeout_of_duration_max_is_no_limit() {
    use vcpu_reset_selftest::runner::{Firmware, Sink, Vm, VmConfig};
    let Some(host) = kvm_for_tests() else { return };
    let mut image = vec![0u8; 4096];
    image[0xff0..0xff4].copy_from_slice(&EXIT_42);
    let fw = Firmware::from_bytes(image, "exit").unwrap();
    let config = VmConfig {
        timeout: Duration::MAX,
        sink: Sink::Discard,
        ..VmConfig::default()
    };
    let mut vm = Vm::with_host(host, &fw, config).unwrap();
    let out = vm.run().unwrap();
    assert_eq!(out.exit_value, 0x2a);
    assert!(vm.inject_triple_fault(usize::MAX).is_err());
}

// 4. Messages quote at most ~80 bytes of bad input.
#[test]
fn bad_values_are_quoted_short() {
    let d = Dir::new("quote");
    let fw = d.image("fw.bin", &EXIT_42);
    let junk = "z".repeat(100_000);
    for flag in ["--timeout", "--exit-port"] {
        let o = bin()
            .arg("run")
            .arg(&fw)
            .arg(format!("{flag}={junk}"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let e = stderr(&o);
        assert!(e.len() < 600, "{flag}: {} bytes", e.len());
        assert!(e.contains("zzzz… (100000 bytes)"), "{flag}: {e}");
        assert!(
            e.contains(&format!("invalid value '{}", "z".repeat(80))),
            "{e}"
        );
    }
    let o = bin()
        .args(["check", "--from-log", "/dev/null", "--signature"])
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).len() < 600, "{}", stderr(&o));
    // A state JSON with a huge bad string is quoted short too.
    let d = Dir::new("quote-json");
    let p = d.path("state.json");
    std::fs::write(&p, format!("{{\"gprs\": \"{}\"}}", "q".repeat(10 << 20))).unwrap();
    let e = vcpu_reset_selftest::files::load_state_json(&p)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{} bytes", e.len());
}

// 5. `run` keeps port 0xE9 (--output) and COM1 (--serial) apart: the probe's log judges.
#[test]
fn probe_output_through_run_is_a_log_check_accepts() {
    let Some(_host) = kvm_for_tests() else { return };
    let d = Dir::new("channels");
    let probe = d.path("probe.bin");
    let o = bin()
        .args(["probe-image", "-o"])
        .arg(&probe)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (log, serial) = (d.path("probe.log"), d.path("serial.log"));
    let o = bin()
        .arg("run")
        .arg(&probe)
        .arg("--output")
        .arg(&log)
        .arg("--serial")
        .arg(&serial)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "both channels went to files");
    let (a, b) = (
        std::fs::read(&log).unwrap(),
        std::fs::read(&serial).unwrap(),
    );
    assert_eq!(a, b, "the probe prints the same run on both ports");
    assert!(
        a.starts_with(b"\n#VR2 begin probe\n"),
        "{:?}",
        String::from_utf8_lossy(&a[..40])
    );
    let o = bin()
        // The log names the vendor and signature itself (its CPUID records).
        .args(["check", "--from-log"])
        .arg(&log)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}{}", stderr(&o));
    assert!(text.contains(" 0 fail;"), "{text}");
}

// 5. String I/O is refused with a clear message, not "unexpected KVM exit reason 2".
#[test]
fn rep_insb_is_refused_clearly() {
    let Some(_host) = kvm_for_tests() else { return };
    let d = Dir::new("insb");
    // mov cx, 4; mov dx, 0x3f8; rep insb; jmp $
    let fw = d.image(
        "fw.bin",
        &[0xb9, 0x04, 0x00, 0xba, 0xf8, 0x03, 0xf3, 0x6c, 0xeb, 0xfe],
    );
    let o = run_limited(
        {
            let mut c = bin();
            c.arg("run").arg(&fw).args(["--timeout", "20"]);
            c
        },
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("string port I/O (INS/OUTS with a repeat count, e.g. `rep insb`)"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("unexpected KVM exit reason"));
    // A single OUTSB (string flag, count 1) is an ordinary port write.
    // mov byte [0], 'A'; mov dx, 0xe9; xor si, si; outsb; mov al, 0x2a; out 0xf4, al
    let fw = d.image(
        "outsb.bin",
        &[
            0xc6, 0x06, 0x00, 0x00, 0x41, 0xba, 0xe9, 0x00, 0x31, 0xf6, 0x6e, 0xb0, 0x2a, 0xe6,
            0xf4,
        ],
    );
    let o = bin().arg("run").arg(&fw).output().unwrap();
    assert_eq!(o.status.code(), Some(42), "{}", stderr(&o));
    assert_eq!(o.stdout, b"A");
}

// 5. --output is never the firmware; a full disk is an error, not lost output.
#[test]
fn output_refuses_the_firmware_and_reports_a_full_disk() {
    let d = Dir::new("output");
    let fw = d.image("fw.bin", &[0xb0, 0x41, 0xe6, 0xe9, 0xb0, 0x2a, 0xe6, 0xf4]);
    let before = std::fs::read(&fw).unwrap();
    for flag in ["--output", "--serial"] {
        let o = bin()
            .arg("run")
            .arg(&fw)
            .arg(flag)
            .arg(&fw)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("is the firmware file — writing there would destroy it"),
            "{}",
            stderr(&o)
        );
        // Through another name for the same file, too.
        let link = d.path("link.bin");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&fw, &link).unwrap();
        let o = bin()
            .arg("run")
            .arg(&fw)
            .arg(flag)
            .arg(&link)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(&fw).unwrap(),
        before,
        "the firmware is intact"
    );
    let Some(_host) = kvm_for_tests() else { return };
    if !Path::new("/dev/full").exists() {
        return;
    }
    let o = bin()
        .arg("run")
        .arg(&fw)
        .args(["--output", "/dev/full"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "writing the guest's debug console (port 0xE9) output failed: No space left on device"
        ),
        "{}",
        stderr(&o)
    );
}

// 5. A device that is not KVM names its path and the real error; --exit-port takes hex.
#[test]
fn a_non_kvm_device_and_hex_exit_ports_are_clear() {
    let d = Dir::new("device");
    let fw = d.image("fw.bin", &EXIT_42);
    let o = bin()
        .arg("run")
        .arg(&fw)
        .env("VCPU_RESET_KVM_DEVICE", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "/dev/null is not a KVM device: KVM_GET_API_VERSION on it failed with Inappropriate ioctl"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("API version -1"));
    // A directory, and a character device with no driver (or not KVM's), say what they are
    // rather than "load the kvm module".
    for (device, what) in [
        ("/tmp", "/tmp is a directory, not the KVM device"),
        ("/dev/tty", "/dev/tty is"),
    ] {
        let o = bin()
            .arg("run")
            .arg(&fw)
            .env("VCPU_RESET_KVM_DEVICE", device)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{device}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{device}: {}", stderr(&o));
        assert!(
            !stderr(&o).contains("load the kvm module"),
            "{}",
            stderr(&o)
        );
    }
    let Some(_host) = kvm_for_tests() else { return };
    for port in ["0xf4", "0XF4", "244"] {
        let o = bin()
            .arg("run")
            .arg(&fw)
            .args(["--exit-port", port])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(42), "{port}: {}", stderr(&o));
    }
    let o = bin()
        .arg("run")
        .arg(&fw)
        .args(["--exit-port", "0x3f8"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("exit port 0x3f8 is the COM1 serial port's"),
        "{}",
        stderr(&o)
    );
    let o = bin()
        .arg("run")
        .arg(&fw)
        .args(["--exit-port", "0x10000"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is not a port number"),
        "{}",
        stderr(&o)
    );
}

/// A 4 KiB image that counts boots in RAM and reboots through 0xCF9 (hard) until boot 1000,
/// then exits with 42.
fn thousand_boots() -> Vec<u8> {
    // At 0xF00: xor ax,ax; mov ds,ax; inc word [0x500]; cmp word [0x500], 1000; jae done;
    // mov dx,0xcf9; mov al,6; out dx,al; done: mov al,0x2a; out 0xf4,al
    let code = [
        0x31, 0xc0, 0x8e, 0xd8, 0xff, 0x06, 0x00, 0x05, 0x81, 0x3e, 0x00, 0x05, 0xe8, 0x03, 0x73,
        0x06, 0xba, 0xf9, 0x0c, 0xb0, 0x06, 0xee, 0xb0, 0x2a, 0xe6, 0xf4,
    ];
    let mut image = vec![0u8; 4096];
    image[0xf00..0xf00 + code.len()].copy_from_slice(&code);
    // At the reset vector: jmp near 0xFF00 (rel16 from 0xFFF3).
    image[0xff0..0xff3].copy_from_slice(&[0xe9, 0x0d, 0xff]);
    image
}

// Issue "Reboot at scale", point 5: the success message counts reboots per kind.
#[test]
fn many_reboots_are_summarised_in_one_short_line() {
    let Some(_host) = kvm_for_tests() else { return };
    let d = Dir::new("summary");
    let fw = d.path("reboots.bin");
    std::fs::write(&fw, thousand_boots()).unwrap();
    let o = bin()
        .arg("run")
        .arg(&fw)
        .args(["--reboots", "1000", "--timeout", "300"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(42), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("after 999 reboot(s): 999 cf9-hard (RESET 999, INIT 0)"),
        "{e}"
    );
    assert!(e.len() < 200, "{} bytes: {e}", e.len());
}

// Issue "Reboot at scale", point 5: the runner keeps counts and the last few records only.
#[test]
fn a_run_keeps_counts_and_the_last_records_only() {
    use vcpu_reset_selftest::runner::{Firmware, KEPT_REBOOTS, RebootReason, Sink, Vm, VmConfig};
    let Some(host) = kvm_for_tests() else { return };
    let fw = Firmware::from_bytes(thousand_boots(), "reboots").unwrap();
    let config = VmConfig {
        max_reboots: 1000,
        sink: Sink::Discard,
        ..VmConfig::default()
    };
    let out = Vm::with_host(host, &fw, config).unwrap().run().unwrap();
    assert_eq!(out.exit_value, 42);
    assert_eq!(out.total_reboots(), 999);
    assert_eq!(out.reboot_counts.get(&RebootReason::Cf9Hard), Some(&999));
    assert_eq!(out.reboots.len(), KEPT_REBOOTS);
    assert_eq!(out.reboots.first().map(|r| r.number), Some(999 - 31));
    assert_eq!(out.reboots.last().map(|r| r.number), Some(999));
}

// 5. An output that is a FIFO with no reader is refused at once instead of hanging the open.
#[test]
fn a_fifo_output_without_a_reader_is_refused_not_waited_on() {
    let d = Dir::new("fifo-out");
    let fifo = d.path("out.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut cmd = bin();
    cmd.args(["probe-image", "-o"]).arg(&fifo);
    let o = run_limited(cmd, Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("FIFO with no reader"), "{}", stderr(&o));
    let mut cmd = bin();
    cmd.args(["check", "--backend", "model", "--html"])
        .arg(&fifo);
    let o = run_limited(cmd, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("FIFO with no reader"), "{}", stderr(&o));
}
