//! The KVM modules of a kernel under test: found by name in its modules directory (a Debian
//! package's `lib/modules/<release>`, `make modules_install`'s, or a build tree after `make
//! modules`), their dependencies read from each module's `.modinfo` (a package ships no
//! `modules.dep`; depmod makes it when the package is installed), decompressed (`.ko.xz`,
//! `.ko.zst`, `.ko.gz`: busybox's insmod takes plain ELF files), and ordered so that every
//! module comes after what it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{KernelError, tool};
use crate::files::shown_path;

/// The vendor modules, tried in this order in the guest: the one whose CPU the guest has loads,
/// with nested virtualization on.
pub const VENDOR_MODULES: [&str; 2] = ["kvm_amd", "kvm_intel"];

/// A module to load in the guest.
#[derive(Clone, Debug)]
pub struct Module {
    /// Its name (`kvm_amd`: dashes as underscores, as the kernel names modules).
    pub name: String,
    /// The uncompressed ELF module.
    pub bytes: Vec<u8>,
    /// insmod's parameters (`nested=1` for the vendor modules).
    pub params: &'static str,
}

/// How deep the modules directory is searched (`lib/modules/<release>/kernel/arch/x86/kvm` is 4
/// below it; a build tree's `drivers/crypto/ccp` 3).
const MAX_DEPTH: usize = 8;

/// A module's name from its file name, if it is one (`kvm-amd.ko.xz` -> `kvm_amd`).
pub fn module_name(file: &str) -> Option<String> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .filter(|n| !n.is_empty())
        .map(|n| n.replace('-', "_"))
}

/// Every module file under `dir` by name (symbolic links, e.g. a package's `build` and `source`,
/// are not followed); the first one found of a name wins.
pub fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, KernelError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            KernelError::io(format!("read the modules directory {}", shown_path(&d)), e)
        })?;
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ty) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if ty.is_dir() && depth < MAX_DEPTH && !name.starts_with('.') {
                stack.push((e.path(), depth + 1));
            } else if ty.is_file()
                && let Some(m) = module_name(&name)
            {
                out.entry(m).or_insert_with(|| e.path());
            }
        }
    }
    Ok(out)
}

/// The modules built into the kernel (`modules.builtin` in `dir`, empty when there is none).
pub fn builtin(dir: &Path) -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("modules.builtin")) else {
        return BTreeSet::new();
    };
    text.lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(module_name)
        .collect()
}

/// The most a kernel module may hold, decompressed: 256 MiB (kvm.ko is about 2 MiB).
const MAX_MODULE: u64 = 256 << 20;

/// The module at `path`, decompressed (in memory, at most [`MAX_MODULE`] bytes) if it is
/// compressed. It must be a regular file, not a symbolic link (which could reach out of the
/// unpacked package), a FIFO or a device.
fn read_module(path: &Path, tmp: &Path) -> Result<Vec<u8>, KernelError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| KernelError::io(format!("read the module {}", shown_path(path)), e))?;
    if !meta.file_type().is_file() {
        return Err(KernelError::NotAKernel {
            path: path.to_path_buf(),
            why: "is a symbolic link or special file, not a regular file — a kernel module must be a plain file".into(),
        });
    }
    let name = path.to_string_lossy();
    let program = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match program {
        None => crate::files::read_bounded(path, MAX_MODULE, "kernel module").map_err(|e| {
            KernelError::NotAKernel {
                path: path.to_path_buf(),
                why: e.to_string(),
            }
        }),
        Some(program) => tool::decompress_bounded(program, path, MAX_MODULE, tmp),
    }
}

/// The vendor modules among `files`.
fn vendors(files: &BTreeMap<String, PathBuf>) -> Vec<&'static str> {
    VENDOR_MODULES
        .iter()
        .copied()
        .filter(|m| files.contains_key(*m))
        .collect()
}

/// Checks that the kernel `kernel` has KVM: a vendor module in `dir`, or built in (nothing
/// is decompressed).
///
/// # Errors
/// [`KernelError::NoKvmModules`].
pub fn require_kvm(kernel: &str, dir: Option<&Path>) -> Result<(), KernelError> {
    let no_kvm = || KernelError::NoKvmModules {
        kernel: kernel.to_string(),
        dir: dir.map(Path::to_path_buf),
    };
    let dir = dir.ok_or_else(no_kvm)?;
    if !vendors(&index(dir)?).is_empty() || VENDOR_MODULES.iter().any(|m| builtin(dir).contains(*m))
    {
        Ok(())
    } else {
        Err(no_kvm())
    }
}

