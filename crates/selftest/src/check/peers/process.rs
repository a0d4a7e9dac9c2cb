//! Running a peer VMM as a bounded child process: its own process group, stdin closed,
//! stdout and stderr to files, polled until it exits, the probe log is complete, or the time
//! limit passes — then the whole group is killed with SIGKILL (Bochs ignores SIGTERM).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::PeerError;

/// How often the child and its log are looked at.
const POLL: Duration = Duration::from_millis(20);
/// After the log holds every expected run: how long the child may take to exit on its own
/// (QEMU through isa-debug-exit) before it is killed (Bochs halts and waits forever).
const GRACE: Duration = Duration::from_millis(300);

/// How a bounded run ended.
#[derive(Debug)]
pub struct Finished {
    /// The exit status, `None` when the child was killed after its log was complete.
    pub status: Option<ExitStatus>,
    /// Everything the child wrote to stdout and stderr (for error messages).
    pub output: String,
}

/// A child in its own process group; dropping it kills the group.
struct Group {
    child: Child,
    done: bool,
}

impl Group {
    fn kill(&mut self) {
        if self.done {
            return;
        }
        // The whole group the child leads (spawned with process_group(0)), so a `sh -c`
        // wrapper's children (e.g. the VMM it started) die with it.
        crate::sys::kill_process_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counts the probe runs `log` holds: its `#VR<version> end` lines (any record format version).
pub fn ended_runs(log: &[u8]) -> usize {
    log.split(|&b| b == b'\n')
        .filter(|line| {
            let Some(rest) = line.strip_prefix(b"#VR") else {
                return false;
            };
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            digits > 0 && rest[digits..].starts_with(b" end")
        })
        .count()
}

fn ended_runs_in(path: &Path) -> usize {
    std::fs::read(path).map(|b| ended_runs(&b)).unwrap_or(0)
}

/// Runs `cmd` with stdout/stderr in `dir`, until it exits, `log` holds `runs` probe runs, or
/// `timeout` passes (an error, after the group is killed).
pub fn run_bounded(
    peer: &str,
    mut cmd: Command,
    dir: &Path,
    log: &Path,
    runs: usize,
    timeout: Duration,
) -> Result<Finished, PeerError> {
    let out_path: PathBuf = dir.join("stdout.txt");
    let err_path: PathBuf = dir.join("stderr.txt");
    let io = |what: &str, path: &Path, e: std::io::Error| PeerError::Io {
        what: format!("{what} {}", path.display()),
        source: e,
    };
    let stdout = std::fs::File::create(&out_path).map_err(|e| io("create", &out_path, e))?;
    let stderr = std::fs::File::create(&err_path).map_err(|e| io("create", &err_path, e))?;
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let child = cmd.spawn().map_err(|e| PeerError::Spawn {
        peer: peer.to_string(),
        command: format!("{cmd:?}"),
        source: e,
    })?;
    let mut group = Group { child, done: false };
    let start = Instant::now();
    let mut complete_at: Option<Instant> = None;
    let status = loop {
        if let Some(s) = group
            .child
            .try_wait()
            .map_err(|e| io("wait for", Path::new(peer), e))?
        {
            group.done = true;
            break Some(s);
        }
        let now = Instant::now();
        match complete_at {
            Some(t) if now.duration_since(t) >= GRACE => {
                group.kill();
                break None;
            }
            Some(_) => {}
            None if ended_runs_in(log) >= runs => complete_at = Some(now),
            None => {}
        }
        if now.duration_since(start) >= timeout {
            group.kill();
            return Err(PeerError::Timeout {
                peer: peer.to_string(),
                seconds: timeout.as_secs_f64(),
                runs: ended_runs_in(log),
                expected: runs,
            });
        }
        std::thread::sleep(POLL);
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Ok(Finished {
        status,
        output: read(&out_path) + &read(&err_path),
    })
}

/// Where `program` is on `PATH`, if it is there and executable.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A fresh private directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `vcpu-reset-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> Result<TempDir, PeerError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = base.join(format!("vcpu-reset-{label}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(PeerError::Io {
                        what: format!("create {}", p.display()),
                        source: e,
                    });
                }
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_runs_counts_end_lines_of_any_format_version() {
        let log = b"noise\n#VR1 begin a\n#VR1 end 0001 00ff\r\nBochs #VR1 end\n#VR2 end 0003 0102\n#VRx end\n#VR end\n";
        assert_eq!(ended_runs(log), 2);
    }

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail("a\n\nb\nc\n \n", 2), "b | c");
    }
}
