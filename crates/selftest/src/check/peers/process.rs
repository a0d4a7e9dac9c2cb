//! Running a peer VMM as a bounded child process: its own process group, stdin closed,
//! stdout and stderr to files, polled until it exits, the probe log is complete, or the time
//! limit passes — then the whole group is killed with SIGKILL (Bochs ignores SIGTERM).
//!
//! Bounded in memory and time whatever the peer does: each poll reads only what the log grew
//! by since the last (a log larger than [`MAX_PEER_LOG`], a sparse file included, ends the run
//! at once), and of its stdout and stderr only the last [`OUTPUT_TAIL`] bytes are kept for
//! messages. SIGINT, SIGTERM and SIGHUP while a peer runs kill its group and end the run with
//! [`PeerError::Interrupted`], so the caller removes its temp dir before the process ends.

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
    /// The end of what the child wrote to stdout and of what it wrote to stderr
    /// ([`OUTPUT_TAIL`] bytes of each), for error messages.
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

/// The most a peer's log may hold: the limit `check --from-log` reads (a probe run is about
/// 8 KiB).
pub const MAX_PEER_LOG: u64 = crate::files::MAX_LOG;

/// How much of a peer's stdout and of its stderr is kept for messages: the end of each.
pub const OUTPUT_TAIL: u64 = 16 << 10;

/// The probe runs a growing log holds, read a piece at a time: each [`LogWatch::poll`] reads
/// only the bytes added since the last, and a small state machine classifies the line it is in
/// as [`ended_runs`] would, without keeping the line: every line that is complete counts as it
/// does in the whole log, however the log was cut.
#[derive(Debug, Default)]
pub struct LogWatch {
    offset: u64,
    /// How far the current line matches `#VR<digits> end`.
    line: EndLine,
    runs: usize,
}

/// How far a line matches an end record, `#VR<digits> end` at its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum EndLine {
    /// Nothing of the line yet.
    #[default]
    Start,
    /// The first `n` bytes of `#VR` seen.
    Marker(u8),
    /// `#VR` and no digit yet.
    NoDigit,
    /// `#VR` and at least one digit.
    Digits,
    /// The first `n` bytes of ` end` seen after the digits.
    End(u8),
    /// An end record.
    Yes,
    /// Anything else.
    No,
}

impl EndLine {
    fn next(self, b: u8) -> EndLine {
        const MARKER: &[u8] = b"#VR";
        const END: &[u8] = b" end";
        match self {
            EndLine::Start if b == MARKER[0] => EndLine::Marker(1),
            EndLine::Marker(n) if b == MARKER[usize::from(n)] => {
                if usize::from(n) + 1 == MARKER.len() {
                    EndLine::NoDigit
                } else {
                    EndLine::Marker(n + 1)
                }
            }
            EndLine::NoDigit | EndLine::Digits if b.is_ascii_digit() => EndLine::Digits,
            EndLine::Digits if b == END[0] => EndLine::End(1),
            EndLine::End(n) if b == END[usize::from(n)] => {
                if usize::from(n) + 1 == END.len() {
                    EndLine::Yes
                } else {
                    EndLine::End(n + 1)
                }
            }
            EndLine::Yes => EndLine::Yes,
            _ => EndLine::No,
        }
    }
}

impl LogWatch {
    /// Reads what `path` grew by; returns the probe runs it holds so far.
    ///
    /// # Errors
    /// [`PeerError::LogTooLarge`] when the file is larger than [`MAX_PEER_LOG`].
    pub fn poll(&mut self, peer: &str, path: &Path) -> Result<usize, PeerError> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let Ok(mut file) = std::fs::File::open(path) else {
            return Ok(self.runs); // not created yet
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_PEER_LOG {
            return Err(PeerError::LogTooLarge {
                peer: peer.to_string(),
                bytes: len,
                limit: MAX_PEER_LOG,
            });
        }
        if len <= self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Ok(self.runs);
        }
        let mut buf = vec![0; 64 << 10];
        let mut left = len - self.offset;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = match file.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = self.feed(&buf[..n]);
            self.offset += n as u64;
            left -= n as u64;
        }
        Ok(self.runs)
    }

    /// Takes the next `bytes` of the log (what [`LogWatch::poll`] reads); returns the runs its
    /// complete lines hold so far.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        for &b in bytes {
            if b == b'\n' {
                if self.line == EndLine::Yes {
                    self.runs += 1;
                }
                self.line = EndLine::Start;
            } else {
                self.line = self.line.next(b);
            }
        }
        self.runs
    }
}

