//! Writing a report to stdout, shared by the subcommands.

use std::io::Write;
use std::process::ExitCode;

/// Write `text` to stdout: success, or 2 after a message when stdout fails.
pub fn print(text: &str) -> ExitCode {
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
