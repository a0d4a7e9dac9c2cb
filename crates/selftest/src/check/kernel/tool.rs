//! Helper programs (`dpkg-deb`, `xz`, `zstd`, `gzip`) run like a peer VMM: in their own process
//! group, bounded in time, killed on SIGINT, SIGTERM and SIGHUP.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::KernelError;
use crate::check::peers::{PeerError, process};

/// How long one helper program may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `cmd` (its stdout and stderr go to files in `dir`) to its end; an error when it cannot
/// start, fails, or takes longer than [`TOOL_TIMEOUT`].
pub fn run(what: &str, cmd: Command, dir: &Path) -> Result<(), KernelError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    // No probe log: the program runs until it exits (or the time limit passes).
    let no_log = dir.join("no-log");
    match process::run_bounded(&program, cmd, dir, &no_log, usize::MAX, TOOL_TIMEOUT) {
        Ok(f) => match f.status {
            Some(s) if s.success() => Ok(()),
            s => Err(KernelError::Tool {
                what: what.to_string(),
                detail: format!(
                    "{program} exited ({}): {}",
                    s.map_or_else(|| "killed".to_string(), |s| s.to_string()),
                    crate::files::escape(&process::tail(&f.output, 4))
                ),
            }),
        },
        Err(PeerError::Interrupted { signal, .. }) => Err(KernelError::Interrupted { signal }),
        Err(PeerError::Spawn { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(KernelError::Missing {
                program: program.clone(),
                hint: format!("{what} needs it (Debian package {})", package_of(&program)),
            })
        }
        Err(e) => Err(KernelError::Tool {
            what: what.to_string(),
            detail: e.to_string(),
        }),
    }
}

/// The Debian package that has `program`.
fn package_of(program: &str) -> &'static str {
    match program {
        "dpkg-deb" => "dpkg",
        "xz" => "xz-utils",
        "zstd" => "zstd",
        "gzip" => "gzip",
        _ => "that provides it",
    }
}

/// Decompresses `input` into `output` with `program -dc` (xz, zstd or gzip).
pub fn decompress(
    program: &str,
    input: &Path,
    output: &Path,
    dir: &Path,
) -> Result<(), KernelError> {
    let mut cmd = Command::new("sh");
    // The paths are arguments, never parsed by the shell.
    cmd.args(["-c", "exec \"$0\" -dc -- \"$1\" > \"$2\"", program])
        .arg(input)
        .arg(output);
    if process::which(program).is_none() {
        return Err(KernelError::Missing {
            program: program.to_string(),
            hint: format!(
                "decompressing {} needs it (Debian package {})",
                crate::files::shown_path(input),
                package_of(program)
            ),
        });
    }
    run(
        &format!("decompressing {}", crate::files::shown_path(input)),
        cmd,
        dir,
    )
}
