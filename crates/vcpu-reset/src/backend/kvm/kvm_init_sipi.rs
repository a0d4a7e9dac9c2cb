//! KVM's own INIT and SIPI, raised from the host through the in-kernel local APIC.
//!
//! These let a selftest watch what KVM itself does on INIT (its `kvm_vcpu_reset(vcpu, true)`)
//! and on a startup IPI, without a guest sending the IPIs: INIT is latched into the local APIC
//! with `kvm_vcpu_events.smi.latched_init` (KVM_VCPUEVENT_VALID_SMM) and KVM accepts it at the
//! next KVM_GET_MP_STATE, as it would for an INIT IPI; a SIPI is KVM_SET_VCPU_EVENTS of the
//! vector (KVM_VCPUEVENT_VALID_SIPI_VECTOR) followed by KVM_SET_MP_STATE(SIPI_RECEIVED), which
//! KVM turns into INIT_RECEIVED plus a pending SIPI that the next KVM_RUN delivers.

use kvm_bindings::{
    KVM_MP_STATE_SIPI_RECEIVED, KVM_VCPUEVENT_VALID_SIPI_VECTOR, KVM_VCPUEVENT_VALID_SMM,
    kvm_mp_state,
};

use super::KvmVcpu;
use super::calls::{load, store};
use super::ioctls::Ioctl;
use crate::backend::{BackendError, ClassSet, StateClass};

impl KvmVcpu {
    fn need_irqchip(&self) -> Result<(), BackendError> {
        if self.irqchip {
            Ok(())
        } else {
            Err(BackendError::Unsupported {
                class: StateClass::MpState,
                why: "INIT and SIPI through KVM need the in-kernel irqchip (KVM_CREATE_IRQCHIP)",
            })
        }
    }

    /// After KVM changed the vCPU itself: nothing mirrored or shadowed is current.
    fn forget_mirror(&mut self) {
        self.mirror = ClassSet::EMPTY;
        self.shadow = Default::default();
        self.may_be_uninitialized = false;
    }

    /// KVM_GET_VCPU_EVENTS, let `change` set the flags and fields to write, KVM_SET_VCPU_EVENTS.
    fn update_events(
        &mut self,
        change: impl FnOnce(&mut kvm_bindings::kvm_vcpu_events),
    ) -> Result<(), BackendError> {
        let mut e = load(&mut self.stats, Ioctl::GetVcpuEvents, || {
            self.fd.get_vcpu_events()
        })?;
        change(&mut e);
        store(&mut self.stats, Ioctl::SetVcpuEvents, || {
            self.fd.set_vcpu_events(&e)
        })?;
        Ok(())
    }

    /// Have KVM perform INIT on this vCPU now, as an INIT IPI to its in-kernel local APIC
    /// would: KVM's `kvm_vcpu_reset(vcpu, true)` runs, the BSP becomes runnable at the reset
    /// vector and an AP waits for SIPI. Pending deferred stores are written first. A cache in
    /// front of this backend must be flushed before and invalidated after.
    pub fn kvm_init(&mut self) -> Result<(), BackendError> {
        self.need_irqchip()?;
        self.flush_all()?;
        self.update_events(|e| {
            e.flags = KVM_VCPUEVENT_VALID_SMM;
            e.smi.latched_init = 1;
        })?;
        // KVM accepts pending INIT/SIPI when the MP state is read.
        load(&mut self.stats, Ioctl::GetMpState, || {
            self.fd.get_mp_state()
        })?;
        self.forget_mirror();
        Ok(())
    }

    /// Send this vCPU a startup IPI with `vector` through KVM: a vCPU waiting for SIPI starts
    /// at `vector << 12` on its next run, as KVM delivers a SIPI from another vCPU.
    pub fn kvm_sipi(&mut self, vector: u8) -> Result<(), BackendError> {
        self.need_irqchip()?;
        self.flush_all()?;
        self.update_events(|e| {
            e.flags = KVM_VCPUEVENT_VALID_SIPI_VECTOR;
            e.sipi_vector = u32::from(vector);
        })?;
        store(&mut self.stats, Ioctl::SetMpState, || {
            self.fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_SIPI_RECEIVED,
            })
        })?;
        self.forget_mirror();
        Ok(())
    }
}
