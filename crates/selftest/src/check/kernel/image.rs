//! The kernel under test as `--kernel` names it: a Debian `linux-image` package (unpacked with
//! `dpkg-deb -x`: its `boot/vmlinuz-<release>` and `lib/modules/<release>`), or a bzImage with
//! its modules directory (`--kernel-modules`; else the build tree the bzImage is in, or the
//! installed `/lib/modules/<release>`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{KernelError, tool};
use crate::files::shown_path;

/// A kernel ready to boot: where its bzImage and its modules are, and its release.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// The bzImage.
    pub bzimage: PathBuf,
    /// The modules directory, if one was found.
    pub modules: Option<PathBuf>,
    /// The release (`uname -r`), from the bzImage's header.
    pub release: String,
}

/// The release string a bzImage carries (the x86 boot protocol's `kernel_version`: a pointer
/// at offset 0x20E to a string at that value + 0x200, Linux
/// `Documentation/arch/x86/boot.rst`), up to its first space.
pub fn release_of(bzimage: &[u8]) -> Option<String> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let ptr = usize::from(u16::from_le_bytes([
        *bzimage.get(0x20e)?,
        *bzimage.get(0x20f)?,
    ]));
    let text = bzimage.get(ptr.checked_add(0x200)?..)?;
    let end = text.iter().take(256).position(|&b| b == 0 || b == b' ')?;
    let release = String::from_utf8_lossy(&text[..end]).into_owned();
    (!release.is_empty()).then_some(release)
}

/// Whether `head` (a file's first bytes) is a Debian package (an `ar` archive whose first
/// member is `debian-binary`).
pub fn is_deb(head: &[u8]) -> bool {
    head.starts_with(b"!<arch>\ndebian-binary")
}

/// The first bytes of the file at `path`.
fn head(path: &Path) -> Result<Vec<u8>, KernelError> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path)
        .map_err(|e| KernelError::io(format!("--kernel {}", shown_path(path)), e))?;
    if !meta.is_file() {
        return Err(KernelError::NotAKernel {
            path: path.to_path_buf(),
            why: "is not a regular file — give a Debian linux-image package or a bzImage".into(),
        });
    }
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut out))
        .map_err(|e| KernelError::io(format!("read --kernel {}", shown_path(path)), e))?;
    Ok(out)
}

/// Where the modules of a bzImage outside a package are: `modules` if given, else the build
/// tree it was built in (`<tree>/arch/x86/boot/bzImage`), else `/lib/modules/<release>`.
fn modules_of_bzimage(bzimage: &Path, release: &str, modules: Option<&Path>) -> Option<PathBuf> {
    if let Some(m) = modules {
        return Some(m.to_path_buf());
    }
    let tree = bzimage.parent()?.parent()?.parent()?.parent()?;
    let in_tree = bzimage
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .is_some_and(|arch| arch.file_name().is_some_and(|n| n == "arch"));
    if in_tree && tree.join("Makefile").is_file() {
        return Some(tree.to_path_buf());
    }
    let installed = Path::new("/lib/modules").join(release);
    installed.is_dir().then_some(installed)
}

/// Checks, before anything is unpacked or booted, that `path` is a Debian package or a bzImage,
/// and that a bzImage's modules directory has KVM (modules or built in).
///
/// # Errors
/// [`KernelError::NotAKernel`], [`KernelError::NoKvmModules`].
pub fn check(path: &Path, modules: Option<&Path>) -> Result<(), KernelError> {
    let head = head(path)?;
    if is_deb(&head) {
        return Ok(());
    }
    let Some(release) = release_of(&head) else {
        return Err(not_a_bzimage(path));
    };
    let dir = modules_of_bzimage(path, &release, modules);
    super::modules::require_kvm(&format!("linux-{release}"), dir.as_deref())
}

fn not_a_bzimage(path: &Path) -> KernelError {
    KernelError::NotAKernel {
        path: path.to_path_buf(),
        why: "is neither a Debian package nor a bzImage (no HdrS boot header) — give a linux-image .deb, or arch/x86/boot/bzImage of a build".into(),
    }
}

