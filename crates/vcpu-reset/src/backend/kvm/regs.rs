//! [`StateClass::Regs`]: the general registers, RIP and RFLAGS (`kvm_regs`).

use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::regs::{regs_from_state, regs_to_state};
use super::ioctls::Ioctl;
use crate::backend::{BackendError, StateClass};

impl KvmVcpu {
    pub(super) fn load_regs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        if self.mirrored(StateClass::Regs) {
            regs_to_state(&self.fd.sync_regs_mut().regs, state);
            self.stats.sync_loads += 1;
            return Ok(());
        }
        let regs = load(&mut self.stats, Ioctl::GetRegs, || self.fd.get_regs())?;
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
        store(&mut self.stats, Ioctl::SetRegs, || self.fd.set_regs(&regs))?;
        self.stored_by_ioctl(StateClass::Regs);
        Ok(())
    }
}
