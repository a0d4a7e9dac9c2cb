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
use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::nested::{absent_nested_state, nested_present, nested_to_state};
use super::ioctls::Ioctl;
use crate::backend::BackendError;

impl KvmVcpu {
    fn get_nested(&mut self) -> Result<KvmNestedStateBuffer, BackendError> {
        let mut buf = KvmNestedStateBuffer::empty();
        load(&mut self.stats, Ioctl::GetNestedState, || {
            self.fd.nested_state(&mut buf)
        })?;
        Ok(buf)
    }

    pub(super) fn load_nested(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let buf = self.get_nested()?;
        nested_to_state(&buf, state);
        Ok(())
    }

    pub(super) fn store_nested(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        // Nested state changes everything else: nothing deferred may be applied after it.
        self.flush_all()?;
        if state.nested.present {
            let current = self.get_nested()?;
            if nested_present(&current) {
                return Ok(());
            }
            return Err(BackendError::Invalid {
                what: "nested.state",
                why: "nested state cannot be created from a flag; let the guest enter VMX operation or SVM guest mode".into(),
            });
        }
        let buf = absent_nested_state(self.vendor());
        store(&mut self.stats, Ioctl::SetNestedState, || {
            self.fd.set_nested_state(&buf)
        })?;
        Ok(())
    }
}
