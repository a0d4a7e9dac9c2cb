//! [`StateClass::MpState`]: the activity state (`kvm_mp_state`), with an in-kernel irqchip only.
//!
//! RUNNABLE is [`Activity::Active`], HALTED [`Activity::Hlt`], INIT_RECEIVED and UNINITIALIZED
//! (an AP that has not been started yet) [`Activity::WaitForSipi`], which is stored as
//! INIT_RECEIVED. KVM has no shutdown activity state (a triple fault ends the run with
//! KVM_EXIT_SHUTDOWN instead), so [`Activity::Shutdown`] cannot be stored.
//!
//! KVM_GET_MP_STATE is also where KVM accepts an INIT or startup IPI pending in the in-kernel
//! local APIC (`kvm_apic_accept_events()`): a pending INIT performs KVM's own INIT, a pending
//! SIPI starts a vCPU waiting for one and is dropped otherwise. Whether an INIT is pending is
//! `kvm_vcpu_events.smi.latched_init`, so a load first writes a deferred events store with its
//! ioctl. Neither KVM_SET_MP_STATE nor KVM_SET_LAPIC clears a pending SIPI: loading the MP
//! state before writing a new one is the only way to get rid of it, which is why
//! [`Backend::queues_signals`](crate::backend::Backend::queues_signals) is true with an
//! irqchip, except for an AP KVM has never started (UNINITIALIZED: KVM drops a SIPI sent to it,
//! and a RESET must write its MP state to take it out of that state anyway).

use kvm_bindings::{KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, kvm_mp_state};
use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::mp_state::{activity_of, mp_state_of};
use super::codec::sregs::forces_bsp_runnable;
use super::ioctls::Ioctl;
use crate::backend::{BackendError, StateClass};

impl KvmVcpu {
    pub(super) fn load_mp_state(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        // A deferred kvm_vcpu_events decides whether an INIT is latched, which KVM acts on now.
        self.flush_events()?;
        let mp = load(&mut self.stats, Ioctl::GetMpState, || {
            self.fd.get_mp_state()
        })?;
        self.may_be_uninitialized = mp.mp_state == KVM_MP_STATE_UNINITIALIZED;
        state.activity = activity_of(mp.mp_state).ok_or_else(|| BackendError::Invalid {
            what: "MP state",
            why: format!(
                "KVM reported MP state {}, which no x86 activity state matches",
                mp.mp_state
            ),
        })?;
        Ok(())
    }

    pub(super) fn store_mp_state(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let mp_state = mp_state_of(state.activity).ok_or_else(|| BackendError::Invalid {
            what: "activity state",
            why: "KVM has no shutdown activity state; a triple fault ends the run with Exit::Shutdown instead".into(),
        })?;
        // A deferred kvm_sregs at the reset vector would make KVM force the BSP runnable at the
        // next entry, undoing this store; write it first, in the order the caller stored them.
        if mp_state != KVM_MP_STATE_RUNNABLE
            && self.pending(StateClass::Sregs)
            && forces_bsp_runnable(&self.fd.sync_regs_mut().sregs)
        {
            self.flush_sregs()?;
        }
        store(&mut self.stats, Ioctl::SetMpState, || {
            self.fd.set_mp_state(kvm_mp_state { mp_state })
        })?;
        self.may_be_uninitialized = false;
        Ok(())
    }
}