/// Makes `path` (and `modules`) a kernel to boot; a package is unpacked into `tmp`.
///
/// # Errors
/// [`KernelError::NotAKernel`] for anything but a Debian package with one `boot/vmlinuz-*` or a
/// bzImage; `dpkg-deb`'s failure.
pub fn unpack(path: &Path, modules: Option<&Path>, tmp: &Path) -> Result<Unpacked, KernelError> {
    let head = head(path)?;
    if is_deb(&head) {
        let root = tmp.join("deb");
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-x").arg(path).arg(&root);
        tool::run(&format!("unpacking {}", shown_path(path)), cmd, tmp)?;
        let boot = root.join("boot");
        let vmlinuz: Vec<PathBuf> = std::fs::read_dir(&boot)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [bzimage] = vmlinuz.as_slice() else {
            return Err(KernelError::NotAKernel {
                path: path.to_path_buf(),
                why: format!(
                    "the package holds {} boot/vmlinuz-* files, not one — give a linux-image package",
                    vmlinuz.len()
                ),
            });
        };
        // Only what the package itself holds: a vmlinuz that is a symbolic link (which could
        // point anywhere on this machine), a FIFO or a device is refused.
        if !std::fs::symlink_metadata(bzimage).is_ok_and(|m| m.file_type().is_file()) {
            return Err(KernelError::NotAKernel {
                path: path.to_path_buf(),
                why: format!(
                    "its boot/{} is a symbolic link or special file, not a regular file — give a linux-image package",
                    bzimage
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ),
            });
        }
        let release = bzimage
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default();
        // The modules directory must be inside the unpacked package: a `lib` or
        // `lib/modules/<release>` that is a symbolic link out of it is not taken.
        let inside = |d: &Path| match (std::fs::canonicalize(d), std::fs::canonicalize(&root)) {
            (Ok(d), Ok(r)) => d.starts_with(r),
            _ => false,
        };
        let found = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|m| root.join(m).join(&release))
            .find(|d| d.is_dir() && inside(d));
        return Ok(Unpacked {
            bzimage: bzimage.clone(),
            modules: modules.map(Path::to_path_buf).or(found),
            release,
        });
    }
    let bytes = crate::files::read_bounded(path, 256 << 20, "kernel image").map_err(|e| {
        KernelError::NotAKernel {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
    })?;
    let Some(release) = release_of(&bytes) else {
        return Err(not_a_bzimage(path));
    };
    Ok(Unpacked {
        bzimage: path.to_path_buf(),
        modules: modules_of_bzimage(path, &release, modules),
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_is_read_from_the_boot_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let s = b"6.12.100+deb12-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x500..0x500 + s.len()].copy_from_slice(s);
        assert_eq!(release_of(&img).as_deref(), Some("6.12.100+deb12-amd64"));
        img[0x202] = b'X';
        assert_eq!(release_of(&img), None);
        assert_eq!(release_of(b"short"), None);
    }

    #[test]
    fn a_file_that_is_no_kernel_is_refused_with_what_to_give() {
        let dir = crate::tempdir::TempDir::new("image-test").expect("temp dir");
        let f = dir.write("notes.txt", b"hello").expect("write");
        let e = unpack(&f, None, dir.path()).expect_err("not a kernel");
        assert!(e.to_string().contains("bzImage"), "{e}");
        assert!(is_deb(b"!<arch>\ndebian-binary   1342"));
    }

    #[test]
    fn a_package_whose_vmlinuz_is_a_symbolic_link_is_refused() {
        if crate::check::peers::process::which("dpkg-deb").is_none() {
            eprintln!("skipped: dpkg-deb is not installed");
            return;
        }
        let dir = crate::tempdir::TempDir::new("image-link").expect("temp dir");
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(pkg.join("DEBIAN")).expect("mkdir");
        std::fs::create_dir_all(pkg.join("boot")).expect("mkdir");
        std::fs::write(
            pkg.join("DEBIAN/control"),
            "Package: linux-image-6.99-link\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n",
        )
        .expect("control");
        // A link to a file of this machine, as a crafted package could ship.
        std::os::unix::fs::symlink("/etc/hostname", pkg.join("boot/vmlinuz-6.99-link"))
            .expect("symlink");
        let deb = dir.path().join("link.deb");
        let built = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "-b"])
            .arg(&pkg)
            .arg(&deb)
            .output()
            .expect("dpkg-deb");
        assert!(built.status.success(), "{built:?}");
        let tmp = dir.path().join("unpack");
        std::fs::create_dir(&tmp).expect("mkdir");
        let e = unpack(&deb, None, &tmp).expect_err("a link is no kernel");
        assert!(
            e.to_string()
                .contains("boot/vmlinuz-6.99-link is a symbolic link or special file"),
            "{e}"
        );
    }
}
