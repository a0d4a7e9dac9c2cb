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
    /// MSR_KVM_WALL_CLOCK (11H): KVM's older name of its VM-wide wall-clock request (msr.rst; KVM_FEATURE_CLOCKSOURCE).
    KvmWallClock = 0x11, "msr_kvm_wall_clock", stored kvm_wall_clock;
    /// MSR_KVM_SYSTEM_TIME (12H): KVM's older name of the kvmclock area register (msr.rst; KVM_FEATURE_CLOCKSOURCE).
    KvmSystemTimeOld = 0x12, "msr_kvm_system_time", stored kvm_system_time_old;
    /// MSR_KVM_WALL_CLOCK_NEW (4B564D00H): the VM-wide wall-clock request (msr.rst; KVM_FEATURE_CLOCKSOURCE2).
    KvmWallClockNew = 0x4b56_4d00, "msr_kvm_wall_clock_new", stored kvm_wall_clock_new;
    /// MSR_KVM_STEAL_TIME (4B564D03H): the steal-time area (msr.rst; KVM_FEATURE_STEAL_TIME).
    KvmStealTime = 0x4b56_4d03, "msr_kvm_steal_time", stored kvm_steal_time;
    /// MSR_KVM_ASYNC_PF_INT (4B564D06H): the vector of the page-ready interrupt (msr.rst; KVM_FEATURE_ASYNC_PF_INT).
    KvmAsyncPfInt = 0x4b56_4d06, "msr_kvm_async_pf_int", stored kvm_async_pf_int;
    /// MSR_KVM_ASYNC_PF_ACK (4B564D07H): page-ready acknowledgement, reads 0 (msr.rst; KVM_FEATURE_ASYNC_PF_INT).
    KvmAsyncPfAck = 0x4b56_4d07, "msr_kvm_async_pf_ack", stored kvm_async_pf_ack;
    /// HV_X64_MSR_HYPERCALL (40000001H): the hypercall page (partition-wide). Hyper-V TLFS. Moved before
    /// GUEST_OS_ID: KVM ignores a write of it while GUEST_OS_ID is 0 (kvm_hv_set_msr_pw()), so a
    /// RESET clears it first.
    HvHypercall = 0x4000_0001, "hv_x64_msr_hypercall", stored msr_hypercall;
    /// HV_X64_MSR_GUEST_OS_ID (40000000H): the guest OS identity (partition-wide). Hyper-V TLFS.
    HvGuestOsId = 0x4000_0000, "hv_x64_msr_guest_os_id", stored msr_guest_os_id;
    /// HV_X64_MSR_REFERENCE_TSC (40000021H): the reference TSC page (partition-wide). Hyper-V TLFS.
    HvReferenceTsc = 0x4000_0021, "hv_x64_msr_reference_tsc", stored msr_reference_tsc;
    /// HV_X64_MSR_VP_ASSIST_PAGE (40000073H): the VP assist page. Hyper-V TLFS.
    HvVpAssistPage = 0x4000_0073, "hv_x64_msr_vp_assist_page", stored msr_vp_assist_page;
    /// HV_X64_MSR_SCONTROL (40000080H): SynIC control. Hyper-V TLFS.
    HvScontrol = 0x4000_0080, "hv_x64_msr_scontrol", stored msr_scontrol;
    /// HV_X64_MSR_SIEFP (40000082H): the SynIC event flags page. Hyper-V TLFS.
    HvSiefp = 0x4000_0082, "hv_x64_msr_siefp", stored msr_siefp;
    /// HV_X64_MSR_SIMP (40000083H): the SynIC message page. Hyper-V TLFS.
    HvSimp = 0x4000_0083, "hv_x64_msr_simp", stored msr_simp;
    /// HV_X64_MSR_SINT0 (40000090H): synthetic interrupt source 0 (Hyper-V TLFS).
    HvSint0 = 0x4000_0090, "hv_x64_msr_sint0", stored hv_sint0;
    /// HV_X64_MSR_SINT1 (40000091H): synthetic interrupt source 1 (Hyper-V TLFS).
    HvSint1 = 0x4000_0091, "hv_x64_msr_sint1", stored hv_sint1;
    /// HV_X64_MSR_SINT2 (40000092H): synthetic interrupt source 2 (Hyper-V TLFS).
    HvSint2 = 0x4000_0092, "hv_x64_msr_sint2", stored hv_sint2;
    /// HV_X64_MSR_SINT3 (40000093H): synthetic interrupt source 3 (Hyper-V TLFS).
    HvSint3 = 0x4000_0093, "hv_x64_msr_sint3", stored hv_sint3;
    /// HV_X64_MSR_SINT4 (40000094H): synthetic interrupt source 4 (Hyper-V TLFS).
    HvSint4 = 0x4000_0094, "hv_x64_msr_sint4", stored hv_sint4;
    /// HV_X64_MSR_SINT5 (40000095H): synthetic interrupt source 5 (Hyper-V TLFS).
    HvSint5 = 0x4000_0095, "hv_x64_msr_sint5", stored hv_sint5;
    /// HV_X64_MSR_SINT6 (40000096H): synthetic interrupt source 6 (Hyper-V TLFS).
    HvSint6 = 0x4000_0096, "hv_x64_msr_sint6", stored hv_sint6;
    /// HV_X64_MSR_SINT7 (40000097H): synthetic interrupt source 7 (Hyper-V TLFS).
    HvSint7 = 0x4000_0097, "hv_x64_msr_sint7", stored hv_sint7;
    /// HV_X64_MSR_SINT8 (40000098H): synthetic interrupt source 8 (Hyper-V TLFS).
    HvSint8 = 0x4000_0098, "hv_x64_msr_sint8", stored hv_sint8;
    /// HV_X64_MSR_SINT9 (40000099H): synthetic interrupt source 9 (Hyper-V TLFS).
    HvSint9 = 0x4000_0099, "hv_x64_msr_sint9", stored hv_sint9;
    /// HV_X64_MSR_SINT10 (4000009AH): synthetic interrupt source 10 (Hyper-V TLFS).
    HvSint10 = 0x4000_009a, "hv_x64_msr_sint10", stored hv_sint10;
    /// HV_X64_MSR_SINT11 (4000009BH): synthetic interrupt source 11 (Hyper-V TLFS).
    HvSint11 = 0x4000_009b, "hv_x64_msr_sint11", stored hv_sint11;
    /// HV_X64_MSR_SINT12 (4000009CH): synthetic interrupt source 12 (Hyper-V TLFS).
    HvSint12 = 0x4000_009c, "hv_x64_msr_sint12", stored hv_sint12;
    /// HV_X64_MSR_SINT13 (4000009DH): synthetic interrupt source 13 (Hyper-V TLFS).
    HvSint13 = 0x4000_009d, "hv_x64_msr_sint13", stored hv_sint13;
    /// HV_X64_MSR_SINT14 (4000009EH): synthetic interrupt source 14 (Hyper-V TLFS).
    HvSint14 = 0x4000_009e, "hv_x64_msr_sint14", stored hv_sint14;
    /// HV_X64_MSR_SINT15 (4000009FH): synthetic interrupt source 15 (Hyper-V TLFS).
    HvSint15 = 0x4000_009f, "hv_x64_msr_sint15", stored hv_sint15;
    /// HV_X64_MSR_STIMER0_CONFIG (400000B0H): synthetic timer 0 configuration (Hyper-V TLFS).
    HvStimer0Config = 0x4000_00b0, "hv_x64_msr_stimer0_config", stored hv_stimer0_config;
    /// HV_X64_MSR_STIMER0_COUNT (400000B1H): synthetic timer 0 expiration time (Hyper-V TLFS).
    HvStimer0Count = 0x4000_00b1, "hv_x64_msr_stimer0_count", stored hv_stimer0_count;
    /// HV_X64_MSR_STIMER1_CONFIG (400000B2H): synthetic timer 1 configuration (Hyper-V TLFS).
    HvStimer1Config = 0x4000_00b2, "hv_x64_msr_stimer1_config", stored hv_stimer1_config;
    /// HV_X64_MSR_STIMER1_COUNT (400000B3H): synthetic timer 1 expiration time (Hyper-V TLFS).
    HvStimer1Count = 0x4000_00b3, "hv_x64_msr_stimer1_count", stored hv_stimer1_count;
    /// HV_X64_MSR_STIMER2_CONFIG (400000B4H): synthetic timer 2 configuration (Hyper-V TLFS).
    HvStimer2Config = 0x4000_00b4, "hv_x64_msr_stimer2_config", stored hv_stimer2_config;
    /// HV_X64_MSR_STIMER2_COUNT (400000B5H): synthetic timer 2 expiration time (Hyper-V TLFS).
    HvStimer2Count = 0x4000_00b5, "hv_x64_msr_stimer2_count", stored hv_stimer2_count;
    /// HV_X64_MSR_STIMER3_CONFIG (400000B6H): synthetic timer 3 configuration (Hyper-V TLFS).
    HvStimer3Config = 0x4000_00b6, "hv_x64_msr_stimer3_config", stored hv_stimer3_config;
    /// HV_X64_MSR_STIMER3_COUNT (400000B7H): synthetic timer 3 expiration time (Hyper-V TLFS).
    HvStimer3Count = 0x4000_00b7, "hv_x64_msr_stimer3_count", stored hv_stimer3_count;
    /// HV_X64_MSR_CRASH_P0 (40000100H): guest crash parameter 0 (partition-wide; Hyper-V TLFS).
    HvCrashP0 = 0x4000_0100, "hv_x64_msr_crash_p0", stored hv_crash_p0;
    /// HV_X64_MSR_CRASH_P1 (40000101H): guest crash parameter 1 (partition-wide; Hyper-V TLFS).
    HvCrashP1 = 0x4000_0101, "hv_x64_msr_crash_p1", stored hv_crash_p1;
    /// HV_X64_MSR_CRASH_P2 (40000102H): guest crash parameter 2 (partition-wide; Hyper-V TLFS).
    HvCrashP2 = 0x4000_0102, "hv_x64_msr_crash_p2", stored hv_crash_p2;
    /// HV_X64_MSR_CRASH_P3 (40000103H): guest crash parameter 3 (partition-wide; Hyper-V TLFS).
    HvCrashP3 = 0x4000_0103, "hv_x64_msr_crash_p3", stored hv_crash_p3;
    /// HV_X64_MSR_CRASH_P4 (40000104H): guest crash parameter 4 (partition-wide; Hyper-V TLFS).
    HvCrashP4 = 0x4000_0104, "hv_x64_msr_crash_p4", stored hv_crash_p4;
    /// HV_X64_MSR_REENLIGHTENMENT_CONTROL (40000106H): the guest's reenlightenment vector and
    /// enable (partition-wide; Hyper-V TLFS §12.12, KVM hyperv.c).
    HvReenlightenmentControl = 0x4000_0106, "hv_x64_msr_reenlightenment_control", stored hv_reenlightenment_control;
    /// HV_X64_MSR_TSC_EMULATION_CONTROL (40000107H) (partition-wide; Hyper-V TLFS §12.12).
    HvTscEmulationControl = 0x4000_0107, "hv_x64_msr_tsc_emulation_control", stored hv_tsc_emulation_control;
    /// HV_X64_MSR_TSC_EMULATION_STATUS (40000108H) (partition-wide; Hyper-V TLFS §12.12).
    HvTscEmulationStatus = 0x4000_0108, "hv_x64_msr_tsc_emulation_status", stored hv_tsc_emulation_status;
    /// HV_X64_MSR_TSC_INVARIANT_CONTROL (40000118H): the guest's opt-in to the invariant TSC
    /// (Hyper-V TLFS; KVM hyperv.c).
    HvTscInvariantControl = 0x4000_0118, "hv_x64_msr_tsc_invariant_control", stored hv_tsc_invariant_control;
    /// HV_X64_MSR_SYNDBG_CONTROL (400000F1H): the synthetic debugger's control (KVM hyperv.c, syndbg_set_msr()).
    HvSyndbgControl = 0x4000_00f1, "hv_x64_msr_syndbg_control", stored hv_syndbg_control;
    /// HV_X64_MSR_SYNDBG_STATUS (400000F2H): the synthetic debugger's status.
    HvSyndbgStatus = 0x4000_00f2, "hv_x64_msr_syndbg_status", stored hv_syndbg_status;
    /// HV_X64_MSR_SYNDBG_SEND_BUFFER (400000F3H): the guest page the synthetic debugger sends from.
    HvSyndbgSendBuffer = 0x4000_00f3, "hv_x64_msr_syndbg_send_buffer", stored hv_syndbg_send_buffer;
    /// HV_X64_MSR_SYNDBG_RECV_BUFFER (400000F4H): the guest page the synthetic debugger receives into.
    HvSyndbgRecvBuffer = 0x4000_00f4, "hv_x64_msr_syndbg_recv_buffer", stored hv_syndbg_recv_buffer;
    /// HV_X64_MSR_SYNDBG_PENDING_BUFFER (400000F5H): the synthetic debugger's pending page.
    HvSyndbgPendingBuffer = 0x4000_00f5, "hv_x64_msr_syndbg_pending_buffer", stored hv_syndbg_pending_buffer;
    /// HV_X64_MSR_SYNDBG_OPTIONS (400000FFH): the guest's synthetic-debugger options.
    HvSyndbgOptions = 0x4000_00ff, "hv_x64_msr_syndbg_options", stored hv_syndbg_options;
    /// IA32_PMC0 (C1H): general-purpose performance counter 0 (SDM Vol. 4, Table 2-2).
    Pmc0 = 0xc1, "ia32_pmc0", stored pmc0;
    /// IA32_PMC1 (C2H): general-purpose performance counter 1 (SDM Vol. 4, Table 2-2).
    Pmc1 = 0xc2, "ia32_pmc1", stored pmc1;
    /// IA32_PMC2 (C3H): general-purpose performance counter 2 (SDM Vol. 4, Table 2-2).
    Pmc2 = 0xc3, "ia32_pmc2", stored pmc2;
    /// IA32_PMC3 (C4H): general-purpose performance counter 3 (SDM Vol. 4, Table 2-2).
    Pmc3 = 0xc4, "ia32_pmc3", stored pmc3;
    /// IA32_PMC4 (C5H): general-purpose performance counter 4 (SDM Vol. 4, Table 2-2).
    Pmc4 = 0xc5, "ia32_pmc4", stored pmc4;
    /// IA32_PMC5 (C6H): general-purpose performance counter 5 (SDM Vol. 4, Table 2-2).
    Pmc5 = 0xc6, "ia32_pmc5", stored pmc5;
    /// IA32_PMC6 (C7H): general-purpose performance counter 6 (SDM Vol. 4, Table 2-2).
    Pmc6 = 0xc7, "ia32_pmc6", stored pmc6;
    /// IA32_PMC7 (C8H): general-purpose performance counter 7 (SDM Vol. 4, Table 2-2).
    Pmc7 = 0xc8, "ia32_pmc7", stored pmc7;
    /// IA32_PERFEVTSEL0 (186H): event select of counter 0 (SDM Vol. 4, Table 2-2).
    PerfEvtSel0 = 0x186, "ia32_perfevtsel0", stored perfevtsel0;
    /// IA32_PERFEVTSEL1 (187H): event select of counter 1 (SDM Vol. 4, Table 2-2).
    PerfEvtSel1 = 0x187, "ia32_perfevtsel1", stored perfevtsel1;
    /// IA32_PERFEVTSEL2 (188H): event select of counter 2 (SDM Vol. 4, Table 2-2).
    PerfEvtSel2 = 0x188, "ia32_perfevtsel2", stored perfevtsel2;
    /// IA32_PERFEVTSEL3 (189H): event select of counter 3 (SDM Vol. 4, Table 2-2).
    PerfEvtSel3 = 0x189, "ia32_perfevtsel3", stored perfevtsel3;
    /// IA32_PERFEVTSEL4 (18AH): event select of counter 4 (SDM Vol. 4, Table 2-2).
    PerfEvtSel4 = 0x18a, "ia32_perfevtsel4", stored perfevtsel4;
    /// IA32_PERFEVTSEL5 (18BH): event select of counter 5 (SDM Vol. 4, Table 2-2).
    PerfEvtSel5 = 0x18b, "ia32_perfevtsel5", stored perfevtsel5;
    /// IA32_PERFEVTSEL6 (18CH): event select of counter 6 (SDM Vol. 4, Table 2-2).
    PerfEvtSel6 = 0x18c, "ia32_perfevtsel6", stored perfevtsel6;
    /// IA32_PERFEVTSEL7 (18DH): event select of counter 7 (SDM Vol. 4, Table 2-2).
    PerfEvtSel7 = 0x18d, "ia32_perfevtsel7", stored perfevtsel7;
    /// IA32_FIXED_CTR0 (309H): fixed-function performance counter 0 (SDM Vol. 4, Table 2-2).
    FixedCtr0 = 0x309, "ia32_fixed_ctr0", stored fixed_ctr0;
    /// IA32_FIXED_CTR1 (30AH): fixed-function performance counter 1 (SDM Vol. 4, Table 2-2).
    FixedCtr1 = 0x30a, "ia32_fixed_ctr1", stored fixed_ctr1;
    /// IA32_FIXED_CTR2 (30BH): fixed-function performance counter 2 (SDM Vol. 4, Table 2-2).
    FixedCtr2 = 0x30b, "ia32_fixed_ctr2", stored fixed_ctr2;
    /// IA32_FIXED_CTR3 (30CH): fixed-function performance counter 3 (SDM Vol. 4, Table 2-2).
    FixedCtr3 = 0x30c, "ia32_fixed_ctr3", stored fixed_ctr3;
    /// IA32_FIXED_CTR_CTRL (38DH) (SDM Vol. 4, Table 2-2).
    FixedCtrCtrl = 0x38d, "ia32_fixed_ctr_ctrl", stored fixed_ctr_ctrl;
    /// IA32_PERF_GLOBAL_STATUS (38EH) (SDM Vol. 4, Table 2-2).
    PerfGlobalStatus = 0x38e, "ia32_perf_global_status", stored perf_global_status;
    /// IA32_PERF_GLOBAL_OVF_CTRL (390H) (SDM Vol. 4, Table 2-2).
    PerfGlobalOvfCtrl = 0x390, "ia32_perf_global_ovf_ctrl", stored perf_global_ovf_ctrl;
    /// IA32_PEBS_ENABLE (3F1H) (SDM Vol. 4, Table 2-2).
    PebsEnable = 0x3f1, "ia32_pebs_enable", stored pebs_enable;
    /// IA32_DS_AREA (600H): the debug store save area (SDM Vol. 4, Table 2-2).
    DsArea = 0x600, "ia32_ds_area", stored ds_area;
    /// AMD PerfEvtSel0 (Core::X86::Msr::PERF_CTL0, C0010200H): event select of core counter 0 (APM Vol. 2, §13.2.1).
    AmdPerfCtl0 = 0xc001_0200, "perf_ctl0", stored amd_perf_ctl0;
    /// AMD PerfCtr0 (Core::X86::Msr::PERF_CTR0, C0010201H): core performance counter 0 (APM Vol. 2, §13.2.1).
    AmdPerfCtr0 = 0xc001_0201, "perf_ctr0", stored amd_perf_ctr0;
    /// AMD PerfEvtSel1 (Core::X86::Msr::PERF_CTL1, C0010202H): event select of core counter 1 (APM Vol. 2, §13.2.1).
    AmdPerfCtl1 = 0xc001_0202, "perf_ctl1", stored amd_perf_ctl1;
    /// AMD PerfCtr1 (Core::X86::Msr::PERF_CTR1, C0010203H): core performance counter 1 (APM Vol. 2, §13.2.1).
    AmdPerfCtr1 = 0xc001_0203, "perf_ctr1", stored amd_perf_ctr1;
    /// AMD PerfEvtSel2 (Core::X86::Msr::PERF_CTL2, C0010204H): event select of core counter 2 (APM Vol. 2, §13.2.1).
    AmdPerfCtl2 = 0xc001_0204, "perf_ctl2", stored amd_perf_ctl2;
    /// AMD PerfCtr2 (Core::X86::Msr::PERF_CTR2, C0010205H): core performance counter 2 (APM Vol. 2, §13.2.1).
    AmdPerfCtr2 = 0xc001_0205, "perf_ctr2", stored amd_perf_ctr2;
    /// AMD PerfEvtSel3 (Core::X86::Msr::PERF_CTL3, C0010206H): event select of core counter 3 (APM Vol. 2, §13.2.1).
    AmdPerfCtl3 = 0xc001_0206, "perf_ctl3", stored amd_perf_ctl3;
    /// AMD PerfCtr3 (Core::X86::Msr::PERF_CTR3, C0010207H): core performance counter 3 (APM Vol. 2, §13.2.1).
    AmdPerfCtr3 = 0xc001_0207, "perf_ctr3", stored amd_perf_ctr3;
    /// AMD PerfEvtSel4 (Core::X86::Msr::PERF_CTL4, C0010208H): event select of core counter 4 (APM Vol. 2, §13.2.1).
    AmdPerfCtl4 = 0xc001_0208, "perf_ctl4", stored amd_perf_ctl4;
    /// AMD PerfCtr4 (Core::X86::Msr::PERF_CTR4, C0010209H): core performance counter 4 (APM Vol. 2, §13.2.1).
    AmdPerfCtr4 = 0xc001_0209, "perf_ctr4", stored amd_perf_ctr4;
    /// AMD PerfEvtSel5 (Core::X86::Msr::PERF_CTL5, C001020AH): event select of core counter 5 (APM Vol. 2, §13.2.1).
    AmdPerfCtl5 = 0xc001_020a, "perf_ctl5", stored amd_perf_ctl5;
    /// AMD PerfCtr5 (Core::X86::Msr::PERF_CTR5, C001020BH): core performance counter 5 (APM Vol. 2, §13.2.1).
    AmdPerfCtr5 = 0xc001_020b, "perf_ctr5", stored amd_perf_ctr5;
    /// AMD PerfCntrGlobalStatus (C0000300H) (APM Vol. 2, §13.2.2, PerfMonV2).
    PerfCntrGlobalStatus = 0xc000_0300, "perf_cntr_global_status", stored perf_cntr_global_status;
    /// AMD PerfCntrGlobalCtl (C0000301H) (APM Vol. 2, §13.2.2, PerfMonV2).
    PerfCntrGlobalCtl = 0xc000_0301, "perf_cntr_global_ctl", stored perf_cntr_global_ctl;
    /// IA32_XFD (1C4H): extended feature disable (SDM Vol. 1, §13.14).
    Xfd = 0x1c4, "ia32_xfd", stored xfd;
    /// IA32_XFD_ERR (1C5H): the XFD event error code (SDM Vol. 1, §13.14).
    XfdErr = 0x1c5, "ia32_xfd_err", stored xfd_err;
    /// IA32_U_CET (6A0H): user-mode CET configuration (SDM Vol. 1, Chapter 17).
    UCet = 0x6a0, "ia32_u_cet", stored u_cet;
    /// IA32_S_CET (6A2H): supervisor-mode CET configuration (SDM Vol. 1, Chapter 17).
    SCet = 0x6a2, "ia32_s_cet", stored s_cet;
    /// IA32_PL0_SSP (6A4H): the privilege-level-0 shadow-stack pointer (SDM Vol. 1, Chapter 17).
    Pl0Ssp = 0x6a4, "ia32_pl0_ssp", stored pl0_ssp;
    /// IA32_PL1_SSP (6A5H): the privilege-level-1 shadow-stack pointer (SDM Vol. 1, Chapter 17).
    Pl1Ssp = 0x6a5, "ia32_pl1_ssp", stored pl1_ssp;
    /// IA32_PL2_SSP (6A6H): the privilege-level-2 shadow-stack pointer (SDM Vol. 1, Chapter 17).
    Pl2Ssp = 0x6a6, "ia32_pl2_ssp", stored pl2_ssp;
    /// IA32_PL3_SSP (6A7H): the privilege-level-3 shadow-stack pointer (SDM Vol. 1, Chapter 17).
    Pl3Ssp = 0x6a7, "ia32_pl3_ssp", stored pl3_ssp;
    /// IA32_INTERRUPT_SSP_TABLE_ADDR (6A8H) (SDM Vol. 1, Chapter 17).
    IntSspTab = 0x6a8, "ia32_interrupt_ssp_table_addr", stored int_ssp_tab;
    /// IA32_UMWAIT_CONTROL (E1H): UMWAIT/TPAUSE limits (SDM Vol. 4, Table 2-2).
    UmwaitControl = 0xe1, "ia32_umwait_control", stored umwait_control;
    /// IA32_TSX_CTRL (122H) (SDM Vol. 4, Table 2-2).
    TsxCtrl = 0x122, "ia32_tsx_ctrl", stored tsx_ctrl;
    /// IA32_BNDCFGS (D90H): supervisor MPX configuration (SDM Vol. 4, Table 2-2).
    Bndcfgs = 0xd90, "ia32_bndcfgs", stored bndcfgs;
    /// IA32_MCG_CTL (17BH): global machine-check enables (SDM Vol. 3B, §16.3.1.3).
    McgCtl = 0x17b, "ia32_mcg_ctl", stored mcg_ctl;
    /// IA32_MCG_EXT_CTL (4D0H): local machine-check enable (SDM Vol. 3B, §16.3.1.4).
    McgExtCtl = 0x4d0, "ia32_mcg_ext_ctl", stored mcg_ext_ctl;
    /// MSR_SMI_COUNT (34H): SMIs since RESET (SDM Vol. 4, Table 2-3 and later model tables).
    SmiCount = 0x34, "msr_smi_count", stored smi_count;
    /// AMD HWCR (C0010015H): hardware configuration (APM Vol. 2, Appendix A).
    Hwcr = 0xc001_0015, "hwcr", stored hwcr;
    /// AMD VM_CR (C0010114H): SVM lock and disable (APM Vol. 2, §15.30.1).
    VmCr = 0xc001_0114, "vm_cr", stored vm_cr;
    /// AMD TSC_RATIO (C0000104H): guest TSC frequency ratio, 8.32 fixed point (APM Vol. 2, §15.30.5).
    TscRatio = 0xc000_0104, "tsc_ratio", stored tsc_ratio;
    /// AMD VIRT_SPEC_CTRL (C001011FH): the virtual SSBD control (AMD, "Speculative Store Bypass Disable" white paper).
    VirtSpecCtrl = 0xc001_011f, "virt_spec_ctrl", stored virt_spec_ctrl;
    /// MSR_POWER_CTL (1FCH): power-management control, e.g. C1E enable (bit 1) (SDM Vol. 4,
    /// Table 2-20 and later model tables; KVM emulates it for every vCPU).
    PowerCtl = 0x1fc, "msr_power_ctl", stored power_ctl;
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
