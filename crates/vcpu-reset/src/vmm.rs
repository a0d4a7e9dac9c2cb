//! One call for a VMM that only wants the RESET state written: [`reset_vcpu`].
//!
//! It is a [`VcpuReset`] used once: learned from the VMM's vCPU without sync regs (every class
//! is stored with its ioctl, since nothing learned is kept for a next call), the spec's
//! power-on RESET state written for the CPU model the vCPU's own CPUID presents, and the fd
//! handed back. A VMM that resets more than once keeps a [`VcpuReset`] instead.

use kvm_ioctls::{VcpuFd, VmFd};

use crate::api::{VcpuReset, VcpuResetError};
use crate::backend::Stats;
use crate::backend::kvm::{KvmError, KvmHost, ReturnedFd};
use crate::engine::EngineError;

/// Why [`reset_vcpu`] failed. Each variant carries the VMM's vCPU fd back where it still
/// exists: [`ResetVcpuError::into_fd`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetVcpuError {
    /// The vCPU could not be adopted ([`KvmError::Adopt`] says why and holds the fd).
    #[error(transparent)]
    Adopt(#[from] KvmError),
    /// The vCPU's CPUID names a vendor vcpu-reset has no RESET table for.
    #[error(
        "cannot RESET vCPU {id}: its CPUID.0H vendor is {vendor:?}, neither GenuineIntel nor AuthenticAMD — vcpu-reset has RESET tables for those two; present one of them in the CPUID"
    )]
    UnknownVendor {
        /// The vCPU id.
        id: u64,
        /// The vendor string.
        vendor: String,
        /// The vCPU fd, unchanged.
        fd: ReturnedFd,
    },
    /// Writing the RESET state failed. The message names the vCPU; what failed, and what to
    /// do about it, is the [`source`](std::error::Error::source), printed by whatever prints
    /// the error's chain.
    #[error("RESET of vCPU {id} failed")]
    Reset {
        /// The vCPU id.
        id: u64,
        /// What failed.
        source: EngineError,
        /// The vCPU fd, in whatever state KVM accepted: a store KVM refused does not cost
        /// the VMM its vCPU.
        fd: ReturnedFd,
    },
    /// Another [`VcpuResetError`] (the library's own API's).
    #[error("RESET of vCPU {id} failed")]
    Call {
        /// The vCPU id.
        id: u64,
        /// What failed.
        source: VcpuResetError,
        /// The vCPU fd.
        fd: ReturnedFd,
    },
}

impl ResetVcpuError {
    /// `e` with the fd it concerns.
    fn of(e: VcpuResetError, fd: VcpuFd) -> ResetVcpuError {
        match e {
            VcpuResetError::Refused { id, refusal } => ResetVcpuError::Adopt(KvmError::Adopt {
                id,
                refusal,
                fd: ReturnedFd(fd),
            }),
            VcpuResetError::UnknownVendor { id, vendor } => ResetVcpuError::UnknownVendor {
                id,
                vendor,
                fd: ReturnedFd(fd),
            },
            VcpuResetError::Failed { id, source, .. } => ResetVcpuError::Reset {
                id,
                source,
                fd: ReturnedFd(fd),
            },
            other => ResetVcpuError::Call {
                id: other.id(),
                source: other,
                fd: ReturnedFd(fd),
            },
        }
    }

    /// The VMM's vCPU fd, where the error still holds it.
    pub fn into_fd(self) -> Option<VcpuFd> {
        match self {
            ResetVcpuError::Adopt(e) => e.into_fd(),
            ResetVcpuError::UnknownVendor { fd, .. } => Some(fd.0),
            ResetVcpuError::Reset { fd, .. } | ResetVcpuError::Call { fd, .. } => Some(fd.0),
        }
    }
}

/// Put vCPU `id` of `vm`, which the VMM created and gave a CPUID, into the exact power-on
/// RESET state (Intel SDM Vol. 3A Table 10-1, AMD APM Vol. 2 Table 14-1) for the CPU model its
/// CPUID presents, and give the fd back ready for the VMM's next KVM_RUN.
///
/// The VMM's CPUID, memory, irqchip and `kvm_run` settings are not changed.
///
/// # Cost
///
/// For a VM with an in-kernel irqchip and a BSP that ran, as the backend's counters
/// ([`reset_vcpu_counted`]) give it where the host refuses none of the MSRs it lists:
/// **18 ioctls** right after a guest exit, which is when a guest's reboot request (an OUT to
/// 0xCF9) arrives, and **17** with no exit left to complete. The README gives the figures
/// measured per host.
///
/// - Learning the vCPU, 8 (`other`): KVM_CHECK_EXTENSION and KVM_SET_BOOT_CPU_ID (does the VM have
///   vCPUs?), KVM_GET_IRQCHIP, KVM_GET_LAPIC, KVM_GET_CPUID2, KVM_GET_MP_STATE,
///   KVM_GET_VCPU_EVENTS and one KVM_GET_MSRS (plus one per MSR the host lists but the vCPU
///   refuses). After an I/O, MMIO, MSR or hypercall exit also one KVM_RUN with
///   `immediate_exit` (`runs`), which lets KVM complete that exit without entering the guest:
///   completed later, it would finish the old instruction over the RESET state.
/// - RESET, 9: one KVM_GET_MP_STATE (`loads`), so that an INIT or SIPI pending in the local
///   APIC is settled before the RESET rather than after it, then one store each of REGS, SREGS,
///   XSAVE, XCRS, DEBUGREGS, MSRS, LAPIC and VCPU_EVENTS (`stores`); KVM_SET_MP_STATE too for an
///   AP that was running, and KVM_SET_NESTED_STATE where the host has nested state.
///
/// A VMM that resets more than once keeps a [`VcpuReset`] beside the fd instead: it learns
/// once, and a RESET after a run then costs 3 to 5 ioctls (see its `# Cost`). The selftest's
/// `adopt_kvm` test checks these counts.
///
/// # Errors
/// [`ResetVcpuError`]; [`ResetVcpuError::into_fd`] gives the fd back.
pub fn reset_vcpu(
    host: &KvmHost,
    vm: &VmFd,
    fd: VcpuFd,
    id: u64,
) -> Result<VcpuFd, ResetVcpuError> {
    reset_vcpu_counted(host, vm, fd, id).map(|(fd, _)| fd)
}

/// [`reset_vcpu`], also returning the ioctls it made, as the KVM backend counted them
/// (adoption in `other`).
///
/// # Errors
/// As [`reset_vcpu`].
pub fn reset_vcpu_counted(
    host: &KvmHost,
    vm: &VmFd,
    fd: VcpuFd,
    id: u64,
) -> Result<(VcpuFd, Stats), ResetVcpuError> {
    let mut fd = fd;
    let mut r = match VcpuReset::one_shot(host, vm, &fd, id) {
        Ok(r) => r,
        Err(e) => return Err(ResetVcpuError::of(e, fd)),
    };
    let learned = r.stats();
    // A failed store does not cost the VMM its vCPU: the error carries the fd back (KVM
    // cannot create a vCPU with the same id again).
    match r.reset(&mut fd) {
        Ok(outcome) => Ok((fd, learned.plus(&outcome.calls))),
        Err(e) => Err(ResetVcpuError::of(e, fd)),
    }
}
