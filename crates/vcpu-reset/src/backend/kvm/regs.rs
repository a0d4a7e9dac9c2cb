//! [`StateClass::Regs`]: the general registers, RIP and RFLAGS (`kvm_regs`).

use kvm_bindings::kvm_regs;
use vcpu_reset_spec::{Gpr, VcpuState};

use super::KvmVcpu;
use super::vcpu::ioctl_error;
use crate::backend::{BackendError, StateClass};

/// Copy `kvm_regs` into the state.
pub(super) fn regs_to_state(r: &kvm_regs, state: &mut VcpuState) {
    for gpr in Gpr::ALL {
        state.gprs[gpr as usize] = *gpr_slot_ref(r, gpr);
    }
    state.rip = r.rip;
    state.rflags = r.rflags;
}

/// The `kvm_regs` for the state.
pub(super) fn regs_from_state(state: &VcpuState) -> kvm_regs {
    let mut r = kvm_regs::default();
    for gpr in Gpr::ALL {
        *gpr_slot(&mut r, gpr) = state.gprs[gpr as usize];
    }
    r.rip = state.rip;
    r.rflags = state.rflags;
    r
}

fn gpr_slot(r: &mut kvm_regs, gpr: Gpr) -> &mut u64 {
    match gpr {
        Gpr::Rax => &mut r.rax,
        Gpr::Rcx => &mut r.rcx,
        Gpr::Rdx => &mut r.rdx,
        Gpr::Rbx => &mut r.rbx,
        Gpr::Rsp => &mut r.rsp,
        Gpr::Rbp => &mut r.rbp,
        Gpr::Rsi => &mut r.rsi,
        Gpr::Rdi => &mut r.rdi,
        Gpr::R8 => &mut r.r8,
        Gpr::R9 => &mut r.r9,
        Gpr::R10 => &mut r.r10,
        Gpr::R11 => &mut r.r11,
        Gpr::R12 => &mut r.r12,
        Gpr::R13 => &mut r.r13,
        Gpr::R14 => &mut r.r14,
        Gpr::R15 => &mut r.r15,
    }
}

fn gpr_slot_ref(r: &kvm_regs, gpr: Gpr) -> &u64 {
    match gpr {
        Gpr::Rax => &r.rax,
        Gpr::Rcx => &r.rcx,
        Gpr::Rdx => &r.rdx,
        Gpr::Rbx => &r.rbx,
        Gpr::Rsp => &r.rsp,
        Gpr::Rbp => &r.rbp,
        Gpr::Rsi => &r.rsi,
        Gpr::Rdi => &r.rdi,
        Gpr::R8 => &r.r8,
        Gpr::R9 => &r.r9,
        Gpr::R10 => &r.r10,
        Gpr::R11 => &r.r11,
        Gpr::R12 => &r.r12,
        Gpr::R13 => &r.r13,
        Gpr::R14 => &r.r14,
        Gpr::R15 => &r.r15,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gpr_lands_in_its_kvm_field() {
        let mut state = VcpuState::default();
        for (i, g) in state.gprs.iter_mut().enumerate() {
            *g = 0x1000 + i as u64;
        }
        state.rip = 0xfff0;
        state.rflags = 0x202;
        let r = regs_from_state(&state);
        assert_eq!(
            [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi],
            [
                0x1000, 0x1001, 0x1002, 0x1003, 0x1004, 0x1005, 0x1006, 0x1007
            ]
        );
        assert_eq!(r.r15, 0x100f);
        assert_eq!((r.rip, r.rflags), (0xfff0, 0x202));
        let mut back = VcpuState::default();
        regs_to_state(&r, &mut back);
        assert_eq!(back, state);
    }
}
