//! What a VMM advertises to its guest, read from a probe log's CPUID records, and which spec
//! fields therefore apply to the vCPU it presents.
//!
//! A field whose feature the VMM does not advertise does not exist on that vCPU: it is judged
//! [`Verdict::NotApplicable`](super::Verdict::NotApplicable), not as a finding. CPUID bits are
//! those of Intel SDM Vol. 2A, CPUID, Table 3-10 "Feature Information Returned in the ECX
//! Register" and Table 3-11 "... in the EDX Register", and AMD APM Vol. 3, Appendix E.

use vcpu_reset_spec::{Field, LapicReg, Msr, Vendor};

use crate::probe::ProbeRun;

/// CPUID.01H:ECX\[5\], VMX (SDM Vol. 2A, Table 3-10).
const ECX1_VMX: u32 = 1 << 5;
/// CPUID.01H:ECX\[26\], XSAVE (SDM Vol. 2A, Table 3-10).
const ECX1_XSAVE: u32 = 1 << 26;
/// CPUID.01H:EDX\[9\], on-chip APIC (SDM Vol. 2A, Table 3-11).
const EDX1_APIC: u32 = 1 << 9;
/// CPUID.01H:EDX\[12\], MTRR (SDM Vol. 2A, Table 3-11).
const EDX1_MTRR: u32 = 1 << 12;
/// CPUID.01H:EDX\[16\], PAT (SDM Vol. 2A, Table 3-11).
const EDX1_PAT: u32 = 1 << 16;
/// CPUID.80000001H:ECX\[2\], SVM (AMD APM Vol. 3, Appendix E.4.2).
const ECX81_SVM: u32 = 1 << 2;
/// CPUID.(EAX=07H,ECX=0):ECX\[30\], SGX launch control (SDM Vol. 2A, CPUID leaf 07H).
const ECX7_SGX_LC: u32 = 1 << 30;
/// CPUID.(EAX=0DH,ECX=1):EAX\[3\], XSAVES and IA32_XSS (SDM Vol. 2A, CPUID leaf 0DH).
const EAX_D1_XSAVES: u32 = 1 << 3;
/// CPUID.01H:ECX\[31\]: a hypervisor is present and its leaves start at 40000000H.
const ECX1_HYPERVISOR: u32 = 1 << 31;
/// KVM's signature in CPUID.40000000H:EBX, ECX, EDX (Linux Documentation/virt/kvm/x86/cpuid.rst).
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// Hyper-V's vendor signature in CPUID.40000000H:EBX, ECX, EDX (Hypervisor Top-Level Functional
/// Specification, §2.4 "Hypervisor CPUID Leaf Range").
const HYPERV_SIGNATURE: &[u8; 12] = b"Microsoft Hv";
/// CPUID.01H:EDX\[21\], DS: the debug store, IA32_DS_AREA (SDM Vol. 2A, Table 3-11).
const EDX1_DS: u32 = 1 << 21;
/// CPUID.(EAX=07H,ECX=0):EBX\[14\], MPX and IA32_BNDCFGS (SDM Vol. 2A, CPUID leaf 07H).
const EBX7_MPX: u32 = 1 << 14;
/// CPUID.(EAX=07H,ECX=0):ECX\[5\], WAITPKG and IA32_UMWAIT_CONTROL.
const ECX7_WAITPKG: u32 = 1 << 5;
/// CPUID.(EAX=07H,ECX=0):ECX\[7\], CET shadow stacks.
const ECX7_CET_SS: u32 = 1 << 7;
/// CPUID.(EAX=07H,ECX=0):EDX\[20\], CET indirect-branch tracking.
const EDX7_CET_IBT: u32 = 1 << 20;
/// CPUID.(EAX=0DH,ECX=1):EAX\[4\], XFD and IA32_XFD/IA32_XFD_ERR (SDM Vol. 2A, CPUID leaf 0DH).
const EAX_D1_XFD: u32 = 1 << 4;
/// CPUID.80000001H:ECX\[23\], PerfCtrExtCore: the six core counters at C0010200H (AMD APM
/// Vol. 3, Appendix E.4.2).
const ECX81_PERF_CTR_EXT_CORE: u32 = 1 << 23;
/// CPUID.80000008H:EBX\[25\], VIRT_SSBD: VIRT_SPEC_CTRL (AMD APM Vol. 3, Appendix E.4.7).
const EBX88_VIRT_SSBD: u32 = 1 << 25;
/// CPUID.8000000AH:EDX\[4\], TscRateMsr: TSC_RATIO (AMD APM Vol. 3, Appendix E.4.9).
const EDX8A_TSC_RATE_MSR: u32 = 1 << 4;
/// CPUID.80000022H:EAX\[0\], PerfMonV2: PerfCntrGlobalCtl/Status (AMD APM Vol. 3, Appendix E.4.17).
const EAX822_PERFMON_V2: u32 = 1;
/// KVM's paravirtual feature bits in CPUID.40000001H:EAX (cpuid.rst).
pub mod kvm_feature {
    /// MSR_KVM_SYSTEM_TIME_NEW (4B564D01H).
    pub const CLOCKSOURCE2: u32 = 1 << 3;
    /// MSR_KVM_ASYNC_PF_EN.
    pub const ASYNC_PF: u32 = 1 << 4;
    /// MSR_KVM_PV_EOI_EN.
    pub const PV_EOI: u32 = 1 << 6;
    /// MSR_KVM_POLL_CONTROL.
    pub const POLL_CONTROL: u32 = 1 << 12;
    /// MSR_KVM_WALL_CLOCK (11H) and MSR_KVM_SYSTEM_TIME (12H).
    pub const CLOCKSOURCE: u32 = 1;
    /// MSR_KVM_STEAL_TIME.
    pub const STEAL_TIME: u32 = 1 << 5;
    /// MSR_KVM_ASYNC_PF_INT and MSR_KVM_ASYNC_PF_ACK.
    pub const ASYNC_PF_INT: u32 = 1 << 14;
}
/// IA32_MTRRCAP.FIX, bit 8: fixed-range MTRRs exist (SDM Vol. 3A, §12.11.2.1).
const MTRRCAP_FIX: u64 = 1 << 8;

