//! # vcpu-reset-selftest
//!
//! The conformance selftest of [`vcpu_reset`] and the `vcpu-reset` command: it creates, runs,
//! INITs and RESETs real vCPUs with small guest programs, compares what the host reads and
//! what the guest itself sees with the specification, and reports every deviation. It also
//! boots a firmware with warm reboot in place, benchmarks the library against recreating a VM
//! and against QEMU, judges other VMMs' logs, and fuzzes its own parsers.
//!
//! A VMM does not need this crate: the library is `vcpu-reset`.
//!
//! - [`check`]: the selftest's scenarios, verdicts and reports (table, JSON, TAP, HTML).
//! - [`probe`]: guest programs that record what the guest sees, and their record format.
//! - [`runner`]: a small VM that boots a flat firmware and reboots it in place.
//! - [`bench`](mod@bench): exit-path and reboot benchmarks on KVM, paths side by side.
//! - [`fuzz`](mod@fuzz): fuzz targets and a stable-Rust mutation fuzzer.
//! - [`files`]: bounded reads of input files (firmware, logs, state JSON).
//! - [`host`]: opening KVM as the tool does (`VCPU_RESET_KVM_DEVICE`), and for tests.
//! - [`sys`]: the few OS calls outside the KVM backend, behind safe functions.
//! - [`tempdir`]: private temporary directories for every temporary file.

pub mod bench;
pub mod check;
pub mod files;
pub mod fuzz;
pub mod host;
pub mod probe;
pub mod runner;
pub mod sys;
pub mod tempdir;
