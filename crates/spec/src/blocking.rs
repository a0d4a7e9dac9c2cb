//! INIT blocking and latching: when an INIT does not take effect at once.
//!
//! The RESET/INIT tables say what INIT does when it takes effect. Virtualization extensions
//! add rules for when it does not:
//!
//! - Intel, VMX root operation: INIT is blocked (held pending) until VMXOFF;
//! - Intel, VMX non-root operation: INIT causes a VM exit (basic exit reason 3) to the guest
//!   hypervisor and is consumed; the processor's INIT does not happen;
//! - AMD, GIF = 0: INIT is held pending until STGI sets GIF;
//! - AMD, guest mode with the INIT intercept set: INIT causes #VMEXIT (exit code 63h).
//!
//! [`init_outcome`] applies these rules to a state; [`init_vm_exit`] gives the state after the
//! VM exit as far as the tables model it.

use alloc::vec::Vec;

use crate::rule::{Citation, Source, Vendor};
use crate::state::VcpuState;

/// A rule that keeps an INIT from taking effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum InitRule {
    /// Intel: in VMX root operation INIT is blocked until VMXOFF.
    VmxRoot,
    /// Intel: in VMX non-root operation INIT causes a VM exit.
    VmxNonRoot,
    /// AMD: while GIF = 0 INIT is held pending.
    SvmGif,
    /// AMD: in guest mode with the INIT intercept set INIT causes #VMEXIT.
    SvmIntercept,
}

impl InitRule {
    /// Every rule, Intel's first.
    pub const ALL: [InitRule; 4] = [
        InitRule::VmxRoot,
        InitRule::VmxNonRoot,
        InitRule::SvmGif,
        InitRule::SvmIntercept,
    ];

    /// Short name: `vmx-root`, `vmx-non-root`, `svm-gif`, `svm-intercept`.
    pub fn name(self) -> &'static str {
        match self {
            InitRule::VmxRoot => "vmx-root",
            InitRule::VmxNonRoot => "vmx-non-root",
            InitRule::SvmGif => "svm-gif",
            InitRule::SvmIntercept => "svm-intercept",
        }
    }

    /// The vendor whose documents state the rule.
    pub fn vendor(self) -> Vendor {
        match self {
            InitRule::VmxRoot | InitRule::VmxNonRoot => Vendor::Intel,
            InitRule::SvmGif | InitRule::SvmIntercept => Vendor::Amd,
        }
    }

    /// Whether the INIT is held pending (latched) rather than turned into a VM exit.
    pub fn holds(self) -> bool {
        matches!(self, InitRule::VmxRoot | InitRule::SvmGif)
    }

    /// The exit reason a VM exit under this rule reports: VMX basic exit reason 3 ("INIT
    /// signal", SDM Vol. 3D, Appendix C) or SVM exit code 63h (VMEXIT_INIT, APM Vol. 2,
    /// Appendix C); `None` for the rules that hold the INIT.
    pub fn exit_code(self) -> Option<u64> {
        match self {
            InitRule::VmxNonRoot => Some(3),
            InitRule::SvmIntercept => Some(0x63),
            InitRule::VmxRoot | InitRule::SvmGif => None,
        }
    }

    /// The condition and the effect, in words.
    pub fn describe(self) -> &'static str {
        match self {
            InitRule::VmxRoot => {
                "in VMX root operation INIT is blocked: it stays pending and takes effect after VMXOFF"
            }
            InitRule::VmxNonRoot => {
                "in VMX non-root operation INIT causes a VM exit (basic exit reason 3) and is consumed; registers and pending events are not changed as INIT would change them (in the wait-for-SIPI activity state INIT is blocked instead)"
            }
            InitRule::SvmGif => {
                "while GIF = 0 INIT is held pending; it is recognised when STGI (or VMRUN) sets GIF"
            }
            InitRule::SvmIntercept => {
                "in guest mode with the INIT intercept set INIT causes #VMEXIT (exit code 63h) and is consumed; without the intercept INIT takes effect and leaves guest mode (EFER.SVME = 0)"
            }
        }
    }

    /// Where the rule is stated.
    pub fn citation(self) -> Citation {
        match self {
            InitRule::VmxRoot => Citation {
                source: Source::SdmVol3C,
                locator: "§24.8 \"Restrictions on VMX Operation\" (\"The INIT signal is blocked whenever a logical processor is in VMX root operation\")",
            },
            InitRule::VmxNonRoot => Citation {
                source: Source::SdmVol3C,
                locator: "§24.8 (\"It is not blocked in VMX non-root operation. Instead, INITs cause VM exits\") and §26.2 \"Other Causes of VM Exits\"",
            },
            InitRule::SvmGif => Citation {
                source: Source::ApmVol2,
                locator: "§15.17 \"Global Interrupt Flag, STGI and CLGI Instructions\" (INIT held pending while GIF = 0)",
            },
            InitRule::SvmIntercept => Citation {
                source: Source::ApmVol2,
                locator: "§15.13.4 \"INIT Intercept\" and Appendix C (VMEXIT_INIT = 63h)",
            },
        }
    }
}

