//! `vcpu-reset probe-image`: write the guest probe as a flat firmware image.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use vcpu_reset_selftest::files;
use vcpu_reset_selftest::probe::{self, ProbeOptions, RebootVia};

use super::output::say;

#[derive(Clone, Copy, ValueEnum)]
pub enum RebootArg {
    Cf9Hard,
    Cf9Soft,
    Port92,
    Kbc,
}

impl From<RebootArg> for RebootVia {
    fn from(r: RebootArg) -> RebootVia {
        match r {
            RebootArg::Cf9Hard => RebootVia::Cf9Hard,
            RebootArg::Cf9Soft => RebootVia::Cf9Soft,
            RebootArg::Port92 => RebootVia::Port92,
            RebootArg::Kbc => RebootVia::Kbc,
        }
    }
}

#[derive(Args)]
pub struct ProbeImageArgs {
    /// Where to write the 64 KiB image.
    #[arg(short, long)]
    output: PathBuf,
    /// After the first probe, dirty CR0.CD/NW, the x87 unit, PAT and SYSENTER_CS and reboot
    /// once this way, then probe again.
    #[arg(long, value_enum)]
    reboot: Option<RebootArg>,
}

/// Build the image and write it: success, or 2 after a message.
pub fn run(args: &ProbeImageArgs) -> ExitCode {
    let image = match image(args.reboot.map(RebootVia::from)) {
        Ok(i) => i,
        Err(e) => {
            say(
                "vcpu-reset probe-image",
                format_args!("building the probe failed: {e}"),
            );
            return ExitCode::from(2);
        }
    };
    match files::write_output(&args.output, "the probe image", &image) {
        Ok(()) => {
            say("vcpu-reset probe-image", written(&args.output, image.len()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            say("vcpu-reset probe-image", e);
            ExitCode::from(2)
        }
    }
}

/// The probe image: tagged `probe` or `probe-<mechanism>`, printing on ports 0xE9 and 0x3F8,
/// rebooting once through `via` if given.
fn image(via: Option<RebootVia>) -> Result<Vec<u8>, probe::ProbeError> {
    let tag = match via {
        Some(v) => format!("probe-{}", v.name()),
        None => "probe".to_string(),
    };
    let mut opts = ProbeOptions::reset_vector(&tag);
    opts.out_ports = vec![0xe9, 0x3f8];
    opts.reboot = via;
    probe::firmware_image(&opts)
}

/// The message after writing `len` bytes to `output`: what was written and how to use it.
fn written(output: &Path, len: usize) -> String {
    format!(
        "wrote {} ({} bytes); e.g. qemu-system-x86_64 -bios {} -display none -accel tcg -debugcon file:probe.log -global isa-debugcon.iobase=0xe9 -device isa-debug-exit,iobase=0xf4,iosize=0x04 (it exits with status 1 when the probe ends), then vcpu-reset check --from-log probe.log",
        files::shown_path(output),
        len,
        files::shown_path(output)
    )
}
