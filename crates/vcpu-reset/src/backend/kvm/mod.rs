//! The Linux KVM backend: a KVM vCPU behind [`Backend`](crate::backend::Backend).
//!
//! - [`KvmHost`] opens `/dev/kvm`, checks the API version, records what the host offers
//!   ([`KvmCaps`], supported CPUID, MSRs) and creates VMs ([`KvmHost::create_vm`]).
//! - [`KvmVcpu`] is one vCPU (`vcpu.rs`). Each [`StateClass`](crate::backend::StateClass)
//!   maps onto one KVM structure: [`codec`] converts it to and from a `VcpuState` (pure, public,
//!   tested without `/dev/kvm`), and one file per concern makes the ioctls: `registers.rs`
//!   (`kvm_regs`, `kvm_sregs2`/`kvm_sregs`, `kvm_debugregs`), `fpu.rs` (the XSAVE image and
//!   XCR0), `msrs.rs` (with `msr_set.rs`, the MSRs the vCPU holds and the chunked
//!   KVM_GET/SET_MSRS, and `tsc.rs`, the IA32_TSC write policy), `apic.rs` (the local APIC, MP
//!   state and events) and `nested.rs`.
//! - Every ioctl is an [`Ioctl`] (`ioctls.rs`), with its KVM name and what to do when it fails,
//!   and is made through a counted helper (`calls.rs`: load, store or other), which counts it
//!   and turns its errno into an [`IoctlError`].
//! - With sync regs (`sync.rs`), REGS, SREGS and EVENTS come with every exit and stores of them
//!   are deferred to the next KVM_RUN, without ioctls. `run.rs` runs the vCPU and maps exits.
//! - [`KvmVcpu::adopt`] takes over a vCPU a VMM created (its CPUID read back, never changed);
//!   [`KvmVcpu::into_fd`] hands it back with every deferred store applied (`adopt.rs`).
//! - `init.rs` raises KVM's own INIT inside the KVM_SET_MSRS of a RESET
//!   ([`HostInitBackend::host_init`](crate::backend::HostInitBackend::host_init)).
//!
//! Every ioctl a vCPU makes is counted in its [`Stats`](crate::backend::Stats), creation and
//! capability checks included (as `other`).
//!
//! # Sync regs
//!
//! Where the host's KVM_CAP_SYNC_REGS has REGS, SREGS and EVENTS (and
//! [`KvmVcpuOptions::sync_regs`] is set), KVM copies `kvm_regs`, `kvm_sregs` and
//! `kvm_vcpu_events` into the `kvm_run` page on every exit, and [`Backend::delivered`] says so:
//! loading them costs no ioctl (counted as `sync_loads`). Storing them writes the `kvm_run` copy
//! and flags it in `kvm_dirty_regs`; the next KVM_RUN applies it (counted as `sync_stores`), and a
//! load before that returns the stored value. Before the first run, loads use the ioctls. State
//! that another ioctl also writes is kept consistent: a KVM_SET_MSRS of IA32_APIC_BASE and a
//! KVM_SET_LAPIC (TPR = CR8) patch the deferred `kvm_sregs`; a deferred `kvm_sregs` is written
//! with its ioctl before KVM_GET_LAPIC, before a KVM_SET_MP_STATE it would undo (KVM forces a
//! BSP at the reset vector runnable), and with everything else before KVM_SET_NESTED_STATE. An AP
//! that has never run (KVM_MP_STATE_UNINITIALIZED) takes stores by ioctl, because KVM_RUN returns
//! there before applying `kvm_dirty_regs`. PDPTRs are not in `kvm_sregs`: in PAE paging mode a
//! SREGS load reads them with KVM_GET_SREGS2 (so SREGS is then not "delivered") and a SREGS store
//! uses KVM_SET_SREGS2. A deferred store KVM rejects fails the next [`Backend::run`].
//!
//! [`Backend::delivered`]: crate::backend::Backend::delivered
//! [`Backend::run`]: crate::backend::Backend::run

mod adopt;
mod apic;
mod calls;
mod devices;
mod error;
mod fpu;
mod guest_entries;
mod host;
mod init;
mod ioctls;
mod lend;
mod msr_set;
mod msrs;
mod nested;
mod quirks;
mod registers;
mod run;
mod sync;
mod tsc;
mod vcpu;
mod vcpu_io;

// Hooks for the selftest tool: KVM's own INIT and SIPI raised from the host, and the second
// interface of state KVM reports twice.
#[cfg(feature = "selftest")]
mod kvm_init_sipi;
#[cfg(feature = "selftest")]
mod second_views;

pub mod codec;

pub(crate) use adopt::{borrow_vcpu, borrow_vm};
#[cfg(feature = "selftest")]
pub use calls::fail_nth_call;
pub use devices::{VmDevices, VmDevicesError};
pub use error::{AdoptRefusal, KvmError, ReturnedFd};
pub use host::{
    DEFAULT_DEVICE, IDENTITY_MAP_ADDRESS, KVM_API_VERSION, KvmCaps, KvmHost, TSS_ADDRESS,
};
pub use ioctls::{Ioctl, IoctlError};
pub use quirks::{QuirkError, disable_lint0_quirk, disable_lint0_quirk_raw};
#[cfg(feature = "selftest")]
pub use second_views::OtherView;
pub use vcpu::{KvmVcpu, KvmVcpuOptions};
