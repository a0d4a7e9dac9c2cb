//! `kvm_nested_state` ↔ [`VcpuState`]: the nested-virtualization state
//! ([`StateClass::Nested`](crate::slots::StateClass::Nested)), read from its header.
//!
//! `nested.state` says whether the vCPU has nested state: it is in VMX operation (after VMXON,
//! SDM Vol. 3C §24.7) or in SVM guest mode (after VMRUN, APM Vol. 2 §15.5). The parts are the
//! VMXON and current-VMCS pointers (VMX header `vmxon_pa`, `vmcs12_pa`; all-ones on SVM), guest
//! mode (`KVM_STATE_NESTED_GUEST_MODE`) and GIF (SVM `KVM_STATE_NESTED_GIF_SET`, APM Vol. 2
//! §15.17; VMX has none and reads 1). [`absent_nested_state`] is the header-only state that
//! takes a vCPU out of VMX operation or SVM guest mode.

use kvm_bindings::nested::KvmNestedStateBuffer;
use kvm_bindings::{
    KVM_STATE_NESTED_FORMAT_SVM, KVM_STATE_NESTED_FORMAT_VMX, KVM_STATE_NESTED_GIF_SET,
    KVM_STATE_NESTED_GUEST_MODE, kvm_nested_state, kvm_vmx_nested_state_hdr,
};
use vcpu_reset_spec::{VcpuState, Vendor};

/// Whether a nested state is more than "not in VMX operation / not in guest mode".
pub fn nested_present(buf: &KvmNestedStateBuffer) -> bool {
    if u32::from(buf.flags) & KVM_STATE_NESTED_GUEST_MODE != 0 {
        return true;
    }
    if u32::from(buf.format) == KVM_STATE_NESTED_FORMAT_VMX {
        // SAFETY: the format says the header is the VMX one, and every bit pattern is a valid
        // `kvm_vmx_nested_state_hdr` (plain integers).
        let vmx = unsafe { buf.hdr.vmx };
        return vmx.vmxon_pa != u64::MAX;
    }
    false
}

/// Copy what the header of `buf` says into `state.nested` (the enlightened-VMCS address and
/// the INIT intercept are not in KVM's nested state and are left alone).
pub fn nested_to_state(buf: &KvmNestedStateBuffer, state: &mut VcpuState) {
    let n = &mut state.nested;
    n.present = nested_present(buf);
    let flags = u32::from(buf.flags);
    n.guest_mode = flags & KVM_STATE_NESTED_GUEST_MODE != 0;
    if u32::from(buf.format) == KVM_STATE_NESTED_FORMAT_VMX {
        // SAFETY: the format says the header is the VMX one, and every bit pattern is a
        // valid `kvm_vmx_nested_state_hdr` (plain integers).
        let vmx = unsafe { buf.hdr.vmx };
        n.vmxon_pointer = vmx.vmxon_pa;
        n.current_vmcs_pointer = vmx.vmcs12_pa;
        n.gif = true;
    } else {
        n.vmxon_pointer = u64::MAX;
        n.current_vmcs_pointer = u64::MAX;
        n.gif = flags & KVM_STATE_NESTED_GIF_SET != 0;
    }
}

/// The header-only nested state of a vCPU of `vendor` without nested state: VMX with no VMXON
/// region and no current VMCS (Intel, and any vendor but AMD), SVM with GIF set (AMD).
pub fn absent_nested_state(vendor: Option<Vendor>) -> KvmNestedStateBuffer {
    let mut buf = KvmNestedStateBuffer::empty();
    buf.flags = 0;
    buf.size = std::mem::size_of::<kvm_nested_state>() as u32;
    if vendor == Some(Vendor::Amd) {
        buf.format = KVM_STATE_NESTED_FORMAT_SVM as u16;
        buf.flags = KVM_STATE_NESTED_GIF_SET as u16;
    } else {
        buf.format = KVM_STATE_NESTED_FORMAT_VMX as u16;
        buf.hdr.vmx = kvm_vmx_nested_state_hdr {
            vmxon_pa: u64::MAX,
            vmcs12_pa: u64::MAX,
            ..Default::default()
        };
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_absent_states_read_back_as_absent() {
        for (vendor, svm) in [(Some(Vendor::Intel), false), (Some(Vendor::Amd), true)] {
            let buf = absent_nested_state(vendor);
            assert_eq!(
                u32::from(buf.format),
                if svm {
                    KVM_STATE_NESTED_FORMAT_SVM
                } else {
                    KVM_STATE_NESTED_FORMAT_VMX
                }
            );
            assert!(!nested_present(&buf));
            let mut state = VcpuState::default();
            state.nested.present = true;
            state.nested.guest_mode = true;
            nested_to_state(&buf, &mut state);
            let n = &state.nested;
            assert!(!n.present && !n.guest_mode && n.gif, "{vendor:?}");
            assert_eq!(
                (n.vmxon_pointer, n.current_vmcs_pointer),
                (u64::MAX, u64::MAX)
            );
        }
    }

    #[test]
    fn vmx_operation_and_guest_mode_are_present() {
        let mut buf = absent_nested_state(Some(Vendor::Intel));
        buf.hdr.vmx.vmxon_pa = 0x1000;
        buf.hdr.vmx.vmcs12_pa = 0x2000;
        assert!(nested_present(&buf));
        let mut state = VcpuState::default();
        nested_to_state(&buf, &mut state);
        assert_eq!(
            (
                state.nested.vmxon_pointer,
                state.nested.current_vmcs_pointer
            ),
            (0x1000, 0x2000)
        );
        let mut svm = absent_nested_state(Some(Vendor::Amd));
        svm.flags |= KVM_STATE_NESTED_GUEST_MODE as u16;
        assert!(nested_present(&svm));
        nested_to_state(&svm, &mut state);
        assert!(state.nested.guest_mode && state.nested.gif);
    }
}
