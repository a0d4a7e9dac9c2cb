//! The pieces a vCPU state is made of (segments, the x87 unit, the local APIC, the machine-check
//! banks, ...) and the sizes of its arrays, apart from [`crate::VcpuState`] itself, so that the
//! MSR table ([`crate::Msr`]) can name them without an import cycle. See [`crate::state`] for
//! the layout.

/// Number of variable-range MTRR pairs modelled (IA32_MTRRCAP.VCNT as KVM and QEMU report it).
pub const VARIABLE_MTRRS: usize = 8;
/// Number of fixed-range MTRRs (Intel SDM Vol. 3A, §12.11.2.2; AMD APM Vol. 2, §7.7).
pub const FIXED_MTRRS: usize = 11;
/// Number of machine-check banks modelled (QEMU's default bank count).
pub const MCE_BANKS: usize = 10;
/// Number of general-purpose registers in 64-bit mode (APX's R16–R31 are not modelled).
pub const GPRS: usize = 16;
/// Number of VMX capability MSRs modelled: IA32_VMX_BASIC (480H) through IA32_VMX_VMFUNC (491H)
/// (Intel SDM Vol. 3D, Appendix A; Vol. 4, Table 2-2).
pub const VMX_CAPABILITY_MSRS: usize = 18;
/// Number of SGX launch-enclave public-key-hash MSRs, IA32_SGXLEPUBKEYHASH0–3 (8CH–8FH).
pub const SGX_LE_HASH_MSRS: usize = 4;

/// Segment registers, in the VMX guest-state order (ES, CS, SS, DS, FS, GS, LDTR, TR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum Seg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
    Ldtr,
    Tr,
}

impl Seg {
    /// All eight.
    pub const ALL: [Seg; 8] = [
        Seg::Es,
        Seg::Cs,
        Seg::Ss,
        Seg::Ds,
        Seg::Fs,
        Seg::Gs,
        Seg::Ldtr,
        Seg::Tr,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        ["es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"][self as usize]
    }
}

/// One segment register: the visible selector and the hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Hidden base address.
    pub base: u64,
    /// Hidden limit, in bytes (already scaled by G).
    pub limit: u32,
    /// Hidden attributes in the VMX access-rights layout: type 3:0, S 4, DPL 6:5, P 7, AVL 12,
    /// L 13, D/B 14, G 15 (Intel SDM Vol. 3C, Table 25-2).
    pub attributes: u16,
}

/// A descriptor-table register (GDTR or IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit (16 bits architecturally).
    pub limit: u16,
}

/// x87 FPU state, plus MXCSR (both live in the XSAVE legacy region).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Fpu {
    /// Control word.
    pub fcw: u16,
    /// Status word (including TOP).
    pub fsw: u16,
    /// Full tag word, two bits per physical register (00 valid, 01 zero, 10 special, 11 empty).
    pub ftw: u16,
    /// Last instruction opcode (11 bits).
    pub fop: u16,
    /// Last instruction pointer (offset).
    pub fip: u64,
    /// Last data (operand) pointer (offset).
    pub fdp: u64,
    /// Last instruction pointer's code-segment selector.
    pub fcs: u16,
    /// Last data pointer's segment selector.
    pub fds: u16,
    /// ST0–ST7 (physical R0–R7 as stored by FXSAVE, in stack order), 80 bits each.
    pub st: [u128; 8],
    /// SSE control/status register.
    pub mxcsr: u32,
}

/// The vector registers that XSAVE components 1, 2, 5, 6 and 7 hold, and the AMX tile state of
/// components 17 and 18.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Vectors {
    /// XMM0–XMM15 (XSAVE component 1, SSE).
    pub xmm: [u128; 16],
    /// Bits 255:128 of YMM0–YMM15 (component 2, AVX).
    pub ymm_hi: [u128; 16],
    /// Bits 511:256 of ZMM0–ZMM15 as two 128-bit lanes (component 6, ZMM_Hi256).
    pub zmm_hi256: [[u128; 2]; 16],
    /// ZMM16–ZMM31 as four 128-bit lanes (component 7, Hi16_ZMM).
    pub hi16_zmm: [[u128; 4]; 16],
    /// Opmask registers k0–k7 (component 5).
    pub opmask: [u64; 8],
    /// XTILECFG (component 17, 64 bytes) as four 128-bit words: palette, start row, and each
    /// tile's bytes per row and rows (Intel SDM Vol. 2A, LDTILECFG, Table 3-10).
    pub xtilecfg: [u128; 4],
    /// XTILEDATA (component 18, 8192 bytes): TMM0–TMM7, 1 KiB each, in 128-bit words kept as
    /// sixteen 512-byte halves: word `w` (0–63) of tile `t` at `[2t + w / 32][w % 32]`.
    pub xtiledata: [[u128; 32]; 16],
}

/// Where word `w` (0–63) of tile `t` (0–7) lies in [`Vectors::xtiledata`].
pub const fn tile_word(t: u8, w: u8) -> (usize, usize) {
    (2 * (t as usize) + (w as usize) / 32, (w as usize) % 32)
}

