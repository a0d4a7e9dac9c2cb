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

const KVM_WALL_CLOCK_NOTE: &str = "KVM's wall clock is a one-shot request, not an area KVM keeps \
    writing: at the write KVM stores the time at that guest address once (kvm_write_wall_clock, \
    which does nothing for address 0). The value read back is the VM's (kvm->arch.wall_clock, \
    shared by all vCPUs and by 11H and 4B564D00H), which KVM's RESET keeps; a RESET of any vCPU \
    clears it. INIT keeps it, as KVM does. Exists only where the VMM's CPUID says KVM with \
    KVM_FEATURE_CLOCKSOURCE (11H) or CLOCKSOURCE2 (4B564D00H). vcpu-reset's KVM backend moves \
    the register through 4B564D00H only (two writes of one register would undo each other).";

const HV_NOTE: &str = "Hyper-V's synthetic MSR: it exists only where the VMM's CPUID says \
    Hyper-V (40000000H: \"Microsoft Hv\") and offers the feature. KVM resets none of them \
    (neither kvm_vcpu_reset nor kvm_hv_vcpu_reset touch them); QEMU's reset clears them \
    (x86_cpu_reset_hold zeroes the env, hyperv_x86_synic_reset masks the SINTs). Left set, the \
    previous boot's hypercall page, SynIC pages and timers stay live in the new boot's memory. \
    INIT keeps them (the TLFS gives INIT no effect on them; KVM and QEMU keep them). KVM refuses \
    a host write of a non-zero SINT while SynIC is off (KVM_CAP_HYPERV_SYNIC not enabled): the \
    KVM backend then holds no SINT.";

const PMU_NOTE: &str = "Exists where CPUID gives the counter: Intel, CPUID.0AH (EAX[15:8] \
    general-purpose counters, EDX[4:0] fixed counters, EAX[7:0] version >= 2 for the global and \
    fixed-control MSRs); AMD, 4 legacy counters, 6 at C0010200H with PerfCtrExtCore \
    (CPUID.80000001H:ECX[23]). KVM no longer resets the PMU in kvm_vcpu_reset, so a RESET through \
    KVM's INIT keeps the previous boot's counters running unless the VMM writes them. INIT keeps \
    them (\"all other MSRs\" unchanged; APM Table 14-1).";

const CET_INIT_NOTE: &str = "KVM clears the CET state on INIT as on RESET: vmx_vcpu_reset \
    writes GUEST_S_CET, GUEST_SSP and GUEST_INTR_SSP_TABLE 0 for both events, and \
    kvm_xstate_reset zeroes the CET XSAVE components (IA32_U_CET, IA32_PL0-3_SSP) on INIT. Exists \
    where CPUID.(EAX=07H,ECX=0) offers CET_SS (ECX[7]) or, for IA32_U_CET and IA32_S_CET, CET_IBT \
    (EDX[20]).";

