//! Judging one observed field against the spec.

use serde::{Deserialize, Serialize};
use vcpu_reset_spec::{self as spec, Activity, Alternative, Event, Field, Rule, Vendor};

/// Who is responsible for the state a scenario observes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Owner {
    /// The hypervisor's own behaviour (KVM's vCPU creation, KVM's INIT): deviations are
    /// findings about the host.
    Host,
    /// vcpu-reset's RESET/INIT: deviations are failures of this project.
    VcpuReset,
}

/// The verdict for one field in one scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Equal to the spec.
    Pass,
    /// The field does not exist on the vCPU as its VMM presents it (e.g. VMX capability MSRs
    /// where CPUID advertises no VMX, LVT CMCI on an APIC with six LVT entries): no
    /// expectation applies; the reason says why.
    NotApplicable,
    /// Different, and the spec leaves it open (undefined) or another source allows it.
    SpecAllows,
    /// Not observable on this host; the reason says why.
    HostLimit,
    /// The host deviates from the spec (scenarios owned by the host).
    Finding,
    /// vcpu-reset deviates from the spec.
    Fail,
}

impl Verdict {
    /// Lower-case name as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::NotApplicable => "not-applicable",
            Verdict::SpecAllows => "spec-allows",
            Verdict::HostLimit => "host-limit",
            Verdict::Finding => "finding",
            Verdict::Fail => "fail",
        }
    }
}

/// What was observed for a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A value.
    Value(u128),
    /// Not observable, and why.
    Unobservable(String),
    /// The field does not apply to this vCPU, and why.
    NotApplicable(String),
}

/// The inputs of one judgement.
#[derive(Clone, Copy, Debug)]
pub struct Judge<'a> {
    /// Vendor whose table applies.
    pub vendor: Vendor,
    /// Which table.
    pub event: Event,
    /// Expected value of the field (from `spec::expected_state`).
    pub expected: u128,
    /// The value before the event, for INIT (the spec's `preserved` alternatives).
    pub prior: Option<u128>,
    /// Who owns the scenario.
    pub owner: Owner,
    /// The observation.
    pub observed: &'a Observed,
}

/// The verdict and, where useful, a reason.
pub fn judge(field: Field, j: Judge<'_>) -> (Verdict, Option<String>) {
    let actual = match j.observed {
        Observed::Unobservable(why) => return (Verdict::HostLimit, Some(why.clone())),
        Observed::NotApplicable(why) => return (Verdict::NotApplicable, Some(why.clone())),
        Observed::Value(v) => *v & field.mask(),
    };
    if actual == j.expected & field.mask()
        || vcpu_reset::engine::counted_from(field, j.expected & field.mask(), actual)
    {
        return (Verdict::Pass, None);
    }
    let row = spec::row(field, j.vendor, j.event);
    if let Rule::Undefined { reason, .. } = row.rule {
        return (
            Verdict::SpecAllows,
            Some(format!(
                "undefined by the spec; vcpu-reset would use the shown value: {reason}"
            )),
        );
    }
    for alt in row.also {
        let ok = match *alt {
            Alternative::Value(v) => v == actual,
            Alternative::Preserved => j.prior == Some(actual),
        };
        if ok {
            return (
                Verdict::SpecAllows,
                Some(
                    row.note
                        .unwrap_or("another source allows this value")
                        .into(),
                ),
            );
        }
    }
    let verdict = match j.owner {
        Owner::Host => Verdict::Finding,
        Owner::VcpuReset => Verdict::Fail,
    };
    if field == Field::Activity && actual == Activity::Uninitialized as u128 {
        return (verdict, Some(UNINITIALIZED_REASON.into()));
    }
    (verdict, row.note.map(str::to_string))
}

/// Why an activity state read as [`Activity::Uninitialized`] differs from the spec's.
const UNINITIALIZED_REASON: &str = "the host holds this vCPU in its own not-yet-started state \
     (KVM_MP_STATE_UNINITIALIZED: KVM creates every AP of a VM with an in-kernel irqchip so), \
     which drops a startup IPI until an INIT arrives; after RESET an AP waits for a startup IPI \
     (SDM Vol. 3A §9.4.1), so a firmware that starts its APs with SIPIs alone finds them never \
     running. vcpu-reset's RESET writes wait-for-SIPI.";

