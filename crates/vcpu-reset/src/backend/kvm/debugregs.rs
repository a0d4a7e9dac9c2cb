//! [`StateClass::Debug`](crate::backend::StateClass::Debug): DR0–DR3, DR6, DR7 (`kvm_debugregs`).

use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::debugregs::{debugregs_from_state, debugregs_to_state};
use super::ioctls::Ioctl;
use crate::backend::BackendError;

impl KvmVcpu {
    pub(super) fn load_debugregs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let d = load(&mut self.stats, Ioctl::GetDebugregs, || {
            self.fd.get_debug_regs()
        })?;
        debugregs_to_state(&d, state);
        Ok(())
    }

    pub(super) fn store_debugregs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let d = debugregs_from_state(state);
        store(&mut self.stats, Ioctl::SetDebugregs, || {
            self.fd.set_debug_regs(&d)
        })?;
        Ok(())
    }
}
