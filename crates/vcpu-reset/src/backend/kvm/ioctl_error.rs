//! A failed vCPU ioctl as a [`BackendError`]: every KVM class file and the vCPU use it, so it
//! lives apart from all of them (no import back into `vcpu.rs`).

use vmm_sys_util::errno;

use crate::backend::BackendError;

/// A failed vCPU ioctl as a [`BackendError`], with what to do about it.
pub(super) fn ioctl_error(op: &'static str, errno: errno::Error) -> BackendError {
    let hint = match op {
        "KVM_SET_REGS" => "KVM rejected the general registers",
        "KVM_SET_SREGS" | "KVM_SET_SREGS2" => {
            "KVM rejected the segment/control state: CR0, CR4 and EFER must be consistent (no PG without PE, LMA only with LME and PG, no CR4 bit the vCPU's CPUID lacks)"
        }
        "KVM_SET_XSAVE" => {
            "KVM rejected the XSAVE image: MXCSR has reserved bits set, or a component the vCPU's CPUID does not enable is present"
        }
        "KVM_SET_XCRS" => {
            "XCR0 must have bit 0, AVX needs SSE, AVX-512 needs bits 5-7 together, and every bit must be in CPUID.(EAX=0DH,ECX=0)"
        }
        "KVM_SET_DEBUGREGS" => "DR6 and DR7 bits 63:32 must be zero",
        "KVM_SET_LAPIC" => "KVM rejected the local APIC page (in x2APIC mode the ID must match)",
        "KVM_SET_MP_STATE" => "KVM rejected the MP state for this vCPU",
        "KVM_SET_VCPU_EVENTS" => {
            "KVM rejected the events: SMM needs KVM_CAP_X86_SMM and exception vectors must be below 32"
        }
        "KVM_SET_NESTED_STATE" => "KVM rejected the nested state",
        "KVM_RUN" => {
            "the vCPU cannot run: guest memory may be missing, or KVM rejected REGS/SREGS/EVENTS stored through sync regs"
        }
        _ => {
            "the vCPU did not answer; the host's KVM may lack the capability or the vCPU is unusable"
        }
    };
    BackendError::Ioctl { op, errno, hint }
}