impl core::fmt::Display for InitRule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an INIT does to a vCPU in a given state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum InitOutcome {
    /// INIT takes effect: the INIT table applies ([`crate::expected_state`]).
    Taken,
    /// INIT is held pending under this rule: nothing changes now; it takes effect when the
    /// rule no longer applies.
    Held(InitRule),
    /// INIT causes a VM exit to the guest hypervisor under this rule and is consumed
    /// ([`init_vm_exit`]).
    VmExit(InitRule),
}

impl InitOutcome {
    /// `taken`, or the rule's name.
    pub fn name(self) -> &'static str {
        match self {
            InitOutcome::Taken => "taken",
            InitOutcome::Held(r) | InitOutcome::VmExit(r) => r.name(),
        }
    }
}

/// The rules that apply to `vendor`.
pub fn init_rules(vendor: Vendor) -> Vec<InitRule> {
    InitRule::ALL
        .into_iter()
        .filter(|r| r.vendor() == vendor)
        .collect()
}

/// What an INIT does to a vCPU of `vendor` in `state`.
///
/// Intel: in VMX non-root operation ([`crate::NestedReg::GuestMode`]) a VM exit; else in VMX
/// operation (a VMXON pointer that is not all-ones) held. AMD: with GIF = 0 held; in guest
/// mode with INIT intercepted a #VMEXIT. Otherwise INIT takes effect.
pub fn init_outcome(vendor: Vendor, state: &VcpuState) -> InitOutcome {
    let n = &state.nested;
    match vendor {
        Vendor::Intel if n.guest_mode => InitOutcome::VmExit(InitRule::VmxNonRoot),
        Vendor::Intel if n.in_vmx_operation() => InitOutcome::Held(InitRule::VmxRoot),
        Vendor::Amd if !n.gif => InitOutcome::Held(InitRule::SvmGif),
        Vendor::Amd if n.guest_mode && n.intercept_init => {
            InitOutcome::VmExit(InitRule::SvmIntercept)
        }
        Vendor::Intel | Vendor::Amd => InitOutcome::Taken,
    }
}

