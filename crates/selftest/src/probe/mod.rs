//! A real-mode conformance probe: guest code that records what the vCPU itself sees right after
//! RESET or INIT, and the host-side parser for what it prints.
//!
//! - [`program`] assembles the probe (iced-x86, 16-bit) for a given load address, output ports,
//!   exit method and MSR list.
//! - [`record`] defines the line-based record format (`#VR2 <key> <value>`; version 1, `#VR1`, still parses), parses logs that
//!   contain it (KVM port-I/O streams, QEMU debugcon files, serial consoles) and decodes the
//!   FXSAVE image into spec fields.

pub mod program;
pub mod record;

pub use program::{
    BOOT_COUNTER, MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_MCG_CAP, Origin, ProbeEnd, ProbeError,
    ProbeImage, ProbeOptions, REBOOT_DIRTY_PAT, REBOOT_DIRTY_SYSENTER_CS, RebootVia, assemble,
    assemble_image, default_msrs, firmware_image,
};
pub use record::{
    Fault, FxsaveFormat, FxsaveImage, LogFormat, ProbeRun, RecordError, Seen, Value, parse,
    parse_all,
};
