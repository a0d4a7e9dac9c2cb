//! The command line: the clap types of `vcpu-reset`, parsing, and dispatch to one module per
//! subcommand.

mod bench;
mod check;
mod output;
mod probe_image;
mod run;
mod spec;
mod values;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vcpu_reset_selftest::files::{QUOTE_MAX, quote};

#[derive(Parser)]
#[command(
    name = "vcpu-reset",
    version,
    about = "Exact x86 vCPU RESET and INIT, and a conformance selftest"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the RESET or INIT state table: field, value or rule, citation, note.
    Spec(spec::SpecArgs),
    /// Run the conformance selftest: RESET and INIT vCPUs, read their state back, compare it
    /// with the spec. Exit status: 0 when vcpu-reset's own scenarios pass, 1 on any failure
    /// (with --strict also on findings about the host), 2 when nothing could run.
    Check(check::CheckArgs),
    /// Write a flat firmware image that runs the guest probe at the reset vector on any VMM or
    /// emulator, prints its records on port 0xE9 and COM1, and ends through port 0xF4 (QEMU's
    /// isa-debug-exit). `check --from-log` turns its output into verdicts.
    ProbeImage(probe_image::ProbeImageArgs),
    /// Boot a flat firmware image on KVM at the real reset vector, rebooting in place (RESET or
    /// INIT of every vCPU, RAM kept) whenever the guest asks, until it writes the exit port.
    Run(run::RunArgs),
    /// Measure on KVM, paths side by side: the cost of an exit, or of a reboot.
    Bench(bench::BenchArgs),
}

/// Parse the command line; clap's own messages echo a bad value whole, so cut every argument
/// longer than [`QUOTE_MAX`] bytes down in them. `Err`: the exit status, the message printed.
pub fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprint!(
                "{}",
                output::escape_lines(&shorten_long_args(e.to_string()))
            );
            Err(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)))
        }
    }
}

/// `text` with every command-line argument (or `--flag=value`'s value) longer than
/// [`QUOTE_MAX`] bytes cut down to a quote of it.
fn shorten_long_args(mut text: String) -> String {
    for arg in std::env::args_os().skip(1) {
        let arg = arg.to_string_lossy();
        // `--flag=value` is quoted by its value.
        let value = match arg.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") => v,
            _ => arg.as_ref(),
        };
        if value.len() > QUOTE_MAX {
            text = text.replace(value, &quote(value.as_bytes(), QUOTE_MAX));
        }
    }
    text
}

/// Run the subcommand; its exit status.
pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Spec(args) => spec::run(&args),
        Command::Check(args) => check::run(&args),
        Command::ProbeImage(args) => probe_image::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(args),
    }
}