/// The state after an INIT became a VM exit under `rule`, from the state before it.
///
/// The exit leaves guest mode: VMX returns to root operation (VMXON and current VMCS kept);
/// SVM's #VMEXIT also clears GIF (APM Vol. 2, §15.6) and ends the guest's intercepts. The
/// registers after a VM exit come from the guest hypervisor's host-state area or host save
/// area, which [`VcpuState`] does not hold, so they are returned unchanged. For a rule that
/// holds the INIT, `state` is returned unchanged.
pub fn init_vm_exit(rule: InitRule, state: &VcpuState) -> VcpuState {
    let mut s = *state;
    match rule {
        InitRule::VmxNonRoot => s.nested.guest_mode = false,
        InitRule::SvmIntercept => {
            s.nested.guest_mode = false;
            s.nested.gif = false;
            s.nested.intercept_init = false;
        }
        InitRule::VmxRoot | InitRule::SvmGif => return s,
    }
    // Keep the summary flag consistent with the parts.
    s.nested.present = s.nested.in_vmx_operation() || s.nested.guest_mode;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Nested;

    fn with(n: Nested) -> VcpuState {
        VcpuState {
            nested: n,
            ..VcpuState::default()
        }
    }

    #[test]
    fn no_nested_state_takes_init_on_both_vendors() {
        let s = with(Nested::NONE);
        assert_eq!(init_outcome(Vendor::Intel, &s), InitOutcome::Taken);
        assert_eq!(init_outcome(Vendor::Amd, &s), InitOutcome::Taken);
    }

    #[test]
    fn each_rule_applies_to_its_vendor_only() {
        let root = with(Nested {
            present: true,
            vmxon_pointer: 0x1000,
            ..Nested::NONE
        });
        assert_eq!(
            init_outcome(Vendor::Intel, &root),
            InitOutcome::Held(InitRule::VmxRoot)
        );
        let non_root = with(Nested {
            guest_mode: true,
            ..root.nested
        });
        assert_eq!(
            init_outcome(Vendor::Intel, &non_root),
            InitOutcome::VmExit(InitRule::VmxNonRoot)
        );
        let gif0 = with(Nested {
            gif: false,
            ..Nested::NONE
        });
        assert_eq!(
            init_outcome(Vendor::Amd, &gif0),
            InitOutcome::Held(InitRule::SvmGif)
        );
        assert_eq!(init_outcome(Vendor::Intel, &gif0), InitOutcome::Taken);
        let intercepted = with(Nested {
            present: true,
            guest_mode: true,
            intercept_init: true,
            ..Nested::NONE
        });
        assert_eq!(
            init_outcome(Vendor::Amd, &intercepted),
            InitOutcome::VmExit(InitRule::SvmIntercept)
        );
        let not_intercepted = with(Nested {
            intercept_init: false,
            ..intercepted.nested
        });
        assert_eq!(
            init_outcome(Vendor::Amd, &not_intercepted),
            InitOutcome::Taken
        );
        assert_eq!(
            init_rules(Vendor::Intel),
            [InitRule::VmxRoot, InitRule::VmxNonRoot]
        );
        assert_eq!(
            init_rules(Vendor::Amd),
            [InitRule::SvmGif, InitRule::SvmIntercept]
        );
    }

    #[test]
    fn vm_exits_leave_guest_mode() {
        let s = with(Nested {
            present: true,
            vmxon_pointer: 0x1000,
            current_vmcs_pointer: 0x2000,
            guest_mode: true,
            ..Nested::NONE
        });
        let e = init_vm_exit(InitRule::VmxNonRoot, &s);
        assert!(!e.nested.guest_mode);
        assert!(e.nested.present, "still in VMX root operation");
        assert_eq!(e.nested.current_vmcs_pointer, 0x2000);
        assert_eq!(InitRule::VmxNonRoot.exit_code(), Some(3));

        let s = with(Nested {
            present: true,
            guest_mode: true,
            intercept_init: true,
            ..Nested::NONE
        });
        let e = init_vm_exit(InitRule::SvmIntercept, &s);
        assert_eq!(
            (e.nested.guest_mode, e.nested.gif, e.nested.intercept_init),
            (false, false, false)
        );
        assert!(!e.nested.present);
        assert_eq!(InitRule::SvmIntercept.exit_code(), Some(0x63));
        assert_eq!(init_vm_exit(InitRule::VmxRoot, &s), s);
    }
}
