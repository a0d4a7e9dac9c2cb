//! Reading input files with a bound.
//!
//! Every file vcpu-reset reads from a user (firmware images, probe logs, state JSON) goes
//! through [`read_bounded`]: special files that never end (`/dev/zero`, a FIFO, a terminal) and
//! directories are refused before anything is read, at most `limit + 1` bytes are read, and the
//! buffer grows with what was actually read — never from a size the file (or its metadata)
//! claims — so a hostile or mistaken path costs at most `limit` bytes of memory and stops at once.

use std::io::Read;
use std::path::Path;

/// Largest probe log `check --from-log` reads: 64 MiB. A probe run is about 3 KiB; a log of
/// thousands of runs still fits, and a runaway or hostile log is refused before it costs memory.
pub const MAX_LOG: u64 = 64 << 20;
/// Largest state JSON file read: 16 MiB (a full vCPU state is a few KiB).
pub const MAX_STATE_JSON: u64 = 16 << 20;

/// Why an input file was refused.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The path does not exist.
    #[error("{what} {path}: cannot read it: no such file")]
    NotFound {
        /// What the file is for ("firmware", "probe log", ...).
        what: String,
        /// The path (at most [`QUOTE_MAX`] bytes of it).
        path: String,
    },
    /// The path is not a regular file.
    #[error("{what} {path}: is a {kind}, not a regular file — write the data to a file first")]
    NotRegular {
        /// What the file is for.
        what: String,
        /// The path (at most [`QUOTE_MAX`] bytes of it).
        path: String,
        /// "directory", "FIFO", "character device", ...
        kind: &'static str,
    },
    /// More than the limit.
    #[error("{what} {path}: larger than the {limit} bytes accepted — {hint}")]
    TooLarge {
        /// What the file is for.
        what: String,
        /// The path (at most [`QUOTE_MAX`] bytes of it).
        path: String,
        /// The limit in bytes.
        limit: u64,
        /// What to do.
        hint: &'static str,
    },
    /// An I/O error.
    #[error("{what} {path}: cannot read it: {error}")]
    Io {
        /// What the file is for.
        what: String,
        /// The path (at most [`QUOTE_MAX`] bytes of it).
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

fn kind_of(ft: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        None
    } else if ft.is_dir() {
        Some("directory")
    } else if ft.is_fifo() {
        Some("FIFO")
    } else if ft.is_char_device() {
        Some("character device")
    } else if ft.is_block_device() {
        Some("block device")
    } else if ft.is_socket() {
        Some("socket")
    } else {
        Some("special file")
    }
}

/// Read the regular file at `path` (described as `what` in errors), at most `limit` bytes.
///
/// # Errors
/// [`InputError::NotRegular`] for directories, FIFOs, devices and sockets (checked before the
/// open, and again on the opened file, so a FIFO is never opened and cannot block);
/// [`InputError::TooLarge`] as soon as byte `limit + 1` is read (a sparse 1 GiB file is refused
/// by its size without reading it); [`InputError::NotFound`] and [`InputError::Io`] otherwise.
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, InputError> {
    let shown = shown_path(path);
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            InputError::NotFound {
                what: what.into(),
                path: shown.clone(),
            }
        } else {
            InputError::Io {
                what: what.into(),
                path: shown.clone(),
                error: source,
            }
        }
    };
    let not_regular = |kind| InputError::NotRegular {
        what: what.into(),
        path: shown.clone(),
        kind,
    };
    let too_large = || InputError::TooLarge {
        what: what.into(),
        path: shown.clone(),
        limit,
        hint: "is it the right file?",
    };
    // Refuse special files before opening them: opening a FIFO blocks until a writer comes.
    if let Some(kind) = kind_of(std::fs::metadata(path).map_err(io)?.file_type()) {
        return Err(not_regular(kind));
    }
    // O_NONBLOCK: should the path be swapped for a FIFO after the check, the open does not
    // wait for a writer (and the check of the opened file below refuses it). It changes
    // nothing for reads of a regular file.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?
    };
    // The path may have been swapped between the check and the open: check the opened file.
    let meta = file.metadata().map_err(io)?;
    if let Some(kind) = kind_of(meta.file_type()) {
        return Err(not_regular(kind));
    }
    if meta.len() > limit {
        return Err(too_large());
    }
    // The size is only a hint for the first allocation, capped by the limit; the read below
    // is what counts (a file can grow while it is read).
    let hint = usize::try_from(meta.len().min(limit)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(hint.min(1 << 20));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Creates (or truncates) an output file without hanging: a FIFO with no reader is refused
/// at once (ENXIO) instead of blocking the open forever; with a reader, writes block as usual.
///
/// # Errors
/// The open's error, with the path (at most 80 bytes of it) and what to do.
pub fn create_output(path: &Path, what: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = shown_path(path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => format!(
                "cannot write {what} to {shown}: it is a FIFO with no reader — start the reader first, or write to a regular file"
            ),
            _ => format!("cannot create {what} {shown}: {e}"),
        })?;
    crate::sys::set_blocking(&file).map_err(|e| format!("cannot write {what} to {shown}: {e}"))?;
    Ok(file)
}

