//! `check --vmm-cmd` against a hostile or careless peer and a hostile environment: a signal
//! while the peer runs, a flood of output, a log that turns into a huge sparse file, and a
//! temp dir whose name holds a placeholder and shell syntax. Each asserts the exit status, the
//! message, and the absence of what must not be left (a process, a temp dir, a file).
//!
//! The peers are `sh -c` commands (no VMM needed); the local backend is the software model.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vcpu_reset_selftest::tempdir::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vcpu-reset");

/// `vcpu-reset check --backend model ARGS` with `TMPDIR` set to `tmp`.
fn check_in(tmp: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["check", "--backend", "model"])
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null());
    c
}

/// The `vcpu-reset-*` entries left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("vcpu-reset-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `limit` for `path` to exist.
fn wait_for_file(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits up to `limit` for `child` to end.
fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Whether process `pid` is still alive (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn interrupted_by(signal: i32) {
    let base = TempDir::new("signal-test").expect("temp dir");
    let tmp = base.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let mark = base.path().join("sleep.pid");
    let cmd = format!(
        "sleep 300 & echo $! > '{}'; wait; : {{image}} {{log}}",
        mark.display()
    );
    let mut child = check_in(&tmp, &["--vmm-cmd", &cmd, "--vmm-timeout", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        wait_for_file(&mark, Duration::from_secs(60)),
        "the peer started"
    );
    std::thread::sleep(Duration::from_millis(100));
    let sleeper: i32 = std::fs::read_to_string(&mark)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(alive(sleeper));
    assert!(
        !leftovers(&tmp).is_empty(),
        "the peer's temp dir exists while it runs"
    );
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with the pid of our own child and a plain signal number.
    unsafe {
        libc::kill(pid, signal);
    }
    let status = wait_with_limit(&mut child, Duration::from_secs(10))
        .expect("vcpu-reset ended within 10 s of the signal");
    assert_eq!(status.signal(), Some(signal), "{status:?}");
    let start = Instant::now();
    while alive(sleeper) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(sleeper), "the peer's process group was killed");
    assert_eq!(leftovers(&tmp), Vec::<String>::new(), "no temp dir left");
}

#[test]
fn sigterm_during_a_peer_run_kills_its_group_and_removes_its_temp_dir() {
    interrupted_by(libc::SIGTERM);
}

#[test]
fn ctrl_c_during_a_peer_run_kills_its_group_and_removes_its_temp_dir() {
    interrupted_by(libc::SIGINT);
}

/// The largest resident set of any child this test process waited for, in KiB.
fn max_child_rss_kib() -> i64 {
    // SAFETY: getrusage writes one `rusage` through the pointer, a live local.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
    }
    usage.ru_maxrss
}

fn run(mut c: Command) -> Output {
    c.output().expect("run vcpu-reset check")
}

#[test]
fn a_flood_of_peer_output_is_read_bounded_and_quoted_short() {
    let base = TempDir::new("flood-test").expect("temp dir");
    let started = Instant::now();
    let out = run(check_in(
        base.path(),
        &[
            "--vmm-cmd",
            "head -c 100000000 /dev/zero | tr '\\0' A; : {image} {log}",
            "--vmm-timeout",
            "120",
        ],
    ));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("0 of 2 probe runs"), "{stderr}");
    let printed = out.stdout.len() + out.stderr.len();
    assert!(
        printed < 1 << 20,
        "{printed} bytes printed for 400 MB of peer output"
    );
    let rss = max_child_rss_kib();
    assert!(rss < 300 << 10, "peak RSS {rss} KiB");
    eprintln!("flood: {printed} bytes printed, peak RSS {rss} KiB, {took:?}");
    assert_eq!(leftovers(base.path()), Vec::<String>::new());
}

#[test]
fn a_peer_log_that_becomes_a_huge_sparse_file_ends_the_run_at_once() {
    let base = TempDir::new("sparse-test").expect("temp dir");
    let started = Instant::now();
    let out = run(check_in(
        base.path(),
        &[
            "--vmm-cmd",
            "truncate -s 2G {log}; sleep 60; : {image}",
            "--vmm-timeout",
            "30",
        ],
    ));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("its log holds 2147483648 bytes, more than the 67108864"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(25),
        "four runs killed at once, not at the 30 s limit: {took:?}"
    );
    assert_eq!(leftovers(base.path()), Vec::<String>::new());
}

