//! `vcpu-reset bench reboot --peer qemu`: the same firmware rebooted many times by QEMU and by
//! vcpu-reset's runner, side by side.
//!
//! The firmware (64 KiB, as QEMU's `-bios` wants) counts its boots in RAM at 0x500 (which both
//! keep across a reboot) and, until it has rebooted the asked number of times, reboots itself
//! with a hard reset through port 0xCF9 (0x06: RESET in both); then it writes 0 to port 0xF4
//! (QEMU's `isa-debug-exit`, the runner's exit port). APs stay waiting for SIPI throughout.
//!
//! Per reboot, for each VMM: a run of `base` reboots and a run of `base + reboots` are timed
//! whole (QEMU as a process, from spawn to exit; the runner's [`Vm::run`], after [`Vm::new`]),
//! and the difference is divided by `reboots`, so start-up and shutdown cancel and
//! what remains is one reboot plus one boot of the firmware to its next reboot request. Runs
//! are repeated, the VMMs interleaved, and summarised as median [min–max].
//!
//! vCPU ioctls per vCPU per reboot leave out KVM_RUN. The runner's come from its backends'
//! counters over the longer run (creation excluded); QEMU's are counted with `strace -f` (when strace is installed) on the file
//! descriptors KVM_CREATE_VCPU returned, by the same difference of two runs.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

use super::BenchError;
use super::stats::{Summary, table};
use crate::runner::{Firmware, Sink, Vm, VmConfig};
use crate::tempdir::TempDir;

/// The target: the runner's warm reboot at least this many times faster than QEMU's at
/// [`TARGET_VCPUS`] vCPUs.
pub const TARGET_SPEEDUP: f64 = 5.0;
/// The vCPU count the target is about.
pub const TARGET_VCPUS: u32 = 32;
/// Where the firmware counts its boots.
const COUNTER: u64 = 0x500;
/// Reboots of the shorter run of each pair.
const BASE_REBOOTS: u32 = 5;

/// The reboot firmware: 64 KiB, ending at the reset vector, rebooting `reboots` times.
///
/// # Errors
/// [`BenchError::Guest`] if the assembler refuses (a bug here).
pub fn firmware(reboots: u32) -> Result<Vec<u8>, BenchError> {
    let asm = |e: IcedError| BenchError::Guest(e.to_string());
    let boots = reboots
        .checked_add(1)
        .filter(|b| *b <= 0xffff)
        .ok_or(BenchError::Option {
            option: "--reboots",
            value: u64::from(reboots),
            why: "at most 65534",
        })?;
    // At F000:0000, the image's first byte (linear 0xF0000, the low alias of its last 64 KiB).
    let mut a = CodeAssembler::new(16).map_err(asm)?;
    let mut done = a.create_label();
    let mut halt = a.create_label();
    a.cli().map_err(asm)?;
    a.xor(ax, ax).map_err(asm)?;
    a.mov(ds, ax).map_err(asm)?;
    a.inc(word_ptr(COUNTER)).map_err(asm)?;
    a.cmp(word_ptr(COUNTER), boots).map_err(asm)?;
    a.jae(done).map_err(asm)?;
    a.mov(dx, 0xcf9u32).map_err(asm)?;
    a.mov(al, 0x06u32).map_err(asm)?;
    a.out(dx, al).map_err(asm)?;
    a.set_label(&mut halt).map_err(asm)?;
    a.hlt().map_err(asm)?;
    a.jmp(halt).map_err(asm)?;
    a.set_label(&mut done).map_err(asm)?;
    a.xor(al, al).map_err(asm)?;
    a.out(0xf4u32, al).map_err(asm)?;
    a.jmp(halt).map_err(asm)?;
    let code = a.assemble(0).map_err(asm)?;

    // At F000:0000, the image's first byte; HLT everywhere else.
    let image =
        crate::runner::reset_vector_image(0x1_0000, 0xf4, &code, (0xf000, 0)).ok_or_else(|| {
            BenchError::Guest("the firmware does not fit below its reset vector".into())
        })?;
    Ok(image)
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBenchOptions {
    /// vCPU counts, one row each.
    pub vcpus: Vec<u32>,
    /// Reboots measured per run pair (the longer run has this many more).
    pub reboots: u32,
    /// Repetitions of each pair.
    pub reps: u32,
}

impl Default for PeerBenchOptions {
    fn default() -> Self {
        PeerBenchOptions {
            vcpus: super::reboot::DEFAULT_VCPUS.to_vec(),
            reboots: 200,
            reps: 3,
        }
    }
}

/// One VMM's figures for one vCPU count.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerFigures {
    /// µs per reboot (and boot to the next reboot request).
    pub per_reboot: Summary,
    /// vCPU ioctls (without KVM_RUN) per vCPU per reboot, where counted.
    pub ioctls_per_vcpu: Option<f64>,
}

