//! `vcpu-reset spec`: the RESET or INIT state table.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use vcpu_reset::spec::{self, Event, Vendor};

use super::output::{print, say};
use super::values::VendorArg;

#[derive(Clone, Copy, ValueEnum)]
pub enum EventArg {
    Reset,
    Init,
}

impl From<EventArg> for Event {
    fn from(e: EventArg) -> Event {
        match e {
            EventArg::Reset => Event::Reset,
            EventArg::Init => Event::Init,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SpecFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Args)]
pub struct SpecArgs {
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
}

/// Print the table in the format asked for.
pub fn run(args: &SpecArgs) -> ExitCode {
    let (vendor, event) = (Vendor::from(args.vendor), Event::from(args.event));
    match args.format {
        SpecFormat::Table => print(&spec::text_table(vendor, event)),
        SpecFormat::Markdown => print(&spec::markdown()),
        SpecFormat::Json => match serde_json::to_string_pretty(&spec::entries(vendor, event)) {
            Ok(s) => print(&(s + "\n")),
            Err(err) => {
                say(
                    "vcpu-reset",
                    format_args!("serialising the table failed: {err}"),
                );
                ExitCode::from(2)
            }
        },
    }
}
