//! A small VM runner: RAM at 0, a flat firmware image at the top of 4 GiB, an in-kernel
//! irqchip, a few port-I/O devices, warm reboot in place.

pub mod devices;
pub mod firmware;
pub mod memory;
mod vcpu_threads;
pub mod vm;

pub use devices::{Platform, PortAction, RebootKind, RebootReason, SharedBuffer, Sink};
pub use firmware::{Firmware, FirmwareError, reset_vector_image};
pub use memory::{GuestMemory, MemoryError};
pub use vm::{KEPT_REBOOTS, RebootRecord, RunError, RunOutcome, Vm, VmConfig};