const KVM_INIT_ZEROES: &str = "MSRs are unchanged by INIT. KVM zeroes this one on INIT too: a \
    deviation.";

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
                undefined(0x1800, "model-specific; read-only bits 11 (BTS unavailable) and 12 (PEBS unavailable) must agree with CPUID, and a vCPU has neither BTS nor PEBS: 0x1800, as KVM writes at RESET (kvm_vcpu_reset: MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL | MSR_IA32_MISC_ENABLE_BTS_UNAVAIL)"),
                Citation { source: Source::SdmVol4, locator: "Table 2-2, IA32_MISC_ENABLE (1A0H); Linux KVM arch/x86/kvm/x86.c, kvm_vcpu_reset() (!init_event)" },
            )
            .note("Bit 0 (fast strings) is 1 after RESET on Intel processors and firmware leaves it so; KVM leaves it 0 and ignores it, so 0x1801 is reported as spec-allows. QEMU adds bit 18 (ENABLE_MONITOR) where CPUID advertises MONITOR, also spec-allows. The old value 0x1 claimed BTS and PEBS were available, which contradicts CPUID.01H:EDX[21] (DS) on every KVM vCPU.")
            .also(&[Alternative::Value(0x1801), Alternative::Value(0x4_1800), Alternative::Value(0x4_1801)]),
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
            Msr::KvmWallClock | Msr::KvmWallClockNew => mk(
                f,
                undefined(0, "no wall-clock request: what a fresh VM holds; a host write of 0 writes no guest memory"),
                Citation { source: Source::LinuxKvm, locator: "arch/x86/kvm/x86.c, kvm_set_msr_common() (MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW) and kvm_write_wall_clock(); Documentation/virt/kvm/x86/msr.rst" },
            )
            .note(KVM_WALL_CLOCK_NOTE),
            Msr::KvmSystemTimeOld | Msr::KvmStealTime | Msr::KvmAsyncPfInt => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::LinuxKvm, locator: "arch/x86/kvm/x86.c, kvm_vcpu_reset() (kvmclock_reset; apf.msr_int_val = 0; st.msr_val = 0) on RESET and INIT; Documentation/virt/kvm/x86/msr.rst" },
            )
            .note(match m {
                Msr::KvmSystemTimeOld => "KVM's older name (KVM_FEATURE_CLOCKSOURCE, bit 0) of the kvmclock register MSR_KVM_SYSTEM_TIME_NEW also reads and writes (vcpu->arch.time): 0 at RESET and INIT like it. vcpu-reset's KVM backend moves it through 4B564D01H only (two writes of one register would undo each other). Exists only where the VMM's CPUID says KVM.",
                Msr::KvmStealTime => "The steal-time area (KVM_FEATURE_STEAL_TIME, bit 5): left enabled, KVM goes on writing steal time into the new boot's memory. KVM clears it on RESET and on INIT. KVM refuses a host write of it where the host kernel has no schedstats (sched_info_on()); the KVM backend then does not hold it. Exists only where the VMM's CPUID says KVM.",
                _ => "The vector of the page-ready interrupt (KVM_FEATURE_ASYNC_PF_INT, bit 14). KVM clears it on RESET and on INIT. KVM refuses a host write of it without an in-kernel local APIC; the KVM backend then does not hold it. Exists only where the VMM's CPUID says KVM.",
            }),
            Msr::KvmAsyncPfAck => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::LinuxKvm, locator: "arch/x86/kvm/x86.c, kvm_get_msr_common() (MSR_KVM_ASYNC_PF_ACK reads 0); Documentation/virt/kvm/x86/msr.rst" },
            )
            .note("A write of bit 0 acknowledges a page-ready event; the MSR always reads 0, so it holds no state of the previous boot. Exists only where the VMM's CPUID says KVM with KVM_FEATURE_ASYNC_PF_INT."),
            Msr::HvSint0 | Msr::HvSint1 | Msr::HvSint2 | Msr::HvSint3 | Msr::HvSint4 | Msr::HvSint5
            | Msr::HvSint6 | Msr::HvSint7 | Msr::HvSint8 | Msr::HvSint9 | Msr::HvSint10
            | Msr::HvSint11 | Msr::HvSint12 | Msr::HvSint13 | Msr::HvSint14 | Msr::HvSint15 => mk(
                f,
                Rule::Value(0x1_0000),
                Citation { source: Source::HyperVTlfs, locator: "§11.8.4 \"SINTx Registers\" (\"the default value of all SINTx registers is 0x0000000000010000\": masked)" },
            )
            .note(HV_NOTE),
            Msr::HvGuestOsId
            | Msr::HvHypercall
            | Msr::HvReferenceTsc
            | Msr::HvVpAssistPage
            | Msr::HvScontrol
            | Msr::HvSiefp
            | Msr::HvSimp
            | Msr::HvStimer0Config
            | Msr::HvStimer0Count
            | Msr::HvStimer1Config
            | Msr::HvStimer1Count
            | Msr::HvStimer2Config
            | Msr::HvStimer2Count
            | Msr::HvStimer3Config
            | Msr::HvStimer3Count
            | Msr::HvCrashP0
            | Msr::HvCrashP1
            | Msr::HvCrashP2
            | Msr::HvCrashP3
            | Msr::HvCrashP4
            | Msr::HvReenlightenmentControl
            | Msr::HvTscEmulationControl
            | Msr::HvTscEmulationStatus
            | Msr::HvTscInvariantControl
            | Msr::HvSyndbgControl
            | Msr::HvSyndbgStatus
            | Msr::HvSyndbgSendBuffer
            | Msr::HvSyndbgRecvBuffer
            | Msr::HvSyndbgPendingBuffer
            | Msr::HvSyndbgOptions => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::HyperVTlfs, locator: "§3.13 \"Reporting the Guest OS Identity\", §3.13 hypercall page, §7.4 VP assist page, §11.8 SynIC MSRs, §12.4 synthetic timers (each: 0, disabled, at virtual-processor creation and reset)" },
            )
            .note(HV_NOTE),
            Msr::Pmc0 | Msr::Pmc1 | Msr::Pmc2 | Msr::Pmc3 | Msr::Pmc4 | Msr::Pmc5 | Msr::Pmc6
            | Msr::Pmc7 | Msr::PerfEvtSel0 | Msr::PerfEvtSel1 | Msr::PerfEvtSel2
            | Msr::PerfEvtSel3 | Msr::PerfEvtSel4 | Msr::PerfEvtSel5 | Msr::PerfEvtSel6
            | Msr::PerfEvtSel7 | Msr::FixedCtr0 | Msr::FixedCtr1 | Msr::FixedCtr2
            | Msr::FixedCtr3 | Msr::FixedCtrCtrl | Msr::PerfGlobalStatus
            | Msr::PerfGlobalOvfCtrl | Msr::PebsEnable | Msr::DsArea
                if intel =>
            {
                mk(
                    f,
                    undefined(0, "\"all other MSRs\" are undefined after RESET; 0 = counters stopped and cleared, nothing pending, no debug-store area, as a fresh KVM vCPU has"),
                    Citation { source: Source::SdmVol3B, locator: "Chapter 20 \"Performance Monitoring\" (§20.2 architectural performance monitoring, §20.6.3 PEBS and the debug store) and Vol. 3A Table 10-1" },
                )
                .note(PMU_NOTE)
            }
            Msr::AmdPerfCtl0 | Msr::AmdPerfCtl1 | Msr::AmdPerfCtl2 | Msr::AmdPerfCtl3
            | Msr::AmdPerfCtl4 | Msr::AmdPerfCtl5 | Msr::AmdPerfCtr0 | Msr::AmdPerfCtr1
            | Msr::AmdPerfCtr2 | Msr::AmdPerfCtr3 | Msr::AmdPerfCtr4 | Msr::AmdPerfCtr5
            | Msr::PerfCntrGlobalStatus
                if !intel =>
            {
                mk(
                    f,
                    undefined(0, "the APM gives no RESET value; 0 = counters stopped and cleared, as a fresh KVM vCPU has"),
                    apm("§13.2 \"Performance Monitoring Counters\""),
                )
                .note(PMU_NOTE)
            }
            Msr::PerfCntrGlobalCtl if !intel => mk(
                f,
                undefined(0, "the APM gives no RESET value; 0 keeps every counter stopped (KVM instead sets the enable bit of each counter when the VMM sets CPUID, kvm_pmu_refresh, as the SDM does for Intel's IA32_PERF_GLOBAL_CTRL)"),
                apm("§13.2.2 \"Performance Monitor Version 2\" (PerfCntrGlobalCtl, C000_0301h)"),
            )
            .note(PMU_NOTE),
            Msr::Pmc0 | Msr::Pmc1 | Msr::Pmc2 | Msr::Pmc3 | Msr::Pmc4 | Msr::Pmc5 | Msr::Pmc6
            | Msr::Pmc7 | Msr::PerfEvtSel0 | Msr::PerfEvtSel1 | Msr::PerfEvtSel2
            | Msr::PerfEvtSel3 | Msr::PerfEvtSel4 | Msr::PerfEvtSel5 | Msr::PerfEvtSel6
            | Msr::PerfEvtSel7 | Msr::FixedCtr0 | Msr::FixedCtr1 | Msr::FixedCtr2
            | Msr::FixedCtr3 | Msr::FixedCtrCtrl | Msr::PerfGlobalStatus
            | Msr::PerfGlobalOvfCtrl | Msr::PebsEnable | Msr::DsArea => {
                mk(f, undefined(0, "Intel's performance-monitoring MSR; AMD's counters are PerfEvtSel/PerfCtr at C001_0200h"), table)
            }
            Msr::AmdPerfCtl0 | Msr::AmdPerfCtl1 | Msr::AmdPerfCtl2 | Msr::AmdPerfCtl3
            | Msr::AmdPerfCtl4 | Msr::AmdPerfCtl5 | Msr::AmdPerfCtr0 | Msr::AmdPerfCtr1
            | Msr::AmdPerfCtr2 | Msr::AmdPerfCtr3 | Msr::AmdPerfCtr4 | Msr::AmdPerfCtr5
            | Msr::PerfCntrGlobalStatus
            | Msr::PerfCntrGlobalCtl => mk(f, undefined(0, "AMD's performance-monitoring MSR"), table),
            Msr::Xfd | Msr::XfdErr => mk(
                f,
                undefined(0, "no component disabled and no XFD fault recorded: the state of a fresh vCPU (KVM's RESET does not write the MSR, so the engine does)"),
                Citation { source: Source::SdmVol1, locator: "§13.14 \"Extended Feature Disable (XFD)\"" },
            )
            .note("Exists where CPUID.(EAX=0DH,ECX=1):EAX[4] offers XFD. Left set, the next OS takes #NM on its first AMX instruction. INIT keeps it, as every MSR."),
            Msr::UCet | Msr::SCet | Msr::Pl0Ssp | Msr::Pl1Ssp | Msr::Pl2Ssp | Msr::Pl3Ssp
            | Msr::IntSspTab => mk(
                f,
                Rule::Value(0),
                if intel {
                    Citation { source: Source::SdmVol1, locator: "Chapter 17 \"Control-flow Enforcement Technology (CET)\" (CET disabled and the shadow-stack pointers 0 out of RESET); Linux KVM vmx_vcpu_reset()" }
                } else {
                    apm("§18 \"Shadow Stacks\" (shadow-stack MSRs 0 after RESET)")
                },
            )
            .note(CET_INIT_NOTE),
            Msr::UmwaitControl if intel => mk(
                f,
                undefined(0, "\"all other MSRs\" are undefined after RESET; 0 = C0.2 allowed, no time limit, as KVM writes on RESET and INIT (vmx_vcpu_reset)"),
                Citation { source: Source::SdmVol4, locator: "Table 2-2, IA32_UMWAIT_CONTROL (E1H)" },
            )
            .note("Exists where CPUID.(EAX=07H,ECX=0):ECX[5] offers WAITPKG."),
            Msr::TsxCtrl if intel => mk(
                f,
                undefined(0, "\"all other MSRs\" are undefined after RESET; 0 = RTM enabled and reported, as a fresh KVM vCPU has"),
                Citation { source: Source::SdmVol4, locator: "Table 2-2, IA32_TSX_CTRL (122H)" },
            )
            .note("Exists where IA32_ARCH_CAPABILITIES[7] (TSX_CTRL) says so. A previous boot's RTM_DISABLE/CPUID_CLEAR would hide RTM from the next OS. INIT keeps it."),
            Msr::Bndcfgs if intel => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::SdmVol1, locator: "§17.3 \"MPX Registers\" and Vol. 3A Table 10-1 (IA32_BNDCFGS 0 after RESET)" },
            )
            .note("Exists where CPUID.(EAX=07H,ECX=0):EBX[14] offers MPX. KVM writes 0 at RESET and INIT (vmx_vcpu_reset: GUEST_BNDCFGS)."),
            Msr::UmwaitControl | Msr::TsxCtrl | Msr::Bndcfgs => mk(f, undefined(0, "Intel-only MSR"), table),
            Msr::McgCtl => mk(
                f,
                undefined(0, "machine-check state is undefined after RESET; 0 is what a VMM can write whether or not IA32_MCG_CAP.MCG_CTL_P (bit 8) is set (KVM refuses all ones without it); firmware and the OS write all ones to enable reporting"),
                Citation { source: Source::SdmVol3B, locator: "§16.3.1.3 \"IA32_MCG_CTL MSR\"" },
            )
            .note("Exists where IA32_MCG_CAP.MCG_CTL_P is set (KVM answers a host read without it). INIT keeps it.")
            .also(&[Alternative::Value(u64::MAX as u128)]),
            Msr::McgExtCtl => mk(
                f,
                undefined(0, "machine-check state is undefined after RESET; 0 = local machine-check exceptions off (LMCE_EN clear)"),
                Citation { source: Source::SdmVol3B, locator: "§16.3.1.4 \"IA32_MCG_EXT_CTL MSR\"" },
            )
            .note("Exists where IA32_MCG_CAP.MCG_LMCE_P (bit 27) is set. INIT keeps it."),
            Msr::SmiCount => mk(
                f,
                undefined(0, "counts SMIs since RESET: 0, as KVM writes (kvm_vcpu_reset: smi_count = 0)"),
                Citation { source: Source::SdmVol4, locator: "Table 2-3 and later model tables, MSR_SMI_COUNT (34H)" },
            )
            .note("Read-only to the guest; KVM lets the VMM write it. KVM also zeroes it on INIT."),
            Msr::Hwcr => mk(
                f,
                undefined(0, "the APM leaves HWCR's RESET value to the model; 0 is what KVM gives a new vCPU (msr_hwcr), and KVM takes only McStatusWrEn (bit 18) and TscFreqSel (bit 24)"),
                apm("Appendix A, HWCR (C001_0015h)"),
            )
            .note("KVM offers it to Intel vCPUs too. A previous boot's McStatusWrEn would let the next OS write MCi_STATUS. INIT keeps it (APM Table 14-1)."),
            Msr::VmCr if !intel => mk(
                f,
                undefined(0, "the APM gives no RESET value; 0 = SVM not disabled and not locked, as a fresh KVM vCPU has"),
                apm("§15.30.1 \"VM_CR MSR (C001_0114h)\""),
            )
            .note("Exists where CPUID.80000001H:ECX[2] offers SVM. INIT keeps it (APM Table 14-1). KVM keeps SVMDIS (bit 4) and LOCK (bit 3) once SVMDIS is set, against a host write too (arch/x86/kvm/svm/svm.c, svm_set_vm_cr()): a previous boot that set it leaves it for the next, and no VMM can clear it through KVM; the leak scan reports that as a host limit."),
            Msr::TscRatio if !intel => mk(
                f,
                Rule::Value(0x1_0000_0000),
                apm("§15.30.5 \"TSC Ratio MSR (C000_0104h)\" (reset value 0000_0001_0000_0000h: ratio 1.0)"),
            )
            .note("Exists where CPUID.8000000AH:EDX[4] offers TscRateMsr (nested SVM). A previous boot's ratio would change the TSC rate of the next boot's nested guests. INIT keeps it."),
            Msr::VirtSpecCtrl if !intel => mk(
                f,
                undefined(0, "no RESET value documented; 0 = SSBD off, as KVM writes on RESET and INIT (svm_vcpu_reset)"),
                apm("Appendix A; AMD \"Speculative Store Bypass Disable\" white paper (VIRT_SPEC_CTRL, C001_011Fh)"),
            )
            .note("Exists where CPUID.80000008H:EBX[25] offers VIRT_SSBD."),
            Msr::VmCr | Msr::TscRatio | Msr::VirtSpecCtrl => mk(
                f,
                undefined(0, "AMD's MSR; KVM may list it (and answer it) for Intel vCPUs too, where 0 is what a fresh vCPU reads"),
                table,
            ),
            Msr::PowerCtl => mk(
                f,
                undefined(0, "model-specific, set by firmware; 0 is what KVM gives a new vCPU (msr_ia32_power_ctl), which neither KVM's RESET nor its INIT write again"),
                Citation { source: Source::SdmVol4, locator: "Table 2-20 and later model tables, MSR_POWER_CTL (1FCH); Linux KVM arch/x86/kvm/x86.c, kvm_set_msr_common() (MSR_IA32_POWER_CTL)" },
            )
            .note("KVM lets the guest write it and keeps what it wrote across its own RESET and INIT: a previous boot's value would reach the next. INIT keeps it, as every MSR."),
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
        Field::Mc(_, McReg::Ctl2) => mk(
            f,
            undefined(0, "machine-check state undefined after RESET; 0 = CMCI off for the bank, as a fresh KVM vCPU has"),
            Citation { source: Source::SdmVol3B, locator: "§16.3.2.5 \"IA32_MCi_CTL2 MSRs\"" },
        )
        .note("Exists where IA32_MCG_CAP.MCG_CMCI_P (bit 10) is set. INIT keeps it."),
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
            Field::Msr(
                Msr::KvmSystemTimeOld | Msr::KvmStealTime | Msr::KvmAsyncPfInt | Msr::KvmAsyncPfAck,
            ) => reset,
            // KVM clears the CET state on INIT (vmx_vcpu_reset, kvm_xstate_reset), and
            // BNDCFGS (vmx_vcpu_reset).
            Field::Msr(
                Msr::UCet
                | Msr::SCet
                | Msr::Pl0Ssp
                | Msr::Pl1Ssp
                | Msr::Pl2Ssp
                | Msr::Pl3Ssp
                | Msr::IntSspTab,
            ) => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::LinuxKvm, locator: "arch/x86/kvm/vmx/vmx.c, vmx_vcpu_reset() (GUEST_S_CET, GUEST_SSP, GUEST_INTR_SSP_TABLE = 0 on RESET and INIT); arch/x86/kvm/x86.c, kvm_xstate_reset() (CET XSAVE components zeroed on INIT)" },
            )
            .note(CET_INIT_NOTE),
            Field::Msr(Msr::Bndcfgs) if v == Vendor::Intel => mk(
                f,
                Rule::Value(0),
                Citation { source: Source::LinuxKvm, locator: "arch/x86/kvm/vmx/vmx.c, vmx_vcpu_reset() (GUEST_BNDCFGS = 0 on RESET and INIT, with the MPX XSAVE components)" },
            )
            .note("KVM clears IA32_BNDCFGS on INIT with BND0-3 and BNDCSR; vcpu-reset does the same."),
            Field::Msr(Msr::UmwaitControl | Msr::SmiCount | Msr::VirtSpecCtrl) => {
                mk(f, Rule::Preserved, table_citation(v)).note(KVM_INIT_ZEROES)
            }
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
