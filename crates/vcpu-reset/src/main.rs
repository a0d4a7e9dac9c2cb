//! The `vcpu-reset` command.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vcpu_reset::spec::{self, Event, Vendor};

#[derive(Parser)]
#[command(
    name = "vcpu-reset",
    version,
    about = "Exact x86 vCPU RESET and INIT, and a conformance selftest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum VendorArg {
    Intel,
    Amd,
}

#[derive(Clone, Copy, ValueEnum)]
enum EventArg {
    Reset,
    Init,
}

#[derive(Clone, Copy, ValueEnum)]
enum SpecFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Subcommand)]
enum Command {
    /// Print the RESET or INIT state table: field, value or rule, citation, note.
    Spec {
        /// Processor vendor whose documents apply.
        #[arg(long, value_enum, default_value = "intel")]
        vendor: VendorArg,
        /// RESET or INIT.
        #[arg(long, value_enum, default_value = "reset")]
        event: EventArg,
        /// Output format. `markdown` prints all four tables (both vendors, both events), as
        /// committed in docs/reset-state.md.
        #[arg(long, value_enum, default_value = "table")]
        format: SpecFormat,
    },
    /// Run the conformance selftest (not implemented yet: prints the RESET table it will
    /// check against).
    Check,
}

fn vendor(v: VendorArg) -> Vendor {
    match v {
        VendorArg::Intel => Vendor::Intel,
        VendorArg::Amd => Vendor::Amd,
    }
}

fn event(e: EventArg) -> Event {
    match e {
        EventArg::Reset => Event::Reset,
        EventArg::Init => Event::Init,
    }
}

fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (e.g. `| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vcpu-reset: writing to stdout failed: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Spec {
            vendor: v,
            event: e,
            format,
        } => {
            let (v, e) = (vendor(v), event(e));
            match format {
                SpecFormat::Table => print(&spec::text_table(v, e)),
                SpecFormat::Markdown => print(&spec::markdown()),
                SpecFormat::Json => match serde_json::to_string_pretty(&spec::entries(v, e)) {
                    Ok(s) => print(&(s + "\n")),
                    Err(err) => {
                        eprintln!("vcpu-reset: serialising the table failed: {err}");
                        ExitCode::from(2)
                    }
                },
            }
        }
        Command::Check => {
            eprintln!(
                "vcpu-reset check: the conformance selftest is not implemented yet; this is the \
                 Intel RESET state it will check against."
            );
            print(&spec::text_table(Vendor::Intel, Event::Reset))
        }
    }
}
