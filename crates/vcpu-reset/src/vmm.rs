//! One call for a VMM that only wants the RESET state written: [`reset_vcpu`].
//!
//! It adopts the VMM's vCPU ([`KvmVcpu::adopt_with_options`], without sync regs, since the
//! vCPU goes straight back), writes the spec's power-on RESET state for the CPU model the
//! vCPU's own CPUID presents ([`Vcpu::reset`]) and hands the fd back ([`KvmVcpu::into_fd`]).

use kvm_ioctls::{VcpuFd, VmFd};

use crate::backend::Stats;
use crate::backend::kvm::{KvmError, KvmHost, KvmVcpu, KvmVcpuOptions, ReturnedFd};
use crate::cache::VcpuCache;
use crate::engine::{EngineError, Vcpu};

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
}

impl ResetVcpuError {
    /// The VMM's vCPU fd, where the error still holds it.
    pub fn into_fd(self) -> Option<VcpuFd> {
        match self {
            ResetVcpuError::Adopt(e) => e.into_fd(),
            ResetVcpuError::UnknownVendor { fd, .. } => Some(fd.0),
            ResetVcpuError::Reset { fd, .. } => Some(fd.0),
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
/// - Adoption, 8 (`other`): KVM_CHECK_EXTENSION and KVM_SET_BOOT_CPU_ID (does the VM have
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
/// A VMM that keeps the [`KvmVcpu`] (and runs it through the
/// [`Backend`](crate::backend::Backend) trait or a [`VcpuCache`]) pays only the RESET part, and
/// with sync regs REGS, SREGS and EVENTS then ride the next KVM_RUN. The selftest's `adopt_kvm` test
/// checks these counts.
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
    let options = KvmVcpuOptions { sync_regs: false };
    let kv = KvmVcpu::adopt_with_options(host, vm, fd, id, options)?;
    let Some(model) = kv.cpu_model() else {
        return Err(ResetVcpuError::UnknownVendor {
            id,
            vendor: String::from_utf8_lossy(&kv.vendor_id()).into_owned(),
            fd: ReturnedFd(kv.into_fd()),
        });
    };
    let identity = kv.vcpu_identity();
    let mut vcpu = Vcpu::new(VcpuCache::adopt(kv), model, identity);
    let reset = vcpu.reset();
    // The backend comes back even when a store failed, so the VMM never loses its vCPU fd
    // (KVM cannot create a vCPU with the same id again).
    let (kv, flushed) = vcpu.into_cache().into_backend_anyway();
    let stats = crate::backend::Backend::stats(&kv);
    let source = match (reset, flushed) {
        (Ok(_), Ok(())) => return Ok((kv.into_fd(), stats)),
        (Err(source), _) => source,
        (Ok(_), Err(e)) => EngineError::Cache(e),
    };
    Err(ResetVcpuError::Reset {
        id,
        source,
        fd: ReturnedFd(kv.into_fd()),
    })
}
