//! Backends: where vCPU state really lives.
//!
//! A backend moves whole [`StateClass`]es between a vCPU and a [`VcpuState`], runs the vCPU, and
//! counts every call it makes. It knows nothing of caching; the [`crate::cache`] in front of it
//! decides what to load and when to store. Two backends exist:
//! - [`kvm`]: a Linux KVM vCPU (`/dev/kvm`), through `kvm-ioctls`;
//! - [`model`]: a software vCPU whose guest state is kept like a VMCS guest-state area.

pub mod kvm;
pub mod model;
#[cfg(test)]
pub(crate) mod recorder;

use vcpu_reset_spec::VcpuState;

/// The classes, re-exported from [`crate::slots`] where they are defined.
pub use crate::slots::{ClassSet, RegSet, StateClass};

mod host_init;
pub use host_init::{HostInit, HostInitBackend};

/// Direction of a port I/O exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDir {
    /// The guest executed IN: it reads `size` bytes; answer with [`Backend::set_io_in`].
    In,
    /// The guest executed OUT of the bytes in `data`.
    Out,
}

/// Why a vCPU stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Port I/O. For OUT, `data` holds the bytes written (`size` of them).
    Io {
        /// Direction.
        dir: IoDir,
        /// Port number.
        port: u16,
        /// Access size in bytes (1, 2 or 4).
        size: u8,
        /// For OUT, the bytes written.
        data: [u8; 4],
    },
    /// MMIO access the backend could not handle.
    Mmio {
        /// Guest-physical address.
        addr: u64,
        /// Whether it was a write.
        write: bool,
        /// Length in bytes.
        len: u8,
        /// For writes, the data.
        data: [u8; 8],
    },
    /// The guest executed HLT (only without an in-kernel local APIC).
    Hlt,
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    Shutdown,
    /// The hypervisor reported a system event (KVM_SYSTEM_EVENT_*), with its type.
    SystemEvent(u32),
    /// The run was interrupted before or during guest execution (EINTR, immediate_exit).
    Interrupted,
    /// The hypervisor could not emulate or enter the guest; `reason` says what it reported.
    InternalError {
        /// KVM's suberror or entry-failure reason, as text.
        reason: String,
    },
    /// Any other exit, with the hypervisor's exit-reason number.
    Other(u32),
}

/// Calls a backend has made, by kind. On KVM every count is one ioctl.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Loads (KVM_GET_* ioctls, or VMREADs on the model).
    pub loads: u64,
    /// Stores (KVM_SET_* ioctls, or VMWRITEs on the model).
    pub stores: u64,
    /// Runs (KVM_RUN).
    pub runs: u64,
    /// Other calls (capability checks, KVM_SET_CPUID2, ...).
    pub other: u64,
    /// Loads served from the sync-regs area of `kvm_run` without a syscall.
    pub sync_loads: u64,
    /// Stores deferred to the next KVM_RUN through `kvm_dirty_regs`, without a syscall.
    pub sync_stores: u64,
}

impl Stats {
    /// Calls into the hypervisor (syscalls on KVM): loads + stores + runs + other.
    pub fn calls(&self) -> u64 {
        self.loads + self.stores + self.runs + self.other
    }

    /// These counts and `more` together.
    #[must_use]
    pub fn plus(&self, more: &Stats) -> Stats {
        Stats {
            loads: self.loads + more.loads,
            stores: self.stores + more.stores,
            runs: self.runs + more.runs,
            other: self.other + more.other,
            sync_loads: self.sync_loads + more.sync_loads,
            sync_stores: self.sync_stores + more.sync_stores,
        }
    }

    /// The counts accumulated since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            loads: self.loads - earlier.loads,
            stores: self.stores - earlier.stores,
            runs: self.runs - earlier.runs,
            other: self.other - earlier.other,
            sync_loads: self.sync_loads - earlier.sync_loads,
            sync_stores: self.sync_stores - earlier.sync_stores,
        }
    }
}