#[test]
fn a_temp_dir_named_like_a_placeholder_with_shell_syntax_stays_a_path() {
    let base = TempDir::new("subst-test").expect("temp dir");
    // The peer runs in a temp dir inside `tmp`; were the name parsed by the shell, it would
    // climb to `base` and leave a file there.
    let tmp: PathBuf = base.path().join("{log}x;cd ..;cd ..;touch INJECTED;y");
    std::fs::create_dir(&tmp).expect("tmp");
    let cwd = base.path().join("cwd");
    std::fs::create_dir(&cwd).expect("cwd");
    let mut c = check_in(&tmp, &["--vmm-cmd", "cat {image} > /dev/null; : {log}"]);
    c.current_dir(&cwd);
    let out = run(c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The command ran (it read the image through its quoted path) and printed no probe runs.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("0 of 2 probe runs"), "{stderr}");
    assert!(!stderr.contains("No such file"), "{stderr}");
    for dir in [&cwd, &tmp, &base.path().to_path_buf()] {
        assert!(
            !dir.join("INJECTED").exists(),
            "the shell ran text from the temp dir's name"
        );
    }
}

fn bench(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vcpu-reset bench")
}

#[test]
fn reboot_counts_past_what_the_firmware_counts_are_refused_with_exit_2() {
    for (reboots, shown) in [("4294967295", "4294967295"), ("65530", "65530")] {
        let out = bench(&["reboot", "--peer", "qemu", "--reboots", reboots]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{reboots}: {stderr}");
        assert!(stderr.contains("--reboots"), "{stderr}");
        assert!(stderr.contains(shown), "{stderr}");
        assert!(stderr.contains("at most 65529"), "{stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains('-'),
            "no negative time"
        );
    }
}

#[test]
fn vcpu_counts_the_host_cannot_create_are_refused_with_exit_2() {
    let Some(_host) = vcpu_reset_selftest::host::kvm_for_tests() else {
        return;
    };
    for args in [
        &["reboot", "--vcpus", "4294967295"][..],
        &["reboot", "--vcpus", "0"][..],
        &["reboot", "--peer", "qemu", "--vcpus", "0"][..],
        &["reboot", "--peer", "qemu", "--vcpus", "4294967295"][..],
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--vcpus"), "{args:?}: {stderr}");
    }
}

/// A recorded QEMU log of the given name, from `tests/data/probe-logs/`.
fn recorded(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/probe-logs")
        .join(name)
}

#[test]
fn a_peer_that_prints_the_same_log_for_every_mechanism_is_judged_once() {
    let base = TempDir::new("same-log-test").expect("temp dir");
    let cmd = format!(
        "cat '{}' > {{log}}; : {{image}}",
        recorded("qemu-kvm-cf9-hard.log").display()
    );
    let out = run(check_in(
        base.path(),
        &["--vmm-cmd", &cmd, "--format", "json"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let not_run: Vec<String> = v["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter(|s| !s["error"].is_null())
        .map(|s| format!("{} {}", s["name"], s["error"]))
        .collect();
    for m in ["cf9-soft", "port92", "kbc"] {
        assert!(
            not_run.iter().any(
                |s| s.contains(&format!("reboot-{m}")) && s.contains(&format!("not probe-{m}"))
            ),
            "{m}: {not_run:#?}\n{stderr}"
        );
    }
    assert_eq!(not_run.len(), 3, "{not_run:#?}");
}

#[test]
fn a_peer_that_prints_only_power_on_runs_is_not_judged() {
    let base = TempDir::new("power-on-test").expect("temp dir");
    let log = recorded("qemu-kvm-power-on.log");
    let cmd = format!("cat '{0}' '{0}' > {{log}}; : {{image}}", log.display());
    let out = run(check_in(base.path(), &["--vmm-cmd", &cmd]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no run of this VMM could be judged"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tagged probe, not probe-cf9-hard"),
        "{stderr}"
    );
}
