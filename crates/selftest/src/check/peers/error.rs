//! The errors of `check --vmm`, apart from the peers that raise them.

use thiserror::Error;

use crate::probe::ProbeError;

/// Errors of `check --vmm`.
#[derive(Debug, Error)]
pub enum PeerError {
    /// The peer is not installed.
    #[error(
        "{peer}: {program} is not installed — install the Debian package(s) {package} (apt-get install {package})"
    )]
    Missing {
        /// Peer name.
        peer: String,
        /// What is missing.
        program: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// `qemu-kvm` without a usable `/dev/kvm`.
    #[error(
        "qemu-kvm: /dev/kvm cannot be opened ({error}) — QEMU's KVM accelerator needs it (load the kvm module, join group kvm), or use --vmm qemu-tcg"
    )]
    NoKvm {
        /// Why it cannot be opened.
        error: std::io::Error,
    },
    /// The probe image could not be built.
    #[error("building the probe image failed: {0}")]
    Probe(ProbeError),
    /// A file operation failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// The peer could not be started.
    #[error("{peer}: cannot run {command}: {error} — check the command and PATH")]
    Spawn {
        /// Peer name.
        peer: String,
        /// The command line.
        command: String,
        /// The error.
        error: std::io::Error,
    },
    /// The peer did not finish in time (it was killed).
    #[error(
        "{peer}: no complete probe log after {seconds} s (killed; {runs} of {expected} runs printed) — raise --vmm-timeout or check that the VMM writes port 0xE9 to the log"
    )]
    Timeout {
        /// Peer name.
        peer: String,
        /// The limit.
        seconds: f64,
        /// Runs in the log when it was killed.
        runs: usize,
        /// Runs expected.
        expected: usize,
    },
    /// The peer's log grew past what a probe log can be (e.g. a sparse file): the run was
    /// killed at once.
    #[error(
        "{peer}: its log holds {bytes} bytes, more than the {limit} a probe log may (killed) — check that the VMM writes only port 0xE9 output to the log"
    )]
    LogTooLarge {
        /// Peer name.
        peer: String,
        /// The log's size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A file the child writes besides its log (a guest's console) grew past its limit.
    #[error("{peer}: {what} grew to {bytes} bytes, more than the {limit} allowed (killed)")]
    OutputTooLarge {
        /// Peer name.
        peer: String,
        /// What the file is ("the guest console").
        what: String,
        /// Its size when it was seen.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The log's runs are not those of the image the peer was given.
    #[error(
        "{peer}: its log holds a run tagged {found}, not {expected} — the VMM did not boot the probe image it was given (check that the command uses {{image}} and writes a fresh {{log}})"
    )]
    WrongImage {
        /// Peer name.
        peer: String,
        /// The tag of the image it was given.
        expected: String,
        /// The first other tag in the log (quoted).
        found: String,
    },
    /// SIGINT, SIGTERM or SIGHUP arrived while the peer ran: its process group was killed.
    #[error("{peer}: interrupted by signal {signal}; the VMM's process group was killed")]
    Interrupted {
        /// Peer name.
        peer: String,
        /// The signal.
        signal: i32,
    },
    /// The peer exited before the probe printed everything.
    #[error(
        "{peer}: exited ({status}) with {runs} of {expected} probe runs in its log — check that the VMM boots the image as its firmware and writes port 0xE9 to the log; its last output: {output}"
    )]
    Exited {
        /// Peer name.
        peer: String,
        /// Exit status.
        status: String,
        /// Runs in the log.
        runs: usize,
        /// Runs expected.
        expected: usize,
        /// The end of the peer's own output.
        output: String,
    },
    /// The peer cannot boot this image.
    #[error("{peer}: cannot boot {why}")]
    Image {
        /// Peer name.
        peer: String,
        /// What is wrong.
        why: String,
    },
    /// An unusable `--vmm-cmd` template.
    #[error("--vmm-cmd {template:?}: {why}")]
    Template {
        /// The template.
        template: String,
        /// What is wrong.
        why: String,
    },
}

// The message says what failed with the probe's own error in it, so the error is not also a
// `source()`: a report that walks the chain prints it once.
impl From<ProbeError> for PeerError {
    fn from(e: ProbeError) -> Self {
        PeerError::Probe(e)
    }
}

impl PeerError {
    /// True when nothing can run for this peer on this machine (exit status 2).
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            PeerError::Missing { .. }
                | PeerError::NoKvm { .. }
                | PeerError::Template { .. }
                | PeerError::Probe(_)
                | PeerError::Image { .. }
        )
    }
}
