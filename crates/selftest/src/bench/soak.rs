//! Soak: many RESET+run cycles and many guest-driven warm reboots of one 2-vCPU VM, with the
//! process's open file descriptors and resident memory sampled at the start, middle and end.
//! Nothing may grow with the number of cycles: no fd, thread or record per reboot is kept.
//!
//! - **RESET+run cycle**: the host reboots the VM in place ([`Vm::reboot`] with RESET), then
//!   [`Vm::run`] boots it until the guest writes the exit port, which it does at once.
//! - **Warm reboot**: inside one [`Vm::run`], the guest reboots itself through port 0xCF9
//!   (hard reset, RESET); the firmware counts boots in RAM (kept across reboots) and writes the
//!   exit port every `chunk` boots so the host can take samples between runs.
//!
//! `vcpu-reset bench soak` prints the table; `tests/soak_kvm.rs` runs a small one.

use std::time::{Duration, Instant};

use super::BenchError;
use crate::runner::{Firmware, RebootKind, Sink, Vm, VmConfig};
use vcpu_reset::backend::kvm::KvmHost;

/// Guest-physical address of the boot counter (a 16-bit word in RAM).
const COUNTER: u64 = 0x500;
/// Guest-physical address of the number of boots per run (a 16-bit word the host writes).
const LIMIT: u64 = 0x504;
/// vCPUs of the soak VM.
pub const SOAK_VCPUS: u32 = 2;

/// Options of the soak (each count from 1 to 10^8).
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Host-driven RESET+run cycles.
    pub cycles: u64,
    /// Guest-driven warm reboots.
    pub reboots: u64,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            cycles: 100_000,
            reboots: 100_000,
        }
    }
}

/// A sample of the process's resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Cycles or reboots done when it was taken.
    pub done: u64,
    /// Open file descriptors (`/proc/self/fd`).
    pub fds: usize,
    /// Resident set size in KiB (`VmRSS` of `/proc/self/status`).
    pub rss_kib: u64,
    /// Threads of the process (`Threads` of `/proc/self/status`).
    pub threads: u64,
}

/// One phase's figures.
#[derive(Clone, Debug)]
pub struct Phase {
    /// "RESET+run cycles" or "warm reboots".
    pub name: &'static str,
    /// Cycles or reboots done.
    pub done: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Start, middle and end.
    pub samples: [Sample; 3],
}

impl Phase {
    /// Cycles per second.
    pub fn per_second(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether fds and threads are the same at start and end and RSS grew by at most 1 MiB
    /// (allocator noise).
    pub fn steady(&self) -> bool {
        let (a, z) = (self.samples[0], self.samples[2]);
        a.fds == z.fds && a.threads == z.threads && z.rss_kib <= a.rss_kib + 1024
    }
}

/// The soak's result.
#[derive(Clone, Debug)]
pub struct SoakReport {
    /// RESET+run cycles, then warm reboots.
    pub phases: Vec<Phase>,
}

impl SoakReport {
    /// Whether every phase was steady.
    pub fn steady(&self) -> bool {
        self.phases.iter().all(Phase::steady)
    }

    /// The table.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "soak: one {SOAK_VCPUS}-vCPU VM; fds, threads and RSS at start / middle / end\n\n| phase | count | per second | fds | threads | RSS KiB | steady |\n|---|---|---|---|---|---|---|\n"
        );
        for p in &self.phases {
            let f = |g: fn(&Sample) -> u64| {
                p.samples
                    .iter()
                    .map(|x| g(x).to_string())
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            s.push_str(&format!(
                "| {} | {} | {:.0} | {} | {} | {} | {} |\n",
                p.name,
                p.done,
                p.per_second(),
                f(|x| x.fds as u64),
                f(|x| x.threads),
                f(|x| x.rss_kib),
                if p.steady() { "yes" } else { "NO" }
            ));
        }
        s
    }
}

/// Sample the process now.
pub fn sample(done: u64) -> Sample {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        done,
        fds,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    }
}

