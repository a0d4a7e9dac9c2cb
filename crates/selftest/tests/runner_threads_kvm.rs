//! The runner keeps one thread per vCPU for a whole run, however many times the guest reboots:
//! a 4-vCPU VM boots the `bench reboot --peer` firmware, which reboots itself through port
//! 0xCF9 (hard: RESET) N times and then exits, for N = 5 and N = 200. Another thread watches
//! the process's threads (`/proc/self/task`, `/proc/self/status`) during each run: the only
//! threads that appear are the 4 vCPU threads, and the peak count is the same for both N. Each
//! vCPU, which its own thread put back at every reboot, is at its RESET state afterwards (the
//! engine's `verify`) but for what the BSP's last boot changed.
//!
//! KVM's own per-VM worker (`kvm-nx-lpage-recovery`, which the kernel starts in the VMM's
//! process at the VM's first `KVM_RUN`) is counted apart.
//!
//! One test in this file on purpose: the test harness runs the tests of one file as threads
//! of one process, and another test's VM would add threads of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vcpu_reset::engine::DeviationKind;
use vcpu_reset_selftest::bench::peer::firmware;
use vcpu_reset_selftest::host::kvm_for_tests;
use vcpu_reset_selftest::runner::{
    Firmware, KEPT_REBOOTS, RebootKind, RebootReason, Sink, Vm, VmConfig,
};

const VCPUS: usize = 4;

