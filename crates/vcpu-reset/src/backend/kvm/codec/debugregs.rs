//! `kvm_debugregs` ↔ [`VcpuState`]: DR0–DR3, DR6, DR7
//! ([`StateClass::Debug`](crate::slots::StateClass::Debug); SDM Vol. 3B §18.2, APM Vol. 2
//! §13.1.1).

use kvm_bindings::kvm_debugregs;
use vcpu_reset_spec::VcpuState;

/// Copy `kvm_debugregs` into the state.
pub fn debugregs_to_state(d: &kvm_debugregs, state: &mut VcpuState) {
    state.dr = d.db;
    state.dr6 = d.dr6;
    state.dr7 = d.dr7;
}

/// The `kvm_debugregs` for the state (flags 0, as KVM requires).
pub fn debugregs_from_state(state: &VcpuState) -> kvm_debugregs {
    kvm_debugregs {
        db: state.dr,
        dr6: state.dr6,
        dr7: state.dr7,
        ..Default::default()
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
