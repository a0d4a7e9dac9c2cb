//! `kvm_mp_state` ↔ [`Activity`]: the activity state
//! ([`StateClass::MpState`](crate::slots::StateClass::MpState)).
//!
//! RUNNABLE is [`Activity::Active`], HALTED [`Activity::Hlt`], INIT_RECEIVED
//! [`Activity::WaitForSipi`] (SDM Vol. 3A §9.4.1 / APM Vol. 2 §15.27.8: an AP waits for a SIPI
//! after INIT). UNINITIALIZED, an AP KVM has not started yet, is read as
//! [`Activity::Uninitialized`], not as waiting for SIPI: KVM drops a SIPI sent to it until an
//! INIT arrives (`kvm_apic_accept_events()`), which an AP waiting for SIPI would not. It is never
//! stored (a RESET writes INIT_RECEIVED). KVM has no shutdown activity state, so
//! [`Activity::Shutdown`] has no MP state.

use kvm_bindings::{
    KVM_MP_STATE_AP_RESET_HOLD, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use vcpu_reset_spec::Activity;

/// The activity state of a KVM MP state. SIPI_RECEIVED (a startup IPI KVM is about to deliver)
/// counts as active; AP_RESET_HOLD (SEV-ES) as waiting for SIPI.
pub fn activity_of(mp_state: u32) -> Option<Activity> {
    match mp_state {
        KVM_MP_STATE_RUNNABLE | KVM_MP_STATE_SIPI_RECEIVED => Some(Activity::Active),
        KVM_MP_STATE_HALTED => Some(Activity::Hlt),
        KVM_MP_STATE_INIT_RECEIVED | KVM_MP_STATE_AP_RESET_HOLD => Some(Activity::WaitForSipi),
        KVM_MP_STATE_UNINITIALIZED => Some(Activity::Uninitialized),
        _ => None,
    }
}

/// The KVM MP state for an activity state, if KVM has one.
pub fn mp_state_of(activity: Activity) -> Option<u32> {
    match activity {
        Activity::Active => Some(KVM_MP_STATE_RUNNABLE),
        Activity::Hlt => Some(KVM_MP_STATE_HALTED),
        Activity::WaitForSipi => Some(KVM_MP_STATE_INIT_RECEIVED),
        Activity::Shutdown | Activity::Uninitialized => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_mapping() {
        for a in [Activity::Active, Activity::Hlt, Activity::WaitForSipi] {
            let mp = mp_state_of(a).expect("KVM has this state");
            assert_eq!(activity_of(mp), Some(a));
        }
        assert_eq!(
            mp_state_of(Activity::WaitForSipi),
            Some(KVM_MP_STATE_INIT_RECEIVED)
        );
        assert_eq!(
            activity_of(KVM_MP_STATE_UNINITIALIZED),
            Some(Activity::Uninitialized)
        );
        assert_eq!(mp_state_of(Activity::Shutdown), None);
        assert_eq!(mp_state_of(Activity::Uninitialized), None);
        assert_eq!(activity_of(99), None);
    }
}
