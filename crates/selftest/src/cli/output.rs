//! Writing a report to stdout and messages to stderr, shared by the subcommands.

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use vcpu_reset_selftest::files::escape;

/// Write `text` to stdout: success, or 2 after a message when stdout fails.
pub fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (e.g. `| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            say("vcpu-reset", format_args!("writing to stdout failed: {e}"));
            ExitCode::from(2)
        }
    }
}

/// Write `<who>: <message>` as one line to stderr, the message escaped ([`escape`]): it can
/// quote a file name, a peer's output, a log or an environment variable, and no control
/// character of theirs reaches the terminal.
pub fn say(who: &str, message: impl Display) {
    eprintln!("{who}: {}", escape(&message.to_string()));
}

/// `text` with each line escaped ([`escape`]) and the line breaks kept: for messages that are
/// several lines by design (clap's).
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}
