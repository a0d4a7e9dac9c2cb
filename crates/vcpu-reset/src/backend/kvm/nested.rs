//! [`StateClass::Nested`](crate::backend::StateClass::Nested): nested-virtualization state
//! (KVM_GET/SET_NESTED_STATE), only where the host has KVM_CAP_NESTED_STATE; elsewhere the class
//! is not supported.
//!
//! `nested.state` says whether the vCPU has nested state (is in VMX operation, or in SVM guest
//! mode). A store of "absent" writes a header-only state (VMX: no VMXON region, no current
//! VMCS; SVM: GIF set), which takes the vCPU out of VMX operation or SVM guest mode. A store of
//! "present" can only keep state the vCPU already has: it cannot be made from a flag.
//!
//! The parts are read from the header: the VMXON and current-VMCS pointers (VMX `vmxon_pa`,
//! `vmcs12_pa`; all-ones on SVM), guest mode (`KVM_STATE_NESTED_GUEST_MODE`) and GIF (SVM:
//! `KVM_STATE_NESTED_GIF_SET`; VMX has none and reads 1). The enlightened-VMCS address and the
//! INIT intercept are not in KVM's nested state, so the backend does not hold them. Stores
//! follow `nested.state`: the parts of a state without nested state are the header-only ones.

use kvm_bindings::nested::KvmNestedStateBuffer;
use kvm_bindings::{
    KVM_STATE_NESTED_FORMAT_SVM, KVM_STATE_NESTED_FORMAT_VMX, KVM_STATE_NESTED_GIF_SET,
    KVM_STATE_NESTED_GUEST_MODE, kvm_nested_state, kvm_vmx_nested_state_hdr,
};
use vcpu_reset_spec::{VcpuState, Vendor};

use super::KvmVcpu;
use super::ioctl_error::ioctl_error;
use crate::backend::BackendError;

/// Whether a nested state is more than "not in VMX operation / not in guest mode".
fn present(buf: &KvmNestedStateBuffer) -> bool {
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

impl KvmVcpu {
    fn get_nested(&mut self) -> Result<KvmNestedStateBuffer, BackendError> {
        let mut buf = KvmNestedStateBuffer::empty();
        self.stats.loads += 1;
        self.fd
            .nested_state(&mut buf)
            .map_err(|e| ioctl_error("KVM_GET_NESTED_STATE", e))?;
        Ok(buf)
    }

    pub(super) fn load_nested(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let buf = self.get_nested()?;
        let n = &mut state.nested;
        n.present = present(&buf);
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
        Ok(())
    }

    pub(super) fn store_nested(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        // Nested state changes everything else: nothing deferred may be applied after it.
        self.flush_all()?;
        if state.nested.present {
            let current = self.get_nested()?;
            if present(&current) {
                return Ok(());
            }
            return Err(BackendError::Invalid {
                what: "nested.state",
                why: "nested state cannot be created from a flag; let the guest enter VMX operation or SVM guest mode".into(),
            });
        }
        let mut buf = KvmNestedStateBuffer::empty();
        buf.flags = 0;
        buf.size = std::mem::size_of::<kvm_nested_state>() as u32;
        if self.vendor() == Some(Vendor::Amd) {
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
        self.stats.stores += 1;
        self.fd
            .set_nested_state(&buf)
            .map_err(|e| ioctl_error("KVM_SET_NESTED_STATE", e))
    }
}
