//! The Linux KVM backend: a KVM vCPU behind [`Backend`](crate::backend::Backend).
//!
//! - [`KvmHost`] opens `/dev/kvm`, checks the API version, records what the host offers
//!   ([`KvmCaps`], supported CPUID, MSRs) and creates VMs ([`KvmHost::create_vm`]).
//! - [`KvmVcpu`] is one vCPU. Each [`StateClass`] maps onto one KVM structure, in its own file:
//!   `regs.rs` (`kvm_regs`), `sregs.rs` (`kvm_sregs2`/`kvm_sregs`), `debugregs.rs`, `fpu.rs`
//!   (the XSAVE image; `x87.rs` converts the tag word), `xcrs.rs`, `msrs.rs`, `lapic.rs`,
//!   `mp_state.rs`, `events.rs` and `nested.rs`.
//! - With sync regs (`sync.rs`), REGS, SREGS and EVENTS come with every exit and stores of them
//!   are deferred to the next KVM_RUN, without ioctls. `run.rs` runs the vCPU and maps exits.
//! - [`kvm_for_tests`] opens KVM for a test or says why the test is skipped.
//!
//! Every ioctl a vCPU makes is counted in its [`Stats`](crate::backend::Stats), creation and
//! capability checks included (as `other`).

mod debugregs;
mod error;
mod events;
mod fpu;
mod host;
mod ioctls;
mod lapic;
mod mp_state;
mod msrs;
mod nested;
mod regs;
mod run;
mod sregs;
mod sync;
mod vcpu;
mod x87;
mod xcrs;

pub use error::KvmError;
pub use host::{
    IDENTITY_MAP_ADDRESS, KVM_API_VERSION, KvmCaps, KvmHost, TSS_ADDRESS, kvm_for_tests,
};
pub use vcpu::{KvmVcpu, KvmVcpuOptions};

use vcpu_reset_spec::{Field, Msr};

use crate::backend::StateClass;

/// The [`StateClass`] that moves `field` on KVM. IA32_FS_BASE and IA32_GS_BASE are the FS and GS
/// segment bases and move with [`StateClass::Sregs`]; EFER too.
pub fn field_class(field: Field) -> StateClass {
    match field {
        Field::Gpr(_) | Field::Rip | Field::Rflags => StateClass::Regs,
        Field::Seg(..)
        | Field::Dt(..)
        | Field::Cr0
        | Field::Cr2
        | Field::Cr3
        | Field::Cr4
        | Field::Cr8
        | Field::Efer
        | Field::Pdptr(_)
        | Field::Msr(Msr::FsBase | Msr::GsBase) => StateClass::Sregs,
        Field::Dr(_) | Field::Dr6 | Field::Dr7 => StateClass::Debug,
        Field::X87(_)
        | Field::St(_)
        | Field::Mxcsr
        | Field::Xmm(_)
        | Field::YmmHi(_)
        | Field::ZmmHi256(..)
        | Field::Hi16Zmm(..)
        | Field::Opmask(_)
        | Field::Pkru => StateClass::Fpu,
        Field::Xcr0 => StateClass::Xcrs,
        Field::Msr(_)
        | Field::MtrrFixed(_)
        | Field::MtrrPhysBase(_)
        | Field::MtrrPhysMask(_)
        | Field::Mc(..) => StateClass::Msrs,
        Field::Lapic(_) | Field::LapicBitmap(..) => StateClass::Lapic,
        Field::Activity => StateClass::MpState,
        Field::Event(_) => StateClass::Events,
        Field::Nested => StateClass::Nested,
    }
}
