//! Private temporary directories: every temporary file the tool writes (a peer's probe image
//! and logs, the peer benchmark's firmware and strace log, the fuzzer's scratch file) lives in
//! one of these, never under a predictable name in the shared temp dir.
//!
//! The directory is made with mkdir(2) and mode 0700: mkdir fails on a name that exists,
//! a symbolic link planted there included (it does not follow a link in the last component),
//! so another user can neither choose where the tool writes nor see or replace what it wrote.
//! It is removed with everything in it when dropped, also when a run is interrupted by SIGINT,
//! SIGTERM or SIGHUP while a peer runs (`crate::sys::InterruptGuard`).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// How many names are tried before giving up (each taken name, e.g. a planted link, costs one).
const ATTEMPTS: u32 = 1000;

/// The number in the next name tried.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory only this user can enter, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes `vcpu-reset-<label>-<pid>-<n>` in the system temp dir (`TMPDIR`, else `/tmp`).
    ///
    /// # Errors
    /// mkdir's error, or `AlreadyExists` when 1000 names in a row are taken.
    pub fn new(label: &str) -> io::Result<TempDir> {
        Self::new_in(&std::env::temp_dir(), label)
    }

    /// Makes `vcpu-reset-<label>-<pid>-<n>` in `base`, with mode 0700. `label` keeps only
    /// ASCII letters, digits, `-` and `_`.
    ///
    /// # Errors
    /// As [`TempDir::new`].
    pub fn new_in(base: &Path, label: &str) -> io::Result<TempDir> {
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        for _ in 0..ATTEMPTS {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("vcpu-reset-{label}-{}-{n}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{ATTEMPTS} names for a temporary directory in {} are taken",
                base.display()
            ),
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates the new file `name` in the directory (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600).
    ///
    /// # Errors
    /// open's error (`AlreadyExists` if the name is taken).
    pub fn create(&self, name: &str) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.0.join(name))
    }

    /// Writes `bytes` to the new file `name` ([`TempDir::create`]) and returns its path.
    ///
    /// # Errors
    /// As [`TempDir::create`], or the write's error.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        use std::io::Write as _;
        self.create(name)?.write_all(bytes)?;
        Ok(self.0.join(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_directory_is_private_and_removed_on_drop() {
        let dir = TempDir::new("unit").expect("temp dir");
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = dir.write("a.bin", b"x").expect("write");
        let fmode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(fmode & 0o777, 0o600);
        assert!(dir.create("a.bin").is_err(), "a name is written once");
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn planted_links_at_the_next_names_are_not_followed() {
        let base = TempDir::new("base").expect("base");
        let victim = base.write("victim", b"precious").expect("victim");
        // Links for the next 50 names, as another user who guessed the pid would plant them.
        let pid = std::process::id();
        let next = NEXT.load(Ordering::Relaxed);
        for n in next..next + 50 {
            let name = format!("vcpu-reset-planted-{pid}-{n}");
            std::os::unix::fs::symlink(&victim, base.path().join(name)).expect("plant");
        }
        let dir = TempDir::new_in(base.path(), "planted").expect("a fresh name");
        let n: u32 = dir
            .path()
            .to_string_lossy()
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number");
        assert!(n >= next + 50, "{n}: the planted names were skipped");
        let meta = std::fs::symlink_metadata(dir.path()).expect("metadata");
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        dir.write("probe.rom", b"image").expect("write");
        drop(dir);
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    }
}
