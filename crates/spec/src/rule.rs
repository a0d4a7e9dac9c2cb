//! What a table row says about a field: a value, or a rule, with its citation.

use crate::field::Field;
use crate::state::{Activity, SGX_LE_HASH_MSRS, VMX_CAPABILITY_MSRS, VcpuState};

/// Processor vendor; the tables differ where the Intel SDM and the AMD APM differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Vendor {
    /// Intel: the Intel SDM applies.
    Intel,
    /// AMD: the AMD64 APM applies.
    Amd,
}

impl Vendor {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
        }
    }

    /// The vendor named by a CPUID.0H vendor string, if it is one of the two.
    pub fn from_cpuid_vendor(id: &[u8; 12]) -> Option<Vendor> {
        match id {
            b"GenuineIntel" => Some(Vendor::Intel),
            b"AuthenticAMD" => Some(Vendor::Amd),
            _ => None,
        }
    }
}

/// The two events the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Event {
    /// Power-on or hardware RESET (RESET# asserted).
    Reset,
    /// INIT (INIT# or an INIT IPI).
    Init,
}

impl Event {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Event::Reset => "reset",
            Event::Init => "init",
        }
    }
}

/// A document a row cites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Intel SDM Vol. 1 (Basic Architecture).
    SdmVol1,
    /// Intel SDM Vol. 3A (System Programming Guide, Part 1).
    SdmVol3A,
    /// Intel SDM Vol. 3B (System Programming Guide, Part 2).
    SdmVol3B,
    /// Intel SDM Vol. 3C (System Programming Guide, Part 3).
    SdmVol3C,
    /// Intel SDM Vol. 3D (System Programming Guide, Part 4).
    SdmVol3D,
    /// Intel SDM Vol. 4 (Model-Specific Registers).
    SdmVol4,
    /// AMD64 Architecture Programmer's Manual Vol. 2 (System Programming).
    ApmVol2,
    /// Linux KVM: its paravirtual interface (Documentation/virt/kvm/x86/msr.rst, cpuid.rst)
    /// and what its vCPU creation and `kvm_vcpu_reset()` do (arch/x86/kvm/x86.c), for state
    /// no processor manual defines.
    LinuxKvm,
    /// Microsoft's Hypervisor Top-Level Functional Specification: the synthetic MSRs a VMM
    /// that presents Hyper-V's interface (CPUID 40000000H: "Microsoft Hv") offers.
    HyperVTlfs,
}

impl Source {
    /// The document with its edition.
    pub fn title(self) -> &'static str {
        match self {
            Source::SdmVol1 => "Intel SDM Vol. 1 (325462-079US, March 2023)",
            Source::SdmVol3A => "Intel SDM Vol. 3A (325462-079US, March 2023)",
            Source::SdmVol3B => "Intel SDM Vol. 3B (325462-079US, March 2023)",
            Source::SdmVol3C => "Intel SDM Vol. 3C (325462-079US, March 2023)",
            Source::SdmVol3D => "Intel SDM Vol. 3D (325462-079US, March 2023)",
            Source::SdmVol4 => "Intel SDM Vol. 4 (325462-079US, March 2023)",
            Source::ApmVol2 => "AMD64 APM Vol. 2 (24593, Rev. 3.42, March 2024)",
            Source::LinuxKvm => "Linux KVM (Linux 6.12; checked against 6.18)",
            Source::HyperVTlfs => "Hypervisor Top-Level Functional Specification (v6.0b)",
        }
    }
}

/// Where in a document a value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Citation {
    /// The document and edition.
    pub source: Source,
    /// Table or section within it.
    pub locator: &'static str,
}

impl core::fmt::Display for Citation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}, {}", self.source.title(), self.locator)
    }
}

