//! [`StateClass::Debug`](crate::backend::StateClass::Debug): DR0–DR3, DR6, DR7 (`kvm_debugregs`).

use kvm_bindings::kvm_debugregs;
use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::vcpu::ioctl_error;
use crate::backend::BackendError;

/// Copy `kvm_debugregs` into the state.
pub(super) fn debugregs_to_state(d: &kvm_debugregs, state: &mut VcpuState) {
    state.dr = d.db;
    state.dr6 = d.dr6;
    state.dr7 = d.dr7;
}

/// The `kvm_debugregs` for the state (flags 0, as KVM requires).
pub(super) fn debugregs_from_state(state: &VcpuState) -> kvm_debugregs {
    kvm_debugregs {
        db: state.dr,
        dr6: state.dr6,
        dr7: state.dr7,
        ..Default::default()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_registers_round_trip() {
        let state = VcpuState {
            dr: [1, 2, 3, 4],
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            ..VcpuState::default()
        };
        let d = debugregs_from_state(&state);
        assert_eq!(
            (d.db, d.dr6, d.dr7, d.flags),
            ([1, 2, 3, 4], 0xffff_0ff0, 0x400, 0)
        );
        let mut back = VcpuState::default();
        debugregs_to_state(&d, &mut back);
        assert_eq!(back, state);
    }
}
