//! [`StateClass::Lapic`]: the local APIC's register page (`kvm_lapic_state`, 1 KiB at the xAPIC
//! MMIO offsets), with an in-kernel irqchip only.
//!
//! Each register is the 32-bit word at its offset ([`LapicReg::offset`],
//! [`LapicBitmap::offset`]); the ICR is 0x300 (low) and 0x310 (high). KVM keeps the APIC ID in
//! bits 31:24 (also in x2APIC mode, unless the VM opted into KVM_X2APIC_API_USE_32BIT_IDS).
//! On KVM_SET_LAPIC, KVM recomputes the version register and the PPR and ignores the current
//! count (it restarts the timer from the initial count); a load reports what KVM holds. The
//! TPR is also CR8, which `kvm_sregs` carries: after a store, a mirrored `kvm_sregs` gets the
//! new CR8, and a pending deferred one is written first before a load.

use kvm_bindings::kvm_lapic_state;
use vcpu_reset_spec::{Field, LapicBitmap, LapicReg, VcpuState};

use super::KvmVcpu;
use super::vcpu::ioctl_error;
use crate::backend::{BackendError, StateClass};

const ICR_HIGH: u32 = 0x310;

/// The 32-bit register at `offset` of the page.
pub(super) fn read_reg(page: &kvm_lapic_state, offset: u32) -> u32 {
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
pub(super) fn lapic_to_state(page: &kvm_lapic_state, state: &mut VcpuState, cmci: bool) {
    for (field, offset) in registers(cmci) {
        field.set(state, u128::from(read_reg(page, offset)));
    }
    let low = read_reg(page, LapicReg::Icr.offset());
    let high = read_reg(page, ICR_HIGH);
    state.lapic.icr = u64::from(low) | (u64::from(high) << 32);
}

/// The page for the state.
#[allow(clippy::cast_possible_truncation)] // the fields are 32 bits wide
pub(super) fn lapic_from_state(state: &VcpuState, cmci: bool) -> kvm_lapic_state {
    let mut page = kvm_lapic_state { regs: [0; 1024] };
    for (field, offset) in registers(cmci) {
        write_reg(&mut page, offset, field.get(state) as u32);
    }
    write_reg(&mut page, LapicReg::Icr.offset(), state.lapic.icr as u32);
    write_reg(&mut page, ICR_HIGH, (state.lapic.icr >> 32) as u32);
    page
}

impl KvmVcpu {
    pub(super) fn load_lapic(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        // A deferred kvm_sregs would set CR8, i.e. the TPR, at the next entry.
        self.flush_sregs()?;
        self.stats.loads += 1;
        let page = self
            .fd
            .get_lapic()
            .map_err(|e| ioctl_error("KVM_GET_LAPIC", e))?;
        lapic_to_state(&page, state, self.lapic_cmci);
        Ok(())
    }

    pub(super) fn store_lapic(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let page = lapic_from_state(state, self.lapic_cmci);
        self.stats.stores += 1;
        self.fd
            .set_lapic(&page)
            .map_err(|e| ioctl_error("KVM_SET_LAPIC", e))?;
        if self.mirrored(StateClass::Sregs) {
            let tpr = read_reg(&page, LapicReg::Tpr.offset());
            self.fd.sync_regs_mut().sregs.cr8 = u64::from((tpr >> 4) & 0xf);
        }
        Ok(())
    }
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