/// What one probe run's CPUID records say. Every member is `None` where the log does not say
/// (a format 1 log, or a leaf above the highest one CPUID reports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertised {
    /// The CPUID.0H vendor string.
    pub vendor_id: Option<String>,
    /// The vendor it names, if Intel or AMD.
    pub vendor: Option<Vendor>,
    /// CPUID.0H:EAX, the highest basic leaf.
    pub max_leaf: Option<u32>,
    /// CPUID.80000000H:EAX, the highest extended leaf.
    pub max_ext_leaf: Option<u32>,
    /// CPUID.01H:EAX, the processor signature.
    pub signature: Option<u32>,
    /// CPUID.01H:ECX.
    pub ecx1: Option<u32>,
    /// CPUID.01H:EDX.
    pub edx1: Option<u32>,
    /// CPUID.(EAX=07H,ECX=0):ECX.
    pub ecx7: Option<u32>,
    /// CPUID.(EAX=07H,ECX=0):EBX.
    pub ebx7: Option<u32>,
    /// CPUID.(EAX=07H,ECX=0):EDX.
    pub edx7: Option<u32>,
    /// CPUID.0AH:EAX (architectural performance monitoring).
    pub eax_a: Option<u32>,
    /// CPUID.0AH:EDX (fixed-function counters).
    pub edx_a: Option<u32>,
    /// CPUID.(EAX=0DH,ECX=1):EAX.
    pub eax_d1: Option<u32>,
    /// CPUID.80000001H:ECX.
    pub ecx81: Option<u32>,
    /// CPUID.80000008H:EBX.
    pub ebx88: Option<u32>,
    /// CPUID.8000000AH:EDX (SVM features).
    pub edx8a: Option<u32>,
    /// CPUID.80000022H:EAX (AMD extended performance monitoring).
    pub eax822: Option<u32>,
    /// CPUID.40000000H says Hyper-V ("Microsoft Hv"); `None` where the log has no such leaf.
    pub hyperv: Option<bool>,
    /// The local APIC version register as the probe read it.
    pub apic_version: Option<u32>,
    /// CPUID.40000001H:EAX, KVM's paravirtual features, where CPUID.01H:ECX\[31\] says a
    /// hypervisor is present and 40000000H gives KVM's signature; `None` otherwise.
    pub kvm_features: Option<u32>,
}