/// The last `max` bytes of the file at `path` (lossy UTF-8), or "" if it cannot be read: a
/// seek to the end, whatever the file's size.
pub fn read_tail(path: &Path, max: u64) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `cmd` with stdout/stderr in `dir`, until it exits, `log` holds `runs` probe runs, or
/// `timeout` passes (an error, after the group is killed).
pub fn run_bounded(
    peer: &str,
    cmd: Command,
    dir: &Path,
    log: &Path,
    runs: usize,
    timeout: Duration,
) -> Result<Finished, PeerError> {
    run_bounded_watching(peer, cmd, dir, log, runs, timeout, &[])
}

/// A file a child writes besides its log, bounded in size: what it is (for the error), its
/// path, the most bytes it may hold.
#[derive(Clone, Copy, Debug)]
pub struct Watched<'a> {
    /// What the file is ("the guest console").
    pub what: &'a str,
    /// The file.
    pub path: &'a Path,
    /// The most bytes it may hold.
    pub limit: u64,
}

/// As [`run_bounded`], and each of `watched` is looked at on every poll: one larger than its
/// limit kills the group and ends the run with [`PeerError::OutputTooLarge`] (the file may
/// have grown by what the child writes in one poll interval beyond the limit).
pub fn run_bounded_watching(
    peer: &str,
    mut cmd: Command,
    dir: &Path,
    log: &Path,
    runs: usize,
    timeout: Duration,
    watched: &[Watched<'_>],
) -> Result<Finished, PeerError> {
    let out_path: PathBuf = dir.join("stdout.txt");
    let err_path: PathBuf = dir.join("stderr.txt");
    let io = |what: &str, path: &Path, e: std::io::Error| PeerError::Io {
        what: format!("{what} {}", path.display()),
        error: e,
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
        error: e,
    })?;
    let mut group = Group { child, done: false };
    let _signals = crate::sys::InterruptGuard::install();
    let mut watch = LogWatch::default();
    let start = Instant::now();
    let mut complete_at: Option<Instant> = None;
    let status = loop {
        if let Some(signal) = crate::sys::interrupted() {
            group.kill();
            return Err(PeerError::Interrupted {
                peer: peer.to_string(),
                signal,
            });
        }
        if let Some(s) = group
            .child
            .try_wait()
            .map_err(|e| io("wait for", Path::new(peer), e))?
        {
            group.done = true;
            break Some(s);
        }
        let runs_now = watch.poll(peer, log)?;
        for w in watched {
            let bytes = std::fs::symlink_metadata(w.path).map_or(0, |m| m.len());
            if bytes > w.limit {
                group.kill();
                return Err(PeerError::OutputTooLarge {
                    peer: peer.to_string(),
                    what: w.what.to_string(),
                    bytes,
                    limit: w.limit,
                });
            }
        }
        let now = Instant::now();
        match complete_at {
            Some(t) if now.duration_since(t) >= GRACE => {
                group.kill();
                break None;
            }
            Some(_) => {}
            None if runs_now >= runs => complete_at = Some(now),
            None => {}
        }
        if now.duration_since(start) >= timeout {
            group.kill();
            return Err(PeerError::Timeout {
                peer: peer.to_string(),
                seconds: timeout.as_secs_f64(),
                runs: runs_now,
                expected: runs,
            });
        }
        std::thread::sleep(POLL);
    };
    Ok(Finished {
        status,
        output: read_tail(&out_path, OUTPUT_TAIL) + &read_tail(&err_path, OUTPUT_TAIL),
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
    fn a_log_read_in_pieces_counts_the_runs_of_the_whole() {
        let log =
            b"noise\n#VR2 end 0001 00ff\r\nBochs #VR2 end\n#VR2 begin x\n#VR2 end 0003 0102\n";
        for cut in 1..log.len() {
            let mut w = LogWatch::default();
            for piece in log.chunks(cut) {
                let _ = w.feed(piece);
            }
            assert_eq!(w.runs, 2, "pieces of {cut}");
        }
        let mut w = LogWatch::default();
        let _ = w.feed(b"#VR0000000000000000000000000000000000000000 end\n");
        assert_eq!(w.runs, 1, "a long marker is still an end record");
    }

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail("a\n\nb\nc\n \n", 2), "b | c");
    }
}
