//! Smoke tests of the benches on real KVM, with tiny counts: the reports have their rows, and the
//! ioctl counts are what the designs promise. Timings are never asserted.
//!
//! Each test skips (printing why) where `/dev/kvm` cannot be used, unless
//! `VCPU_RESET_REQUIRE_KVM=1`.

use std::process::Command;

use vcpu_reset_selftest::bench::exits::{self, ExitOptions, Handler};
use vcpu_reset_selftest::bench::reboot::{self, RebootOptions, RebootRig};
use vcpu_reset_selftest::host::kvm_for_tests;

const SMALL: ExitOptions = ExitOptions {
    exits: 40,
    reps: 3,
    warmup: 5,
};

#[test]
fn exits_report_has_three_rows_and_the_cache_costs_one_ioctl_per_exit() {
    let Some(host) = kvm_for_tests() else { return };
    let report = exits::run(&host, &SMALL).expect("bench exits");
    assert_eq!(report.rows.len(), 3);
    let row = |h| report.row(h).expect("row");
    assert_eq!(row(Handler::Bare).ioctls_per_exit, 1.0, "KVM_RUN only");
    assert_eq!(
        row(Handler::Naive).ioctls_per_exit,
        4.0,
        "KVM_RUN, GET_REGS, GET_SREGS, SET_REGS"
    );
    let timed = SMALL.exits * u64::from(SMALL.reps);
    for h in Handler::ALL {
        assert_eq!(row(h).exits, timed, "{h:?}");
    }
    let text = report.to_text();
    for h in Handler::ALL {
        assert!(text.contains(h.label()), "{h:?} missing from\n{text}");
    }
    assert!(text.contains("target (c)/(a)"), "{text}");
    if !report.sync_regs {
        eprintln!(
            "skipped the one-ioctl check: the host's KVM_CAP_SYNC_REGS lacks REGS|SREGS|EVENTS"
        );
        return;
    }
    let c = row(Handler::Cached);
    assert_eq!(c.ioctls_per_exit, 1.0, "(c) makes KVM_RUN and nothing else");
    let stats = c
        .backend
        .expect("the cache row carries the backend's counters");
    assert_eq!(
        (stats.runs, stats.loads, stats.stores, stats.other),
        (timed, 0, 0, 0),
        "{stats:?}"
    );
    assert!(
        stats.sync_loads >= timed && stats.sync_stores == timed,
        "{stats:?}"
    );
}

#[test]
fn exit_rig_checks_every_exit_and_counts_ioctls() {
    let Some(host) = kvm_for_tests() else { return };
    let mut rig = exits::ExitRig::new(&host).expect("rig");
    let bare = rig.run(Handler::Bare, 10).expect("bare");
    let naive = rig.run(Handler::Naive, 10).expect("naive");
    let cached = rig.run(Handler::Cached, 10).expect("cached");
    assert_eq!((bare.exits, bare.ioctls), (10, 10));
    assert_eq!((naive.exits, naive.ioctls), (10, 40));
    assert_eq!(cached.exits, 10);
    if rig.cache_has_sync_regs() {
        assert_eq!(cached.ioctls, 10, "{:?}", cached.backend);
    }
}

#[test]
fn reboot_report_has_both_paths_and_in_place_needs_fewer_ioctls() {
    let Some(host) = kvm_for_tests() else { return };
    drop(host);
    let report = reboot::run(&RebootOptions {
        vcpus: vec![2],
        rounds: 2,
    })
    .expect("bench reboot");
    assert_eq!(report.rows.len(), 1);
    let row = &report.rows[0];
    assert_eq!(row.vcpus, 2);
    assert_eq!((row.in_place.count, row.recreate.count), (2, 2));
    assert!(row.in_place_ioctls_per_vcpu > 0.0, "{row:?}");
    assert!(
        row.in_place_ioctls_per_vcpu < row.recreate_ioctls_per_vcpu,
        "recreating also creates: {row:?}"
    );
    assert_eq!(row.vmm_api.count, 2);
    assert!(
        row.vmm_api_ioctls_per_vcpu > 0.0 && row.vmm_api_ioctls_per_vcpu <= 6.0,
        "the VMM API costs the engine's RESET: {row:?}"
    );
    let text = report.to_text();
    assert!(text.contains("in place  "), "{text}");
    assert!(text.contains("VMM API  "), "{text}");
    assert!(text.contains("recreate  "), "{text}");
    assert!(text.contains("target in place ≥ 20×"), "{text}");
}

