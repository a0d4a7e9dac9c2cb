//! Activity state, pending events and nested-virtualization state.

use super::common::unreachable_row;
use super::common::{RowExt, mk};
use crate::field::{EventFlag, Field, NestedReg};
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

fn sdm3c(locator: &'static str) -> Citation {
    Citation {
        source: Source::SdmVol3C,
        locator,
    }
}

fn apm(locator: &'static str) -> Citation {
    Citation {
        source: Source::ApmVol2,
        locator,
    }
}

const LEAVES_VMX: &str = "§24.7 \"Enabling and Entering VMX Operation\" (RESET leaves VMX operation: IA32_FEATURE_CONTROL is cleared)";

const NO_VMX_ON_AMD: &str =
    "§14.1.3, Table 14-1 (AMD processors have no VMX; all-ones = not in VMX operation)";

/// The row for a part of the nested state.
fn nested_row(f: Field, r: NestedReg, v: Vendor, e: Event) -> Row {
    let none = Rule::Value(r.none());
    match (r, v, e) {
        // VMX pointers.
        (NestedReg::VmxonPointer, Vendor::Intel, Event::Reset) => mk(f, none, sdm3c(LEAVES_VMX))
            .note("All-ones encodes \"not in VMX operation\" (KVM: nested.vmxon_ptr = INVALID_GPA in __vmx_vcpu_reset)."),
        (NestedReg::CurrentVmcs, Vendor::Intel, Event::Reset) => mk(
            f,
            none,
            sdm3c("§25.1 \"Overview\" (no current VMCS: the current-VMCS pointer is FFFFFFFF_FFFFFFFFH) and §24.7 (RESET leaves VMX operation)"),
        )
        .note("KVM: nested.current_vmptr = INVALID_GPA in __vmx_vcpu_reset; the posted-interrupt notification vector of the guest hypervisor is invalidated with it (nested.posted_intr_nv = -1)."),
        (NestedReg::EvmcsPointer, Vendor::Intel, Event::Reset) => mk(f, none, sdm3c(LEAVES_VMX))
            .note("The Hyper-V enlightened VMCS lives only in VMX operation; all-ones = none (KVM: nested.hv_evmcs_vmptr = EVMPTR_INVALID in __vmx_vcpu_reset)."),
        (
            NestedReg::VmxonPointer | NestedReg::CurrentVmcs | NestedReg::EvmcsPointer,
            Vendor::Intel,
            Event::Init,
        ) => mk(
            f,
            Rule::Preserved,
            sdm3c("§24.8 \"Restrictions on VMX Operation\" and §26.2 \"Other Causes of VM Exits\""),
        )
        .note(NESTED_INTEL_INIT_NOTE),
        (
            NestedReg::VmxonPointer | NestedReg::CurrentVmcs | NestedReg::EvmcsPointer,
            Vendor::Amd,
            _,
        ) => mk(f, none, apm(NO_VMX_ON_AMD)),
        // Guest mode.
        (NestedReg::GuestMode, Vendor::Intel, Event::Reset) => mk(f, none, sdm3c(LEAVES_VMX))
            .note("RESET leaves VMX operation, so also VMX non-root operation."),
        (NestedReg::GuestMode | NestedReg::InterceptInit, Vendor::Intel, Event::Init) => mk(
            f,
            Rule::Preserved,
            sdm3c("§24.8 and §26.2 (INIT in VMX non-root operation causes a VM exit instead)"),
        )
        .note(NESTED_INTEL_INIT_NOTE),
        (NestedReg::GuestMode, Vendor::Amd, Event::Reset) => mk(
            f,
            none,
            apm("§14.1.3, Table 14-1 (EFER = 0 after RESET: EFER.SVME clear, not in guest mode)"),
        ),
        (NestedReg::GuestMode, Vendor::Amd, Event::Init) => mk(
            f,
            none,
            apm("§14.1.3, Table 14-1 (EFER = 0 after INIT: EFER.SVME clear) and §15.13.4 \"INIT Intercept\""),
        )
        .note("An INIT the guest's VMCB does not intercept takes effect in guest mode and leaves it (KVM: kvm_leave_nested in kvm_vcpu_reset). An intercepted one is a #VMEXIT instead (INIT rule svm-intercept)."),
        // GIF.
        (NestedReg::Gif, Vendor::Amd, Event::Reset) => mk(
            f,
            none,
            apm("§15.17 \"Global Interrupt Flag, STGI and CLGI Instructions\""),
        )
        .note("GIF = 1 after RESET: interrupts are not globally blocked (QEMU's x86_cpu_reset_hold sets GIF). CLGI clears it, STGI and VMRUN set it, #VMEXIT clears it."),
        (NestedReg::Gif, Vendor::Amd, Event::Init) => mk(
            f,
            none,
            apm("§15.17 (INIT is held pending while GIF = 0)"),
        )
        .note("INIT is recognised only with GIF = 1 (INIT rule svm-gif), so an INIT that takes effect finds GIF = 1 and leaves it set."),
        (NestedReg::Gif, Vendor::Intel, Event::Reset) => mk(f, none, super::common::SDM_TABLE)
            .note("Intel has no GIF; vcpu-reset holds 1 (interrupts not globally blocked) so that the field means the same on both vendors."),
        (NestedReg::Gif, Vendor::Intel, Event::Init) => mk(f, Rule::Preserved, super::common::SDM_TABLE)
            .note("Intel has no GIF; INIT keeps vcpu-reset's value."),
        // INIT intercept.
        (NestedReg::InterceptInit, Vendor::Intel, Event::Reset) => mk(f, none, sdm3c(LEAVES_VMX))
            .note("SVM's INIT intercept; on Intel not in guest mode after RESET (VMX non-root always exits on INIT)."),
        (NestedReg::InterceptInit, Vendor::Amd, _) => mk(
            f,
            none,
            apm("§15.13.4 \"INIT Intercept\" (the intercept belongs to the guest's VMCB, which is gone once guest mode is left)"),
        ),
    }
}

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
        Field::NestedReg(r) => nested_row(f, r, v, e),
        _ => unreachable_row(f, v),
    }
}
