//! The KVM ioctls this backend makes: their list ([`Ioctl`], each with its KVM name and what to
//! do when it fails), the one error a failed one becomes ([`IoctlError`]), and the request
//! numbers of those `kvm-ioctls` does not wrap, declared from the Linux UAPI (`linux/kvm.h`).
//!
//! Every call is made through one of the counted helpers of `calls.rs`, which counts it in the
//! vCPU's [`Stats`](crate::backend::Stats) and turns its errno into an [`IoctlError`].

use kvm_bindings::{KVMIO, kvm_enable_cap, kvm_irqchip, kvm_sregs2};
use vmm_sys_util::errno;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

// KVM_X86_GET_MCE_CAP_SUPPORTED: _IOR(KVMIO, 0x9d, __u64), on /dev/kvm.
ioctl_ior_nr!(KVM_X86_GET_MCE_CAP_SUPPORTED, KVMIO, 0x9d, u64);
// KVM_GET_SREGS2: _IOR(KVMIO, 0xcc, struct kvm_sregs2), on a vCPU (KVM_CAP_SREGS2).
ioctl_ior_nr!(KVM_GET_SREGS2, KVMIO, 0xcc, kvm_sregs2);
// KVM_SET_SREGS2: _IOW(KVMIO, 0xcd, struct kvm_sregs2), on a vCPU (KVM_CAP_SREGS2).
ioctl_iow_nr!(KVM_SET_SREGS2, KVMIO, 0xcd, kvm_sregs2);
// KVM_SET_BOOT_CPU_ID: _IO(KVMIO, 0x78), on a VM (KVM_CAP_SET_BOOT_CPU_ID).
ioctl_io_nr!(KVM_SET_BOOT_CPU_ID, KVMIO, 0x78);
// KVM_CHECK_EXTENSION: _IO(KVMIO, 0x03), on a VM (or /dev/kvm).
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
// KVM_ENABLE_CAP: _IOW(KVMIO, 0xa3, struct kvm_enable_cap), on a VM.
ioctl_iow_nr!(KVM_ENABLE_CAP, KVMIO, 0xa3, kvm_enable_cap);
// KVM_GET_IRQCHIP: _IOWR(KVMIO, 0x62, struct kvm_irqchip), on a VM.
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
// KVM_SET_IRQCHIP: _IOR(KVMIO, 0x63, struct kvm_irqchip), on a VM.
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
// KVM_GET_PIT2: _IOR(KVMIO, 0x9f, struct kvm_pit_state2), on a VM.
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_bindings::kvm_pit_state2);
// KVM_SET_PIT2: _IOW(KVMIO, 0xa0, struct kvm_pit_state2), on a VM.
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_bindings::kvm_pit_state2);
// KVM_GET_STATS_FD: _IO(KVMIO, 0xce), on a vCPU (KVM_CAP_BINARY_STATS_FD).
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// An ioctl the KVM backend makes on `/dev/kvm`, a VM or a vCPU.
///
/// [`Ioctl::name`] is the ioctl's name in the KVM API documentation
/// (`Documentation/virt/kvm/api.rst`); [`Ioctl::hint`] says what to do when it fails. KVM_RUN
/// appears three times, because what to do differs with how it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ioctl {
    /// KVM_CREATE_VM, on `/dev/kvm`.
    CreateVm,
    /// KVM_GET_SUPPORTED_CPUID, on `/dev/kvm`.
    GetSupportedCpuid,
    /// KVM_GET_MSR_INDEX_LIST, on `/dev/kvm`.
    GetMsrIndexList,
    /// KVM_GET_VCPU_MMAP_SIZE, on `/dev/kvm`: the size of a vCPU's `kvm_run` mapping.
    GetVcpuMmapSize,
    /// KVM_CHECK_EXTENSION, on a VM.
    CheckExtension,
    /// KVM_SET_IDENTITY_MAP_ADDR, on a VM.
    SetIdentityMapAddr,
    /// KVM_SET_TSS_ADDR, on a VM.
    SetTssAddr,
    /// KVM_CREATE_IRQCHIP, on a VM.
    CreateIrqchip,
    /// KVM_GET_IRQCHIP, on a VM.
    GetIrqchip,
    /// KVM_SET_BOOT_CPU_ID, on a VM.
    SetBootCpuId,
    /// KVM_CREATE_VCPU, on a VM.
    CreateVcpu,
    /// KVM_SET_CPUID2.
    SetCpuid2,
    /// KVM_GET_CPUID2.
    GetCpuid2,
    /// KVM_GET_STATS_FD.
    GetStatsFd,
    /// KVM_GET_REGS.
    GetRegs,
    /// KVM_SET_REGS.
    SetRegs,
    /// KVM_GET_SREGS.
    GetSregs,
    /// KVM_SET_SREGS.
    SetSregs,
    /// KVM_GET_SREGS2.
    GetSregs2,
    /// KVM_SET_SREGS2.
    SetSregs2,
    /// KVM_GET_DEBUGREGS.
    GetDebugregs,
    /// KVM_SET_DEBUGREGS.
    SetDebugregs,
    /// KVM_GET_FPU.
    GetFpu,
    /// KVM_GET_XSAVE.
    GetXsave,
    /// KVM_GET_XSAVE2.
    GetXsave2,
    /// KVM_SET_XSAVE (also with the larger buffer of KVM_CAP_XSAVE2).
    SetXsave,
    /// KVM_GET_XCRS.
    GetXcrs,
    /// KVM_SET_XCRS.
    SetXcrs,
    /// KVM_GET_MSRS.
    GetMsrs,
    /// KVM_SET_MSRS.
    SetMsrs,
    /// KVM_GET_LAPIC.
    GetLapic,
    /// KVM_SET_LAPIC.
    SetLapic,
    /// KVM_GET_MP_STATE.
    GetMpState,
    /// KVM_SET_MP_STATE.
    SetMpState,
    /// KVM_GET_VCPU_EVENTS.
    GetVcpuEvents,
    /// KVM_SET_VCPU_EVENTS.
    SetVcpuEvents,
    /// KVM_GET_NESTED_STATE.
    GetNestedState,
    /// KVM_SET_NESTED_STATE.
    SetNestedState,
    /// KVM_SET_MSRS putting back, after learning a vCPU, the value of an MSR whose host write
    /// was probed with its RESET value (steal time, the async-PF interrupt, a Hyper-V SINT).
    SetMsrsWriteBack,
    /// KVM_RUN.
    Run,
    /// KVM_RUN with stores deferred through sync regs (`kvm_dirty_regs`), which KVM applies at
    /// entry and which were dropped when it failed.
    RunDeferredStores,
    /// KVM_RUN with `immediate_exit`, to complete a VMM's last exit before adoption.
    RunImmediateExit,
}

