//! Pure conversions between KVM's state structures and a [`VcpuState`](vcpu_reset_spec::VcpuState):
//! no file descriptor, no ioctl, no `/dev/kvm`.
//!
//! Each module is one [`StateClass`](crate::slots::StateClass) and the KVM structure its
//! KVM_GET/SET ioctl moves (KVM's `Documentation/virt/kvm/api.rst`, section 4):
//!
//! | module | class | KVM structure |
//! |---|---|---|
//! | [`regs`] | `Regs` | `kvm_regs` (and single cache slots of it) |
//! | [`sregs`] | `Sregs` | `kvm_sregs2`, `kvm_sregs` (and single cache slots of them) |
//! | [`debugregs`] | `Debug` | `kvm_debugregs` |
//! | [`xsave`] | `Fpu` | the XSAVE image of `kvm_xsave` / KVM_GET_XSAVE2, laid out by CPUID leaf 0xD |
//! | [`xcrs`] | `Xcrs` | `kvm_xcrs` |
//! | [`msrs`] | `Msrs` | the `kvm_msr_entry` list of KVM_GET/SET_MSRS |
//! | [`lapic`] | `Lapic` | `kvm_lapic_state` (the 1 KiB xAPIC register page) |
//! | [`mp_state`] | `MpState` | `kvm_mp_state` |
//! | [`events`] | `Events` | `kvm_vcpu_events` |
//! | [`nested`] | `Nested` | the header of `kvm_nested_state` |
//!
//! The KVM backend ([`KvmVcpu`](super::KvmVcpu)) makes the ioctls and calls these; a VMM that
//! keeps its own vCPU fd (or a benchmark) can call them on the structures it already has, e.g.
//! turn the `kvm_regs` of its own KVM_GET_REGS into the registers of a `VcpuState` to compare
//! with the spec. Every conversion is tested here without KVM (round trips and known values).
//!
//! ```
//! use kvm_bindings::kvm_regs;
//! use vcpu_reset::backend::kvm::codec::regs::{regs_from_state, regs_to_state};
//! use vcpu_reset::spec::{Gpr, VcpuState};
//!
//! // The registers a VMM read with its own KVM_GET_REGS ...
//! let from_kvm = kvm_regs { rip: 0xfff0, rflags: 0x2, rdx: 0x00a0_0f11, ..Default::default() };
//! let mut state = VcpuState::default();
//! regs_to_state(&from_kvm, &mut state);
//! assert_eq!((state.rip, state.gprs[Gpr::Rdx as usize]), (0xfff0, 0x00a0_0f11));
//! // ... and back, for its own KVM_SET_REGS.
//! assert_eq!(regs_from_state(&state), from_kvm);
//! ```

pub mod debugregs;
pub mod events;
pub mod lapic;
pub mod mp_state;
pub mod msrs;
pub mod nested;
pub mod regs;
pub mod sregs;
pub mod xcrs;
pub mod xsave;