/// The soak firmware: 4 KiB, real mode from the reset vector.
fn firmware() -> Result<Firmware, BenchError> {
    #[rustfmt::skip]
    let code: [u8; 34] = [
        0x31, 0xc0,                         // xor ax, ax
        0x8e, 0xd8,                         // mov ds, ax
        0xff, 0x06, 0x00, 0x05,             // inc word [0x500]
        0xa1, 0x00, 0x05,                   // mov ax, [0x500]
        0x3b, 0x06, 0x04, 0x05,             // cmp ax, [0x504]
        0x72, 0x0a,                         // jb reboot
        0xc7, 0x06, 0x00, 0x05, 0x00, 0x00, // mov word [0x500], 0
        0xb0, 0x00,                         // mov al, 0
        0xe6, 0xf4,                         // out 0xf4, al (exit)
        0xba, 0xf9, 0x0c,                   // reboot: mov dx, 0xcf9
        0xb0, 0x06,                         // mov al, 6 (hard reset)
        0xee,                               // out dx, al
        0xf4,                               // hlt (not reached)
    ];
    let mut image = vec![0u8; 4096];
    image[0xf00..0xf00 + code.len()].copy_from_slice(&code);
    // Reset vector (offset 0xFF0, IP 0xFFF0): jmp near 0xFF00.
    image[0xff0..0xff3].copy_from_slice(&[0xe9, 0x0d, 0xff]);
    Ok(Firmware::from_bytes(image, "soak firmware")?)
}

fn check_option(option: &'static str, value: u64) -> Result<(), BenchError> {
    if value == 0 || value > 100_000_000 {
        return Err(BenchError::Option {
            option,
            value,
            why: "choose 1 to 100000000",
        });
    }
    Ok(())
}

/// Run the soak on `host`.
///
/// # Errors
/// [`BenchError::Option`] for counts of 0 or above 10^8; [`BenchError::Run`] when the VM cannot
/// be built or a run fails; [`BenchError::Mismatch`] when the guest did not do what it should.
pub fn run(host: KvmHost, options: &SoakOptions) -> Result<SoakReport, BenchError> {
    check_option("--cycles", options.cycles)?;
    check_option("--reboots", options.reboots)?;
    let fw = firmware()?;
    let config = VmConfig {
        vcpus: SOAK_VCPUS,
        memory_mib: 2,
        max_reboots: u32::MAX,
        timeout: Duration::from_secs(3600),
        sink: Sink::Discard,
        ..VmConfig::default()
    };
    let mut vm = Vm::with_host(host, &fw, config)?;
    let mismatch = |exit: u64, what: String| BenchError::Mismatch {
        handler: "soak",
        exit,
        what,
    };

    // Phase 1: host RESET, then run to the guest's exit (one boot each).
    vm.memory().write(LIMIT, &1u16.to_le_bytes())?;
    // One warm-up cycle first: the first run makes one-time allocations (thread-locals, the
    // runtime's first thread bookkeeping) that are not growth. The start sample follows it.
    vm.reboot(RebootKind::Reset)?;
    vm.run()?;
    let mut samples = vec![sample(0)];
    let start = Instant::now();
    for i in 0..options.cycles {
        if i == options.cycles / 2 {
            samples.push(sample(i));
        }
        vm.reboot(RebootKind::Reset)?;
        let out = vm.run()?;
        if out.exit_value != 0 || out.total_reboots() != 0 {
            return Err(mismatch(
                i + 1,
                format!("RESET+run cycle: {}", out.summary()),
            ));
        }
    }
    let elapsed = start.elapsed();
    samples.push(sample(options.cycles));
    let cycles = Phase {
        name: "RESET+run cycles",
        done: options.cycles,
        elapsed,
        samples: [samples[0], samples[1], samples[2]],
    };

    // Phase 2: guest-driven warm reboots, at most `chunk` per run. The first run starts at the
    // reset vector and the firmware exits at boot L (L - 1 reboots); a later run resumes after
    // the exit port write, reboots at once and exits at boot L (L reboots).
    let chunk: u64 = 1000;
    vm.memory().write(COUNTER, &0u16.to_le_bytes())?;
    vm.reboot(RebootKind::Reset)?;
    let mut samples = vec![sample(0)];
    let mut done: u64 = 0;
    let start = Instant::now();
    while done < options.reboots {
        let want = chunk.min(options.reboots - done);
        let limit = if done == 0 { want + 1 } else { want };
        let limit = u16::try_from(limit).map_err(|_| mismatch(done, "limit".into()))?;
        vm.memory().write(LIMIT, &limit.to_le_bytes())?;
        let out = vm.run()?;
        if out.total_reboots() != want {
            return Err(mismatch(
                done + 1,
                format!("warm reboots: {} where {want} were due", out.summary()),
            ));
        }
        done += want;
        if samples.len() == 1 && done >= options.reboots / 2 {
            samples.push(sample(done));
        }
    }
    let elapsed = start.elapsed();
    samples.push(sample(done));
    let reboots = Phase {
        name: "warm reboots (0xCF9)",
        done,
        elapsed,
        samples: [samples[0], samples[1], samples[2]],
    };
    Ok(SoakReport {
        phases: vec![cycles, reboots],
    })
}
