//! [`StateClass::Debug`](crate::backend::StateClass::Debug): DR0–DR3, DR6, DR7 (`kvm_debugregs`).

use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::codec::debugregs::{debugregs_from_state, debugregs_to_state};
use super::ioctl_error::ioctl_error;
use crate::backend::BackendError;

impl KvmVcpu {
    pub(super) fn load_debugregs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        self.stats.loads += 1;
        let d = self
            .fd
            .get_debug_regs()
            .map_err(|e| ioctl_error("KVM_GET_DEBUGREGS", e))?;
        debugregs_to_state(&d, state);
        Ok(())
    }

    pub(super) fn store_debugregs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        self.stats.stores += 1;
        self.fd
            .set_debug_regs(&debugregs_from_state(state))
            .map_err(|e| ioctl_error("KVM_SET_DEBUGREGS", e))
    }
}
