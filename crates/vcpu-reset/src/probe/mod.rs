//! A real-mode conformance probe: guest code that records what the vCPU itself sees right after
//! RESET or INIT, and the host-side parser for what it prints.
//!
//! - [`record`] defines the line-based record format (`#VR1 <key> <value>`), parses logs that
//!   contain it (KVM port-I/O streams, QEMU debugcon files, serial consoles) and decodes the
//!   FXSAVE image into spec fields.

pub mod record;

pub use record::{
    Fault, FxsaveFormat, FxsaveImage, Observed, ProbeRun, RecordError, Value, parse, parse_all,
};
