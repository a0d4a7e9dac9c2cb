//! Activity state, pending events and nested-virtualization state.

use super::gprs::unreachable_row;
use super::{RowExt, mk};
use crate::field::{EventFlag, Field};
use crate::rule::{Citation, Derivation, Event, Row, Rule, Source, Vendor};

fn mp_citation(v: Vendor) -> Citation {
    match v {
        Vendor::Intel => Citation {
            source: Source::SdmVol3A,
            locator: "§9.4.1 \"BSP and AP Processors\" and §9.4.2 (MP initialization protocol: APs enter wait-for-SIPI)",
        },
        Vendor::Amd => Citation {
            source: Source::ApmVol2,
            locator: "§16.5 \"Interprocessor Interrupts (IPI)\" (INIT, startup IPI)",
        },
    }
}

fn events_citation(v: Vendor) -> Citation {
    match v {
        Vendor::Intel => Citation {
            source: Source::SdmVol3A,
            locator: "§10.1 \"Initialization Overview\" (RESET and INIT reinitialise the core)",
        },
        Vendor::Amd => Citation {
            source: Source::ApmVol2,
            locator: "§14.1 \"Processor Initialization\"",
        },
    }
}

const EVENTS_NOTE: &str = "Not rows of the RESET/INIT tables. RESET and INIT start the core \
    afresh, so nothing is pending or being injected and there is no interrupt shadow; KVM's \
    kvm_vcpu_reset clears the same set on both. INIT is held while in SMM, so a vCPU that \
    completes INIT is not in SMM.";

const NESTED_INTEL_INIT_NOTE: &str = "INIT is blocked in VMX root operation and causes a VM exit \
    in VMX non-root operation (SDM Vol. 3C §24.8, §26.2), so an INIT that takes effect leaves \
    VMX state as it was.";

pub(crate) fn row(f: Field, v: Vendor, e: Event) -> Row {
    match f {
        Field::Activity => mk(f, Rule::Derived(Derivation::Activity), mp_citation(v)).note(
            "BSP and AP are chosen by the MP protocol (KVM: vCPU 0 unless KVM_SET_BOOT_CPU_ID). \
             The BSP runs from the reset vector; an AP waits for a startup IPI.",
        ),
        Field::Event(EventFlag::NmiMasked) if v == Vendor::Amd && e == Event::Init => {
            mk(f, Rule::Value(0), events_citation(v)).note(
                "KVM on SVM keeps its NMI-masked flag across INIT (it is cleared only at RESET); \
                 VMX clears it. A finding worth checking on AMD hosts.",
            )
        }
        Field::Event(_) => mk(f, Rule::Value(0), events_citation(v)).note(EVENTS_NOTE),
        Field::Nested => match (v, e) {
            (Vendor::Intel, Event::Reset) => mk(
                f,
                Rule::Value(0),
                Citation {
                    source: Source::SdmVol3C,
                    locator: "§24.7 \"Enabling and Entering VMX Operation\" (RESET leaves VMX operation; IA32_FEATURE_CONTROL is cleared)",
                },
            )
            .note("A VMM must drop nested state on RESET (KVM_SET_NESTED_STATE); KVM itself does not on vCPU reuse."),
            (Vendor::Intel, Event::Init) => mk(
                f,
                Rule::Preserved,
                Citation {
                    source: Source::SdmVol3C,
                    locator: "§26.2 \"Other Causes of VM Exits\" and §24.8 \"Restrictions on VMX Operation\" (INIT blocked in VMX root)",
                },
            )
            .note(NESTED_INTEL_INIT_NOTE),
            (Vendor::Amd, _) => mk(
                f,
                Rule::Value(0),
                Citation {
                    source: Source::ApmVol2,
                    locator: "§14.1.3, Table 14-1 (EFER = 0 after RESET and INIT, so EFER.SVME is clear)",
                },
            ),
        },
        _ => unreachable_row(f, v),
    }
}
