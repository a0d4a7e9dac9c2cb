//! [`StateClass::Xcrs`](crate::backend::StateClass::Xcrs): XCR0 (`kvm_xcrs`).

use kvm_bindings::{kvm_xcr, kvm_xcrs};
use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::vcpu::ioctl_error;
use crate::backend::BackendError;

/// XCR0 out of `kvm_xcrs`, if KVM listed it.
pub(super) fn xcr0_of(x: &kvm_xcrs) -> Option<u64> {
    let n = (x.nr_xcrs as usize).min(x.xcrs.len());
    x.xcrs[..n].iter().find(|r| r.xcr == 0).map(|r| r.value)
}

/// `kvm_xcrs` that sets XCR0 only.
pub(super) fn xcrs_from_state(state: &VcpuState) -> kvm_xcrs {
    let mut x = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    x.xcrs[0] = kvm_xcr {
        xcr: 0,
        reserved: 0,
        value: state.xcr0,
    };
    x
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xcr0_round_trip() {
        let state = VcpuState {
            xcr0: 0xe7,
            ..VcpuState::default()
        };
        let x = xcrs_from_state(&state);
        assert_eq!(x.nr_xcrs, 1);
        assert_eq!(xcr0_of(&x), Some(0xe7));
        let empty = kvm_xcrs::default();
        assert_eq!(xcr0_of(&empty), None);
    }
}