/// A value computed from the vCPU's identity, its CPU model or the state before an INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Derivation {
    /// The processor signature, CPUID.01H:EAX (family, model, stepping).
    Signature,
    /// The xAPIC ID register: the vCPU's APIC ID in bits 31:24.
    ApicId,
    /// IA32_APIC_BASE: base FEE00000H, EN (bit 11) set, BSP (bit 8) set on the BSP only.
    ApicBase,
    /// The APIC version register: hard-wired per model.
    ApicVersion,
    /// IA32_MTRRCAP: read-only, per model.
    MtrrCap,
    /// The BSP starts executing; an AP waits for a startup IPI.
    Activity,
    /// One enable bit per general-purpose counter: bits n-1:0 set.
    PerfGlobalCtrl,
    /// CR0 after INIT: CD and NW kept from the state before, ET (bit 4) set, all else 0.
    Cr0Init,
    /// VMX capability MSR `n` (480H + n): the model's configured value
    /// ([`CpuModel::vmx_capabilities`]), 0 where the model offers no VMX.
    VmxCapability(u8),
    /// IA32_SGXLEPUBKEYHASHn: the digest of Intel's signing key ([`INTEL_LE_PUBKEY_HASH`])
    /// where the model offers SGX launch control, 0 (no such MSR) where it does not.
    SgxLePubKeyHash(u8),
    /// The CMCI LVT (2F0H): masked (00010000H) where the local APIC has it, the 7th LVT entry
    /// (APIC version bits 23:16, Max LVT Entry, at least 6); 0 where it has fewer entries and
    /// the register does not exist (SDM Vol. 3A §11.4.8, Figure 11-7, and §11.5.1).
    LvtCmci,
    /// The local APIC's LDR after INIT: INIT keeps IA32_APIC_BASE, so a vCPU in x2APIC mode
    /// (EXTD, bit 10, in the state before) stays in it, and there the LDR is read-only, derived
    /// from the x2APIC ID: (ID\[19:4\] << 16) | (1 << ID\[3:0\]) (SDM Vol. 3A §11.12.10.2). In
    /// xAPIC mode INIT clears it (§11.4.7.3).
    LdrInit,
}

impl Derivation {
    /// How the value is derived, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Derivation::Signature => {
                "the CPUID.01H:EAX processor signature (family/model/stepping)"
            }
            Derivation::ApicId => "the vCPU's initial APIC ID in bits 31:24",
            Derivation::ApicBase => {
                "0xFEE00000 | EN (bit 11) | BSP (bit 8, set on the bootstrap processor only)"
            }
            Derivation::ApicVersion => "hard-wired per CPU model (e.g. 0x00050014)",
            Derivation::MtrrCap => "read-only, describes the model's MTRRs (VCNT, FIX, WC)",
            Derivation::Activity => "BSP: active (0); AP: wait-for-SIPI (3)",
            Derivation::PerfGlobalCtrl => {
                "bits n-1:0 set, n = number of general-purpose counters (CPUID.0AH:EAX[15:8])"
            }
            Derivation::Cr0Init => "0x00000010 | (CR0 before INIT & 0x60000000): CD/NW kept",
            Derivation::VmxCapability(_) => {
                "the CPU model's configured VMX capability (read-only to the guest; 0 without VMX)"
            }
            Derivation::SgxLePubKeyHash(_) => {
                "the digest of Intel's signing key where the model offers SGX launch control, else 0 (no such MSR)"
            }
            Derivation::LdrInit => {
                "0 in xAPIC mode; in x2APIC mode (kept by INIT) the logical x2APIC ID, (ID[19:4] << 16) | (1 << ID[3:0])"
            }
            Derivation::LvtCmci => {
                "masked (0x10000) where the APIC has 7 or more LVT entries (version bits 23:16 >= 6), else 0 (no such register)"
            }
        }
    }

    /// Compute the value for this vCPU.
    pub fn evaluate(self, model: &CpuModel, vcpu: VcpuIdentity, prior: Option<&VcpuState>) -> u128 {
        match self {
            Derivation::Signature => model.signature.into(),
            Derivation::ApicId => u128::from(vcpu.apic_id) << 24,
            Derivation::ApicBase => 0xfee0_0000 | 1 << 11 | if vcpu.bsp { 1 << 8 } else { 0 },
            Derivation::ApicVersion => model.apic_version.into(),
            Derivation::MtrrCap => model.mtrr_cap.into(),
            Derivation::Activity => {
                if vcpu.bsp {
                    Activity::Active as u128
                } else {
                    Activity::WaitForSipi as u128
                }
            }
            Derivation::PerfGlobalCtrl => (1u128 << model.gp_counters.min(64)) - 1,
            Derivation::Cr0Init => {
                0x10 | prior.map_or(0x6000_0000, |p| u128::from(p.cr0) & 0x6000_0000)
            }
            Derivation::VmxCapability(i) => model
                .vmx_capabilities
                .get(usize::from(i))
                .copied()
                .unwrap_or(0)
                .into(),
            Derivation::SgxLePubKeyHash(i) => {
                if model.sgx_launch_control {
                    INTEL_LE_PUBKEY_HASH
                        .get(usize::from(i))
                        .copied()
                        .unwrap_or(0)
                        .into()
                } else {
                    0
                }
            }
            Derivation::LdrInit => match prior {
                Some(p) if p.msrs.apic_base & (1 << 10) != 0 => {
                    let id = vcpu.apic_id;
                    u128::from(((id >> 4) & 0xffff) << 16 | 1 << (id & 0xf))
                }
                _ => 0,
            },
            Derivation::LvtCmci => {
                if (model.apic_version >> 16) & 0xff >= 6 {
                    0x1_0000
                } else {
                    0
                }
            }
        }
    }
}