impl Advertised {
    /// Reads what `run` recorded.
    pub fn from_run(run: &ProbeRun) -> Advertised {
        let max_leaf = run.cpuid(0, 0, 0);
        let basic = |leaf: u32, sub: u32, reg: usize| {
            max_leaf
                .filter(|&m| m >= leaf)
                .and_then(|_| run.cpuid(leaf, sub, reg))
        };
        // Without extended leaves, 80000000H returns data of the highest basic leaf.
        let max_ext_leaf = run
            .cpuid(0x8000_0000, 0, 0)
            .filter(|m| (0x8000_0000..=0x8000_ffff).contains(m));
        let ext = |leaf: u32, reg: usize| {
            max_ext_leaf
                .filter(|&m| m >= leaf)
                .and_then(|_| run.cpuid(leaf, 0, reg))
        };
        let vendor_id = match (run.cpuid(0, 0, 1), run.cpuid(0, 0, 3), run.cpuid(0, 0, 2)) {
            (Some(b), Some(d), Some(c)) => {
                let mut id = [0u8; 12];
                id[0..4].copy_from_slice(&b.to_le_bytes());
                id[4..8].copy_from_slice(&d.to_le_bytes());
                id[8..12].copy_from_slice(&c.to_le_bytes());
                Some(id)
            }
            _ => None,
        };
        Advertised {
            vendor: vendor_id.as_ref().and_then(Vendor::from_cpuid_vendor),
            vendor_id: vendor_id.map(|id| {
                id.iter()
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            char::from(b)
                        } else {
                            '?'
                        }
                    })
                    .collect()
            }),
            max_leaf,
            max_ext_leaf,
            signature: basic(1, 0, 0),
            ecx1: basic(1, 0, 2),
            edx1: basic(1, 0, 3),
            ecx7: basic(7, 0, 2),
            ebx7: basic(7, 0, 1),
            edx7: basic(7, 0, 3),
            eax_a: basic(0xa, 0, 0),
            edx_a: basic(0xa, 0, 3),
            eax_d1: basic(0xd, 1, 0),
            ecx81: ext(0x8000_0001, 2),
            ebx88: ext(0x8000_0008, 1),
            edx8a: ext(0x8000_000a, 3),
            eax822: ext(0x8000_0022, 0),
            hyperv: Self::hypervisor_signature(run).map(|s| &s == HYPERV_SIGNATURE),
            apic_version: run
                .number(&Field::Lapic(LapicReg::Version).name())
                .and_then(|v| u32::try_from(v).ok()),
            kvm_features: Self::kvm_features(run),
        }
    }

    /// CPUID.40000000H:EBX, ECX, EDX where CPUID.01H:ECX\[31\] says a hypervisor is present.
    fn hypervisor_signature(run: &ProbeRun) -> Option<[u8; 12]> {
        if run.cpuid(1, 0, 2)? & ECX1_HYPERVISOR == 0 {
            return None;
        }
        let mut signature = [0u8; 12];
        for (i, reg) in [1, 2, 3].into_iter().enumerate() {
            signature[i * 4..i * 4 + 4]
                .copy_from_slice(&run.cpuid(0x4000_0000, 0, reg)?.to_le_bytes());
        }
        Some(signature)
    }

    fn kvm_features(run: &ProbeRun) -> Option<u32> {
        (&Self::hypervisor_signature(run)? == KVM_SIGNATURE)
            .then(|| run.cpuid(0x4000_0001, 0, 0))
            .flatten()
    }

    /// Whether the VMM advertises KVM's paravirtual feature `bit` ([`kvm_feature`]): only
    /// under KVM's signature, so a log without it (another hypervisor, bare metal, an older
    /// probe) says no.
    pub fn kvm_pv(&self, bit: u32) -> bool {
        self.kvm_features.is_some_and(|f| f & bit != 0)
    }

    fn bit(reg: Option<u32>, mask: u32) -> Option<bool> {
        reg.map(|r| r & mask != 0)
    }

    /// VMX is advertised (CPUID.01H:ECX\[5\]).
    pub fn vmx(&self) -> Option<bool> {
        Self::bit(self.ecx1, ECX1_VMX)
    }

    /// SVM is advertised (CPUID.80000001H:ECX\[2\]); a log whose extended leaves stop below
    /// 80000001H advertises none.
    pub fn svm(&self) -> Option<bool> {
        match (self.max_ext_leaf, self.ecx81) {
            (_, Some(c)) => Some(c & ECX81_SVM != 0),
            (Some(_), None) => Some(false),
            (None, None) => None,
        }
    }

    /// XSAVE is advertised (CPUID.01H:ECX\[26\]).
    pub fn xsave(&self) -> Option<bool> {
        Self::bit(self.ecx1, ECX1_XSAVE)
    }

    /// XSAVES and IA32_XSS are advertised (CPUID.(EAX=0DH,ECX=1):EAX\[3\]).
    pub fn xsaves(&self) -> Option<bool> {
        match (self.xsave(), self.eax_d1) {
            (Some(false), _) => Some(false),
            (_, Some(a)) => Some(a & EAX_D1_XSAVES != 0),
            (Some(true), None) => Some(false),
            (None, None) => None,
        }
    }

    /// An on-chip APIC is advertised (CPUID.01H:EDX\[9\]).
    pub fn apic(&self) -> Option<bool> {
        Self::bit(self.edx1, EDX1_APIC)
    }

    /// MTRRs are advertised (CPUID.01H:EDX\[12\]).
    pub fn mtrr(&self) -> Option<bool> {
        Self::bit(self.edx1, EDX1_MTRR)
    }

    /// PAT is advertised (CPUID.01H:EDX\[16\]).
    pub fn pat(&self) -> Option<bool> {
        Self::bit(self.edx1, EDX1_PAT)
    }

    /// SGX launch control is advertised (CPUID.(EAX=07H,ECX=0):ECX\[30\]).
    pub fn sgx_launch_control(&self) -> bool {
        self.ecx7.is_some_and(|c| c & ECX7_SGX_LC != 0)
    }

    /// Number of general-purpose performance counters (CPUID.0AH:EAX\[15:8\]); 0 where the
    /// leaf is absent.
    pub fn gp_counters(&self) -> u8 {
        self.eax_a.map_or(0, |a| ((a >> 8) & 0xff) as u8)
    }

    /// Whether CPUID leaf `leaf` (basic) is reported: `None` where the log says nothing.
    fn has_basic(&self, leaf: u32) -> Option<bool> {
        self.max_leaf.map(|m| m >= leaf)
    }

    /// `reg & mask != 0` for a register of a leaf the log may lack: no leaf (the highest leaf
    /// is lower) advertises nothing; a log without CPUID says nothing (`None`).
    fn feature(&self, reg: Option<u32>, leaf_reported: Option<bool>, mask: u32) -> Option<bool> {
        match (reg, leaf_reported) {
            (Some(r), _) => Some(r & mask != 0),
            (None, Some(false)) => Some(false),
            (None, _) => None,
        }
    }

    fn has_ext(&self, leaf: u32) -> Option<bool> {
        match self.max_ext_leaf {
            Some(m) => Some(m >= leaf),
            None => self.max_leaf.map(|_| false),
        }
    }

    /// Number of LVT entries: the APIC version register's Max LVT Entry (bits 23:16) plus one
    /// (SDM Vol. 3A, §11.4.8 "Local APIC Version Register", Figure 11-7).
    pub fn lvt_entries(&self) -> Option<u32> {
        self.apic_version.map(|v| ((v >> 16) & 0xff) + 1)
    }

    /// One line for the report: what the log says the VMM advertises.
    pub fn describe(&self) -> String {
        let yn = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        if self.max_leaf.is_none() {
            return "no CPUID records (format 1 log): every field taken as applicable".into();
        }
        format!(
            "vendor {:?}, signature {}, VMX {}, SVM {}, XSAVE {}, PAT {}, MTRR {}, APIC {}{}",
            self.vendor_id.as_deref().unwrap_or("?"),
            self.signature
                .map_or_else(|| "?".to_string(), |s| format!("{s:#x}")),
            yn(self.vmx()),
            yn(self.svm()),
            yn(self.xsave()),
            yn(self.pat()),
            yn(self.mtrr()),
            yn(self.apic()),
            self.lvt_entries()
                .map_or_else(String::new, |n| format!(" ({n} LVT entries)")),
        )
    }
}

