//! How a peer process is started: what each peer (`qemu.rs`, `bochs.rs`, `cmd.rs`) prepares
//! and `process.rs` runs.

use std::path::PathBuf;
use std::process::Command;

/// How one peer process is started, prepared in its temp dir.
pub struct Launch {
    /// The command (stdin, stdout, stderr and process group are set by the runner).
    pub command: Command,
    /// The file the probe's records end up in.
    pub log: PathBuf,
    /// A description of the command line for the report's host facts.
    pub describe: String,
}
