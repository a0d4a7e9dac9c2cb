//! # vcpu-reset
//!
//! Exact, architecturally correct RESET and INIT for x86 vCPUs.
//!
//! - [`spec`] (re-exported `vcpu-reset-spec`): the state after RESET and INIT, cited.
//! - [`backend`]: KVM and a software VMX-style model, behind one trait.
//! - [`cache`]: the register cache with available/dirty tracking in front of a backend.

pub use vcpu_reset_spec as spec;

pub mod backend;
pub mod cache;
pub mod probe;
