//! Model-specific registers.
//!
//! The SDM's table gives values for only a few MSRs and says "all other MSRs: undefined" after
//! RESET and "unchanged" after INIT; the APM says INIT modifies no MSR. Where the documents
//! leave a RESET value open, the row is `undefined` with the value vcpu-reset writes and why.

use super::common::unreachable_row;
use super::common::{RowExt, SDM_TABLE, mk, table_citation};
use crate::field::{Field, McReg, Msr};
use crate::rule::{Alternative, Citation, Derivation, Event, Row, Rule, Source, Vendor};

const fn undefined(vmm: u128, reason: &'static str) -> Rule {
    Rule::Undefined { vmm, reason }
}

const VMX_CAP_NOTE: &str = "Read-only capability MSRs: the guest cannot change them (WRMSR \
    raises #GP); a VMM may narrow them (KVM: host-initiated KVM_SET_MSRS). They describe the CPU \
    model, so RESET restores the model's configuration (KVM's __vmx_vcpu_reset copies \
    vmcs_config.nested) and INIT keeps them. 0 where the model offers no VMX.";

const SGX_HASH_NOTE: &str = "Exist only where SGX launch control is offered (CPUID.(EAX=07H,\
    ECX=0):ECX[30]); writable when IA32_FEATURE_CONTROL bits 17 and 0 are set. Intel's digest \
    A6053E051270B7ACH, 6CFBE8BA8B3B413DH, C4916D99F2B3735DH, D4F8C05909F9BB3BH is what KVM \
    (setup_default_sgx_lepubkeyhash) and QEMU use; the SDM names it without printing it. INIT \
    keeps the MSRs (\"all other MSRs\" unchanged; QEMU keeps them).";

const KVM_PV_NOTE: &str = "KVM's paravirtual MSR (it exists only where the VMM's CPUID says \
    KVM: 40000000H gives \"KVMKVMKVM\" and 40000001H:EAX the feature). Bit 0 enables it at the \
    guest-physical address in the other bits; left enabled across a reboot, KVM would go on \
    writing into the new boot's memory. KVM clears it on RESET and on INIT.";

const OTHER_MSR: &str = "undefined after RESET (\"all other MSRs\"); 0 leaves the feature off, \
    as KVM's RESET does";

fn sdm(locator: &'static str) -> Citation {
    Citation {
        source: Source::SdmVol3A,
        locator,
    }
}

fn apm(locator: &'static str) -> Citation {
    Citation {
        source: Source::ApmVol2,
        locator,
    }
}

fn mtrr_citation(v: Vendor) -> Citation {
    match v {
        Vendor::Intel => sdm(
            "§12.11.5 \"MTRR Initialization\" (MTRRs disabled: IA32_MTRR_DEF_TYPE.E = 0, PHYSMASKn.V = 0, other bits undefined) and Table 10-1",
        ),
        Vendor::Amd => {
            apm("§14.2.2 \"Enabling Internal Caches\" (MTRRdefType cleared; MTRRs not initialized)")
        }
    }
}

