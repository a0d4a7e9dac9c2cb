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

use kvm_bindings::{KVM_VCPUEVENT_VALID_TRIPLE_FAULT, kvm_vcpu_events};
use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::events::{EventParts, events_from_state, events_to_state, needs_base};
use super::ioctls::Ioctl;
use crate::backend::{BackendError, StateClass};

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