/// What to do when a vCPU stops answering a read.
const UNANSWERED: &str = "the vCPU did not answer; check dmesg for KVM errors";

impl Ioctl {
    /// The ioctl's name in the KVM API documentation, e.g. `KVM_GET_REGS`.
    pub fn name(self) -> &'static str {
        match self {
            Ioctl::CreateVm => "KVM_CREATE_VM",
            Ioctl::GetSupportedCpuid => "KVM_GET_SUPPORTED_CPUID",
            Ioctl::GetMsrIndexList => "KVM_GET_MSR_INDEX_LIST",
            Ioctl::GetVcpuMmapSize => "KVM_GET_VCPU_MMAP_SIZE",
            Ioctl::CheckExtension => "KVM_CHECK_EXTENSION",
            Ioctl::SetIdentityMapAddr => "KVM_SET_IDENTITY_MAP_ADDR",
            Ioctl::SetTssAddr => "KVM_SET_TSS_ADDR",
            Ioctl::CreateIrqchip => "KVM_CREATE_IRQCHIP",
            Ioctl::GetIrqchip => "KVM_GET_IRQCHIP",
            Ioctl::SetBootCpuId => "KVM_SET_BOOT_CPU_ID",
            Ioctl::CreateVcpu => "KVM_CREATE_VCPU",
            Ioctl::SetCpuid2 => "KVM_SET_CPUID2",
            Ioctl::GetCpuid2 => "KVM_GET_CPUID2",
            Ioctl::GetStatsFd => "KVM_GET_STATS_FD",
            Ioctl::GetRegs => "KVM_GET_REGS",
            Ioctl::SetRegs => "KVM_SET_REGS",
            Ioctl::GetSregs => "KVM_GET_SREGS",
            Ioctl::SetSregs => "KVM_SET_SREGS",
            Ioctl::GetSregs2 => "KVM_GET_SREGS2",
            Ioctl::SetSregs2 => "KVM_SET_SREGS2",
            Ioctl::GetDebugregs => "KVM_GET_DEBUGREGS",
            Ioctl::SetDebugregs => "KVM_SET_DEBUGREGS",
            Ioctl::GetFpu => "KVM_GET_FPU",
            Ioctl::GetXsave => "KVM_GET_XSAVE",
            Ioctl::GetXsave2 => "KVM_GET_XSAVE2",
            Ioctl::SetXsave => "KVM_SET_XSAVE",
            Ioctl::GetXcrs => "KVM_GET_XCRS",
            Ioctl::SetXcrs => "KVM_SET_XCRS",
            Ioctl::GetMsrs => "KVM_GET_MSRS",
            Ioctl::SetMsrs => "KVM_SET_MSRS",
            Ioctl::GetLapic => "KVM_GET_LAPIC",
            Ioctl::SetLapic => "KVM_SET_LAPIC",
            Ioctl::GetMpState => "KVM_GET_MP_STATE",
            Ioctl::SetMpState => "KVM_SET_MP_STATE",
            Ioctl::GetVcpuEvents => "KVM_GET_VCPU_EVENTS",
            Ioctl::SetVcpuEvents => "KVM_SET_VCPU_EVENTS",
            Ioctl::GetNestedState => "KVM_GET_NESTED_STATE",
            Ioctl::SetNestedState => "KVM_SET_NESTED_STATE",
            Ioctl::SetMsrsWriteBack => "KVM_SET_MSRS",
            Ioctl::Run | Ioctl::RunDeferredStores | Ioctl::RunImmediateExit => "KVM_RUN",
        }
    }

    /// What to do when the ioctl fails. Where KVM checks what a SET ioctl is given, the hint
    /// names the checks: `kvm_set_sregs()`/`kvm_is_valid_sregs()`,
    /// `kvm_vcpu_ioctl_x86_set_xsave()`, `__kvm_set_xcr()`,
    /// `kvm_vcpu_ioctl_x86_set_debugregs()`, `kvm_arch_vcpu_ioctl_set_mpstate()` and
    /// `kvm_vcpu_ioctl_x86_set_vcpu_events()` in `arch/x86/kvm/x86.c`.
    pub fn hint(self) -> &'static str {
        match self {
            Ioctl::CreateVm => "the host cannot create another VM; check memory limits and dmesg",
            Ioctl::GetSupportedCpuid => {
                "the host's KVM cannot report its CPUID; check dmesg for KVM errors"
            }
            Ioctl::GetMsrIndexList => {
                "the host's KVM cannot list its MSRs; check dmesg for KVM errors"
            }
            Ioctl::GetVcpuMmapSize => {
                "the host's KVM cannot give the size of a vCPU's kvm_run mapping; check that the KvmHost's /dev/kvm fd is open and dmesg for KVM errors"
            }
            Ioctl::CheckExtension => "the VM did not answer; check dmesg for KVM errors",
            Ioctl::SetIdentityMapAddr => {
                "KVM refused the identity-map address; it must be set before any vCPU exists"
            }
            Ioctl::SetTssAddr => {
                "KVM refused the real-mode TSS address; check dmesg for KVM errors"
            }
            Ioctl::CreateIrqchip => {
                "create the irqchip once per VM, before any vCPU; on a host without KVM_CAP_IRQCHIP create the VM without one"
            }
            Ioctl::GetIrqchip => {
                "the VM has no in-kernel irqchip; pass the VmFd the vCPU was created from"
            }
            Ioctl::SetBootCpuId => "the VM did not answer; pass the VmFd the vCPU was created from",
            Ioctl::CreateVcpu => {
                "vCPU ids must be unique and below KVM_CAP_MAX_VCPU_ID; create the irqchip before the vCPUs"
            }
            Ioctl::SetCpuid2 => {
                "KVM refused the host-supported CPUID; the host's KVM is inconsistent"
            }
            Ioctl::GetCpuid2 => "the vCPU does not report its CPUID; check dmesg for KVM errors",
            Ioctl::GetStatsFd => {
                "the host's KVM has no binary statistics (KVM_CAP_BINARY_STATS_FD, Linux 5.14)"
            }
            Ioctl::SetRegs => "KVM rejected the general registers; check dmesg for KVM errors",
            Ioctl::SetSregs | Ioctl::SetSregs2 => {
                "KVM rejected the segment/control state: CR0, CR4 and EFER must be consistent (no PG without PE, LMA only with LME and PG, no CR4 bit the vCPU's CPUID lacks)"
            }
            Ioctl::SetXsave => {
                "KVM rejected the XSAVE image: MXCSR has reserved bits set, or a component the vCPU's CPUID does not enable is present"
            }
            Ioctl::SetXcrs => {
                "XCR0 must have bit 0, AVX needs SSE, AVX-512 needs bits 5-7 together, and every bit must be in CPUID.(EAX=0DH,ECX=0)"
            }
            Ioctl::SetDebugregs => "DR6 and DR7 bits 63:32 must be zero",
            Ioctl::SetMsrs => "the vCPU did not take the MSR list; check dmesg for KVM errors",
            Ioctl::SetLapic => {
                "KVM rejected the local APIC page (in x2APIC mode the ID must match)"
            }
            Ioctl::GetLapic => {
                "the vCPU's local APIC does not answer; the VM needs an in-kernel irqchip, created before its vCPUs"
            }
            Ioctl::GetMpState => {
                "the vCPU does not report its MP state; the VM needs an in-kernel irqchip"
            }
            Ioctl::SetMpState => {
                "KVM rejected the MP state: without an in-kernel irqchip only RUNNABLE is taken, and INIT_RECEIVED or SIPI_RECEIVED not while INIT is blocked (SMM) or an SMI is pending"
            }
            Ioctl::SetVcpuEvents => {
                "KVM rejected the events: exception vectors must be below 32, SMM needs KVM_CAP_X86_SMM and a vCPU not waiting for SIPI, and a triple fault needs KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled on the VM"
            }
            Ioctl::SetNestedState => "KVM rejected the nested state; check dmesg for KVM errors",
            Ioctl::GetRegs
            | Ioctl::GetSregs
            | Ioctl::GetSregs2
            | Ioctl::GetDebugregs
            | Ioctl::GetFpu
            | Ioctl::GetXsave
            | Ioctl::GetXsave2
            | Ioctl::GetXcrs
            | Ioctl::GetMsrs
            | Ioctl::GetVcpuEvents
            | Ioctl::GetNestedState => UNANSWERED,
            Ioctl::Run => {
                "the vCPU cannot run: check that guest memory covers CS:RIP and that the stored state is consistent"
            }
            Ioctl::SetMsrsWriteBack => {
                "KVM took the RESET value of an MSR the vCPU was probed for (steal time, the async-PF interrupt or a Hyper-V SINT) but refused the value the vCPU had before, which it now lacks: RESET the vCPU before it runs again, and learn vCPUs before their guest first runs"
            }
            Ioctl::RunDeferredStores => {
                "KVM rejected REGS/SREGS/EVENTS stored through sync regs at entry, and those stores were dropped; store valid state again"
            }
            Ioctl::RunImmediateExit => {
                "KVM could not complete the vCPU's last exit; answer it (e.g. the data of an IN or MMIO read) before adopting"
            }
        }
    }

    /// The state class this ioctl moves, where it moves one (a load or a store).
    pub fn class(self) -> Option<crate::backend::StateClass> {
        use crate::backend::StateClass as C;
        Some(match self {
            Ioctl::GetRegs | Ioctl::SetRegs => C::Regs,
            Ioctl::GetSregs | Ioctl::SetSregs | Ioctl::GetSregs2 | Ioctl::SetSregs2 => C::Sregs,
            Ioctl::GetDebugregs | Ioctl::SetDebugregs => C::Debug,
            Ioctl::GetFpu | Ioctl::GetXsave | Ioctl::GetXsave2 | Ioctl::SetXsave => C::Fpu,
            Ioctl::GetXcrs | Ioctl::SetXcrs => C::Xcrs,
            Ioctl::GetMsrs | Ioctl::SetMsrs | Ioctl::SetMsrsWriteBack => C::Msrs,
            Ioctl::GetLapic | Ioctl::SetLapic => C::Lapic,
            Ioctl::GetMpState | Ioctl::SetMpState => C::MpState,
            Ioctl::GetVcpuEvents | Ioctl::SetVcpuEvents => C::Events,
            Ioctl::GetNestedState | Ioctl::SetNestedState => C::Nested,
            _ => return None,
        })
    }

    /// The error of this ioctl failing with `errno`.
    pub(super) fn failed(self, errno: errno::Error) -> IoctlError {
        IoctlError { ioctl: self, errno }
    }
}

