//! `vcpu-reset bench`: exit and reboot costs on KVM, paths side by side.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vcpu_reset::backend::kvm::KvmHost;
use vcpu_reset_selftest::bench::{BenchError, exits, peer, reboot, soak};

use super::output::{print, say};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Exit handling: (a) bare KVM_RUN, (b) GET_REGS+GET_SREGS+SET_REGS per exit, (c) the
    /// register cache with sync regs; µs per exit, ratios to (a), ioctls per exit.
    Exits {
        /// Exits per handler per repetition.
        #[arg(long, default_value_t = exits::ExitOptions::default().exits)]
        exits: u64,
        /// Repetitions, the handlers interleaved; figures are medians over them.
        #[arg(long, default_value_t = exits::ExitOptions::default().reps)]
        reps: u32,
    },
    /// Warm reboot in place vs tearing down and recreating the VM; µs per reboot, speedup,
    /// ioctls per vCPU. Measures 1, 2 and 32 vCPUs unless --vcpus is given.
    Reboot {
        /// Measure this vCPU count only.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Timed reboots per path and vCPU count.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Compare with this VMM instead: the same firmware rebooted in it and in vcpu-reset's
        /// runner (only `qemu`).
        #[arg(long, value_parser = ["qemu"])]
        peer: Option<String>,
        /// With --peer: reboots per measured run pair.
        #[arg(long, default_value_t = peer::PeerBenchOptions::default().reboots)]
        reboots: u32,
        /// With --peer: repetitions.
        #[arg(long, default_value_t = peer::PeerBenchOptions::default().reps)]
        reps: u32,
    },
    /// Soak a 2-vCPU VM: RESET+run cycles, then guest-driven warm reboots; fds, threads and
    /// RSS at start, middle and end (they must stay constant), and cycles per second.
    Soak {
        /// Host-driven RESET+run cycles.
        #[arg(long, default_value_t = 100_000)]
        cycles: u64,
        /// Guest-driven warm reboots (0xCF9 hard reset).
        #[arg(long, default_value_t = 100_000)]
        reboots: u64,
    },
}

/// Print the report; 2 when KVM cannot be opened or an option is out of range, 1 when the
/// bench fails. A missed target is reported in the text, not in the exit status.
pub fn run(args: BenchArgs) -> ExitCode {
    let host = match vcpu_reset_selftest::host::open() {
        Ok(h) => h,
        Err(e) => {
            say("vcpu-reset bench", e);
            return ExitCode::from(2);
        }
    };
    match report(args.which, host) {
        Ok(text) => print(&text),
        Err(e) => {
            say("vcpu-reset bench", &e);
            match e {
                BenchError::Option { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// Run the bench `which` names on `host` (the reboot benches open KVM themselves, so they
/// close `host` first); its report as text.
fn report(which: BenchCommand, host: KvmHost) -> Result<String, BenchError> {
    match which {
        BenchCommand::Exits { exits: n, reps } => {
            let options = exits::ExitOptions {
                exits: n,
                reps,
                ..exits::ExitOptions::default()
            };
            exits::run(&host, &options).map(|r| r.to_text())
        }
        BenchCommand::Reboot {
            vcpus,
            peer: Some(_),
            reboots,
            reps,
            ..
        } => {
            drop(host);
            peer_reboot(vcpus, reboots, reps)
        }
        BenchCommand::Reboot { vcpus, rounds, .. } => {
            drop(host);
            let options = reboot::RebootOptions {
                vcpus: vcpu_counts(vcpus),
                rounds,
            };
            reboot::run(&options).map(|r| r.to_text())
        }
        BenchCommand::Soak { cycles, reboots } => {
            soak::run(host, &soak::SoakOptions { cycles, reboots }).map(|r| r.to_text())
        }
    }
}

/// `bench reboot --peer qemu`: QEMU's reboots beside the runner's.
fn peer_reboot(vcpus: Option<u32>, reboots: u32, reps: u32) -> Result<String, BenchError> {
    let options = peer::PeerBenchOptions {
        vcpus: vcpu_counts(vcpus),
        reboots,
        reps,
    };
    peer::run(&options).map(|r| r.to_text())
}

/// The vCPU counts to measure: `vcpus` alone if given, else [`reboot::DEFAULT_VCPUS`].
fn vcpu_counts(vcpus: Option<u32>) -> Vec<u32> {
    vcpus.map_or_else(|| reboot::DEFAULT_VCPUS.to_vec(), |n| vec![n])
}
