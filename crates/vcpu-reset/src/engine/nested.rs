//! INIT blocking and latching, and the nested fields RESET must free.
//!
//! The rules are the spec's ([`spec::init_outcome`]); this file applies them to a live vCPU:
//! a held INIT is latched in the engine (as a processor keeps it pending) and applied by
//! [`Vcpu::deliver_latched_init`] once the guest has left the blocking condition (VMXOFF,
//! STGI); an INIT that becomes a VM exit is consumed, and only the nested parts change
//! ([`spec::init_vm_exit`]).

use vcpu_reset_spec::{
    self as spec, Field, InitOutcome, InitRule, Msr, NestedReg, Transition, VMX_CAPABILITY_MSRS,
    VcpuState,
};

use super::{EngineError, Outcome, Vcpu};
use crate::backend::Backend;

/// The fields of the virtualization extensions: `nested.state` and its parts, the VMX
/// capability MSRs, the SGX launch-enclave hash MSRs, IA32_FEATURE_CONTROL and VM_HSAVE_PA.
/// RESET must bring every one to its RESET value ("free everything nested"); [`Vcpu::verify`]
/// checks them with every other field.
pub const NESTED_FIELDS: [Field; 1 + 6 + VMX_CAPABILITY_MSRS + 4 + 2] = nested_fields();

const fn nested_fields() -> [Field; 1 + 6 + VMX_CAPABILITY_MSRS + 4 + 2] {
    let mut out = [Field::Nested; 1 + 6 + VMX_CAPABILITY_MSRS + 4 + 2];
    let parts = NestedReg::ALL;
    let mut i = 0;
    while i < parts.len() {
        out[1 + i] = Field::NestedReg(parts[i]);
        i += 1;
    }
    let mut c = 0;
    while c < VMX_CAPABILITY_MSRS {
        out[7 + c] = Field::VmxCap(c as u8);
        c += 1;
    }
    let mut h = 0;
    while h < 4 {
        out[7 + VMX_CAPABILITY_MSRS + h] = Field::SgxLeHash(h as u8);
        h += 1;
    }
    out[7 + VMX_CAPABILITY_MSRS + 4] = Field::Msr(Msr::FeatureControl);
    out[7 + VMX_CAPABILITY_MSRS + 5] = Field::Msr(Msr::VmHsavePa);
    out
}

impl<B: Backend> Vcpu<B> {
    /// The blocking rules applied to `state`, reading every nested part the backend does not
    /// hold as "none": a vCPU whose backend cannot hold nested state has none (KVM without
    /// KVM_CAP_NESTED_STATE runs no nested guest), whatever the cache's slot says.
    fn outcome_for(&self, state: &VcpuState) -> InitOutcome {
        let mut view = *state;
        for r in NestedReg::ALL {
            let f = Field::NestedReg(r);
            if !self.cache.holds(f) {
                f.set(&mut view, r.none());
            }
        }
        spec::init_outcome(self.model.vendor, &view)
    }

    pub(super) fn init_with_rules(&mut self) -> Result<Outcome, EngineError> {
        let before = self.cache.backend_stats();
        self.settle_signals()?;
        let prior = *self.cache.state()?;
        let outcome = self.outcome_for(&prior);
        let target = match outcome {
            InitOutcome::Taken => {
                self.init_latched = None;
                spec::expected_state(&self.model, self.identity, Transition::Init(&prior))
            }
            InitOutcome::Held(rule) => {
                self.init_latched = Some(rule);
                prior
            }
            InitOutcome::VmExit(rule) => {
                self.init_latched = None;
                spec::init_vm_exit(rule, &prior)
            }
        };
        let mut out = self.establish(target, spec::Event::Init)?;
        out.calls = self.cache.backend_stats().since(&before);
        out.init = Some(outcome);
        Ok(out)
    }

    /// The rule holding a latched INIT, if an INIT is pending.
    pub fn init_latched(&self) -> Option<InitRule> {
        self.init_latched
    }

    /// Apply a latched INIT if the rule that held it no longer applies — call it after the
    /// guest ran (it may have executed VMXOFF or STGI). Returns `None` when no INIT is latched
    /// or it is still held (it stays latched); otherwise what the INIT did now (taken, or a VM
    /// exit under another rule).
    pub fn deliver_latched_init(&mut self) -> Result<Option<Outcome>, EngineError> {
        if self.init_latched.is_none() {
            return Ok(None);
        }
        let state = *self.cache.state()?;
        match self.outcome_for(&state) {
            InitOutcome::Held(still) => {
                self.init_latched = Some(still);
                Ok(None)
            }
            InitOutcome::Taken | InitOutcome::VmExit(_) => self.init_with_rules().map(Some),
        }
    }
}