impl std::fmt::Display for Ioctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A KVM ioctl failed: which one, the error the kernel returned, and (in the message) what to
/// do about it. [`BackendError::Ioctl`](crate::backend::BackendError::Ioctl),
/// [`KvmError::Ioctl`](super::KvmError::Ioctl) and
/// [`AdoptRefusal::Ioctl`](super::AdoptRefusal::Ioctl) carry it.
#[derive(Debug, thiserror::Error)]
#[error("{ioctl} failed: {errno} — {hint}", hint = .ioctl.hint())]
#[non_exhaustive]
pub struct IoctlError {
    /// The ioctl.
    pub ioctl: Ioctl,
    /// The error the kernel returned.
    pub errno: errno::Error,
}

impl IoctlError {
    /// `ioctl` failed with `errno`: for a VMM's or a tool's own ioctls, reported the way the
    /// backend reports its own.
    pub fn new(ioctl: Ioctl, errno: errno::Error) -> IoctlError {
        IoctlError { ioctl, errno }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_ioctl_says_what_failed_first_and_what_to_do_last() {
        let e = Ioctl::SetXcrs.failed(errno::Error::new(libc::EINVAL));
        let text = e.to_string();
        assert!(text.starts_with("KVM_SET_XCRS failed: "), "{text}");
        assert!(text.ends_with(Ioctl::SetXcrs.hint()), "{text}");
        assert!(
            std::error::Error::source(&e).is_none(),
            "the errno is in the message"
        );
    }

    #[test]
    fn every_kvm_run_is_named_kvm_run_with_its_own_hint() {
        let runs = [
            Ioctl::Run,
            Ioctl::RunDeferredStores,
            Ioctl::RunImmediateExit,
        ];
        for run in runs {
            assert_eq!(run.name(), "KVM_RUN");
        }
        assert_ne!(runs[0].hint(), runs[1].hint());
        assert_ne!(runs[1].hint(), runs[2].hint());
        assert_eq!(Ioctl::GetSregs2.to_string(), "KVM_GET_SREGS2");
    }
}
