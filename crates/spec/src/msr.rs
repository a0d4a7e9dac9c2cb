//! The single MSRs, declared once.
//!
//! `msr_table!` below is the only list of the single MSRs in the crate: each row gives the
//! [`Msr`] variant, the architectural index, the lower-case SDM/APM name (the field is
//! `msr.<name>`) and where the value lives in [`crate::VcpuState`] (`stored <member>`: a `u64` member of
//! [`Msrs`] of that name; `segment_base <Seg>`: the hidden base of that segment register). From
//! it the macro generates the enum, [`Msr::ALL`], [`Msr::index`], [`Msr::name`], the members of
//! [`Msrs`] and the accessors [`crate::Field`] reads and writes through.
//!
//! Adding an MSR is one row here plus its RESET/INIT row, with its citation, in
//! `tables/msrs.rs` (the compiler points at that `match` until the row exists).
//!
//! The MSR arrays (MTRRs, machine-check banks, VMX capabilities, SGX hashes) have their own
//! [`crate::Field`] variants and are listed in [`FIXED_MTRR_MSRS`] and
//! [`VMX_CAPABILITY_MSR_NAMES`].

use crate::parts::{
    FIXED_MTRRS, MCE_BANKS, McBank, SGX_LE_HASH_MSRS, Seg, Segment, VARIABLE_MTRRS,
    VMX_CAPABILITY_MSRS,
};

