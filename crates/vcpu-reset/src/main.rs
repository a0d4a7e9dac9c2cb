//! The `vcpu-reset` command.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vcpu_reset::check;
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
    /// Run the conformance selftest: RESET and INIT vCPUs, read their state back, compare it
    /// with the spec. Exit status: 0 when vcpu-reset's own scenarios pass, 1 on any failure
    /// (with --strict also on findings about the host), 2 when nothing could run.
    Check {
        /// Backend to run on: KVM where /dev/kvm opens, the software model otherwise.
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendArg,
        /// Report format.
        #[arg(long, value_enum, default_value = "table")]
        format: CheckFormat,
        /// Also fail on findings (deviations of the host's own RESET/INIT).
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Kvm,
    Model,
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckFormat {
    Table,
    Json,
    Tap,
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
        Command::Check {
            backend,
            format,
            strict,
        } => {
            let backend = match backend {
                BackendArg::Auto => check::BackendChoice::Auto,
                BackendArg::Kvm => check::BackendChoice::Kvm,
                BackendArg::Model => check::BackendChoice::Model,
            };
            let report = check::run(&check::CheckOptions { backend });
            let text = match format {
                CheckFormat::Table => report.to_table(),
                CheckFormat::Tap => report.to_tap(strict),
                CheckFormat::Json => match report.to_json() {
                    Ok(s) => s + "\n",
                    Err(e) => {
                        eprintln!("vcpu-reset: serialising the report failed: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let printed = print(&text);
            if printed != ExitCode::SUCCESS {
                return printed;
            }
            ExitCode::from(report.exit_code(strict))
        }
    }
}
