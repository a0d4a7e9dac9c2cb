//! Benchmarks on KVM, each comparing paths side by side in one run.
//!
//! - [`exits`]: the cost of handling a guest exit that reads RAX, RIP and CS and writes RAX, for
//!   (a) a bare `KVM_RUN` that reads nothing (the floor), (b) a naive handler with
//!   KVM_GET_REGS + KVM_GET_SREGS + KVM_SET_REGS per exit and (c) the register cache over a
//!   [`KvmVcpu`](vcpu_reset::backend::kvm::KvmVcpu) with sync regs. `vcpu-reset bench exits`.
//! - [`reboot`]: a warm reboot in place ([`Vm::reboot`](crate::runner::Vm::reboot)) against
//!   tearing the VM down and building it again with the same configuration.
//!   `vcpu-reset bench reboot`.
//! - [`peer`]: the same self-rebooting firmware in QEMU and in vcpu-reset's runner.
//!   `vcpu-reset bench reboot --peer qemu`.
//! - [`soak`]: 100 000 RESET+run cycles and 100 000 warm reboots of a 2-vCPU VM, with fds,
//!   threads and RSS sampled at start, middle and end. `vcpu-reset bench soak`.
//! - [`stats`]: medians, spreads, ratios and text tables (no KVM).
//!
//! Repetitions of the paths are interleaved, so slow drift of the machine (frequency, other
//! load) affects every path alike; ratios are taken within a repetition and then summarised.
//! The same rigs back the Criterion benches in `benches/`.

pub mod exits;
pub mod peer;
pub mod reboot;
pub mod soak;
pub mod stats;
pub mod vmm_api;

use crate::runner::{FirmwareError, MemoryError, RunError};
use vcpu_reset::backend::kvm::{IoctlError, KvmError};
use vcpu_reset::cache::CacheError;

/// Why a bench could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Opening KVM or creating a VM or vCPU failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Building, running or rebooting a runner VM failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A state transfer or run through the register cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// SIGINT, SIGTERM or SIGHUP arrived while a peer ran: its process group was killed and
    /// its temp dir removed.
    #[error("interrupted by signal {0}; the peer's process group was killed")]
    Interrupted(i32),
    /// A raw vCPU or VM ioctl of the bench's own handlers failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
    /// The bench's guest program could not be built (a bug in the bench).
    #[error("building the bench guest failed: {0} — this is a bug in vcpu-reset's bench module")]
    Guest(String),
    /// The bench's firmware image was refused (a bug in the bench).
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    /// An exit was not what the bench loop produces.
    #[error(
        "{handler}: exit {exit}: {what} — the guest left the bench loop or the handler lost a write; the figures of this run are void"
    )]
    Mismatch {
        /// Which path.
        handler: &'static str,
        /// The exit's number, from 1.
        exit: u64,
        /// What was seen instead of what was expected.
        what: String,
    },
    /// The peer VMM could not be run or did not do what the bench expects.
    #[error("peer VMM: {0}")]
    Peer(String),
    /// A bench option is out of range.
    #[error("{option} {value} is out of range — {why}")]
    Option {
        /// The option, as on the command line.
        option: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range.
        why: &'static str,
    },
}

/// CPU time this thread has used (CLOCK_THREAD_CPUTIME_ID), or `None` if the clock cannot be
/// read. A vCPU runs on the thread that calls `KVM_RUN`, so for an exit loop this is guest,
/// KVM and handler time together, without the time the thread waited for a CPU while other
/// work on the machine ran.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    crate::sys::thread_cpu_time()
}

/// The Linux release this runs on (from procfs), for report headers; `unknown` when procfs is
/// not mounted.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Logical CPUs available to this process (1 when it cannot be determined).
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// One line describing the machine, for report headers.
pub fn host_line() -> String {
    format!("host: {} CPUs, Linux {}", host_cpus(), kernel_release())
}

/// Refuses a vCPU count the runner cannot create: 0, or more than `max` (the host's
/// KVM_CAP_MAX_VCPUS), as a [`BenchError::Option`] (exit status 2) before anything runs.
///
/// # Errors
/// [`BenchError::Option`] naming `--vcpus`.
pub fn check_vcpus(vcpus: &[u32], max: u64) -> Result<(), BenchError> {
    for &n in vcpus {
        if n == 0 || u64::from(n) > max {
            return Err(BenchError::Option {
                option: "--vcpus",
                value: u64::from(n),
                why: if n == 0 {
                    "at least 1 vCPU"
                } else {
                    "at most the host's KVM_CAP_MAX_VCPUS"
                },
            });
        }
    }
    Ok(())
}
