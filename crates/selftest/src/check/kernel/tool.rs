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

/// Decompresses `input` with `program -dc` into memory, at most `limit` bytes: the output
/// comes through a pipe read with that bound, so nothing is written to disk and a file that
/// decompresses to more (a gzip bomb) stops at byte `limit + 1` — the program is killed and
/// that is the error. In its own process group, bounded by [`TOOL_TIMEOUT`], killed on SIGINT,
/// SIGTERM and SIGHUP.
///
/// # Errors
/// [`KernelError::Tool`] when it decompresses to more than `limit` bytes, fails or takes too
/// long; [`KernelError::Missing`] without the program; [`KernelError::Interrupted`].
pub fn decompress_bounded(
    program: &str,
    input: &Path,
    limit: u64,
    dir: &Path,
) -> Result<Vec<u8>, KernelError> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    let what = format!("decompressing {}", crate::files::shown_path(input));
    if process::which(program).is_none() {
        return Err(KernelError::Missing {
            program: program.to_string(),
            hint: format!("{what} needs it (Debian package {})", package_of(program)),
        });
    }
    let err_path = dir.join("decompress.err");
    let stderr = std::fs::File::create(&err_path)
        .map_err(|e| KernelError::io(format!("create {}", err_path.display()), e))?;
    let mut child = Command::new(program)
        .args(["-dc", "--"])
        .arg(input)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| KernelError::Tool {
            what: what.clone(),
            detail: format!("cannot start {program}: {e}"),
        })?;
    let kill = |child: &mut std::process::Child| {
        crate::sys::kill_process_group(child.id());
        let _ = child.kill();
        let _ = child.wait();
    };
    let Some(stdout) = child.stdout.take() else {
        kill(&mut child);
        return Err(KernelError::Tool {
            what,
            detail: format!("{program}'s output pipe was not opened"),
        });
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let read = stdout
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map(|_| out);
        let _ = tx.send(read);
    });
    let start = std::time::Instant::now();
    let read = loop {
        if let Some(signal) = crate::sys::interrupted() {
            kill(&mut child);
            return Err(KernelError::Interrupted { signal });
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(read) => break read,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if start.elapsed() < TOOL_TIMEOUT => {}
            Err(_) => {
                kill(&mut child);
                return Err(KernelError::Tool {
                    what,
                    detail: format!(
                        "{program} did not finish in {} s (killed)",
                        TOOL_TIMEOUT.as_secs()
                    ),
                });
            }
        }
    };
    let out = match read {
        Ok(out) if out.len() as u64 > limit => {
            kill(&mut child);
            return Err(KernelError::Tool {
                what,
                detail: format!(
                    "it decompresses to more than {limit} bytes, the most accepted ({program} stopped there)"
                ),
            });
        }
        Ok(out) => out,
        Err(e) => {
            kill(&mut child);
            return Err(KernelError::io(format!("read {program}'s output"), e));
        }
    };
    let status = child
        .wait()
        .map_err(|e| KernelError::io(format!("wait for {program}"), e))?;
    if !status.success() {
        return Err(KernelError::Tool {
            what,
            detail: format!(
                "{program} exited ({status}): {}",
                crate::files::escape(&process::tail(
                    &process::read_tail(&err_path, process::OUTPUT_TAIL),
                    4
                ))
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_decompresses_past_the_limit_is_refused_without_writing_it() {
        if process::which("gzip").is_none() {
            eprintln!("skipped: gzip is not installed");
            return;
        }
        let dir = crate::tempdir::TempDir::new("gzip-test").expect("temp dir");
        // 8 MiB of zeros compress to about 8 KiB: a small bomb.
        let zeros = dir.write("zeros", &vec![0u8; 8 << 20]).expect("write");
        let made = Command::new("gzip")
            .arg("-9")
            .arg(&zeros)
            .status()
            .expect("gzip");
        assert!(made.success());
        let gz = dir.path().join("zeros.gz");
        let e = decompress_bounded("gzip", &gz, 1 << 20, dir.path()).expect_err("too large");
        assert!(
            e.to_string()
                .contains("it decompresses to more than 1048576 bytes, the most accepted"),
            "{e}"
        );
        let whole = decompress_bounded("gzip", &gz, 8 << 20, dir.path()).expect("fits");
        assert_eq!(whole.len(), 8 << 20);
        assert!(whole.iter().all(|&b| b == 0));
        let bad = dir.write("bad.gz", b"not gzip").expect("write");
        let e = decompress_bounded("gzip", &bad, 1 << 20, dir.path()).expect_err("bad");
        assert!(e.to_string().contains("gzip exited"), "{e}");
    }
}