/// One vCPU count.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRow {
    /// vCPUs.
    pub vcpus: u32,
    /// vcpu-reset's runner.
    pub runner: PeerFigures,
    /// QEMU.
    pub qemu: PeerFigures,
}

impl PeerRow {
    /// QEMU's median over the runner's median.
    pub fn speedup(&self) -> f64 {
        self.qemu.per_reboot.median / self.runner.per_reboot.median
    }
}

/// The result of `bench reboot --peer qemu`.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerReport {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Whether QEMU's ioctls were counted with strace.
    pub strace: bool,
    /// The options.
    pub options: PeerBenchOptions,
    /// One row per vCPU count.
    pub rows: Vec<PeerRow>,
}

/// `name` in the directories of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BenchError {
    move |e| BenchError::Peer(format!("{what}: {e}"))
}

/// One runner run of `reboots` reboots: wall time of [`Vm::run`] and the vCPU ioctls (without
/// KVM_RUN) it made, i.e. those of the reboots.
fn runner_run(vcpus: u32, reboots: u32) -> Result<(Duration, u64), BenchError> {
    let fw = Firmware::from_bytes(firmware(reboots)?, "peer bench firmware")?;
    let config = VmConfig {
        vcpus,
        memory_mib: 16,
        max_reboots: reboots,
        timeout: Duration::from_secs(600),
        sink: Sink::Discard,
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&fw, config)?;
    let ioctls = |vm: &mut Vm| -> u64 {
        vm.vcpus()
            .iter()
            .map(|v| {
                let s = v.cache().backend_stats();
                s.calls() - s.runs
            })
            .sum()
    };
    let before = ioctls(&mut vm);
    let start = Instant::now();
    let out = vm.run()?;
    let elapsed = start.elapsed();
    // The runner keeps the last few reboot records only; the counts cover the whole run.
    if out.exit_value != 0 || out.total_reboots() != u64::from(reboots) {
        return Err(BenchError::Peer(format!(
            "the runner ended with {} after {} reboots, expected 0 after {reboots}",
            out.exit_value,
            out.total_reboots()
        )));
    }
    Ok((elapsed, ioctls(&mut vm) - before))
}

fn qemu_command(qemu: &Path, fw: &Path, vcpus: u32) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-accel", "kvm", "-machine", "pc", "-m", "16", "-display", "none",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-serial",
        "none",
        "-monitor",
        "none",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-smp")
    .arg(vcpus.to_string())
    .arg("-bios")
    .arg(fw);
    c
}

