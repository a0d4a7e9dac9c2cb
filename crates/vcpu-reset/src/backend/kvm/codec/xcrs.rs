//! `kvm_xcrs` ↔ [`VcpuState`]: XCR0 ([`StateClass::Xcrs`](crate::slots::StateClass::Xcrs);
//! SDM Vol. 1 §13.3, APM Vol. 2 §11.5.2).

use kvm_bindings::{kvm_xcr, kvm_xcrs};
use vcpu_reset_spec::VcpuState;

/// XCR0 out of `kvm_xcrs`, if KVM listed it.
pub fn xcr0_of(x: &kvm_xcrs) -> Option<u64> {
    let n = (x.nr_xcrs as usize).min(x.xcrs.len());
    x.xcrs[..n].iter().find(|r| r.xcr == 0).map(|r| r.value)
}

/// `kvm_xcrs` that sets XCR0 only.
pub fn xcrs_from_state(state: &VcpuState) -> kvm_xcrs {
    let mut x = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    x.xcrs[0] = kvm_xcr {
        xcr: 0,
        reserved: 0,
        value: state.xcr0,
    };
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xcr0_round_trip() {
        let state = VcpuState {
            xcr0: 0xe7,
            ..VcpuState::default()
        };
        let x = xcrs_from_state(&state);
        assert_eq!(x.nr_xcrs, 1);
        assert_eq!(xcr0_of(&x), Some(0xe7));
        let empty = kvm_xcrs::default();
        assert_eq!(xcr0_of(&empty), None);
    }
}
