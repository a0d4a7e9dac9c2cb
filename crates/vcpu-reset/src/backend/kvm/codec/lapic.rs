//! `kvm_lapic_state` ↔ [`VcpuState`]: the local APIC register page
//! ([`StateClass::Lapic`](crate::slots::StateClass::Lapic)).
//!
//! KVM_GET/SET_LAPIC move the 1 KiB xAPIC register page: each register is the 32-bit word at
//! its xAPIC MMIO offset (SDM Vol. 3A §11.4.1 Table 11-1, APM Vol. 2 §16.3.2 Table 16-2;
//! [`LapicReg::offset`], [`LapicBitmap::offset`]); the ICR is 0x300 (low) and 0x310 (high).
//! The CMCI LVT (0x2F0) exists only where the APIC has it (SDM Vol. 3A §11.5.1).

use kvm_bindings::kvm_lapic_state;
use vcpu_reset_spec::{Field, LapicBitmap, LapicReg, VcpuState};

const ICR_HIGH: u32 = 0x310;

/// The 32-bit register at `offset` of the page.
pub fn read_reg(page: &kvm_lapic_state, offset: u32) -> u32 {
    let at = offset as usize;
    let b = |i: usize| page.regs[at + i].to_le_bytes()[0];
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn write_reg(page: &mut kvm_lapic_state, offset: u32, value: u32) {
    let at = offset as usize;
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        page.regs[at + i] = std::os::raw::c_char::from_le_bytes([byte]);
    }
}

/// The registers of the page as (field, offset), ICR excluded.
fn registers(cmci: bool) -> impl Iterator<Item = (Field, u32)> {
    let single = LapicReg::ALL
        .into_iter()
        .filter(move |r| *r != LapicReg::Icr && (cmci || *r != LapicReg::LvtCmci))
        .map(|r| (Field::Lapic(r), r.offset()));
    let bitmaps = LapicBitmap::ALL.into_iter().flat_map(|b| {
        (0..8u8).map(move |i| (Field::LapicBitmap(b, i), b.offset() + 0x10 * u32::from(i)))
    });
    single.chain(bitmaps)
}

/// Copy the page into the state (the CMCI LVT only where the APIC has it).
pub fn lapic_to_state(page: &kvm_lapic_state, state: &mut VcpuState, cmci: bool) {
    for (field, offset) in registers(cmci) {
        field.set(state, u128::from(read_reg(page, offset)));
    }
    let low = read_reg(page, LapicReg::Icr.offset());
    let high = read_reg(page, ICR_HIGH);
    state.lapic.icr = u64::from(low) | (u64::from(high) << 32);
}

/// The page for the state.
#[allow(clippy::cast_possible_truncation)] // the fields are 32 bits wide
pub fn lapic_from_state(state: &VcpuState, cmci: bool) -> kvm_lapic_state {
    let mut page = kvm_lapic_state { regs: [0; 1024] };
    for (field, offset) in registers(cmci) {
        write_reg(&mut page, offset, field.get(state) as u32);
    }
    write_reg(&mut page, LapicReg::Icr.offset(), state.lapic.icr as u32);
    write_reg(&mut page, ICR_HIGH, (state.lapic.icr >> 32) as u32);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_sit_at_their_offsets() {
        let mut state = VcpuState::default();
        state.lapic.id = 0x0300_0000;
        state.lapic.svr = 0x1ff;
        state.lapic.lvt_lint0 = 0x700;
        state.lapic.lvt_cmci = 0x10000;
        state.lapic.irr[7] = 0x8000_0000;
        state.lapic.icr = 0x0100_0000_0000_4500;
        let page = lapic_from_state(&state, true);
        assert_eq!(read_reg(&page, 0x20), 0x0300_0000);
        assert_eq!(read_reg(&page, 0xf0), 0x1ff);
        assert_eq!(read_reg(&page, 0x350), 0x700);
        assert_eq!(read_reg(&page, 0x2f0), 0x10000);
        assert_eq!(read_reg(&page, 0x270), 0x8000_0000);
        assert_eq!(read_reg(&page, 0x300), 0x4500);
        assert_eq!(read_reg(&page, 0x310), 0x0100_0000);
        let mut back = VcpuState::default();
        lapic_to_state(&page, &mut back, true);
        assert_eq!(back.lapic, state.lapic);
    }

    #[test]
    fn cmci_is_skipped_without_it() {
        let mut state = VcpuState::default();
        state.lapic.lvt_cmci = 0x10000;
        let page = lapic_from_state(&state, false);
        assert_eq!(read_reg(&page, 0x2f0), 0);
        let mut back = VcpuState::default();
        back.lapic.lvt_cmci = 7;
        lapic_to_state(&page, &mut back, false);
        assert_eq!(back.lapic.lvt_cmci, 7);
    }
}