#[cfg(test)]
mod tests {
    use super::*;
    use vcpu_reset_spec::{Msr, Seg, SegPart};

    fn j(expected: u128, observed: &Observed, owner: Owner) -> Judge<'_> {
        Judge {
            vendor: Vendor::Intel,
            event: Event::Reset,
            expected,
            prior: None,
            owner,
            observed,
        }
    }

    #[test]
    fn equal_is_pass() {
        let o = Observed::Value(0x6000_0010);
        assert_eq!(
            judge(Field::Cr0, j(0x6000_0010, &o, Owner::VcpuReset)).0,
            Verdict::Pass
        );
    }

    #[test]
    fn difference_is_fail_for_vcpu_reset_and_finding_for_the_host() {
        let o = Observed::Value(0x37f);
        let fcw = Field::X87(vcpu_reset_spec::X87::Fcw);
        assert_eq!(judge(fcw, j(0x40, &o, Owner::VcpuReset)).0, Verdict::Fail);
        assert_eq!(judge(fcw, j(0x40, &o, Owner::Host)).0, Verdict::Finding);
    }

    #[test]
    fn an_ap_the_host_never_started_is_a_finding_that_names_the_state() {
        let field = Field::Activity;
        let s = vcpu_reset_spec::VcpuState {
            activity: Activity::Uninitialized,
            ..Default::default()
        };
        let o = Observed::Value(field.get(&s));
        let (v, why) = judge(field, j(Activity::WaitForSipi as u128, &o, Owner::Host));
        assert_eq!(v, Verdict::Finding);
        assert!(
            why.is_some_and(|w| w.contains("KVM_MP_STATE_UNINITIALIZED")),
            "the reason names the state"
        );
        let active = Observed::Value(Activity::Active as u128);
        assert_ne!(o, active, "not read as running");
    }

    #[test]
    fn undefined_rows_allow_any_value() {
        let o = Observed::Value(0x1800);
        let (v, why) = judge(Field::Msr(Msr::MiscEnable), j(0x1, &o, Owner::Host));
        assert_eq!(v, Verdict::SpecAllows);
        assert!(why.is_some_and(|w| w.contains("undefined")));
    }

    #[test]
    fn listed_alternatives_are_allowed() {
        let o = Observed::Value(0x93);
        let cs = Field::Seg(Seg::Cs, SegPart::Attributes);
        assert_eq!(
            judge(cs, j(0x9b, &o, Owner::VcpuReset)).0,
            Verdict::SpecAllows
        );
        let o = Observed::Value(0x92);
        assert_eq!(judge(cs, j(0x9b, &o, Owner::VcpuReset)).0, Verdict::Fail);
    }

    #[test]
    fn preserved_alternative_needs_the_prior_value() {
        // AMD INIT: DR7 is preserved by the rule; the reset value 0x400 is the alternative.
        let o = Observed::Value(0x400);
        let mut judge_in = j(0x455, &o, Owner::Host);
        judge_in.vendor = Vendor::Amd;
        judge_in.event = Event::Init;
        judge_in.prior = Some(0x455);
        assert_eq!(judge(Field::Dr7, judge_in).0, Verdict::SpecAllows);
    }

    #[test]
    fn not_applicable_is_no_finding() {
        let o = Observed::NotApplicable("no VMX".into());
        let (v, why) = judge(Field::VmxCap(0), j(1, &o, Owner::Host));
        assert_eq!(v, Verdict::NotApplicable);
        assert_eq!(why.as_deref(), Some("no VMX"));
    }

    #[test]
    fn unobservable_is_host_limit_with_reason() {
        let o = Observed::Unobservable("xgetbv is not emulated".into());
        let (v, why) = judge(Field::Xcr0, j(1, &o, Owner::VcpuReset));
        assert_eq!(v, Verdict::HostLimit);
        assert_eq!(why.as_deref(), Some("xgetbv is not emulated"));
    }
}