/// Why `field` does not apply to the vCPU the log describes, or `None` when it does.
///
/// `mtrr_cap` is IA32_MTRRCAP as the first run read it (its VCNT and FIX say which MTRRs
/// exist). Fields a real-mode probe outside SMM can never see are not applicable in any log:
/// IA32_SMBASE (9EH) can be read only in SMM (Intel SDM Vol. 4, Table 2-2, IA32_SMBASE:
/// "accessible only while in SMM"), so a value read outside SMM says nothing about SMBASE.
pub fn not_applicable(adv: &Advertised, mtrr_cap: Option<u64>, field: Field) -> Option<String> {
    let absent = |what: &str, bit: &str| {
        Some(format!(
            "the VMM does not advertise {what} ({bit} = 0): the vCPU has no such register"
        ))
    };
    match field {
        Field::Msr(Msr::Smbase) => Some(
            "IA32_SMBASE can be read only in SMM (Intel SDM Vol. 4, Table 2-2): a probe outside SMM cannot observe it"
                .into(),
        ),
        Field::VmxCap(_) if adv.vmx() == Some(false) => {
            absent("VMX", "CPUID.01H:ECX[5]")
        }
        Field::Msr(Msr::VmHsavePa) if adv.svm() == Some(false) => {
            absent("SVM", "CPUID.80000001H:ECX[2]")
        }
        Field::Msr(Msr::Pat) if adv.pat() == Some(false) => absent("PAT", "CPUID.01H:EDX[16]"),
        Field::Msr(Msr::MtrrCap | Msr::MtrrDefType)
        | Field::MtrrFixed(_)
        | Field::MtrrPhysBase(_)
        | Field::MtrrPhysMask(_)
            if adv.mtrr() == Some(false) =>
        {
            absent("MTRRs", "CPUID.01H:EDX[12]")
        }
        Field::MtrrFixed(_) if mtrr_cap.is_some_and(|c| c & MTRRCAP_FIX == 0) => Some(
            "IA32_MTRRCAP.FIX (bit 8) = 0: the vCPU has no fixed-range MTRRs (SDM Vol. 3A, §12.11.2.1)"
                .into(),
        ),
        Field::MtrrPhysBase(i) | Field::MtrrPhysMask(i)
            if mtrr_cap.is_some_and(|c| u64::from(i) >= c & 0xff) =>
        {
            Some(format!(
                "IA32_MTRRCAP.VCNT (bits 7:0) = {}: the vCPU has no variable-range MTRR {i} (SDM Vol. 3A, §12.11.2.1)",
                mtrr_cap.unwrap_or(0) & 0xff
            ))
        }
        Field::Msr(m @ (Msr::KvmSystemTime
        | Msr::KvmAsyncPfEn
        | Msr::KvmPvEoiEn
        | Msr::KvmPollControl)) => {
            let (bit, name) = match m {
                Msr::KvmSystemTime => (kvm_feature::CLOCKSOURCE2, "KVM_FEATURE_CLOCKSOURCE2 (bit 3)"),
                Msr::KvmAsyncPfEn => (kvm_feature::ASYNC_PF, "KVM_FEATURE_ASYNC_PF (bit 4)"),
                Msr::KvmPvEoiEn => (kvm_feature::PV_EOI, "KVM_FEATURE_PV_EOI (bit 6)"),
                _ => (kvm_feature::POLL_CONTROL, "KVM_FEATURE_POLL_CONTROL (bit 12)"),
            };
            (!adv.kvm_pv(bit)).then(|| {
                format!(
                    "the VMM does not advertise KVM's paravirtual {name} (CPUID.40000000H signature KVMKVMKVM, 40000001H:EAX): the vCPU has no such MSR"
                )
            })
        }
        Field::Msr(m) if leak_row_absent(adv, m).is_some() => leak_row_absent(adv, m),
        Field::Xcr0 if adv.xsave() == Some(false) => absent("XSAVE", "CPUID.01H:ECX[26]"),
        Field::Msr(Msr::Xss) if adv.xsaves() == Some(false) => {
            absent("XSAVES", "CPUID.(EAX=0DH,ECX=1):EAX[3]")
        }
        Field::Lapic(_) | Field::LapicBitmap(..) if adv.apic() == Some(false) => {
            absent("a local APIC", "CPUID.01H:EDX[9]")
        }
        Field::Lapic(reg) => {
            // The 7th LVT entry is CMCI, the 6th thermal, the 5th performance monitoring
            // (SDM Vol. 3A, §11.5.1 and Figure 11-8).
            let needed = match reg {
                LapicReg::LvtCmci => 7,
                LapicReg::LvtThermal => 6,
                LapicReg::LvtPerf => 5,
                _ => return None,
            };
            let n = adv.lvt_entries()?;
            (n < needed).then(|| {
                format!(
                    "the APIC version register says {n} LVT entries (Max LVT Entry = {}, bits 23:16): this LVT entry is the {needed}th and does not exist (SDM Vol. 3A, §11.4.8)",
                    n - 1
                )
            })
        }
        _ => None,
    }
}

