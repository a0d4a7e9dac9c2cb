//! The local APIC, the activity (MP) state and pending events, moved with their ioctls: the state INIT and startup IPIs act on.
//!
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
//!
//! [`StateClass::MpState`]: the activity state (`kvm_mp_state`), with an in-kernel irqchip only.
//!
//! RUNNABLE is [`Activity::Active`], HALTED [`Activity::Hlt`], INIT_RECEIVED
//! [`Activity::WaitForSipi`]; UNINITIALIZED (an AP that has not been started yet, which drops a
//! SIPI until an INIT) is [`Activity::Uninitialized`] and is never stored. KVM has no shutdown
//! activity state (a triple fault ends the run with KVM_EXIT_SHUTDOWN instead), so
//! [`Activity::Shutdown`] cannot be stored.
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
//!
//! [`StateClass::Events`]: pending and in-flight events and event blocking (`kvm_vcpu_events`).
//!
//! [`vcpu_reset_spec::Events`] keeps flags only. A store therefore keeps KVM's details (the
//! exception or interrupt vector, error code, which kind of interrupt shadow) for a flag that
//! stays set, clears what a cleared flag names, and can set NMI pending and the interrupt shadow
//! (blocking by STI) from nothing, but not an exception or interrupt, which need a vector:
//! that is [`BackendError::Invalid`]. It is written with `KVM_VCPUEVENT_VALID_NMI_PENDING`,
//! `KVM_VCPUEVENT_VALID_SMM` and, where KVM handles it, `KVM_VCPUEVENT_VALID_SHADOW`, so every
//! field is really written, and with `smi.latched_init` clear (a latched INIT is dropped). SMM
//! and a pending SMI are held only where the host has KVM_CAP_X86_SMM; elsewhere they are
//! written as clear.

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::events::{EventParts, events_from_state, events_to_state, needs_base};
use super::codec::lapic::{lapic_from_state, lapic_to_state, read_reg};
use super::codec::mp_state::{activity_of, mp_state_of};
use super::codec::sregs::forces_bsp_runnable;
use super::ioctls::Ioctl;
use crate::backend::{BackendError, StateClass};
use kvm_bindings::{
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_VCPUEVENT_VALID_TRIPLE_FAULT,
    kvm_mp_state, kvm_vcpu_events,
};
use vcpu_reset_spec::{Activity, LapicReg, VcpuState};

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
            why: if state.activity == Activity::Uninitialized {
                "KVM_MP_STATE_UNINITIALIZED is KVM's state of an AP it never started, not one to store; store wait-for-SIPI (INIT_RECEIVED) for an AP".into()
            } else {
                "KVM has no shutdown activity state; a triple fault ends the run with Exit::Shutdown instead".into()
            },
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

impl KvmVcpu {
    pub(super) fn event_parts(&self) -> EventParts {
        EventParts {
            smm: self.caps.x86_smm,
            shadow: self.events_shadow,
        }
    }

    fn get_events(&mut self) -> Result<kvm_vcpu_events, BackendError> {
        let e = load(&mut self.stats, Ioctl::GetVcpuEvents, || {
            self.fd.get_vcpu_events()
        })?;
        self.shadow.events = Some(e);
        if self.sync {
            self.fd.sync_regs_mut().events = e;
            self.mirror_filled(StateClass::Events);
        }
        Ok(e)
    }

    pub(super) fn load_events(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let parts = self.event_parts();
        if self.mirrored(StateClass::Events) {
            events_to_state(&self.fd.sync_regs_mut().events, state, parts);
            self.stats.sync_loads += 1;
            return Ok(());
        }
        let e = self.get_events()?;
        events_to_state(&e, state, parts);
        Ok(())
    }

    pub(super) fn store_events(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let base = if self.mirrored(StateClass::Events) {
            self.fd.sync_regs_mut().events
        } else if let Some(e) = self.shadow.events {
            e
        } else if needs_base(state) {
            self.get_events()?
        } else {
            kvm_vcpu_events::default()
        };
        let e = events_from_state(state, &base, self.event_parts())?;
        self.shadow.events = Some(e);
        if self.can_defer() {
            self.fd.sync_regs_mut().events = e;
            self.defer(StateClass::Events);
            return Ok(());
        }
        store(&mut self.stats, Ioctl::SetVcpuEvents, || {
            self.fd.set_vcpu_events(&e)
        })?;
        self.stored_by_ioctl(StateClass::Events);
        Ok(())
    }

    /// Make the vCPU triple-fault (KVM_EXIT_SHUTDOWN) on its next KVM_RUN, as a guest would.
    /// The VM must have KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled; other event state is kept.
    pub fn inject_triple_fault(&mut self) -> Result<(), BackendError> {
        self.settle_init(StateClass::Events)?;
        let mut e = self.get_events()?;
        e.flags = KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
        e.triple_fault.pending = 1;
        store(&mut self.stats, Ioctl::SetVcpuEvents, || {
            self.fd.set_vcpu_events(&e)
        })?;
        // A deferred EVENTS store still flagged in `kvm_dirty_regs` would be applied by the next
        // KVM_RUN from the `kvm_run` copy, which KVM_GET_VCPU_EVENTS just filled with
        // `triple_fault.pending = 0` and the flag that makes it count: keep it pending there too.
        if self.sync {
            let m = &mut self.fd.sync_regs_mut().events;
            m.flags |= KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
            m.triple_fault.pending = 1;
        }
        Ok(())
    }
}
