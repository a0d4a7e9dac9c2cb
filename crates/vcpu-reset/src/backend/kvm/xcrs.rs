//! [`StateClass::Xcrs`](crate::backend::StateClass::Xcrs): XCR0 (`kvm_xcrs`).

use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::xcrs::{xcr0_of, xcrs_from_state};
use super::ioctls::Ioctl;
use crate::backend::BackendError;

impl KvmVcpu {
    pub(super) fn load_xcrs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let x = load(&mut self.stats, Ioctl::GetXcrs, || self.fd.get_xcrs())?;
        state.xcr0 = xcr0_of(&x).ok_or_else(|| BackendError::Invalid {
            what: "kvm_xcrs",
            why: "KVM_GET_XCRS did not report XCR0; the host's KVM is inconsistent".into(),
        })?;
        Ok(())
    }

    pub(super) fn store_xcrs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let x = xcrs_from_state(state);
        store(&mut self.stats, Ioctl::SetXcrs, || self.fd.set_xcrs(&x))?;
        Ok(())
    }
}