/// What a table says a field is after the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A concrete value.
    Value(u128),
    /// Unchanged from the state before the event (INIT only).
    Preserved,
    /// Computed (see [`Derivation`]).
    Derived(Derivation),
    /// Left undefined by the documents; `vmm` is the value a VMM should use, for `reason`.
    Undefined {
        /// The value vcpu-reset uses.
        vmm: u128,
        /// Why that value.
        reason: &'static str,
    },
}

impl Rule {
    /// The rule's kind as the JSON renderer names it: `value`, `preserved`, `derived` or
    /// `undefined`.
    pub fn kind(&self) -> &'static str {
        match self {
            Rule::Value(_) => "value",
            Rule::Preserved => "preserved",
            Rule::Derived(_) => "derived",
            Rule::Undefined { .. } => "undefined",
        }
    }
}

/// Something other than the rule that sources show is also architecturally acceptable; a
/// conformance check reports it as `spec-allows`, not as a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alternative {
    /// This value.
    Value(u128),
    /// The value from before the event.
    Preserved,
}

/// One row of a RESET or INIT table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    /// The field.
    pub field: Field,
    /// What it is after the event.
    pub rule: Rule,
    /// Where that comes from.
    pub citation: Citation,
    /// Where sources disagree, or how the choice was made.
    pub note: Option<&'static str>,
    /// Other outcomes the sources allow.
    pub also: &'static [Alternative],
}

/// What the expected state depends on besides the event: the CPU model the VMM presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CpuModel {
    /// Vendor.
    pub vendor: Vendor,
    /// CPUID.01H:EAX.
    pub signature: u32,
    /// Number of general-purpose performance counters (CPUID.0AH:EAX\[15:8\]).
    pub gp_counters: u8,
    /// The local APIC version register.
    pub apic_version: u32,
    /// IA32_MTRRCAP.
    pub mtrr_cap: u64,
    /// The VMX capability MSRs IA32_VMX_BASIC … IA32_VMX_VMFUNC (480H–491H) as the VMM
    /// configures them: restored at RESET, kept by INIT. All zero where VMX is not offered (and
    /// on AMD, which has no VMX).
    pub vmx_capabilities: [u64; VMX_CAPABILITY_MSRS],
    /// SGX launch control is offered (CPUID.(EAX=07H,ECX=0):ECX\[30\]), so the
    /// IA32_SGXLEPUBKEYHASH0–3 MSRs exist and reset to the digest of Intel's signing key.
    pub sgx_launch_control: bool,
    /// IA32_MCG_CAP (179H) as the vCPU reports it, where known: its bank count (bits 7:0),
    /// MCG_CTL_P (bit 8), MCG_CMCI_P (bit 10) and MCG_LMCE_P (bit 27) say which machine-check
    /// MSRs exist (Intel SDM Vol. 3B, §16.3.1.1 "IA32_MCG_CAP MSR"). `None`: not known, and
    /// the fields it decides are not judged ([`CpuModel::applies`]).
    pub mcg_cap: Option<u64>,
    /// IA32_ARCH_CAPABILITIES (10AH) as the vCPU reports it, where known (0 for a vCPU without
    /// the MSR): bit 7, TSX_CTRL, says IA32_TSX_CTRL exists (Intel SDM Vol. 4, Table 2-2).
    /// `None`: not known, and IA32_TSX_CTRL is not judged.
    pub arch_capabilities: Option<u64>,
}

/// The digest of Intel's launch-enclave signing key, IA32_SGXLEPUBKEYHASH0–3 in order: the
/// RESET value of those MSRs (Intel SDM Vol. 4, Table 2-2: "On reset, the default value is the
/// digest of Intel's signing key"). The SDM does not print the digest; these are the values
/// Linux KVM (`arch/x86/kvm/vmx/sgx.c`, `setup_default_sgx_lepubkeyhash`) and QEMU
/// (`target/i386/cpu.c`, "defined in Skylake HW") use.
pub const INTEL_LE_PUBKEY_HASH: [u64; SGX_LE_HASH_MSRS] = [
    0xa605_3e05_1270_b7ac,
    0x6cfb_e8ba_8b3b_413d,
    0xc491_6d99_f2b3_735d,
    0xd4f8_c059_09f9_bb3b,
];

