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

use kvm_bindings::{
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SMM,
    KVM_VCPUEVENT_VALID_TRIPLE_FAULT, KVM_X86_SHADOW_INT_STI, kvm_vcpu_events,
};
use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::vcpu::ioctl_error;
use crate::backend::{BackendError, StateClass};

/// Which optional parts of `kvm_vcpu_events` the vCPU holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct EventParts {
    /// SMM and pending SMI (KVM_CAP_X86_SMM).
    pub(super) smm: bool,
    /// The interrupt shadow.
    pub(super) shadow: bool,
}

fn exception_pending(e: &kvm_vcpu_events) -> bool {
    e.exception.injected != 0 || e.exception.pending != 0
}

fn nmi_pending(e: &kvm_vcpu_events) -> bool {
    e.nmi.injected != 0 || e.nmi.pending != 0
}

/// Copy `kvm_vcpu_events` into the state.
pub(super) fn events_to_state(e: &kvm_vcpu_events, state: &mut VcpuState, parts: EventParts) {
    let ev = &mut state.events;
    ev.nmi_pending = nmi_pending(e);
    ev.nmi_masked = e.nmi.masked != 0;
    ev.exception_pending = exception_pending(e);
    ev.interrupt_pending = e.interrupt.injected != 0;
    if parts.smm {
        ev.smi_pending = e.smi.pending != 0;
        ev.smm = e.smi.smm != 0;
    }
    if parts.shadow {
        ev.interrupt_shadow = e.interrupt.shadow != 0;
    }
}

/// Whether making `kvm_vcpu_events` for the state needs KVM's current events: to keep an
/// exception, interrupt, NMI or shadow the state says is there.
pub(super) fn needs_base(state: &VcpuState) -> bool {
    let ev = &state.events;
    ev.exception_pending || ev.interrupt_pending || ev.nmi_pending || ev.interrupt_shadow
}

/// The `kvm_vcpu_events` for the state, keeping the details of `base` (KVM's current events).
pub(super) fn events_from_state(
    state: &VcpuState,
    base: &kvm_vcpu_events,
    parts: EventParts,
) -> Result<kvm_vcpu_events, BackendError> {
    let ev = &state.events;
    let mut e = kvm_vcpu_events {
        flags: KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SMM,
        sipi_vector: base.sipi_vector,
        ..Default::default()
    };
    if ev.exception_pending {
        if !exception_pending(base) {
            return Err(BackendError::Invalid {
                what: "events.exception_pending",
                why: "KVM needs a vector to queue an exception and the vCPU has none pending to keep; \
                      leave the flag clear or inject the exception through KVM itself"
                    .into(),
            });
        }
        e.exception = base.exception;
    }
    if ev.interrupt_pending {
        if base.interrupt.injected == 0 {
            return Err(BackendError::Invalid {
                what: "events.interrupt_pending",
                why: "KVM needs a vector to inject an interrupt and the vCPU has none in flight to keep; \
                      leave the flag clear or raise the interrupt through the irqchip"
                    .into(),
            });
        }
        e.interrupt.injected = base.interrupt.injected;
        e.interrupt.nr = base.interrupt.nr;
        e.interrupt.soft = base.interrupt.soft;
    }
    if ev.nmi_pending {
        if nmi_pending(base) {
            e.nmi.injected = base.nmi.injected;
            e.nmi.pending = base.nmi.pending;
        } else {
            e.nmi.pending = 1;
        }
    }
    e.nmi.masked = u8::from(ev.nmi_masked);
    if parts.shadow {
        e.flags |= KVM_VCPUEVENT_VALID_SHADOW;
        e.interrupt.shadow = match (ev.interrupt_shadow, base.interrupt.shadow) {
            (false, _) => 0,
            (true, 0) => KVM_X86_SHADOW_INT_STI as u8,
            (true, kind) => kind,
        };
    }
    if parts.smm {
        e.smi.smm = u8::from(ev.smm);
        e.smi.pending = u8::from(ev.smi_pending);
        e.smi.smm_inside_nmi = if ev.smm { base.smi.smm_inside_nmi } else { 0 };
    }
    e.smi.latched_init = 0;
    Ok(e)
}

impl KvmVcpu {
    fn event_parts(&self) -> EventParts {
        EventParts {
            smm: self.caps.x86_smm,
            shadow: self.events_shadow,
        }
    }

    fn get_events(&mut self) -> Result<kvm_vcpu_events, BackendError> {
        self.stats.loads += 1;
        let e = self
            .fd
            .get_vcpu_events()
            .map_err(|e| ioctl_error("KVM_GET_VCPU_EVENTS", e))?;
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
        self.stats.stores += 1;
        self.fd
            .set_vcpu_events(&e)
            .map_err(|e| ioctl_error("KVM_SET_VCPU_EVENTS", e))?;
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
        self.stats.stores += 1;
        self.fd
            .set_vcpu_events(&e)
            .map_err(|e| ioctl_error("KVM_SET_VCPU_EVENTS (triple fault)", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: EventParts = EventParts {
        smm: true,
        shadow: true,
    };

    #[test]
    fn flags_round_trip_and_everything_is_written() {
        let mut state = VcpuState::default();
        state.events.nmi_pending = true;
        state.events.nmi_masked = true;
        state.events.interrupt_shadow = true;
        state.events.smm = true;
        state.events.smi_pending = true;
        let base = kvm_vcpu_events {
            smi: kvm_bindings::kvm_vcpu_events__bindgen_ty_4 {
                latched_init: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = events_from_state(&state, &base, ALL).expect("no vector needed");
        assert_eq!(
            e.flags,
            KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SMM | KVM_VCPUEVENT_VALID_SHADOW
        );
        assert_eq!((e.nmi.pending, e.nmi.masked), (1, 1));
        assert_eq!(e.interrupt.shadow, KVM_X86_SHADOW_INT_STI as u8);
        assert_eq!(e.smi.latched_init, 0);
        let mut back = VcpuState::default();
        events_to_state(&e, &mut back, ALL);
        assert_eq!(back.events, state.events);
    }

    #[test]
    fn vectors_are_kept_or_refused() {
        let mut base = kvm_vcpu_events::default();
        base.exception.injected = 1;
        base.exception.nr = 14;
        base.exception.has_error_code = 1;
        base.exception.error_code = 2;
        let mut state = VcpuState::default();
        state.events.exception_pending = true;
        let e = events_from_state(&state, &base, ALL).expect("vector kept");
        assert_eq!((e.exception.nr, e.exception.error_code), (14, 2));
        state.events.exception_pending = false;
        let e = events_from_state(&state, &base, ALL).expect("clearing needs nothing");
        assert_eq!(e.exception.injected, 0);
        state.events.interrupt_pending = true;
        assert!(matches!(
            events_from_state(&state, &base, ALL),
            Err(BackendError::Invalid {
                what: "events.interrupt_pending",
                ..
            })
        ));
    }
}
