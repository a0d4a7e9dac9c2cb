//! `kvm_vcpu_events` ↔ [`VcpuState`]: pending and in-flight events and event blocking
//! ([`StateClass::Events`](crate::slots::StateClass::Events)).
//!
//! The spec keeps flags only (NMI pending and blocked by NMI, SDM Vol. 3A §6.7.1; interrupt
//! shadow, §6.8.3; SMM, Vol. 3C §32; APM Vol. 2 §8.2, §10). [`events_from_state`] therefore
//! takes KVM's current events as a base and keeps their details (vector, error code, kind
//! of shadow) for a flag that stays set, clears what a cleared flag names, sets NMI pending and
//! the STI shadow from nothing, and refuses an exception or interrupt without a vector to keep.
//! It always sets `KVM_VCPUEVENT_VALID_NMI_PENDING` and `KVM_VCPUEVENT_VALID_SMM` (plus
//! `KVM_VCPUEVENT_VALID_SHADOW` where [`EventParts::shadow`]) and clears `smi.latched_init`.

use kvm_bindings::{
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SMM,
    KVM_X86_SHADOW_INT_STI, kvm_vcpu_events,
};
use vcpu_reset_spec::VcpuState;

use crate::backend::BackendError;

/// Which optional parts of `kvm_vcpu_events` the vCPU holds.
#[derive(Clone, Copy, Debug)]
pub struct EventParts {
    /// SMM and pending SMI (KVM_CAP_X86_SMM).
    pub smm: bool,
    /// The interrupt shadow.
    pub shadow: bool,
}

fn exception_pending(e: &kvm_vcpu_events) -> bool {
    e.exception.injected != 0 || e.exception.pending != 0
}

fn nmi_pending(e: &kvm_vcpu_events) -> bool {
    e.nmi.injected != 0 || e.nmi.pending != 0
}

/// Copy `kvm_vcpu_events` into the state.
pub fn events_to_state(e: &kvm_vcpu_events, state: &mut VcpuState, parts: EventParts) {
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
pub fn needs_base(state: &VcpuState) -> bool {
    let ev = &state.events;
    ev.exception_pending || ev.interrupt_pending || ev.nmi_pending || ev.interrupt_shadow
}

/// The `kvm_vcpu_events` for the state, keeping the details of `base` (KVM's current events).
pub fn events_from_state(
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
