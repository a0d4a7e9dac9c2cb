//! The errors of `check --kernel`.

use std::path::PathBuf;

use thiserror::Error;

use crate::files::shown_path;

/// Errors of `check --kernel` that stop it before a kernel boots (exit status 2). What happens
/// once a kernel boots (a hang, a panic, no `/dev/kvm` in the guest) is a scenario that could not
/// run, in the report.
#[derive(Debug, Error)]
pub enum KernelError {
    /// A program `check --kernel` needs is not installed.
    #[error("{program} is not installed — {hint}")]
    Missing {
        /// The program.
        program: String,
        /// What to install or do.
        hint: String,
    },
    /// The statically linked selftest to run inside the kernel is not there.
    #[error(
        "the statically linked selftest {} is not there — build it with `cargo build-static` (or name one with --kernel-selftest)",
        shown_path(.path)
    )]
    NoSelftest {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file that has to run inside the guest is dynamically linked.
    #[error(
        "{} is dynamically linked and cannot run in the guest's initramfs — {hint}",
        shown_path(.path)
    )]
    NotStatic {
        /// The file.
        path: PathBuf,
        /// What to do.
        hint: String,
    },
    /// The `--kernel` path is neither a Debian package nor a bzImage.
    #[error("--kernel {}: {why}", shown_path(.path))]
    NotAKernel {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The kernel has no KVM modules (and does not have KVM built in).
    #[error(
        "{kernel}: no KVM modules (kvm-amd.ko or kvm-intel.ko) under {} and KVM is not built in (modules.builtin) — build the kernel with CONFIG_KVM and CONFIG_KVM_AMD or CONFIG_KVM_INTEL, and give the modules directory with --kernel-modules (a build tree after `make modules`, or lib/modules/<release> after `make modules_install`)",
        .dir.as_ref().map_or_else(|| "(no modules directory)".to_string(), |d| shown_path(d))
    )]
    NoKvmModules {
        /// The kernel's name.
        kernel: String,
        /// The modules directory searched, if any.
        dir: Option<PathBuf>,
    },
    /// A module the KVM modules depend on is missing.
    #[error(
        "{kernel}: {module} needs module {dependency}, which is not under {} — give the whole modules directory with --kernel-modules",
        shown_path(.dir)
    )]
    MissingDependency {
        /// The kernel's name.
        kernel: String,
        /// The module that needs it.
        module: String,
        /// The missing module.
        dependency: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// `--kernel-console DIR` is not a directory.
    #[error(
        "--kernel-console {} is not a directory — create it first, or name the directory to keep the consoles in",
        shown_path(.path)
    )]
    ConsoleDir {
        /// The path given.
        path: PathBuf,
    },
    /// A helper program (dpkg-deb, xz, zstd, gzip) failed.
    #[error("{what} failed: {detail}")]
    Tool {
        /// What was being done.
        what: String,
        /// Exit status and its output.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// SIGINT, SIGTERM or SIGHUP arrived: the child's process group was killed.
    #[error("interrupted by signal {signal}")]
    Interrupted {
        /// The signal.
        signal: i32,
    },
}

impl KernelError {
    pub(super) fn io(what: impl Into<String>, error: std::io::Error) -> KernelError {
        KernelError::Io {
            what: what.into(),
            error,
        }
    }
}
