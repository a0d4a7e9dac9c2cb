//! [`StateClass::Regs`]: the general registers, RIP and RFLAGS (`kvm_regs`).

use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::codec::regs::{regs_from_state, regs_to_state};
use super::ioctl_error::ioctl_error;
use crate::backend::{BackendError, StateClass};

impl KvmVcpu {
    pub(super) fn load_regs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        if self.mirrored(StateClass::Regs) {
            regs_to_state(&self.fd.sync_regs_mut().regs, state);
            self.stats.sync_loads += 1;
            return Ok(());
        }
        self.stats.loads += 1;
        let regs = self
            .fd
            .get_regs()
            .map_err(|e| ioctl_error("KVM_GET_REGS", e))?;
        regs_to_state(&regs, state);
        if self.sync {
            self.fd.sync_regs_mut().regs = regs;
            self.mirror_filled(StateClass::Regs);
        }
        Ok(())
    }

    pub(super) fn store_regs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let regs = regs_from_state(state);
        if self.can_defer() {
            self.fd.sync_regs_mut().regs = regs;
            self.defer(StateClass::Regs);
            return Ok(());
        }
        self.stats.stores += 1;
        self.fd
            .set_regs(&regs)
            .map_err(|e| ioctl_error("KVM_SET_REGS", e))?;
        self.stored_by_ioctl(StateClass::Regs);
        Ok(())
    }
}