/// One machine-check bank's MSRs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct McBank {
    /// IA32_MCi_CTL.
    pub ctl: u64,
    /// IA32_MCi_STATUS.
    pub status: u64,
    /// IA32_MCi_ADDR.
    pub addr: u64,
    /// IA32_MCi_MISC.
    pub misc: u64,
    /// IA32_MCi_CTL2 (280H + i): CMCI enable and threshold (SDM Vol. 3B, §16.3.2.5).
    pub ctl2: u64,
}

/// The local APIC's registers, xAPIC view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[allow(missing_docs)] // each member is the register of the same name (SDM Vol. 3A, Table 11-1)
pub struct Lapic {
    pub id: u32,
    pub version: u32,
    pub tpr: u32,
    pub apr: u32,
    pub ppr: u32,
    pub ldr: u32,
    pub dfr: u32,
    pub svr: u32,
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub irr: [u32; 8],
    pub esr: u32,
    /// Interrupt command register, both halves (ICR_HI in bits 63:32).
    pub icr: u64,
    pub lvt_timer: u32,
    pub lvt_thermal: u32,
    pub lvt_perf: u32,
    pub lvt_lint0: u32,
    pub lvt_lint1: u32,
    pub lvt_error: u32,
    pub lvt_cmci: u32,
    pub timer_initial: u32,
    pub timer_current: u32,
    pub timer_divide: u32,
}

/// Activity state, with the VMX guest activity-state encoding (Intel SDM Vol. 3C, §25.4.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[repr(u8)]
pub enum Activity {
    /// Executing instructions (KVM_MP_STATE_RUNNABLE).
    #[default]
    Active = 0,
    /// Halted by HLT.
    Hlt = 1,
    /// Shut down (triple fault).
    Shutdown = 2,
    /// Waiting for a startup IPI (KVM_MP_STATE_INIT_RECEIVED).
    WaitForSipi = 3,
    /// Not an architectural state: an AP the host has never started, which ignores a startup
    /// IPI until an INIT arrives (KVM_MP_STATE_UNINITIALIZED, KVM's state of an AP at creation
    /// with an in-kernel local APIC). After RESET an AP waits for a SIPI (SDM Vol. 3A §9.4.1,
    /// APM Vol. 2 §15.27.8), so a vCPU read in this state differs from the RESET state: a
    /// firmware that starts its APs with SIPIs alone would find them never running. Outside the
    /// VMX encoding (which has no such state); never the value of a spec row.
    Uninitialized = 4,
}

impl Activity {
    /// The activity state for an encoding, if it is one.
    pub fn from_code(code: u128) -> Option<Self> {
        match code {
            0 => Some(Self::Active),
            1 => Some(Self::Hlt),
            2 => Some(Self::Shutdown),
            3 => Some(Self::WaitForSipi),
            4 => Some(Self::Uninitialized),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Hlt => "hlt",
            Self::Shutdown => "shutdown",
            Self::WaitForSipi => "wait-for-sipi",
            Self::Uninitialized => "uninitialized",
        }
    }
}

/// Events pending or in flight, and event blocking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Events {
    /// An NMI is pending.
    pub nmi_pending: bool,
    /// NMIs are blocked (an NMI handler is running).
    pub nmi_masked: bool,
    /// An exception is pending or being injected.
    pub exception_pending: bool,
    /// An external interrupt is being injected.
    pub interrupt_pending: bool,
    /// An SMI is pending.
    pub smi_pending: bool,
    /// The vCPU is in system-management mode.
    pub smm: bool,
    /// Blocking by STI or MOV SS (the interrupt shadow).
    pub interrupt_shadow: bool,
}

/// Nested-virtualization state, at the level of detail the RESET/INIT tables and the INIT
/// blocking rules need.
///
/// "None" is all-ones for the pointers (KVM's `INVALID_GPA`; the SDM's value of the
/// current-VMCS pointer when there is no current VMCS), GIF set and the flags clear; see
/// [`crate::NestedReg::none`]. `Default` is all-zero, like the rest of [`crate::VcpuState`], and is not
/// "no nested state".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Nested {
    /// The vCPU is in VMX operation or SVM guest mode with state the hypervisor holds for it.
    pub present: bool,
    /// VMXON pointer (all-ones: not in VMX operation).
    pub vmxon_pointer: u64,
    /// Current-VMCS pointer (all-ones: no current VMCS).
    pub current_vmcs_pointer: u64,
    /// Enlightened-VMCS pointer (all-ones: none in use).
    pub evmcs_pointer: u64,
    /// VMX non-root operation or SVM guest mode.
    pub guest_mode: bool,
    /// SVM global interrupt flag.
    pub gif: bool,
    /// SVM guest mode with INIT intercepted by the guest's VMCB.
    pub intercept_init: bool,
}

impl Nested {
    /// No nested state: not in VMX operation, no current or enlightened VMCS, not in guest
    /// mode, GIF set.
    pub const NONE: Nested = Nested {
        present: false,
        vmxon_pointer: u64::MAX,
        current_vmcs_pointer: u64::MAX,
        evmcs_pointer: u64::MAX,
        guest_mode: false,
        gif: true,
        intercept_init: false,
    };

    /// In VMX operation (root or non-root).
    pub fn in_vmx_operation(&self) -> bool {
        self.vmxon_pointer != u64::MAX
    }
}
