//! The `vcpu-reset` command.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::parse() {
        Ok(cli) => cli::dispatch(cli),
        Err(code) => code,
    }
}