/// The row for the RESET event; INIT is handled generically in [`row`].
fn reset_row(f: Field, v: Vendor) -> Option<Row> {
    let table = table_citation(v);
    let intel = v == Vendor::Intel;
    Some(match f {
        Field::Msr(m) => match m {
            Msr::ApicBase => mk(
                f,
                Rule::Derived(Derivation::ApicBase),
                if intel {
                    sdm("§11.4.4 \"Local APIC Status and Location\", Figure 11-5, and §11.12.5.1 (EN = 1, EXTD = 0 out of RESET)")
                } else {
                    apm("§16.3.1 \"Local APIC Enable\" (APIC_BASE reset value)")
                },
            )
            .note(match v {
                Vendor::Intel => "0xFEE00900 on the BSP, 0xFEE00800 on an AP; xAPIC mode.",
                Vendor::Amd => "0xFEE00900 on the BSP, 0xFEE00800 on an AP. APM Table 14-1 says the APIC is \"Disabled\" after RESET and \"Enabled\" after INIT; since INIT changes no MSR, vcpu-reset reads that as the software-disabled state (SVR bit 8 = 0 after RESET), not APIC_BASE.AE = 0, and sets AE as KVM and QEMU do.",
            }),
            Msr::Tsc => mk(f, Rule::Value(0), table),
            Msr::TscAdjust if intel => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::SdmVol3B, locator: "§18.17.3 \"Time-Stamp Counter Adjustment\" (IA32_TSC_ADJUST resets to 0)" },
            ),
            Msr::TscAux if intel => mk(f, Rule::Value(0), table)
                .note("Table 10-1: \"IA32_TSC_AUX: 0 following power-up/reset, unchanged following INIT\"."),
            Msr::TscDeadline if intel => mk(
                f,
                Rule::Value(0),
                sdm("§11.5.4.1 \"TSC-Deadline Mode\" (IA32_TSC_DEADLINE is 0 after RESET: timer disarmed)"),
            ),
            Msr::TscAdjust | Msr::TscAux | Msr::TscDeadline => mk(f, undefined(0, OTHER_MSR), table),
            Msr::Pat => mk(
                f,
                Rule::Value(0x0007_0406_0007_0406),
                if intel {
                    sdm("§12.12.4 \"Programming the PAT\" (power-up/reset default, unchanged by INIT)")
                } else {
                    apm("§7.8.1 \"PAT Register\" (reset value)")
                },
            )
            .note("PA0..PA7 = WB, WT, UC-, UC, WB, WT, UC-, UC."),
            Msr::MtrrCap => mk(f, Rule::Derived(Derivation::MtrrCap), mtrr_citation(v))
                .note("Read-only; RESET and INIT leave it as the model defines it."),
            Msr::MtrrDefType => mk(f, Rule::Value(0), mtrr_citation(v)).note(match v {
                Vendor::Intel => "E = 0 and FE = 0: all MTRRs disabled, memory type UC. The SDM requires only E = 0 (the other bits are undefined); vcpu-reset uses 0, as KVM and QEMU do, so a host with FE or a default type set is reported.",
                Vendor::Amd => "Cleared to 0 at RESET (APM §14.2.2): all MTRRs disabled, memory type UC.",
            }),
            Msr::MiscEnable if intel => mk(
                f,
                undefined(0x1, "model-specific; bit 0 (fast strings) is set by default, read-only bits 7/11/12 reflect the model (KVM reports 0x1800)"),
                Citation { source: Source::SdmVol4, locator: "Table 2-2, IA32_MISC_ENABLE (1A0H)" },
            ),
            Msr::MiscEnable => mk(f, undefined(0, "Intel-only MSR"), table),
            Msr::FsBase | Msr::GsBase => mk(f, Rule::Value(0), table)
                .note("The hidden base of FS/GS (SDM Vol. 3A §3.4.4); 0 like every data segment base."),
            Msr::SpecCtrl => mk(f, undefined(0, "no mitigation enabled; KVM zeroes it at RESET (and also at INIT)"), table),
            Msr::DebugCtl if intel => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::SdmVol3B, locator: "§18.4.1 \"IA32_DEBUGCTL MSR\" (flags cleared at power-up/reset)" },
            ),
            Msr::PerfGlobalCtrl if intel => mk(f, Rule::Derived(Derivation::PerfGlobalCtrl), SDM_TABLE)
                .note("Added in 325462-079US: the enable bit of each general-purpose counter is set at RESET (KVM commit de120e1d692d). Editions before March 2023 say 0, reported as spec-allows.")
                .also(&[Alternative::Value(0)]),
            Msr::PerfGlobalCtrl => mk(f, undefined(0, "Intel's MSR; AMD's counterpart is PerfCntrGlobalCtl (C000_0301H)"), table),
            Msr::FeatureControl if intel => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::SdmVol3C, locator: "§24.7 \"Enabling and Entering VMX Operation\" (\"cleared to zero when a logical processor is reset\")" },
            )
            .note("Lock (bit 0), VMXON enables (bits 1–2), SGX launch-control write enable (bit 17) and SGX enable (bit 18) all clear: firmware sets and locks them again after RESET. INIT keeps the MSR (and its lock). KVM: a host-initiated write of 0 also takes the vCPU out of VMX operation."),
            Msr::FeatureControl => mk(f, undefined(0, "Intel-only MSR"), table),
            Msr::Smbase => mk(
                f,
                Rule::Value(0x30000),
                if intel {
                    Citation { source: Source::SdmVol3C, locator: "System Management Mode chapter, §\"SMRAM\" (default SMBASE 30000H)" }
                } else {
                    table
                },
            ),
            Msr::Xss => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::SdmVol1, locator: "§13.3 \"Enabling the XSAVE Feature Set and XSAVE-Enabled Features\" (IA32_XSS is zero coming out of RESET)" },
            )
            .note("No supervisor XSAVE component enabled; KVM also writes 0 at RESET. INIT keeps it, as every MSR."),
            Msr::McgStatus => mk(f, undefined(0, "machine-check architecture undefined after RESET; 0 = no machine check in progress"), table),
            Msr::VmHsavePa if !intel => mk(
                f,
                undefined(0, "the APM gives no RESET value; 0 = no host save area, as Bochs and KVM (zeroed at vCPU creation) use"),
                apm("§15.30.4 \"VM_HSAVE_PA MSR (C001_0117h)\""),
            )
            .note("Holds the physical address where VMRUN saves host state; software must set it before VMRUN. INIT modifies no MSR (Table 14-1), so INIT keeps it (QEMU keeps it; Bochs clears it on INIT)."),
            Msr::VmHsavePa => mk(f, undefined(0, "AMD-only MSR (SVM); Intel has no such MSR"), table),
            Msr::MiscFeaturesEnables => mk(
                f,
                undefined(0, "\"all other MSRs\" are undefined after RESET; 0 turns CPUID faulting off, as KVM's RESET does (kvm_vcpu_reset: msr_misc_features_enables = 0 unless INIT)"),
                Citation { source: Source::SdmVol4, locator: "Table 2-2, MSR_MISC_FEATURES_ENABLES (140H), bit 0 \"CPUID GP# faulting enable\"" },
            )
            .note("A previous boot's CPUID faulting must not survive a RESET: the next OS would take #GP on every CPUID at CPL > 0. INIT keeps it, as every MSR. Intel's MSR; KVM offers it to AMD vCPUs too."),
            Msr::KvmSystemTime | Msr::KvmAsyncPfEn | Msr::KvmPvEoiEn => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::LinuxKvm, locator: "arch/x86/kvm/x86.c, kvm_vcpu_reset() (kvmclock_reset, apf.msr_en_val = 0; kvm_lapic_reset: pv_eoi.msr_val = 0) on RESET and INIT; Documentation/virt/kvm/x86/msr.rst" },
            )
            .note(KVM_PV_NOTE),
            Msr::KvmPollControl => mk(
                f,
                Rule::Value(1),
                Citation { source: Source::LinuxKvm, locator: "arch/x86/kvm/x86.c, kvm_arch_vcpu_postcreate() (\"poll control enabled by default\": msr_kvm_poll_control = 1); Documentation/virt/kvm/x86/msr.rst" },
            )
            .note("KVM sets 1 only when it creates the vCPU, and neither its RESET nor its INIT touch it again: a guest's 0 would survive a reboot unless the VMM writes 1 (QEMU's kvm_arch_reset_vcpu does). INIT keeps it. Exists only where the VMM's CPUID says KVM (40000000H: \"KVMKVMKVM\") with KVM_FEATURE_POLL_CONTROL (40000001H:EAX[12])."),
            Msr::SysenterCs
            | Msr::SysenterEsp
            | Msr::SysenterEip
            | Msr::Star
            | Msr::Lstar
            | Msr::Cstar
            | Msr::Fmask
            | Msr::KernelGsBase
            | Msr::DebugCtl => mk(f, undefined(0, OTHER_MSR), table),
        },
        Field::MtrrFixed(_) | Field::MtrrPhysBase(_) => mk(
            f,
            undefined(0, "contents undefined after RESET; 0 (UC), which the disabled MTRRs imply, is what KVM and QEMU use"),
            mtrr_citation(v),
        ),
        Field::MtrrPhysMask(_) => mk(
            f,
            undefined(0, "V (bit 11) is 0 after RESET, the other bits are undefined; 0 as KVM and QEMU use"),
            mtrr_citation(v),
        ),
        Field::Mc(_, McReg::Ctl) => mk(
            f,
            undefined(u64::MAX.into(), "machine-check state undefined after RESET; all ones reports every error, as KVM_X86_SETUP_MCE and QEMU set it"),
            table,
        ),
        Field::Mc(..) => mk(f, undefined(0, "machine-check state undefined after RESET; 0 = no error logged"), table),
        Field::VmxCap(i) if intel => mk(
            f,
            Rule::Derived(Derivation::VmxCapability(i)),
            Citation { source: Source::SdmVol3D, locator: "Appendix A \"VMX Capability Reporting Facility\" (read-only MSRs 480H–491H; indices in SDM Vol. 4, Table 2-2)" },
        )
        .note(VMX_CAP_NOTE),
        Field::VmxCap(_) => mk(f, undefined(0, "Intel-only MSRs (VMX); AMD has no VMX and RDMSR of them raises #GP"), table),
        Field::SgxLeHash(i) if intel => mk(
            f,
            Rule::Derived(Derivation::SgxLePubKeyHash(i)),
            Citation { source: Source::SdmVol4, locator: "Table 2-2, IA32_SGXLEPUBKEYHASH0–3 (8CH–8FH) (\"On reset, the default value is the digest of Intel's signing key\")" },
        )
        .note(SGX_HASH_NOTE),
        Field::SgxLeHash(_) => mk(f, undefined(0, "Intel-only MSRs (SGX launch control)"), table),
        _ => return None,
    })
}