#[test]
fn reboot_rig_repeats_both_paths() {
    let Some(host) = kvm_for_tests() else { return };
    let mut rig = RebootRig::new(host, 1).expect("rig");
    for _ in 0..3 {
        let in_place = rig.in_place().expect("in place");
        let recreate = rig.recreate().expect("recreate");
        assert!(in_place.vcpu_ioctls > 0);
        assert!(recreate.vcpu_ioctls > in_place.vcpu_ioctls);
    }
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(args)
        .output()
        .expect("run vcpu-reset");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vcpu-reset {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn cli_bench_exits_prints_three_rows() {
    let Some(_host) = kvm_for_tests() else { return };
    let text = cli(&["bench", "exits", "--exits", "20", "--reps", "2"]);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("(a) ") || l.starts_with("(b) ") || l.starts_with("(c) "))
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(text.contains("20 exits per handler per repetition, 2 repetitions"));
    assert!(text.contains("target (c)/(a)"), "{text}");
}

#[test]
fn cli_bench_reboot_prints_every_path() {
    let Some(_host) = kvm_for_tests() else { return };
    let text = cli(&["bench", "reboot", "--vcpus", "1", "--rounds", "1"]);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("1 ")
                && (l.contains("in place") || l.contains("VMM API") || l.contains("recreate"))
        })
        .collect();
    assert_eq!(rows.len(), 5, "{text}");
    assert!(
        rows[0].contains("in place")
            && rows[1].contains("in place, 1 thread")
            && rows[2].contains("in place, all ran")
            && rows[3].contains("VMM API")
            && rows[4].contains("recreate"),
        "{text}"
    );
}

#[test]
fn cli_bench_refuses_bad_counts() {
    let out = Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(["bench", "exits", "--exits", "0"])
        .output()
        .expect("run vcpu-reset");
    assert_eq!(out.status.code(), Some(2), "a usage error runs nothing");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--exits 0 is out of range") || err.contains("/dev/kvm"),
        "{err}"
    );
}

#[test]
fn cli_bench_reboot_peer_qemu_prints_both_vmms() {
    let Some(_host) = kvm_for_tests() else { return };
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if qemu.is_err() {
        if std::env::var("VCPU_RESET_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("VCPU_RESET_REQUIRE_QEMU=1 but qemu-system-x86_64 cannot be run");
        }
        eprintln!("skipped: no qemu-system-x86_64");
        return;
    }
    let text = cli(&[
        "bench",
        "reboot",
        "--peer",
        "qemu",
        "--vcpus",
        "2",
        // More reboots than the runner keeps records of (KEPT_REBOOTS): the bench must count
        // them all.
        "--reboots",
        "40",
        "--reps",
        "1",
    ]);
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("2 ")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].contains("vcpu-reset run") && rows[1].contains("qemu"),
        "{text}"
    );
    // At most 4 per vCPU: an AP whose thread did not reach KVM_RUN before a boot ended is
    // still at its RESET state and costs nothing.
    let ioctls: f64 = rows[0]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .expect("ioctls per vCPU");
    assert!(ioctls > 0.0 && ioctls <= 4.0, "{text}");
    assert!(
        text.contains("target ≥ 5× faster than QEMU at 32 vCPUs: not measured"),
        "{text}"
    );
}