/// The vendor KVM modules of the kernel `kernel` in `dir` and everything they depend on, in
/// load order; empty when KVM is built in.
///
/// # Errors
/// [`KernelError::NoKvmModules`] when there are none and KVM is not built in,
/// [`KernelError::MissingDependency`] when a module they need is neither there nor built in.
pub fn kvm_modules(
    kernel: &str,
    dir: Option<&Path>,
    tmp: &Path,
) -> Result<Vec<Module>, KernelError> {
    let no_kvm = || KernelError::NoKvmModules {
        kernel: kernel.to_string(),
        dir: dir.map(Path::to_path_buf),
    };
    let dir = dir.ok_or_else(no_kvm)?;
    let files = index(dir)?;
    let built_in = builtin(dir);
    let vendors = vendors(&files);
    if vendors.is_empty() {
        return if VENDOR_MODULES.iter().any(|m| built_in.contains(*m)) {
            Ok(Vec::new())
        } else {
            Err(no_kvm())
        };
    }
    let mut order: Vec<Module> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for v in vendors {
        add(
            v, kernel, dir, &files, &built_in, tmp, &mut seen, &mut order, 0,
        )?;
    }
    Ok(order)
}

/// Adds `name` after its dependencies (depth-first).
#[allow(clippy::too_many_arguments)]
fn add(
    name: &str,
    kernel: &str,
    dir: &Path,
    files: &BTreeMap<String, PathBuf>,
    built_in: &BTreeSet<String>,
    tmp: &Path,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
    depth: usize,
) -> Result<(), KernelError> {
    if !seen.insert(name.to_string()) || depth > 16 {
        return Ok(());
    }
    let path = &files[name];
    let bytes = read_module(path, tmp)?;
    let depends = super::elf::module_depends(&bytes).ok_or_else(|| KernelError::NotAKernel {
        path: path.clone(),
        why: "is not an x86-64 kernel module (no ELF64 .modinfo section)".into(),
    })?;
    for d in depends {
        if files.contains_key(&d) {
            add(
                &d,
                kernel,
                dir,
                files,
                built_in,
                tmp,
                seen,
                order,
                depth + 1,
            )?;
        } else if !built_in.contains(&d) {
            return Err(KernelError::MissingDependency {
                kernel: kernel.to_string(),
                module: name.to_string(),
                dependency: d,
                dir: dir.to_path_buf(),
            });
        }
    }
    order.push(Module {
        name: name.to_string(),
        bytes,
        params: if VENDOR_MODULES.contains(&name) {
            "nested=1"
        } else {
            ""
        },
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_that_is_a_link_or_a_fifo_is_refused() {
        let dir = crate::tempdir::TempDir::new("module-test").expect("temp dir");
        let link = dir.path().join("kvm.ko");
        std::os::unix::fs::symlink("/etc/hostname", &link).expect("symlink");
        let e = read_module(&link, dir.path()).expect_err("a link");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let fifo = dir.path().join("kvm_amd.ko");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let e = read_module(&fifo, dir.path()).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let plain = dir.write("ccp.ko", b"\x7fELF").expect("write");
        assert_eq!(read_module(&plain, dir.path()).expect("plain"), b"\x7fELF");
    }

    #[test]
    fn module_names_drop_the_extension_and_use_underscores() {
        assert_eq!(module_name("kvm-amd.ko.xz").as_deref(), Some("kvm_amd"));
        assert_eq!(module_name("kvm.ko").as_deref(), Some("kvm"));
        assert_eq!(module_name("ccp.ko.zst").as_deref(), Some("ccp"));
        assert_eq!(module_name("kvm.c"), None);
        assert_eq!(module_name(".ko"), None);
    }

    #[test]
    fn a_directory_without_kvm_modules_is_refused_with_what_to_do() {
        let dir = crate::tempdir::TempDir::new("modules-test").expect("temp dir");
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .expect("write");
        let e = kvm_modules("linux-x", Some(dir.path()), dir.path()).expect_err("no kvm");
        assert!(matches!(e, KernelError::NoKvmModules { .. }), "{e}");
        assert!(e.to_string().contains("--kernel-modules"), "{e}");
        // Built in: nothing to load.
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/arch/x86/kvm/kvm.ko\nkernel/arch/x86/kvm/kvm-intel.ko\n",
        )
        .expect("write");
        assert!(
            kvm_modules("linux-x", Some(dir.path()), dir.path())
                .expect("built in")
                .is_empty()
        );
    }
}