pub(crate) fn row(f: Field, v: Vendor, e: Event) -> Row {
    let Some(reset) = reset_row(f, v) else {
        return unreachable_row(f, v);
    };
    match e {
        Event::Reset => reset,
        Event::Init => match f {
            // FS/GS bases are the segment bases, which INIT sets to 0.
            Field::Msr(Msr::FsBase) | Field::Msr(Msr::GsBase) => reset,
            // INIT puts the LVT timer back to masked one-shot mode (SDM §11.4.7.3), and outside
            // TSC-deadline mode the MSR reads 0 (SDM §11.5.4.1).
            Field::Msr(Msr::TscDeadline) if v == Vendor::Intel => mk(
                f,
                Rule::Value(0),
                sdm("§11.5.4.1 \"TSC-Deadline Mode\" (outside TSC-deadline mode IA32_TSC_DEADLINE reads 0) and §11.4.7.3 (INIT masks the LVT timer in one-shot mode)"),
            )
            .note("INIT keeps MSRs, but this one is a view of the local APIC timer, which INIT disarms: it reads 0 after INIT (KVM: apic_update_lvtt clears the deadline)."),
            // KVM turns its paravirtual areas off on INIT as on RESET.
            Field::Msr(
                Msr::KvmSystemTime | Msr::KvmAsyncPfEn | Msr::KvmPvEoiEn,
            ) => reset,
            Field::Msr(Msr::SpecCtrl) => mk(f, Rule::Preserved, table_citation(v)).note(
                "MSRs are unchanged by INIT. KVM zeroes IA32_SPEC_CTRL on INIT: a deviation.",
            ),
            Field::VmxCap(_) if v == Vendor::Intel => mk(f, Rule::Preserved, table_citation(v))
                .note("INIT leaves MSRs unchanged (SDM §10.1; Table 10-1); the VMX capabilities are the model's and are not reconfigured by INIT."),
            Field::SgxLeHash(_) if v == Vendor::Intel => {
                mk(f, Rule::Preserved, table_citation(v)).note(SGX_HASH_NOTE)
            }
            _ => mk(f, Rule::Preserved, table_citation(v)).note(match v {
                Vendor::Intel => "INIT leaves MSRs and MTRRs unchanged (SDM §10.1; Table 10-1).",
                Vendor::Amd => "INIT modifies no MSR (APM Table 14-1).",
            }),
        },
    }
}
