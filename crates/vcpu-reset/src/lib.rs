//! # vcpu-reset
//!
//! Exact, architecturally correct RESET and INIT for x86 vCPUs.
//!
//! - [`spec`] (re-exported `vcpu-reset-spec`): the state after RESET and INIT, cited.
//! - [`backend`]: KVM and a software VMX-style model, behind one trait.
//! - [`cache`]: the register cache with available/dirty tracking in front of a backend.
//! - [`engine`]: RESET, INIT, SIPI and verify on a cached vCPU.
//! - [`runner`]: a small VM that boots a flat firmware and reboots it in place.
//! - [`probe`]: guest programs that record what the guest sees, and their record format.
//! - [`input`]: bounded reads of input files (firmware, logs, state JSON).
//! - [`fuzz`](mod@fuzz): fuzz targets and a stable-Rust mutation fuzzer.
//! - [`check`]: the conformance selftest's scenarios, verdicts and reports.
//! - [`bench`](mod@bench): exit-path and reboot benchmarks on KVM, paths side by side.

pub use vcpu_reset_spec as spec;

pub mod backend;
pub mod bench;
pub mod cache;
pub mod check;
pub mod engine;
pub mod fuzz;
pub mod input;
pub mod probe;
pub mod runner;
