//! `kvm_regs` ↔ [`VcpuState`]: the general registers, RIP and RFLAGS
//! ([`StateClass::Regs`]), whole or by register-cache slot ([`Reg`] masks).
//!
//! `kvm_regs` names the GPRs (RAX…R15 in encoding order, SDM Vol. 2A §2.1.5 Table 2-1 / APM
//! Vol. 3 §1.2.1), RIP and RFLAGS.

use kvm_bindings::kvm_regs;
use vcpu_reset_spec::{Gpr, VcpuState};

use crate::slots::{Reg, RegSet, StateClass};

/// Copy `kvm_regs` into the state.
pub fn regs_to_state(r: &kvm_regs, state: &mut VcpuState) {
    for gpr in Gpr::ALL {
        state.gprs[gpr as usize] = *gpr_slot_ref(r, gpr);
    }
    state.rip = r.rip;
    state.rflags = r.rflags;
}

/// The `kvm_regs` for the state.
pub fn regs_from_state(state: &VcpuState) -> kvm_regs {
    let mut r = kvm_regs::default();
    for gpr in Gpr::ALL {
        *gpr_slot(&mut r, gpr) = state.gprs[gpr as usize];
    }
    r.rip = state.rip;
    r.rflags = state.rflags;
    r
}

/// The REGS slot at bit `index` of a [`Reg`] mask: a GPR (bits 0–15, in encoding order), RIP
/// or RFLAGS.
enum RegsSlot {
    Gpr(Gpr),
    Rip,
    Rflags,
}

impl RegsSlot {
    #[inline]
    fn at(index: u32) -> Option<RegsSlot> {
        match Gpr::ALL.get(index as usize) {
            Some(&gpr) => Some(RegsSlot::Gpr(gpr)),
            None if index == Reg::Rip.index() => Some(RegsSlot::Rip),
            None if index == Reg::Rflags.index() => Some(RegsSlot::Rflags),
            None => None,
        }
    }
}

/// Copy the cache slots in `slots` (GPRs, RIP, RFLAGS; other bits are ignored) from `kvm_regs`.
#[inline]
pub fn regs_slots_to_state(r: &kvm_regs, slots: RegSet, state: &mut VcpuState) {
    for index in slots
        .intersection(RegSet::class(StateClass::Regs))
        .indices()
    {
        match RegsSlot::at(index) {
            Some(RegsSlot::Gpr(gpr)) => state.gprs[gpr as usize] = *gpr_slot_ref(r, gpr),
            Some(RegsSlot::Rip) => state.rip = r.rip,
            Some(RegsSlot::Rflags) => state.rflags = r.rflags,
            None => {}
        }
    }
}

/// Write the cache slots in `slots` (GPRs, RIP, RFLAGS; other bits are ignored) into `kvm_regs`,
/// leaving its other fields alone.
#[inline]
pub fn regs_slots_from_state(state: &VcpuState, slots: RegSet, r: &mut kvm_regs) {
    for index in slots
        .intersection(RegSet::class(StateClass::Regs))
        .indices()
    {
        match RegsSlot::at(index) {
            Some(RegsSlot::Gpr(gpr)) => *gpr_slot(r, gpr) = state.gprs[gpr as usize],
            Some(RegsSlot::Rip) => r.rip = state.rip,
            Some(RegsSlot::Rflags) => r.rflags = state.rflags,
            None => {}
        }
    }
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

    #[test]
    fn gpr_slot_bits_are_in_encoding_order() {
        for (i, gpr) in Gpr::ALL.into_iter().enumerate() {
            assert_eq!(gpr as usize, i);
            assert_eq!(Reg::Gpr(gpr).index() as usize, i);
            assert!(matches!(RegsSlot::at(i as u32), Some(RegsSlot::Gpr(g)) if g == gpr));
        }
        assert!(matches!(RegsSlot::at(16), Some(RegsSlot::Rip)));
        assert!(matches!(RegsSlot::at(17), Some(RegsSlot::Rflags)));
        assert!(RegsSlot::at(18).is_none());
        let set = RegSet::of(Reg::Gpr(Gpr::Rax))
            .with(Reg::Gpr(Gpr::Rbp))
            .with(Reg::Gpr(Gpr::Rdi));
        assert_eq!(set.indices().collect::<Vec<_>>(), vec![0, 5, 7]);
    }

    #[test]
    fn slot_copies_touch_only_their_slots() {
        let mut state = VcpuState::default();
        for (i, g) in state.gprs.iter_mut().enumerate() {
            *g = 0x1000 + i as u64;
        }
        state.rip = 0xfff0;
        state.rflags = 0x202;
        let full = regs_from_state(&state);
        let slots = RegSet::of(Reg::Gpr(Gpr::Rbx))
            .with(Reg::Rip)
            .with(Reg::Gpr(Gpr::R15));

        let mut partial = VcpuState::default();
        regs_slots_to_state(&full, slots, &mut partial);
        let mut want = VcpuState::default();
        want.gprs[Gpr::Rbx as usize] = 0x1003;
        want.gprs[Gpr::R15 as usize] = 0x100f;
        want.rip = 0xfff0;
        assert_eq!(partial, want);

        let mut r = kvm_regs {
            rax: 1,
            rbx: 2,
            rip: 3,
            rflags: 4,
            r15: 5,
            ..kvm_regs::default()
        };
        regs_slots_from_state(&state, slots, &mut r);
        assert_eq!(
            (r.rax, r.rbx, r.rip, r.rflags, r.r15),
            (1, 0x1003, 0xfff0, 4, 0x100f)
        );
        // Every slot at once is the whole-class copy.
        let all = RegSet::class(StateClass::Regs);
        let mut everything = VcpuState::default();
        regs_slots_to_state(&full, all, &mut everything);
        assert_eq!(everything, state);
        let mut r = kvm_regs::default();
        regs_slots_from_state(&state, all, &mut r);
        assert_eq!(r, full);
    }
}