/// Whether `a` and `b` name the same existing file: the same device and inode once symbolic
/// links are followed, so a link or a hard link to a file is that file. A path that does not
/// exist names no file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuses the output file `path` of option `flag` when it is one of the `inputs` (what it is,
/// its path) as [`same_file`] compares them: writing there would destroy the input.
///
/// # Errors
/// The message naming the option, the file and the input it is.
pub fn refuse_input_as_output(
    flag: &str,
    path: &Path,
    inputs: &[(&str, &Path)],
) -> Result<(), String> {
    match inputs.iter().find(|(_, input)| same_file(path, input)) {
        Some((what, _)) => Err(format!(
            "{flag} {} is {what} — writing there would destroy it; choose another file",
            shown_path(path)
        )),
        None => Ok(()),
    }
}

/// Writes `bytes` to a new (or truncated) output file, as [`create_output`] opens it.
///
/// # Errors
/// The open's or the write's error, with the path and what to do.
pub fn write_output(path: &Path, what: &str, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut f = create_output(path, what)?;
    f.write_all(bytes)
        .and_then(|()| f.flush())
        .map_err(|e| format!("cannot write {what} to {}: {e}", shown_path(path)))
}

/// A path for a message: whole when short, else its first [`QUOTE_MAX`] bytes quoted; either
/// way escaped as [`escape`] does.
pub fn shown_path(path: &Path) -> String {
    let text = path.display().to_string();
    if text.len() > QUOTE_MAX {
        quote(text.as_bytes(), QUOTE_MAX)
    } else {
        escape(&text)
    }
}