/// The thread ids of this process.
fn tasks() -> BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `Threads:` of /proc/self/status.
fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// A thread's name (`None` once it is gone).
fn name(tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// What the watcher saw during one run.
struct Watched {
    /// Threads before the run, the watcher included.
    before: usize,
    /// Most threads at once during the run.
    peak: usize,
    /// Threads that appeared during the run (the watcher and KVM's workers left out), with
    /// their names.
    new: BTreeMap<u32, String>,
    /// KVM's workers that appeared during the run.
    kvm: usize,
}

/// KVM's per-VM kernel worker, which lives in the VMM's process (its name cut to 15 bytes).
fn is_kvm_worker(name: &str) -> bool {
    name.starts_with("kvm-")
}

/// Run a 4-vCPU VM whose firmware reboots itself `reboots` times, watching the threads.
fn run_watched(reboots: u32) -> Option<(Vm, Watched)> {
    let host = kvm_for_tests()?;
    let fw = Firmware::from_bytes(firmware(reboots).expect("firmware"), "reboot firmware")
        .expect("64 KiB image");
    let config = VmConfig {
        vcpus: VCPUS as u32,
        memory_mib: 2,
        max_reboots: reboots,
        timeout: Duration::from_secs(120),
        sink: Sink::Discard,
        ..VmConfig::default()
    };
    let mut vm = Vm::with_host(host, &fw, config).expect("VM");
    let done = AtomicBool::new(false);
    let done = &done;
    let (out, watched) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = std::thread::Builder::new()
            .name("watcher".into())
            .spawn_scoped(s, move || {
                let before = tasks();
                let count = thread_count();
                let _ = tx.send(());
                let mut peak = count;
                let mut new = BTreeMap::new();
                while !done.load(Ordering::SeqCst) {
                    peak = peak.max(thread_count());
                    // Read the name again at every sample: a new thread carries its
                    // creator's name until it has set its own.
                    for tid in tasks().difference(&before) {
                        if let Some(n) = name(*tid) {
                            new.insert(*tid, n);
                        }
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                let (kvm, new): (BTreeMap<u32, String>, _) =
                    new.into_iter().partition(|(_, n)| is_kvm_worker(n));
                Watched {
                    before: count,
                    peak,
                    new,
                    kvm: kvm.len(),
                }
            })
            .expect("watcher thread");
        rx.recv().expect("the watcher started");
        let out = vm.run();
        done.store(true, Ordering::SeqCst);
        (out, watcher.join().expect("watcher"))
    });
    let out = out.expect("the run");
    assert_eq!(out.exit_value, 0);
    assert_eq!(out.total_reboots(), u64::from(reboots), "{}", out.summary());
    assert_eq!(
        out.reboot_counts.get(&RebootReason::Cf9Hard),
        Some(&u64::from(reboots)),
        "{}",
        out.summary()
    );
    assert_eq!(out.reboots.len(), (reboots as usize).min(KEPT_REBOOTS));
    assert_eq!(out.reboots.last().map(|r| r.number), Some(reboots));
    for r in &out.reboots {
        assert_eq!(r.kind, RebootKind::Reset);
        assert_eq!(r.vcpu, 0, "the BSP asks; the APs wait for SIPI");
        assert!(r.calls_per_vcpu <= 12.0, "{r:?}");
    }
    // The firmware counted every boot in RAM (kept across reboots): N reboots, N + 1 boots.
    let counter = vm.memory().read(0x500, 2).expect("read RAM");
    assert_eq!(
        u32::from(u16::from_le_bytes([counter[0], counter[1]])),
        reboots + 1
    );
    Some((vm, watched))
}

#[test]
fn the_vcpu_threads_live_for_the_whole_run_and_reset_their_own_vcpus() {
    let Some((_, few)) = run_watched(5) else {
        return;
    };
    let Some((mut vm, many)) = run_watched(200) else {
        return;
    };
    let vcpu_names: BTreeSet<String> = (0..VCPUS).map(|i| format!("vcpu{i}")).collect();
    for (n, w) in [(5, &few), (200, &many)] {
        // Nothing but the vCPU threads appears, one each, whatever N: no thread per boot.
        let names: Vec<&String> = w.new.values().collect();
        assert!(
            w.new.len() <= VCPUS && names.iter().all(|s| vcpu_names.contains(*s)),
            "N = {n}: threads that appeared during the run: {:?}",
            w.new
        );
        assert!(
            w.peak <= w.before + VCPUS + w.kvm,
            "N = {n}: {} threads at most, {} before the run, {} of KVM's",
            w.peak,
            w.before,
            w.kvm
        );
    }
    // A long run lets the watcher see each vCPU thread (and only those, once each).
    let seen: BTreeSet<String> = many.new.values().cloned().collect();
    assert_eq!(seen, vcpu_names, "{:?}", many.new);
    assert_eq!(
        many.peak - many.before - many.kvm,
        VCPUS,
        "as many threads more at the peak of 200 reboots as vCPUs"
    );
    // Every vCPU was put back by its own thread at the last reboot. The APs then waited for
    // SIPI; the BSP ran the firmware's last boot: `jmp far F000:0000` and the code up to its
    // `out` to the exit port, which leave RIP, RFLAGS (`xor al, al`) and the CS base changed.
    // The TSC counts on from its RESET value, as it should; a host that ignores TSC writes
    // (this machine's `kvm_pvm`) shows its own count, which `verify` can tell from a reset one
    // only before the vCPU runs again, so IA32_TSC is not judged here.
    let ran = |i: usize| -> &'static [&'static str] {
        if i == 0 {
            &["rip", "rflags", "cs.base"]
        } else {
            &[]
        }
    };
    for (i, v) in vm.vcpus().iter_mut().enumerate() {
        let bad: Vec<String> = v
            .verify()
            .expect("verify")
            .into_iter()
            .filter(|d| d.kind == DeviationKind::Mismatch)
            .filter(|d| {
                let name = d.field.name();
                name != "msr.ia32_tsc" && !ran(i).contains(&name.as_str())
            })
            .map(|d| {
                format!(
                    "{}: expected {:#x}, got {:#x}",
                    d.field.name(),
                    d.expected,
                    d.actual
                )
            })
            .collect();
        assert!(bad.is_empty(), "vCPU {i} after the run: {bad:?}");
    }
}