/// Errors from a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A KVM ioctl failed: which one ([`kvm::Ioctl`]), the kernel's error, and what to do.
    #[error(transparent)]
    Ioctl(#[from] kvm::IoctlError),
    /// KVM_GET/SET_MSRS stopped at an MSR the host refused.
    #[error(
        "{ioctl} processed {done} of {total} MSRs and refused MSR {index:#x} — the host's KVM does not support that MSR or rejects the value written to it (e.g. a reserved MTRR type)"
    )]
    MsrRefused {
        /// [`kvm::Ioctl::GetMsrs`] or [`kvm::Ioctl::SetMsrs`].
        ioctl: kvm::Ioctl,
        /// How many were processed.
        done: usize,
        /// How many were asked for.
        total: usize,
        /// The first refused MSR.
        index: u32,
    },
    /// The backend cannot hold this class of state.
    #[error("{class} is not available on this backend: {why}")]
    Unsupported {
        /// The class.
        class: StateClass,
        /// Why, and what to do.
        why: &'static str,
    },
    /// A value cannot be represented by the backend.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        why: String,
    },
}

/// A vCPU whose state can be moved class by class and which can be run. What it offers for a
/// RESET beyond that (the host's own INIT) is the extension [`HostInitBackend`], with defaults
/// that offer nothing.
pub trait Backend: HostInitBackend {
    /// Write the fields of `class` in `state` from the vCPU. Other fields are left alone.
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError>;

    /// Write the fields of `class` of `state` to the vCPU. A backend may defer the write to
    /// the next [`Backend::run`] when that costs no call (KVM sync regs); a later `load` of the
    /// same class must still return what was stored.
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError>;

    /// Run the vCPU until it exits.
    fn run(&mut self) -> Result<Exit, BackendError>;

    /// Answer the IN access (up to 4 bytes) or MMIO read (up to 8 bytes) of the last exit
    /// with `data`.
    fn set_io_in(&mut self, data: &[u8]);

    /// Classes the vCPU may change while it runs; the cache forgets them after each exit.
    fn volatile(&self) -> ClassSet;

    /// Classes the last exit delivered, whose load costs no call.
    fn delivered(&self) -> ClassSet;

    /// Classes this backend can hold at all (e.g. no [`StateClass::Nested`] where the host
    /// lacks KVM_CAP_NESTED_STATE).
    fn supported(&self) -> ClassSet;

    /// Whether this backend holds `field` (a field of a supported class can still be absent,
    /// e.g. an MSR the host's KVM refuses, or the CMCI LVT on an APIC without it). A load leaves
    /// fields that are not held unchanged, a store ignores them, and checks report them as
    /// host limits.
    fn holds(&self, field: vcpu_reset_spec::Field) -> bool {
        let _ = field;
        true
    }

    /// Whether the host can hold signals for the vCPU outside the classes it moves, and applies
    /// them when the activity state is loaded or the vCPU next runs: on KVM with an in-kernel
    /// irqchip, an INIT or startup IPI pending in the local APIC, which KVM_SET_LAPIC does not
    /// reach. RESET and INIT then load the activity state before anything else, so that such a
    /// signal takes effect before the new state is written, not on top of it.
    fn queues_signals(&self) -> bool {
        false
    }

    /// Load only the cache slots in `slots` (all of `class`) into `state`, where that costs no call (e.g. a class the last exit delivered).
    /// Returns `false`, having changed nothing, where it cannot; the caller then loads the whole
    /// class with [`Backend::load`]. The default never can.
    fn load_slots(&mut self, class: StateClass, slots: RegSet, state: &mut VcpuState) -> bool {
        let _ = (class, slots, state);
        false
    }

    /// Store only the cache slots in `slots` of `class` from `state`, leaving the class's other
    /// fields as the vCPU holds them, where that costs no call and needs nothing else of the
    /// class. Returns `false`, having changed nothing, where it cannot; the caller then stores
    /// the whole class with [`Backend::store`]. The default never can.
    fn store_slots(&mut self, class: StateClass, slots: RegSet, state: &VcpuState) -> bool {
        let _ = (class, slots, state);
        false
    }

    /// Calls made so far.
    fn stats(&self) -> Stats;
}