/// Generates [`Msr`], its lookups, the single-MSR members of [`Msrs`] and the state accessors
/// from one table of rows `Variant = index, "name", stored member | segment_base Seg;`.
macro_rules! msr_table {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $index:literal, $name:literal, $kind:ident $slot:ident;
    )*) => {
        /// Single MSRs (the MTRR arrays and machine-check banks have their own variants).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Msr {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Msr {
            /// All single MSRs, in table order.
            pub const ALL: [Msr; [$(stringify!($variant)),*].len()] = [$(Msr::$variant),*];

            /// The architectural MSR index (Intel SDM Vol. 4, Table 2-2; AMD APM Vol. 2,
            /// Appendix A; VM_HSAVE_PA: AMD APM Vol. 2, §15.30.4).
            pub fn index(self) -> u32 {
                match self {
                    $(Msr::$variant => $index,)*
                }
            }

            /// The SDM name, lower-case.
            pub fn name(self) -> &'static str {
                match self {
                    $(Msr::$variant => $name,)*
                }
            }
        }

        msr_table!(@struct [] $($kind $slot ($($doc)*);)*);

        pub(crate) fn msr_ref(msrs: &Msrs, segments: &[Segment; 8], m: Msr) -> u64 {
            match m {
                $(Msr::$variant => *msr_table!(@slot msrs, segments, $kind $slot,),)*
            }
        }

        pub(crate) fn msr_mut<'a>(
            msrs: &'a mut Msrs,
            segments: &'a mut [Segment; 8],
            m: Msr,
        ) -> &'a mut u64 {
            match m {
                $(Msr::$variant => msr_table!(@slot msrs, segments, $kind $slot, mut),)*
            }
        }
    };

    (@slot $m:ident, $g:ident, stored $member:ident, $($mu:tt)?) => { &$($mu)? $m.$member };
    (@slot $m:ident, $g:ident, segment_base $seg:ident, $($mu:tt)?) => {
        &$($mu)? $g[Seg::$seg as usize].base
    };

    // The struct collects the `stored` rows, in table order, then the MSR arrays.
    (@struct [$($acc:tt)*]) => {
        /// The model-specific registers that RESET or INIT touch or keep.
        ///
        /// IA32_FS_BASE and IA32_GS_BASE are not stored here: they are the hidden bases of FS
        /// and GS (Intel SDM Vol. 3A, §3.4.4), and [`crate::Field`] maps them onto
        /// [`crate::VcpuState::segments`]. The single members are generated from the MSR table (see
        /// [`Msr`]); each is the MSR of the same name.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        pub struct Msrs {
            $($acc)*
            /// Fixed-range MTRRs, in [`FIXED_MTRR_MSRS`] order.
            pub mtrr_fixed: [u64; FIXED_MTRRS],
            /// IA32_MTRR_PHYSBASE0–7.
            pub mtrr_phys_base: [u64; VARIABLE_MTRRS],
            /// IA32_MTRR_PHYSMASK0–7.
            pub mtrr_phys_mask: [u64; VARIABLE_MTRRS],
            /// Machine-check banks 0–9.
            pub mc_banks: [McBank; MCE_BANKS],
            /// IA32_VMX_BASIC … IA32_VMX_VMFUNC, in index order (480H–491H).
            pub vmx_capabilities: [u64; VMX_CAPABILITY_MSRS],
            /// IA32_SGXLEPUBKEYHASH0–3: the SHA-256 digest of the launch enclave's signing key.
            pub sgx_le_pubkey_hash: [u64; SGX_LE_HASH_MSRS],
        }
    };
    (@struct [$($acc:tt)*] stored $member:ident ($($doc:literal)*); $($rest:tt)*) => {
        msr_table!(@struct [$($acc)* $(#[doc = $doc])* pub $member: u64,] $($rest)*);
    };
    (@struct [$($acc:tt)*] segment_base $seg:ident ($($doc:literal)*); $($rest:tt)*) => {
        msr_table!(@struct [$($acc)*] $($rest)*);
    };
}

msr_table! {
    /// IA32_APIC_BASE.
    ApicBase = 0x1b, "ia32_apic_base", stored apic_base;
    /// IA32_TIME_STAMP_COUNTER.
    Tsc = 0x10, "ia32_tsc", stored tsc;
    /// IA32_TSC_ADJUST.
    TscAdjust = 0x3b, "ia32_tsc_adjust", stored tsc_adjust;
    /// IA32_TSC_AUX.
    TscAux = 0xc000_0103, "ia32_tsc_aux", stored tsc_aux;
    /// IA32_TSC_DEADLINE.
    TscDeadline = 0x6e0, "ia32_tsc_deadline", stored tsc_deadline;
    /// IA32_PAT.
    Pat = 0x277, "ia32_pat", stored pat;
    /// IA32_MTRRCAP.
    MtrrCap = 0xfe, "ia32_mtrrcap", stored mtrr_cap;
    /// IA32_MTRR_DEF_TYPE.
    MtrrDefType = 0x2ff, "ia32_mtrr_def_type", stored mtrr_def_type;
    /// IA32_MISC_ENABLE.
    MiscEnable = 0x1a0, "ia32_misc_enable", stored misc_enable;
    /// IA32_SYSENTER_CS.
    SysenterCs = 0x174, "ia32_sysenter_cs", stored sysenter_cs;
    /// IA32_SYSENTER_ESP.
    SysenterEsp = 0x175, "ia32_sysenter_esp", stored sysenter_esp;
    /// IA32_SYSENTER_EIP.
    SysenterEip = 0x176, "ia32_sysenter_eip", stored sysenter_eip;
    /// IA32_STAR.
    Star = 0xc000_0081, "ia32_star", stored star;
    /// IA32_LSTAR.
    Lstar = 0xc000_0082, "ia32_lstar", stored lstar;
    /// IA32_CSTAR.
    Cstar = 0xc000_0083, "ia32_cstar", stored cstar;
    /// IA32_FMASK (SFMASK).
    Fmask = 0xc000_0084, "ia32_fmask", stored sfmask;
    /// IA32_FS_BASE: the hidden base of FS (Intel SDM Vol. 3A, §3.4.4).
    FsBase = 0xc000_0100, "ia32_fs_base", segment_base Fs;
    /// IA32_GS_BASE: the hidden base of GS (Intel SDM Vol. 3A, §3.4.4).
    GsBase = 0xc000_0101, "ia32_gs_base", segment_base Gs;
    /// IA32_KERNEL_GS_BASE.
    KernelGsBase = 0xc000_0102, "ia32_kernel_gs_base", stored kernel_gs_base;
    /// IA32_SPEC_CTRL.
    SpecCtrl = 0x48, "ia32_spec_ctrl", stored spec_ctrl;
    /// IA32_DEBUGCTL.
    DebugCtl = 0x1d9, "ia32_debugctl", stored debugctl;
    /// IA32_PERF_GLOBAL_CTRL.
    PerfGlobalCtrl = 0x38f, "ia32_perf_global_ctrl", stored perf_global_ctrl;
    /// IA32_FEATURE_CONTROL.
    FeatureControl = 0x3a, "ia32_feature_control", stored feature_control;
    /// IA32_SMBASE.
    Smbase = 0x9e, "ia32_smbase", stored smbase;
    /// IA32_XSS.
    Xss = 0xda0, "ia32_xss", stored xss;
    /// IA32_MCG_STATUS.
    McgStatus = 0x17a, "ia32_mcg_status", stored mcg_status;
    /// AMD's VM_HSAVE_PA (C001_0117H): where VMRUN saves host state (AMD APM Vol. 2, §15.30.4).
    VmHsavePa = 0xc001_0117, "vm_hsave_pa", stored vm_hsave_pa;
    /// MSR_MISC_FEATURES_ENABLES (140H): bit 0 enables CPUID faulting (Intel SDM Vol. 4,
    /// Table 2-2; KVM offers it to Intel and AMD vCPUs alike).
    MiscFeaturesEnables = 0x140, "msr_misc_features_enables", stored misc_features_enables;
    /// MSR_KVM_SYSTEM_TIME_NEW (4B564D01H): the kvmclock area (Linux
    /// Documentation/virt/kvm/x86/msr.rst; KVM_FEATURE_CLOCKSOURCE2). The older
    /// MSR_KVM_SYSTEM_TIME (12H) is another name for the same register in KVM.
    KvmSystemTime = 0x4b56_4d01, "msr_kvm_system_time_new", stored kvm_system_time;
    /// MSR_KVM_ASYNC_PF_EN (4B564D02H): asynchronous page faults (msr.rst; KVM_FEATURE_ASYNC_PF).
    KvmAsyncPfEn = 0x4b56_4d02, "msr_kvm_async_pf_en", stored kvm_async_pf_en;
    /// MSR_KVM_PV_EOI_EN (4B564D04H): paravirtual end of interrupt (msr.rst; KVM_FEATURE_PV_EOI).
    KvmPvEoiEn = 0x4b56_4d04, "msr_kvm_pv_eoi_en", stored kvm_pv_eoi_en;
    /// MSR_KVM_POLL_CONTROL (4B564D05H): bit 0 lets the host poll before it halts the vCPU
    /// (msr.rst; KVM_FEATURE_POLL_CONTROL).
    KvmPollControl = 0x4b56_4d05, "msr_kvm_poll_control", stored kvm_poll_control;
}

/// Fixed-range MTRR names and indices (Intel SDM Vol. 3A, §12.11.2.2, Table 12-9).
pub const FIXED_MTRR_MSRS: [(&str, u32); FIXED_MTRRS] = [
    ("ia32_mtrr_fix64k_00000", 0x250),
    ("ia32_mtrr_fix16k_80000", 0x258),
    ("ia32_mtrr_fix16k_a0000", 0x259),
    ("ia32_mtrr_fix4k_c0000", 0x268),
    ("ia32_mtrr_fix4k_c8000", 0x269),
    ("ia32_mtrr_fix4k_d0000", 0x26a),
    ("ia32_mtrr_fix4k_d8000", 0x26b),
    ("ia32_mtrr_fix4k_e0000", 0x26c),
    ("ia32_mtrr_fix4k_e8000", 0x26d),
    ("ia32_mtrr_fix4k_f0000", 0x26e),
    ("ia32_mtrr_fix4k_f8000", 0x26f),
];

/// The VMX capability MSRs IA32_VMX_BASIC through IA32_VMX_VMFUNC, names and indices (Intel SDM
/// Vol. 4, Table 2-2, 480H–491H; Vol. 3D, Appendix A).
pub const VMX_CAPABILITY_MSR_NAMES: [(&str, u32); VMX_CAPABILITY_MSRS] = [
    ("ia32_vmx_basic", 0x480),
    ("ia32_vmx_pinbased_ctls", 0x481),
    ("ia32_vmx_procbased_ctls", 0x482),
    ("ia32_vmx_exit_ctls", 0x483),
    ("ia32_vmx_entry_ctls", 0x484),
    ("ia32_vmx_misc", 0x485),
    ("ia32_vmx_cr0_fixed0", 0x486),
    ("ia32_vmx_cr0_fixed1", 0x487),
    ("ia32_vmx_cr4_fixed0", 0x488),
    ("ia32_vmx_cr4_fixed1", 0x489),
    ("ia32_vmx_vmcs_enum", 0x48a),
    ("ia32_vmx_procbased_ctls2", 0x48b),
    ("ia32_vmx_ept_vpid_cap", 0x48c),
    ("ia32_vmx_true_pinbased_ctls", 0x48d),
    ("ia32_vmx_true_procbased_ctls", 0x48e),
    ("ia32_vmx_true_exit_ctls", 0x48f),
    ("ia32_vmx_true_entry_ctls", 0x490),
    ("ia32_vmx_vmfunc", 0x491),
];

/// Index of IA32_SGXLEPUBKEYHASH0; HASH1–3 follow (Intel SDM Vol. 4, Table 2-2, 8CH–8FH).
pub const SGX_LE_HASH0_INDEX: u32 = 0x8c;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_and_names_are_unique() {
        for (i, a) in Msr::ALL.iter().enumerate() {
            for b in &Msr::ALL[i + 1..] {
                assert_ne!(a.index(), b.index(), "{a:?} and {b:?} share an index");
                assert_ne!(a.name(), b.name(), "{a:?} and {b:?} share a name");
            }
        }
    }

    #[test]
    fn all_is_in_declaration_order() {
        for (i, m) in Msr::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
        }
    }

    #[test]
    fn fs_and_gs_base_are_the_segment_bases() {
        let mut msrs = Msrs::default();
        let mut segments = [Segment::default(); 8];
        *msr_mut(&mut msrs, &mut segments, Msr::FsBase) = 0x1234;
        *msr_mut(&mut msrs, &mut segments, Msr::GsBase) = 0x5678;
        assert_eq!(segments[Seg::Fs as usize].base, 0x1234);
        assert_eq!(segments[Seg::Gs as usize].base, 0x5678);
        assert_eq!(msr_ref(&msrs, &segments, Msr::FsBase), 0x1234);
    }
}