/// Quote at most `max` bytes of `bytes` for a message: lossy UTF-8, escaped as [`escape`]
/// does, and "… (N bytes)" when it was cut.
pub fn quote(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let shown = &bytes[..bytes.len().min(max)];
    let mut s = escape(&String::from_utf8_lossy(shown));
    if cut {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}

/// Whether [`escape`] escapes `c`: a control character (C0, DEL, C1: ESC starts terminal
/// sequences, CR returns to the start of the line, LF starts a new one) or a bidirectional
/// formatting character (which reorders the text shown around it).
fn is_escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` as vcpu-reset prints text that came from outside (file names, a peer's output, a
/// log's contents, a command line): every control and bidirectional formatting character
/// escaped as Rust writes it (`\u{1b}`, `\r`, `\n`, `\u{202e}`), everything else unchanged.
/// The result is one line without a control character, and escaping it again changes nothing.
pub fn escape(text: &str) -> String {
    if !text.chars().any(is_escaped) {
        return text.to_string();
    }
    let mut s = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            s.extend(c.escape_default());
        } else if is_escaped(c) {
            s.extend(c.escape_unicode());
        } else {
            s.push(c);
        }
    }
    s
}

/// Most bytes of bad input a message quotes.
pub const QUOTE_MAX: usize = 80;

/// Why a vCPU state JSON file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateJsonError {
    /// The file could not be read (or is too large, or not a regular file).
    #[error(transparent)]
    Input(#[from] InputError),
    /// It is not a vCPU state.
    #[error(
        "state JSON: {0} — give a vCPU state as `vcpu-reset` writes it (serde JSON of vcpu_reset_spec::VcpuState)"
    )]
    Parse(String),
}

/// Parse a vCPU state from JSON. The error quotes at most [`QUOTE_MAX`] bytes of the input
/// (serde's messages can echo a whole string value).
pub fn parse_state_json(bytes: &[u8]) -> Result<vcpu_reset::spec::VcpuState, StateJsonError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        StateJsonError::Parse(if text.len() > 2 * QUOTE_MAX {
            quote(text.as_bytes(), 2 * QUOTE_MAX)
        } else {
            text
        })
    })
}

/// Read (at most [`MAX_STATE_JSON`] bytes) and parse the vCPU state JSON file at `path`.
///
/// # Errors
/// [`StateJsonError::Input`] when the file cannot be read within the bound,
/// [`StateJsonError::Parse`] when it is not a vCPU state.
pub fn load_state_json(path: &Path) -> Result<vcpu_reset::spec::VcpuState, StateJsonError> {
    parse_state_json(&read_bounded(path, MAX_STATE_JSON, "state JSON")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A path named `name` in a private temp dir of its own, removed when the returned
    /// [`crate::tempdir::TempDir`] is dropped at the end of the test.
    fn tmp(name: &str) -> (crate::tempdir::TempDir, PathBuf) {
        let dir = crate::tempdir::TempDir::new("input-test").expect("temp dir");
        let path = dir.path().join(name);
        (dir, path)
    }

    #[test]
    fn reads_a_small_file_whole() {
        let (_dir, p) = tmp("small");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_bounded(&p, 5, "t").unwrap(), b"hello");
        let e = read_bounded(&p, 4, "t").unwrap_err();
        assert!(matches!(e, InputError::TooLarge { limit: 4, .. }), "{e}");
    }

    #[test]
    fn refuses_devices_fifos_directories_and_sparse_giants() {
        let e = read_bounded(Path::new("/dev/zero"), 100, "firmware").unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let e = read_bounded(&std::env::temp_dir(), 100, "firmware").unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let (_dir, fifo) = tmp("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_bounded(&fifo, 100, "log").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let (_dir, sparse) = tmp("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let e = read_bounded(&sparse, 100, "log").unwrap_err();
        assert!(matches!(e, InputError::TooLarge { .. }), "{e}");
        let _ = std::fs::remove_file(&sparse);
        let _ = std::fs::remove_file(&fifo);
    }

    #[test]
    fn state_json_errors_are_short() {
        let big = format!("{{\"gprs\": \"{}\"}}", "z".repeat(10 << 20));
        let e = parse_state_json(big.as_bytes()).unwrap_err().to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
        let (_dir, p) = tmp("state.json");
        let state = vcpu_reset::spec::VcpuState::default();
        std::fs::write(&p, serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(load_state_json(&p).unwrap(), state);
        let e = load_state_json(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
    }

    #[test]
    fn a_huge_path_is_named_short() {
        let long = format!("/nonexistent/{}", "p".repeat(100_000));
        let e = read_bounded(Path::new(&long), 10, "firmware").unwrap_err();
        assert!(e.to_string().len() < 200, "{} bytes", e.to_string().len());
    }

    #[test]
    fn escape_leaves_one_printable_line_and_is_idempotent() {
        let raw = "x\u{1b}[2J\ry\nz\u{202e}w\\n";
        let once = escape(raw);
        assert_eq!(once, "x\\u{1b}[2J\\ry\\nz\\u{202e}w\\n");
        assert!(!once.chars().any(char::is_control), "{once}");
        assert_eq!(escape(&once), once);
        assert_eq!(escape("plain é"), "plain é");
        assert_eq!(
            shown_path(Path::new("a\u{1b}b")),
            "a\\u{1b}b",
            "short paths are escaped too"
        );
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_through_links() {
        let (_dir, input) = tmp("input");
        std::fs::write(&input, b"keep").unwrap();
        let dir = input.parent().unwrap();
        let soft = dir.join("soft");
        std::os::unix::fs::symlink(&input, &soft).unwrap();
        let hard = dir.join("hard");
        std::fs::hard_link(&input, &hard).unwrap();
        for out in [&input, &soft, &hard] {
            let e = refuse_input_as_output("--out", out, &[("the log", &input)]).unwrap_err();
            assert!(
                e.contains("is the log — writing there would destroy it"),
                "{e}"
            );
        }
        let other = dir.join("other");
        assert!(refuse_input_as_output("--out", &other, &[("the log", &input)]).is_ok());
        assert_eq!(std::fs::read(&input).unwrap(), b"keep");
    }

    #[test]
    fn quote_cuts_and_escapes() {
        assert_eq!(quote(b"ab\ncd", 80), "ab\\ncd");
        assert_eq!(
            quote(b"a\x1b]0;t\x07\rb\xc2\x9b", 80),
            "a\\u{1b}]0;t\\u{7}\\rb\\u{9b}"
        );
        let long = vec![b'x'; 20 << 20];
        let q = quote(&long, QUOTE_MAX);
        assert!(q.len() < 120, "{q}");
        assert!(q.ends_with("(20971520 bytes)"), "{q}");
    }
}
