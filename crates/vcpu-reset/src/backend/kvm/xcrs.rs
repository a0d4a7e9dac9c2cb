//! [`StateClass::Xcrs`](crate::backend::StateClass::Xcrs): XCR0 (`kvm_xcrs`).

use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::codec::xcrs::{xcr0_of, xcrs_from_state};
use super::ioctl_error::ioctl_error;
use crate::backend::BackendError;

impl KvmVcpu {
    pub(super) fn load_xcrs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        self.stats.loads += 1;
        let x = self
            .fd
            .get_xcrs()
            .map_err(|e| ioctl_error("KVM_GET_XCRS", e))?;
        state.xcr0 = xcr0_of(&x).ok_or_else(|| BackendError::Invalid {
            what: "kvm_xcrs",
            why: "KVM_GET_XCRS did not report XCR0; the host's KVM is inconsistent".into(),
        })?;
        Ok(())
    }

    pub(super) fn store_xcrs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        self.stats.stores += 1;
        self.fd
            .set_xcrs(&xcrs_from_state(state))
            .map_err(|e| ioctl_error("KVM_SET_XCRS", e))
    }
}
