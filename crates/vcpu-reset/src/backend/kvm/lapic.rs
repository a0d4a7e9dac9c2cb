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

use vcpu_reset_spec::{LapicReg, VcpuState};

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::lapic::{lapic_from_state, lapic_to_state, read_reg};
use super::ioctls::Ioctl;
use crate::backend::{BackendError, StateClass};

impl KvmVcpu {
    pub(super) fn load_lapic(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        // A deferred kvm_sregs would set CR8, i.e. the TPR, at the next entry.
        self.flush_sregs()?;
        let page = load(&mut self.stats, Ioctl::GetLapic, || self.fd.get_lapic())?;
        lapic_to_state(&page, state, self.lapic_cmci);
        Ok(())
    }

    pub(super) fn store_lapic(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let page = lapic_from_state(state, self.lapic_cmci);
        store(&mut self.stats, Ioctl::SetLapic, || {
            self.fd.set_lapic(&page)
        })?;
        if self.mirrored(StateClass::Sregs) {
            let tpr = read_reg(&page, LapicReg::Tpr.offset());
            self.fd.sync_regs_mut().sregs.cr8 = u64::from((tpr >> 4) & 0xf);
        }
        Ok(())
    }
}
