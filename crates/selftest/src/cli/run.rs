//! `vcpu-reset run`: boot a flat firmware image on KVM, rebooting in place.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use vcpu_reset_selftest::files;
use vcpu_reset_selftest::runner::{Firmware, Sink, Vm, VmConfig};

use super::output::say;
use super::values::{parse_timeout, shown};

#[derive(Args)]
pub struct RunArgs {
    /// The firmware: a flat image of whole 4 KiB pages, at most 16 MiB, ending with the
    /// reset vector; it is placed to end at 4 GiB.
    firmware: PathBuf,
    /// Number of vCPUs; APs wait for INIT-SIPI-SIPI from the guest.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// RAM in MiB.
    #[arg(long, default_value_t = 16)]
    memory: u32,
    /// Most reboots before the run is ended with an error.
    #[arg(long, default_value_t = 100)]
    reboots: u32,
    /// Time limit in seconds (more than 0, at most a year); a guest that hangs ends with an
    /// error.
    #[arg(long, default_value = "10", value_parser = parse_timeout)]
    timeout: Duration,
    /// Write the debug console's output (port 0xE9) to this file instead of stdout. It is
    /// never the firmware file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write COM1's output to this file instead of stdout (the same file as --output puts
    /// both channels in it, in the order the guest wrote them).
    #[arg(long)]
    serial: Option<PathBuf>,
    /// The guest's exit port (a write of value V ends the run; V's low byte is the status):
    /// hex with 0x (0xf4) or decimal (244).
    #[arg(long, default_value = "0xf4", value_parser = parse_port)]
    exit_port: u16,
    /// Start from KVM's own vCPU-creation state instead of vcpu-reset's RESET.
    #[arg(long)]
    kvm_create_state: bool,
}

/// A port: `0x`-prefixed hex or decimal, 0 to 0xFFFF.
fn parse_port(s: &str) -> Result<u16, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse::<u16>(),
    };
    parsed.map_err(|e| {
        format!(
            "{} is not a port number (0x0 to 0xffff; hex with 0x, e.g. 0xf4, or decimal): {e}",
            shown(s)
        )
    })
}

/// Boot the firmware until the guest exits: the low byte of its exit value; 2 when the VM
/// cannot be set up, 1 when the run fails, each after a message.
pub fn run(args: &RunArgs) -> ExitCode {
    let mut vm = match vm(args) {
        Ok(vm) => vm,
        Err(e) => {
            say("vcpu-reset run", e);
            return ExitCode::from(2);
        }
    };
    match vm.run() {
        Ok(out) => {
            say(
                "vcpu-reset run",
                format_args!(
                    "the guest exited with value {:#x} after {}",
                    out.exit_value,
                    out.summary()
                ),
            );
            ExitCode::from((out.exit_value & 0xff) as u8)
        }
        Err(e) => {
            say("vcpu-reset run", e);
            ExitCode::from(1)
        }
    }
}

/// The VM, built from the firmware, with its output files opened; `Err`: why it cannot be.
///
/// The output files are checked against the inputs first, and opened (created, truncated)
/// only once the VM is built, so that a bad argument leaves them as they were.
fn vm(args: &RunArgs) -> Result<Vm, String> {
    let firmware = Firmware::load(&args.firmware).map_err(|e| e.to_string())?;
    let device = vcpu_reset_selftest::host::device();
    let inputs = [
        ("the firmware file", args.firmware.as_path()),
        ("the KVM device", device.as_path()),
    ];
    for (flag, path) in [("--output", &args.output), ("--serial", &args.serial)] {
        if let Some(path) = path {
            files::refuse_input_as_output(flag, path, &inputs)?;
        }
    }
    let mut vm = Vm::new(&firmware, config(args)).map_err(|e| e.to_string())?;
    let (sink, serial) = sinks(args)?;
    vm.set_output(
        sink.unwrap_or(Sink::Stdout),
        Some(serial.unwrap_or(Sink::Stdout)),
    );
    Ok(vm)
}

/// The VM's configuration, its guest output discarded until [`Vm::set_output`].
fn config(args: &RunArgs) -> VmConfig {
    VmConfig {
        vcpus: args.vcpus,
        memory_mib: args.memory,
        max_reboots: args.reboots,
        timeout: args.timeout,
        sink: Sink::Discard,
        serial: None,
        exit_port: args.exit_port,
        kvm_create_state: args.kvm_create_state,
    }
}

/// The files of --output and --serial, opened (one sink for both when they name the same
/// file); `None` for a flag not given.
fn sinks(args: &RunArgs) -> Result<(Option<Sink>, Option<Sink>), String> {
    let (output, serial) = (args.output.as_deref(), args.serial.as_deref());
    let sink = output.map(|p| open_output(p, "--output")).transpose()?;
    let serial = match (serial, output) {
        (Some(s), Some(o)) if files::same_file(s, o) || s == o => sink.clone(),
        (Some(s), _) => Some(open_output(s, "--serial")?),
        (None, _) => None,
    };
    Ok((sink, serial))
}

/// Open (create or truncate) the output file `path` of option `flag`.
fn open_output(path: &Path, flag: &str) -> Result<Sink, String> {
    let f = files::create_output(path, flag)?;
    Ok(Sink::File(Arc::new(Mutex::new(f))))
}