/// vcpu-reset's default VMX capability configuration for an Intel model that offers VMX, in
/// MSR order 480H–491H. It is an example of a nested-VMX configuration of the kind KVM reports,
/// not any one host's:
///
/// - IA32_VMX_BASIC exactly as KVM encodes it for its virtual VMCS (`nested_vmx_setup_basic`):
///   revision 11E57ED0H (`VMCS12_REVISION`), region size 4 KiB (bits 44:32 = 1000H), memory
///   type WB (bits 53:50 = 6), INS/OUTS exit information (bit 54), TRUE controls (bit 55)
///   (SDM Vol. 3D, Appendix A.1);
/// - the control MSRs report their "default1" bits as required (allowed-0 settings in bits
///   31:0; SDM Vol. 3D, Appendix A.3) and a common feature set as allowed (allowed-1 settings
///   in bits 63:32); the TRUE MSRs let CR3-load/store exiting and the debug-control load/save
///   be 0;
/// - IA32_VMX_CR0_FIXED0 = PE | NE | PG and IA32_VMX_CR4_FIXED0 = VMXE, the bits VMX operation
///   requires set (SDM Vol. 3D, Appendices A.7 and A.8; KVM's `VMXON_CR0_ALWAYSON` and
///   `VMXON_CR4_ALWAYSON`);
/// - IA32_VMX_MISC as KVM emulates it: preemption-timer rate 5, EFER.LMA stored, HLT and
///   wait-for-SIPI activity states, VMWRITE to VM-exit information fields (bit 29);
/// - IA32_VMX_VMFUNC = EPTP switching.
pub const DEFAULT_VMX_CAPABILITIES: [u64; VMX_CAPABILITY_MSRS] = [
    0x00d8_1000_11e5_7ed0, // IA32_VMX_BASIC
    0x0000_00ff_0000_0016, // IA32_VMX_PINBASED_CTLS
    0xfff9_fffe_0401_e172, // IA32_VMX_PROCBASED_CTLS
    0x003f_efff_0003_6dff, // IA32_VMX_EXIT_CTLS
    0x0000_f3ff_0000_11ff, // IA32_VMX_ENTRY_CTLS
    0x0000_0000_2000_0165, // IA32_VMX_MISC
    0x0000_0000_8000_0021, // IA32_VMX_CR0_FIXED0
    0x0000_0000_ffff_ffff, // IA32_VMX_CR0_FIXED1
    0x0000_0000_0000_2000, // IA32_VMX_CR4_FIXED0
    0x0000_0000_0077_2fff, // IA32_VMX_CR4_FIXED1
    0x0000_0000_0000_002e, // IA32_VMX_VMCS_ENUM
    0x0013_7bff_0000_0000, // IA32_VMX_PROCBASED_CTLS2
    0x0000_0f01_0633_4141, // IA32_VMX_EPT_VPID_CAP
    0x0000_00ff_0000_0016, // IA32_VMX_TRUE_PINBASED_CTLS
    0xfff9_fffe_0400_6172, // IA32_VMX_TRUE_PROCBASED_CTLS
    0x003f_efff_0003_6dfb, // IA32_VMX_TRUE_EXIT_CTLS
    0x0000_f3ff_0000_11fb, // IA32_VMX_TRUE_ENTRY_CTLS
    0x0000_0000_0000_0001, // IA32_VMX_VMFUNC
];

impl CpuModel {
    /// A plain model of this vendor: a signature of family 6 (Intel) or 0x17 (AMD), no
    /// performance counters, an xAPIC of version 0x14 with six LVT entries, 8 variable plus
    /// fixed MTRRs with write-combining (IA32_MTRRCAP = 0x508), no SGX launch control, on
    /// Intel VMX with [`DEFAULT_VMX_CAPABILITIES`], and IA32_MCG_CAP and IA32_ARCH_CAPABILITIES
    /// not known.
    pub const fn generic(vendor: Vendor) -> Self {
        CpuModel {
            vendor,
            signature: match vendor {
                Vendor::Intel => 0x0005_0654,
                Vendor::Amd => 0x0080_0f12,
            },
            gp_counters: 0,
            apic_version: 0x0005_0014,
            mtrr_cap: 0x508,
            vmx_capabilities: match vendor {
                Vendor::Intel => DEFAULT_VMX_CAPABILITIES,
                Vendor::Amd => [0; VMX_CAPABILITY_MSRS],
            },
            sgx_launch_control: false,
            mcg_cap: None,
            arch_capabilities: None,
        }
    }
}

/// Which vCPU: its APIC ID and whether it is the bootstrap processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VcpuIdentity {
    /// Initial APIC ID (vcpu-reset uses the vCPU index).
    pub apic_id: u32,
    /// Bootstrap processor.
    pub bsp: bool,
}

impl VcpuIdentity {
    /// vCPU `id`, the BSP when `id` is 0.
    pub fn new(id: u32) -> Self {
        VcpuIdentity {
            apic_id: id,
            bsp: id == 0,
        }
    }
}