/// Why the MSR `m`, one of the rows of state a previous boot could leave beyond the SDM tables
/// (KVM PV, Hyper-V, PMU, CET, XFD, AMD), does not exist on the vCPU the log describes.
fn leak_row_absent(adv: &Advertised, m: Msr) -> Option<String> {
    let absent = |what: &str, bit: &str| {
        format!("the VMM does not advertise {what} ({bit} = 0): the vCPU has no such register")
    };
    let kvm = |bit: u32, name: &str| {
        (!adv.kvm_pv(bit)).then(|| format!(
            "the VMM does not advertise KVM's paravirtual {name} (CPUID.40000000H signature KVMKVMKVM, 40000001H:EAX): the vCPU has no such MSR"
        ))
    };
    let when =
        |f: Option<bool>, what: &str, bit: &str| (f == Some(false)).then(|| absent(what, bit));
    let intel_only = || {
        (adv.vendor == Some(Vendor::Amd))
            .then(|| "an Intel MSR, and the vCPU is AMD's (CPUID.0H vendor)".to_string())
    };
    let amd_only = || {
        (adv.vendor == Some(Vendor::Intel))
            .then(|| "an AMD MSR, and the vCPU is Intel's (CPUID.0H vendor)".to_string())
    };
    let basic7 = adv.has_basic(7);
    let gp = usize::from(adv.gp_counters());
    let version = adv.eax_a.map(|a| a & 0xff);
    let fixed = adv.edx_a.map(|d| (d & 0x1f) as usize);
    match m {
        Msr::KvmWallClock | Msr::KvmSystemTimeOld => kvm(kvm_feature::CLOCKSOURCE, "KVM_FEATURE_CLOCKSOURCE (bit 0)"),
        Msr::KvmWallClockNew => kvm(kvm_feature::CLOCKSOURCE2, "KVM_FEATURE_CLOCKSOURCE2 (bit 3)"),
        Msr::KvmStealTime => kvm(kvm_feature::STEAL_TIME, "KVM_FEATURE_STEAL_TIME (bit 5)"),
        Msr::KvmAsyncPfInt | Msr::KvmAsyncPfAck => kvm(kvm_feature::ASYNC_PF_INT, "KVM_FEATURE_ASYNC_PF_INT (bit 14)"),
        _ if m.name().starts_with("hv_") => (adv.hyperv != Some(true) && adv.max_leaf.is_some()).then(|| {
            "the VMM does not present Hyper-V (CPUID.40000000H signature \"Microsoft Hv\"): the vCPU has no Hyper-V synthetic MSRs".to_string()
        }),
        Msr::Pmc0 | Msr::Pmc1 | Msr::Pmc2 | Msr::Pmc3 | Msr::Pmc4 | Msr::Pmc5 | Msr::Pmc6
        | Msr::Pmc7 | Msr::PerfEvtSel0 | Msr::PerfEvtSel1 | Msr::PerfEvtSel2 | Msr::PerfEvtSel3
        | Msr::PerfEvtSel4 | Msr::PerfEvtSel5 | Msr::PerfEvtSel6 | Msr::PerfEvtSel7 => {
            let n = (m.index() & 0xf) as usize;
            let n = if m.index() < 0x100 { n - 1 } else { n - 6 };
            intel_only().or_else(|| {
                (adv.eax_a.is_some() || adv.has_basic(0xa) == Some(false)).then_some(()).and_then(|()| {
                    (n >= gp).then(|| format!(
                        "CPUID.0AH:EAX[15:8] says {gp} general-purpose counters: counter {n} does not exist (SDM Vol. 3B §20.2.1)"
                    ))
                })
            })
        }
        Msr::FixedCtr0 | Msr::FixedCtr1 | Msr::FixedCtr2 | Msr::FixedCtr3 => {
            let n = (m.index() - 0x309) as usize;
            intel_only().or_else(|| {
                let have = if version.unwrap_or(0) < 2 { Some(0) } else { fixed };
                match have {
                    Some(have) if n >= have && (adv.eax_a.is_some() || adv.has_basic(0xa) == Some(false)) => Some(format!(
                        "CPUID.0AH:EDX[4:0] says {have} fixed-function counters: fixed counter {n} does not exist (SDM Vol. 3B §20.2.2)"
                    )),
                    _ => None,
                }
            })
        }
        Msr::FixedCtrCtrl | Msr::PerfGlobalStatus | Msr::PerfGlobalOvfCtrl => intel_only().or_else(|| {
            (version.unwrap_or(0) < 2 && (adv.eax_a.is_some() || adv.has_basic(0xa) == Some(false))).then(|| {
                "CPUID.0AH:EAX[7:0] gives no architectural performance monitoring version 2 or later: the vCPU has no global or fixed-counter control MSRs (SDM Vol. 3B §20.2.2)".to_string()
            })
        }),
        Msr::PebsEnable | Msr::DsArea => intel_only()
            .or_else(|| when(adv.feature(adv.edx1, adv.has_basic(1), EDX1_DS), "the debug store", "CPUID.01H:EDX[21]")),
        Msr::AmdPerfCtl0 | Msr::AmdPerfCtl1 | Msr::AmdPerfCtl2 | Msr::AmdPerfCtl3
        | Msr::AmdPerfCtl4 | Msr::AmdPerfCtl5 | Msr::AmdPerfCtr0 | Msr::AmdPerfCtr1
        | Msr::AmdPerfCtr2 | Msr::AmdPerfCtr3 | Msr::AmdPerfCtr4 | Msr::AmdPerfCtr5 => amd_only().or_else(|| {
            when(adv.feature(adv.ecx81, adv.has_ext(0x8000_0001), ECX81_PERF_CTR_EXT_CORE), "PerfCtrExtCore", "CPUID.80000001H:ECX[23]")
        }),
        Msr::PerfCntrGlobalCtl | Msr::PerfCntrGlobalStatus => amd_only().or_else(|| {
            when(adv.feature(adv.eax822, adv.has_ext(0x8000_0022), EAX822_PERFMON_V2), "PerfMonV2", "CPUID.80000022H:EAX[0]")
        }),
        Msr::Xfd | Msr::XfdErr => when(adv.feature(adv.eax_d1, adv.has_basic(0xd), EAX_D1_XFD), "XFD", "CPUID.(EAX=0DH,ECX=1):EAX[4]"),
        Msr::UCet | Msr::SCet => {
            let ss = adv.feature(adv.ecx7, basic7, ECX7_CET_SS);
            let ibt = adv.feature(adv.edx7, basic7, EDX7_CET_IBT);
            (ss == Some(false) && ibt == Some(false)).then(|| absent("CET", "CPUID.(EAX=07H,ECX=0):ECX[7] and EDX[20]"))
        }
        Msr::Pl0Ssp | Msr::Pl1Ssp | Msr::Pl2Ssp | Msr::Pl3Ssp | Msr::IntSspTab => {
            when(adv.feature(adv.ecx7, basic7, ECX7_CET_SS), "CET shadow stacks", "CPUID.(EAX=07H,ECX=0):ECX[7]")
        }
        Msr::UmwaitControl => when(adv.feature(adv.ecx7, basic7, ECX7_WAITPKG), "WAITPKG", "CPUID.(EAX=07H,ECX=0):ECX[5]"),
        Msr::Bndcfgs => when(adv.feature(adv.ebx7, basic7, EBX7_MPX), "MPX", "CPUID.(EAX=07H,ECX=0):EBX[14]"),
        Msr::TsxCtrl => intel_only(),
        Msr::VmCr => when(adv.svm(), "SVM", "CPUID.80000001H:ECX[2]"),
        Msr::TscRatio => when(adv.feature(adv.edx8a, adv.has_ext(0x8000_000a), EDX8A_TSC_RATE_MSR), "TscRateMsr", "CPUID.8000000AH:EDX[4]"),
        Msr::VirtSpecCtrl => when(adv.feature(adv.ebx88, adv.has_ext(0x8000_0008), EBX88_VIRT_SSBD), "VIRT_SSBD", "CPUID.80000008H:EBX[25]"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{self, Value};

    fn run(records: &[(&str, &str)]) -> ProbeRun {
        let recs: Vec<(String, Value)> = records
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::Hex((*v).to_string())))
            .collect();
        let log = probe::record::format_run("t", &recs);
        probe::parse(log.as_bytes())
            .expect("parses")
            .pop()
            .expect("one run")
    }

    /// QEMU's qemu64 under TCG as the probe saw it.
    fn qemu64() -> ProbeRun {
        run(&[
            ("cpuid.0.0.eax", "0000000d"),
            ("cpuid.0.0.ebx", "68747541"),
            ("cpuid.0.0.ecx", "444d4163"),
            ("cpuid.0.0.edx", "69746e65"),
            ("cpuid.1.0.eax", "00060fb1"),
            ("cpuid.1.0.ecx", "80002001"),
            ("cpuid.1.0.edx", "078bfbfd"),
            ("cpuid.80000000.0.eax", "8000000a"),
            ("cpuid.80000001.0.ecx", "00000005"),
            ("lapic.version", "00050014"),
        ])
    }

    #[test]
    fn kvms_paravirtual_msrs_apply_only_under_its_signature_and_feature_bits() {
        let poll = Field::Msr(Msr::KvmPollControl);
        let clock = Field::Msr(Msr::KvmSystemTime);
        // qemu64 under TCG: the hypervisor bit is set (ECX 80002001H) but no KVM leaves.
        let tcg = Advertised::from_run(&qemu64());
        assert_eq!(tcg.kvm_features, None);
        assert!(not_applicable(&tcg, None, poll).is_some_and(|w| w.contains("KVMKVMKVM")));
        // Under KVM: "KVMKVMKVM\0\0\0" in EBX, ECX, EDX, clocksource2 but no poll control.
        let mut kvm = vec![
            ("cpuid.40000000.0.ebx", "4b4d564b"),
            ("cpuid.40000000.0.ecx", "564b4d56"),
            ("cpuid.40000000.0.edx", "0000004d"),
            ("cpuid.40000001.0.eax", "00000008"),
        ];
        kvm.extend([("cpuid.0.0.eax", "0000000d"), ("cpuid.1.0.ecx", "80002001")]);
        let a = Advertised::from_run(&run(&kvm));
        assert_eq!(a.kvm_features, Some(0x8));
        assert_eq!(not_applicable(&a, None, clock), None);
        assert!(not_applicable(&a, None, poll).is_some());
        assert_eq!(
            not_applicable(&a, None, Field::Msr(Msr::KvmWallClockNew)),
            None
        );
        for m in [
            Msr::KvmWallClock,
            Msr::KvmSystemTimeOld,
            Msr::KvmStealTime,
            Msr::KvmAsyncPfInt,
            Msr::KvmAsyncPfAck,
        ] {
            assert!(not_applicable(&a, None, Field::Msr(m)).is_some(), "{m:?}");
        }
        // The same leaves without the hypervisor bit are not a hypervisor's.
        kvm.retain(|(k, _)| *k != "cpuid.1.0.ecx");
        kvm.push(("cpuid.1.0.ecx", "00002001"));
        assert_eq!(Advertised::from_run(&run(&kvm)).kvm_features, None);
    }

    #[test]
    fn hyper_v_msrs_apply_only_under_its_signature() {
        let sint = Field::Msr(Msr::HvSint0);
        // qemu64: a hypervisor bit but no 40000000H leaf recorded.
        let tcg = Advertised::from_run(&qemu64());
        assert!(not_applicable(&tcg, None, sint).is_some_and(|w| w.contains("Microsoft Hv")));
        // "Microsoft Hv" in EBX, ECX, EDX.
        let hv = Advertised::from_run(&run(&[
            ("cpuid.0.0.eax", "0000000d"),
            ("cpuid.1.0.ecx", "80002001"),
            ("cpuid.40000000.0.ebx", "7263694d"),
            ("cpuid.40000000.0.ecx", "666f736f"),
            ("cpuid.40000000.0.edx", "76482074"),
        ]));
        assert_eq!(hv.hyperv, Some(true));
        assert_eq!(not_applicable(&hv, None, sint), None);
        assert_eq!(
            not_applicable(&hv, None, Field::Msr(Msr::HvHypercall)),
            None
        );
        // Hyper-V's signature is not KVM's: its PV MSRs do not apply.
        assert!(not_applicable(&hv, None, Field::Msr(Msr::KvmStealTime)).is_some());
    }

    #[test]
    fn pmu_msrs_follow_the_counter_counts_of_cpuid() {
        // Intel, architectural PMU version 2, 4 GP counters, 3 fixed counters.
        let a = Advertised::from_run(&run(&[
            ("cpuid.0.0.eax", "0000000d"),
            ("cpuid.0.0.ebx", "756e6547"),
            ("cpuid.0.0.ecx", "6c65746e"),
            ("cpuid.0.0.edx", "49656e69"),
            ("cpuid.1.0.edx", "07abfbff"),
            ("cpuid.a.0.eax", "07300402"),
            ("cpuid.a.0.edx", "00000603"),
        ]));
        assert_eq!(a.vendor, Some(Vendor::Intel));
        for (m, applies) in [
            (Msr::Pmc0, true),
            (Msr::Pmc3, true),
            (Msr::Pmc4, false),
            (Msr::PerfEvtSel3, true),
            (Msr::PerfEvtSel7, false),
            (Msr::FixedCtr2, true),
            (Msr::FixedCtr3, false),
            (Msr::FixedCtrCtrl, true),
            (Msr::PerfGlobalStatus, true),
            (Msr::DsArea, true),
            (Msr::AmdPerfCtl0, false),
            (Msr::PerfCntrGlobalCtl, false),
            // No extended leaves in the log: no VIRT_SSBD.
            (Msr::VirtSpecCtrl, false),
        ] {
            assert_eq!(
                not_applicable(&a, None, Field::Msr(m)).is_none(),
                applies,
                "{m:?}"
            );
        }
        // qemu64 (AMD): no PerfCtrExtCore, no Intel PMU, no VIRT_SSBD leaf data.
        let q = Advertised::from_run(&qemu64());
        for m in [
            Msr::AmdPerfCtl0,
            Msr::AmdPerfCtr5,
            Msr::Pmc0,
            Msr::PerfEvtSel0,
        ] {
            assert!(not_applicable(&q, None, Field::Msr(m)).is_some(), "{m:?}");
        }
        // SVM is advertised (80000001H:ECX[2]): VM_CR exists.
        assert_eq!(not_applicable(&q, None, Field::Msr(Msr::VmCr)), None);
    }

    #[test]
    fn cet_xfd_waitpkg_and_mpx_msrs_follow_their_cpuid_bits() {
        let none = Advertised::from_run(&run(&[
            ("cpuid.0.0.eax", "0000000d"),
            ("cpuid.1.0.ecx", "04000000"),
            ("cpuid.7.0.ebx", "00000000"),
            ("cpuid.7.0.ecx", "00000000"),
            ("cpuid.7.0.edx", "00000000"),
            ("cpuid.d.1.eax", "00000000"),
        ]));
        for m in [
            Msr::UCet,
            Msr::Pl0Ssp,
            Msr::IntSspTab,
            Msr::Xfd,
            Msr::XfdErr,
            Msr::UmwaitControl,
            Msr::Bndcfgs,
        ] {
            assert!(
                not_applicable(&none, None, Field::Msr(m)).is_some(),
                "{m:?}"
            );
        }
        // IBT only: U_CET and S_CET exist, the shadow-stack pointers do not.
        let mut ibt = none.clone();
        ibt.edx7 = Some(1 << 20);
        assert_eq!(not_applicable(&ibt, None, Field::Msr(Msr::SCet)), None);
        assert!(not_applicable(&ibt, None, Field::Msr(Msr::Pl3Ssp)).is_some());
        let mut all = none.clone();
        all.ecx7 = Some((1 << 7) | (1 << 5));
        all.ebx7 = Some(1 << 14);
        all.eax_d1 = Some(1 << 4);
        for m in [Msr::Pl0Ssp, Msr::UmwaitControl, Msr::Bndcfgs, Msr::Xfd] {
            assert_eq!(not_applicable(&all, None, Field::Msr(m)), None, "{m:?}");
        }
        // A log without CPUID says nothing.
        let empty = Advertised::default();
        assert_eq!(not_applicable(&empty, None, Field::Msr(Msr::Xfd)), None);
        assert_eq!(not_applicable(&empty, None, Field::Msr(Msr::HvSint3)), None);
    }

    #[test]
    fn reads_vendor_signature_and_features() {
        let a = Advertised::from_run(&qemu64());
        assert_eq!(a.vendor_id.as_deref(), Some("AuthenticAMD"));
        assert_eq!(a.vendor, Some(Vendor::Amd));
        assert_eq!(a.signature, Some(0x60fb1));
        assert_eq!(a.vmx(), Some(false));
        assert_eq!(a.svm(), Some(true));
        assert_eq!(a.xsave(), Some(false));
        assert_eq!(a.pat(), Some(true));
        assert_eq!(a.mtrr(), Some(true));
        assert_eq!(a.apic(), Some(true));
        assert_eq!(a.lvt_entries(), Some(6));
    }

    #[test]
    fn no_vmx_makes_the_vmx_msrs_not_applicable() {
        let a = Advertised::from_run(&qemu64());
        for i in 0..18 {
            let why = not_applicable(&a, None, Field::VmxCap(i)).expect("n/a");
            assert!(why.contains("CPUID.01H:ECX[5]"), "{why}");
        }
        let mut with_vmx = a.clone();
        with_vmx.ecx1 = Some(0x20);
        assert_eq!(not_applicable(&with_vmx, None, Field::VmxCap(0)), None);
    }

    #[test]
    fn six_lvt_entries_make_cmci_not_applicable() {
        let a = Advertised::from_run(&qemu64());
        let why = not_applicable(&a, None, Field::Lapic(LapicReg::LvtCmci)).expect("n/a");
        assert!(why.contains("6 LVT entries"), "{why}");
        assert_eq!(
            not_applicable(&a, None, Field::Lapic(LapicReg::LvtThermal)),
            None
        );
        let mut seven = a.clone();
        seven.apic_version = Some(0x0006_0015);
        assert_eq!(
            not_applicable(&seven, None, Field::Lapic(LapicReg::LvtCmci)),
            None
        );
    }

    #[test]
    fn smbase_is_never_observable_outside_smm() {
        let why =
            not_applicable(&Advertised::default(), None, Field::Msr(Msr::Smbase)).expect("n/a");
        assert!(why.contains("only in SMM"), "{why}");
    }

    #[test]
    fn absent_features_and_mtrr_counts() {
        let mut a = Advertised::from_run(&qemu64());
        a.edx1 = Some(0); // no APIC, MTRR, PAT
        a.ecx81 = Some(0); // no SVM
        for f in [
            Field::Msr(Msr::Pat),
            Field::Msr(Msr::MtrrDefType),
            Field::MtrrFixed(0),
            Field::Lapic(LapicReg::Svr),
            Field::Msr(Msr::VmHsavePa),
            Field::Xcr0,
        ] {
            assert!(not_applicable(&a, None, f).is_some(), "{f:?}");
        }
        let b = Advertised::from_run(&qemu64());
        // VCNT = 2, no fixed MTRRs.
        assert!(not_applicable(&b, Some(0x2), Field::MtrrPhysBase(2)).is_some());
        assert!(not_applicable(&b, Some(0x2), Field::MtrrFixed(0)).is_some());
        assert_eq!(
            not_applicable(&b, Some(0x508), Field::MtrrPhysMask(7)),
            None
        );
        assert_eq!(not_applicable(&b, Some(0x508), Field::MtrrFixed(3)), None);
    }

    #[test]
    fn a_log_without_cpuid_says_nothing() {
        let a = Advertised::from_run(&run(&[("rax", "00000000")]));
        assert_eq!(a, Advertised::default());
        assert_eq!(not_applicable(&a, None, Field::VmxCap(0)), None);
        assert_eq!(
            not_applicable(&a, None, Field::Lapic(LapicReg::LvtCmci)),
            None
        );
    }
}
