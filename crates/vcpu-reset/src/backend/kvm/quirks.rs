//! KVM quirks a VMM may turn off to make KVM's own RESET and INIT closer to the architecture,
//! and a RESET through KVM's INIT cheaper.
//!
//! `KVM_X86_QUIRK_LINT0_REENABLED` (Linux `Documentation/virt/kvm/api.rst`, "KVM_CAP_DISABLE_QUIRKS2"):
//! while it is on (KVM's default), KVM's RESET and INIT of the BSP set its LVT LINT0 to 0x700
//! (ExtINT, not masked) where the architecture masks every LVT entry (0x10000: Intel SDM Vol.
//! 3A §11.4.7.1 and Table 10-1; AMD APM Vol. 2 §16.4.1). vcpu-reset's RESET writes the masked
//! value either way, but with the quirk on it must first have KVM's INIT applied
//! (KVM_GET_MP_STATE) and then store the LAPIC (KVM_SET_LAPIC): two vCPU ioctls per RESET of
//! the BSP that the VM saves by turning the quirk off.

use std::os::fd::BorrowedFd;
use std::os::raw::c_ulong;

use kvm_bindings::{KVM_CAP_DISABLE_QUIRKS2, KVM_X86_QUIRK_LINT0_REENABLED, kvm_enable_cap};
use kvm_ioctls::VmFd;
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};

use super::ioctls::{KVM_CHECK_EXTENSION, KVM_ENABLE_CAP};

/// Why a quirk could not be turned off.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuirkError {
    /// A VM ioctl failed.
    #[error("{op} on the VM failed: {errno} — pass the VM's own fd (not /dev/kvm's or a vCPU's)")]
    Ioctl {
        /// The ioctl (e.g. "KVM_ENABLE_CAP(KVM_CAP_DISABLE_QUIRKS2)").
        op: &'static str,
        /// The error KVM gave.
        errno: errno::Error,
    },
}

/// Turn off KVM's LINT0_REENABLED quirk on the VM `vm`, with the quirks in `others` that the
/// VMM turns off anyway, where the host lets a VM do so (KVM_CAP_DISABLE_QUIRKS2 lists the
/// quirk). KVM's own RESET and INIT then leave the BSP's LVT LINT0 masked (0x10000) as the
/// architecture does (see the module docs), and [`VcpuReset`](crate::VcpuReset)'s RESET of
/// the BSP needs no KVM_GET_MP_STATE and KVM_SET_LAPIC. Call it before
/// [`VcpuReset::new`](crate::VcpuReset::new), which learns what the host's INIT gets right at
/// its first RESET.
///
/// `others`: every other quirk the VMM has turned off or will (`KVM_X86_QUIRK_*` bits; those
/// the host does not list are dropped). KVM long *replaced* a VM's set of disabled quirks at
/// each KVM_ENABLE_CAP instead of adding to it (`kvm->arch.disabled_quirks = cap->args[0]`;
/// kernels since early 2025 and their stable updates OR it in), so on such a kernel a call
/// without them would turn the VMM's own choices back on.
///
/// Returns `true` when the quirk is now off, `false` when the host cannot turn it off (then
/// every RESET still comes out exact, at two more ioctls for the BSP). Costs two VM ioctls.
///
/// The quirk is VM-wide: a guest's own INIT of its BSP (an INIT IPI to the BSP, rare) then also
/// leaves LINT0 masked, as on hardware. A guest that relies on LINT0 delivering the PIC's
/// interrupts programs it (firmware does: SeaBIOS, OVMF, Linux's `setup_local_APIC`).
///
/// # Errors
/// [`QuirkError::Ioctl`] when KVM refuses the ioctl (e.g. `vm` is not a VM fd).
pub fn disable_lint0_quirk(vm: &VmFd, others: u64) -> Result<bool, QuirkError> {
    disable_lint0_quirk_raw(super::adopt::borrow_vm(vm), others)
}

/// [`disable_lint0_quirk`] on a VM given by its raw fd.
///
/// # Errors
/// As [`disable_lint0_quirk`].
pub fn disable_lint0_quirk_raw(vm: BorrowedFd<'_>, others: u64) -> Result<bool, QuirkError> {
    // SAFETY: KVM_CHECK_EXTENSION takes its argument by value and touches no memory of ours;
    // `vm` is a live fd for the call's length.
    let supported = unsafe {
        ioctl_with_val(
            &vm,
            KVM_CHECK_EXTENSION(),
            c_ulong::from(KVM_CAP_DISABLE_QUIRKS2),
        )
    };
    if supported < 0 {
        return Err(QuirkError::Ioctl {
            op: "KVM_CHECK_EXTENSION(KVM_CAP_DISABLE_QUIRKS2)",
            errno: errno::Error::last(),
        });
    }
    let supported = u64::try_from(supported).unwrap_or(0);
    let quirk = u64::from(KVM_X86_QUIRK_LINT0_REENABLED);
    if supported & quirk == 0 {
        return Ok(false);
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_DISABLE_QUIRKS2,
        args: [(quirk | others) & supported, 0, 0, 0],
        ..Default::default()
    };
    // SAFETY: KVM_ENABLE_CAP reads one `kvm_enable_cap` from `cap`, which lives for the call;
    // `vm` is a live fd.
    if unsafe { ioctl_with_ref(&vm, KVM_ENABLE_CAP(), &cap) } < 0 {
        return Err(QuirkError::Ioctl {
            op: "KVM_ENABLE_CAP(KVM_CAP_DISABLE_QUIRKS2)",
            errno: errno::Error::last(),
        });
    }
    Ok(true)
}