/// One QEMU run of `reboots` reboots: wall time, and with `strace`, the vCPU ioctls. The
/// firmware and the strace log are in a private temp dir, removed when the run ends, also when
/// SIGINT, SIGTERM or SIGHUP interrupts it (QEMU's process group is killed first).
fn qemu_run(
    qemu: &Path,
    strace: Option<&Path>,
    vcpus: u32,
    reboots: u32,
) -> Result<(Duration, Option<u64>), BenchError> {
    let dir = TempDir::new("peer").map_err(io("create a temporary directory"))?;
    let fw = dir
        .write("firmware.bin", &firmware(reboots)?)
        .map_err(io("write the peer firmware"))?;
    let trace = dir.path().join("qemu.strace");
    let mut cmd = match strace {
        Some(strace) => {
            let inner = qemu_command(qemu, &fw, vcpus);
            let mut c = Command::new(strace);
            c.args(["-f", "-qq", "-e", "trace=ioctl", "-e", "verbose=none", "-o"])
                .arg(&trace)
                .arg(inner.get_program())
                .args(inner.get_args());
            c
        }
        None => qemu_command(qemu, &fw, vcpus),
    };
    let stderr = dir
        .create("stderr.txt")
        .map_err(io("create QEMU's stderr file"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    let start = Instant::now();
    let status = match wait_interruptible(cmd) {
        // QEMU's group is killed: remove the temp dir, then end as the signal asks.
        Err(BenchError::Interrupted(signal)) => {
            drop(dir);
            crate::sys::die_of(signal)
        }
        other => other?,
    };
    let elapsed = start.elapsed();
    // isa-debug-exit makes QEMU exit with (value << 1) | 1.
    if status.code() != Some(1) {
        let stderr = crate::files::read_bounded(&dir.path().join("stderr.txt"), 1 << 20, "stderr")
            .unwrap_or_default();
        return Err(BenchError::Peer(format!(
            "QEMU exited with {:?}, not 1 (the firmware's exit through port 0xF4): {}",
            status.code(),
            crate::files::quote(String::from_utf8_lossy(&stderr).trim().as_bytes(), 400)
        )));
    }
    let ioctls = match strace {
        Some(_) => {
            let text = std::fs::read_to_string(&trace).map_err(io("read the strace log"))?;
            Some(count_vcpu_ioctls(&text))
        }
        None => None,
    };
    Ok((elapsed, ioctls))
}

/// Runs `cmd` (spawned in a process group of its own) to its end. On SIGINT, SIGTERM or SIGHUP
/// the group is killed and the signal returned as [`BenchError::Interrupted`].
fn wait_interruptible(mut cmd: Command) -> Result<std::process::ExitStatus, BenchError> {
    let _signals = crate::sys::InterruptGuard::install();
    let mut child = cmd.spawn().map_err(io("run QEMU"))?;
    loop {
        if let Some(signal) = crate::sys::interrupted() {
            crate::sys::kill_process_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Interrupted(signal));
        }
        if let Some(status) = child.try_wait().map_err(io("wait for QEMU"))? {
            return Ok(status);
        }
        crate::sys::wait_for_exit(child.id(), Duration::from_millis(100));
    }
}

/// vCPU ioctls other than KVM_RUN in an `strace -f -e trace=ioctl` log: ioctls on the file
/// descriptors KVM_CREATE_VCPU returned.
pub fn count_vcpu_ioctls(log: &str) -> u64 {
    let mut vcpu_fds = std::collections::BTreeSet::new();
    let mut count = 0;
    for line in log.lines() {
        let Some(at) = line.find("ioctl(") else {
            continue;
        };
        let call = &line[at + "ioctl(".len()..];
        let mut parts = call.splitn(3, ", ");
        let (Some(fd), Some(cmd)) = (parts.next(), parts.next()) else {
            continue;
        };
        let cmd = cmd.trim_end_matches(|c: char| c == ')' || c.is_whitespace());
        let cmd = cmd.split(' ').next().unwrap_or(cmd);
        if cmd == "KVM_CREATE_VCPU" {
            if let Some(ret) = line
                .rsplit("= ")
                .next()
                .and_then(|r| r.trim().parse::<u32>().ok())
            {
                vcpu_fds.insert(ret);
            }
            continue;
        }
        let Ok(fd) = fd.parse::<u32>() else { continue };
        if vcpu_fds.contains(&fd) && cmd != "KVM_RUN" && cmd != "0xae80" {
            count += 1;
        }
    }
    count
}

fn per_reboot(long: Duration, short: Duration, reboots: u32) -> f64 {
    (long.as_secs_f64() - short.as_secs_f64()) * 1e6 / f64::from(reboots)
}

/// Run the comparison.
///
/// # Errors
/// [`BenchError::Peer`] when QEMU is not installed or does not run the firmware as expected;
/// [`BenchError::Option`] for zero counts; otherwise as the runner.
pub fn run(options: &PeerBenchOptions) -> Result<PeerReport, BenchError> {
    if options.reboots == 0 || options.reps == 0 {
        return Err(BenchError::Option {
            option: if options.reboots == 0 {
                "--reboots"
            } else {
                "--reps"
            },
            value: 0,
            why: "at least 1",
        });
    }
    // The longer run of each pair reboots BASE_REBOOTS more times, and the firmware counts
    // boots in 16 bits.
    let long = BASE_REBOOTS
        .checked_add(options.reboots)
        .filter(|&l| l < 0xffff)
        .ok_or(BenchError::Option {
            option: "--reboots",
            value: u64::from(options.reboots),
            why: "at most 65529 (the firmware counts its boots in 16 bits)",
        })?;
    super::check_vcpus(&options.vcpus, crate::host::open()?.caps().max_vcpus as u64)?;
    let qemu = find_program("qemu-system-x86_64").ok_or_else(|| {
        BenchError::Peer(
            "qemu-system-x86_64 is not on PATH — install QEMU (Debian: qemu-system-x86)".into(),
        )
    })?;
    let strace = find_program("strace");
    let short = BASE_REBOOTS;
    let mut rows = Vec::new();
    for &vcpus in &options.vcpus {
        let mut runner = Vec::new();
        let mut qemu_us = Vec::new();
        let mut runner_ioctls = 0.0;
        for _ in 0..options.reps {
            let (rs, _) = runner_run(vcpus, short)?;
            let (rl, il) = runner_run(vcpus, long)?;
            runner.push(per_reboot(rl, rs, options.reboots));
            runner_ioctls = il as f64 / f64::from(long) / f64::from(vcpus.max(1));
            let (qs, _) = qemu_run(&qemu, None, vcpus, short)?;
            let (ql, _) = qemu_run(&qemu, None, vcpus, long)?;
            qemu_us.push(per_reboot(ql, qs, options.reboots));
        }
        let qemu_ioctls = match strace.as_deref() {
            Some(st) => {
                let (_, s) = qemu_run(&qemu, Some(st), vcpus, short)?;
                let (_, l) = qemu_run(&qemu, Some(st), vcpus, long)?;
                s.zip(l).map(|(s, l)| {
                    l.saturating_sub(s) as f64
                        / f64::from(options.reboots)
                        / f64::from(vcpus.max(1))
                })
            }
            None => None,
        };
        let empty = || BenchError::Option {
            option: "--reps",
            value: 0,
            why: "at least 1",
        };
        rows.push(PeerRow {
            vcpus,
            runner: PeerFigures {
                per_reboot: Summary::of(&runner).ok_or_else(empty)?,
                ioctls_per_vcpu: Some(runner_ioctls),
            },
            qemu: PeerFigures {
                per_reboot: Summary::of(&qemu_us).ok_or_else(empty)?,
                ioctls_per_vcpu: qemu_ioctls,
            },
        });
    }
    Ok(PeerReport {
        qemu,
        strace: strace.is_some(),
        options: options.clone(),
        rows,
    })
}

impl PeerReport {
    /// The report as text: a header, two rows per vCPU count, the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "vcpu-reset bench reboot --peer qemu — {}\n\
             the same firmware reboots itself through port 0xCF9 (hard) in QEMU ({} -accel kvm -smp N) and in vcpu-reset's runner;\n\
             per reboot = (time of a {}-reboot run − time of a {}-reboot run) / {} (one reboot plus one boot to the next request);\n\
             {} repetitions, median [min–max]; vCPU ioctls leave out KVM_RUN{}\n\n",
            super::host_line(),
            self.qemu.display(),
            BASE_REBOOTS.saturating_add(self.options.reboots),
            BASE_REBOOTS,
            self.options.reboots,
            self.options.reps,
            if self.strace {
                " (QEMU's counted with strace -f)"
            } else {
                "; QEMU's not counted (strace is not installed)"
            },
        );
        let ioctls = |f: &PeerFigures| {
            f.ioctls_per_vcpu
                .map_or_else(|| "not counted".to_owned(), |n| format!("{n:.1}"))
        };
        let mut rows = Vec::new();
        for r in &self.rows {
            rows.push(vec![
                r.vcpus.to_string(),
                "vcpu-reset run".to_owned(),
                r.runner.per_reboot.display(0),
                format!("{:.1}", r.speedup()),
                ioctls(&r.runner),
            ]);
            rows.push(vec![
                r.vcpus.to_string(),
                "qemu".to_owned(),
                r.qemu.per_reboot.display(0),
                "1".to_owned(),
                ioctls(&r.qemu),
            ]);
        }
        out.push_str(&table(
            &[
                "vCPUs",
                "VMM",
                "µs/reboot",
                "× faster than QEMU",
                "vCPU ioctls/vCPU/reboot",
            ],
            &rows,
        ));
        out.push('\n');
        match self.rows.iter().find(|r| r.vcpus == TARGET_VCPUS) {
            Some(r) => out.push_str(&format!(
                "target ≥ {TARGET_SPEEDUP:.0}× faster than QEMU at {TARGET_VCPUS} vCPUs: {} ({:.1}×)\n",
                if r.speedup() >= TARGET_SPEEDUP {
                    "met"
                } else {
                    "NOT met"
                },
                r.speedup()
            )),
            None => out.push_str(&format!(
                "target ≥ {TARGET_SPEEDUP:.0}× faster than QEMU at {TARGET_VCPUS} vCPUs: not measured in this run\n"
            )),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_firmware_ends_at_the_reset_vector_and_counts_to_its_reboots() {
        let image = firmware(200).expect("assemble");
        assert_eq!(image.len(), 0x1_0000);
        // jmp far F000:0000 at the reset vector.
        assert_eq!(&image[0xfff0..0xfff5], &[0xea, 0, 0, 0x00, 0xf0]);
        // The boot count it stops at (201) is in the code as a 16-bit immediate.
        assert!(image[..64].windows(2).any(|w| w == [201, 0]));
        assert!(firmware(0xffff).is_err());
    }

    #[test]
    fn vcpu_ioctls_are_counted_on_vcpu_fds_without_kvm_run() {
        let log = "\
100 ioctl(9, KVM_CREATE_VM, 0) = 11
100 ioctl(11, KVM_CREATE_VCPU, 0) = 12
100 ioctl(11, KVM_CREATE_VCPU, 1) = 14
101 ioctl(12, KVM_SET_REGS, 0x7ffc) = 0
101 ioctl(12, KVM_RUN, 0) = 0
102 ioctl(14, KVM_RUN <unfinished ...>
101 ioctl(12, KVM_SET_SREGS, 0x7ffc) = 0
102 <... ioctl resumed>, 0) = 0
100 ioctl(11, KVM_SET_IRQCHIP, 0x7ffc) = 0
102 ioctl(14, KVM_GET_MSRS, 0x7ffc) = 3
";
        assert_eq!(count_vcpu_ioctls(log), 3);
    }
}
