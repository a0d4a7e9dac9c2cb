//! Per-field RESET and INIT values for both vendors, checked against numbers typed from the
//! documents.
//!
//! Every expected value below is a literal copied from the Intel SDM (325462-079US, March 2023
//! numbering) or the AMD64 APM Vol. 2 (24593); each group cites the table or section it comes
//! from. Nothing expected is computed by the code under test: the states come from
//! `expected_state` (with a fixed `CpuModel` and, for INIT, a hand-built earlier state in which
//! every field holds a distinctive non-reset value), and the rule kinds from `row`.

use vcpu_reset_spec::{
    Activity, Class, CpuModel, Derivation, DescriptorTable, Dt, Event, EventFlag, Events,
    FIXED_MTRRS, Field, Fpu, Gpr, Lapic, LapicBitmap, LapicReg, MCE_BANKS, McBank, Msr, Msrs,
    Nested, NestedReg, Rule, SGX_LE_HASH_MSRS, Seg, SegPart, Segment, Source, Transition,
    VARIABLE_MTRRS, VMX_CAPABILITY_MSRS, VcpuIdentity, VcpuState, Vectors, Vendor, X87,
    expected_state, row, sipi, table,
};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// An Intel model: family 6 model 9EH stepping 10 (CPUID.01H:EAX 000906EAH), four
/// general-purpose counters, an xAPIC with version 14H and six LVT entries, IA32_MTRRCAP 508H,
/// VMX with the capability MSRs below, and SGX launch control.
const INTEL: CpuModel = CpuModel {
    vendor: Vendor::Intel,
    signature: 0x0009_06ea,
    gp_counters: 4,
    apic_version: 0x0005_0014,
    mtrr_cap: 0x508,
    vmx_capabilities: INTEL_VMX,
    sgx_launch_control: true,
    mcg_cap: None,
    arch_capabilities: None,
};

/// The VMX capability MSRs of the Intel model, 480H–491H: a configuration typed here, distinct
/// in every MSR, so that each RESET value is seen to come from the model.
const INTEL_VMX: [u64; 18] = [
    0x00da_0400_0000_0004,
    0x0000_007f_0000_0016,
    0xfff9_fffe_0401_e172,
    0x01ff_ffff_0003_6dff,
    0x0003_ffff_0000_11ff,
    0x0000_0000_7004_c1e7,
    0x0000_0000_8000_0021,
    0x0000_0000_ffff_ffff,
    0x0000_0000_0000_2000,
    0x0000_0000_003f_67ff,
    0x0000_0000_0000_002e,
    0x0051_7fff_0000_0000,
    0x0000_0f01_0677_6141,
    0x0000_007f_0000_0016,
    0xfff9_fffe_0400_6172,
    0x01ff_ffff_0003_6dfb,
    0x0003_ffff_0000_11fb,
    0x0000_0000_0000_0001,
];

/// An AMD model: family 19H model 21H stepping 2 (CPUID.01H:EAX 00A20F12H), six counters, an
/// APIC version of the form 80??0010H (APM Table 16-2).
const AMD: CpuModel = CpuModel {
    vendor: Vendor::Amd,
    signature: 0x00a2_0f12,
    gp_counters: 6,
    apic_version: 0x8005_0010,
    mtrr_cap: 0x508,
    vmx_capabilities: [0; VMX_CAPABILITY_MSRS],
    sgx_launch_control: false,
    mcg_cap: None,
    arch_capabilities: None,
};

const MODELS: [CpuModel; 2] = [INTEL, AMD];

/// The bootstrap processor, APIC ID 0.
const BSP: VcpuIdentity = VcpuIdentity {
    apic_id: 0,
    bsp: true,
};

/// An application processor, APIC ID 3.
const AP: VcpuIdentity = VcpuIdentity {
    apic_id: 3,
    bsp: false,
};

const VCPUS: [VcpuIdentity; 2] = [BSP, AP];

/// A state as a running 64-bit OS might leave it: every field holds a value that no RESET or
/// INIT table gives it (checked by `dirty_prior_differs_from_reset_in_every_field`).
///
/// The `Msrs`, `Lapic` and `Events` literals end in `..Default::default()` so that a member
/// added from the spec's tables needs no edit here: [`fill_unnamed`] gives every single MSR,
/// LAPIC register and event flag the literal leaves at 0 a distinctive value.
// All members are named today, which is what `needless_update` flags.
#[allow(clippy::needless_update)]
fn dirty_prior() -> VcpuState {
    let seg = Segment {
        selector: 0x0010,
        base: 0xffff_8000_dead_0000,
        limit: 0xffff_ffff,
        attributes: 0xa09b,
    };
    let mut s = VcpuState {
        gprs: [0xd1d1_d1d1_0000_0001; 16],
        rip: 0xffff_ffff_8100_1234,
        rflags: 0x0000_0246,
        segments: [seg; 8],
        gdtr: DescriptorTable {
            base: 0xffff_fe00_0000_1000,
            limit: 0x007f,
        },
        idtr: DescriptorTable {
            base: 0xffff_fe00_0000_0000,
            limit: 0x0fff,
        },
        // PG | AM | WP | NE | ET | MP | PE; CD and NW clear.
        cr0: 0x8005_0033,
        cr2: 0x0000_7fff_0000_1000,
        cr3: 0x0000_0001_0000_0000,
        cr4: 0x0035_06f0,
        cr8: 0xf,
        // NXE | LMA | LME | SCE
        efer: 0x0d01,
        pdptrs: [0x1001; 4],
        dr: [0x1000, 0x2000, 0x3000, 0x4000],
        dr6: 0xffff_4ff0,
        dr7: 0x0000_0701,
        fpu: Fpu {
            fcw: 0x037f,
            fsw: 0x3800,
            ftw: 0x3fff,
            fop: 0x05d9,
            fip: 0x0040_1000,
            fdp: 0x0060_2000,
            fcs: 0x0033,
            fds: 0x002b,
            // +1.0 in double-extended format.
            st: [0x3fff_8000_0000_0000_0000; 8],
            mxcsr: 0x9fc0,
        },
        vectors: Vectors {
            xmm: [0x0123_4567_89ab_cdef_fedc_ba98_7654_3210; 16],
            ymm_hi: [0x1111_1111_1111_1111_1111_1111_1111_1111; 16],
            zmm_hi256: [[0x2222_2222_2222_2222_2222_2222_2222_2222; 2]; 16],
            hi16_zmm: [[0x3333_3333_3333_3333_3333_3333_3333_3333; 4]; 16],
            opmask: [0xffff_0000_ffff_0000; 8],
            // Palette 1 and some bytes-per-row and rows; every tile byte 0x44.
            xtilecfg: [1, 0x40, 0x40 << 64, 0x10],
            xtiledata: [[0x4444_4444_4444_4444_4444_4444_4444_4444; 32]; 16],
        },
        xcr0: 0xe7,
        pkru: 0x5555_5554,
        msrs: Msrs {
            // x2APIC mode, not the BSP.
            apic_base: 0xfee0_0c00,
            tsc: 0x0000_1234_5678_9abc,
            tsc_adjust: 0xffff_ffff_ffff_f000,
            tsc_aux: 0x7,
            tsc_deadline: 0x0000_0001_0000_0000,
            pat: 0x0007_0106_0007_0106,
            mtrr_cap: 0x0d0a,
            mtrr_def_type: 0x0c06,
            mtrr_fixed: [0x0606_0606_0606_0606; FIXED_MTRRS],
            mtrr_phys_base: [0xc000_0000; VARIABLE_MTRRS],
            mtrr_phys_mask: [0x000f_c000_0800; VARIABLE_MTRRS],
            misc_enable: 0x0085_0089,
            sysenter_cs: 0x10,
            sysenter_esp: 0xffff_fe00_0000_1000,
            sysenter_eip: 0xffff_ffff_81a0_0000,
            star: 0x0023_0010_0000_0000,
            lstar: 0xffff_ffff_81a0_0080,
            cstar: 0xffff_ffff_81a0_1000,
            sfmask: 0x0004_7700,
            kernel_gs_base: 0xffff_8880_7fc0_0000,
            spec_ctrl: 0x1,
            debugctl: 0x1,
            perf_global_ctrl: 0x0000_0007_0000_00ff,
            feature_control: 0x5,
            smbase: 0x7ff0_0000,
            xss: 0x100,
            mcg_status: 0x4,
            mc_banks: [McBank {
                ctl: 0x1f,
                status: 0x9c00_0000_0000_0011,
                addr: 0x1234_5000,
                misc: 0x86,
                ctl2: 0x4000_0001,
            }; MCE_BANKS],
            // A VMM narrowed every capability; a guest wrote its own launch-enclave key.
            vmx_capabilities: [0x0000_0001_0000_0000; VMX_CAPABILITY_MSRS],
            sgx_le_pubkey_hash: [0x1234_5678_9abc_def0; SGX_LE_HASH_MSRS],
            vm_hsave_pa: 0x0000_0000_7fff_e000,
            ..Msrs::default()
        },
        lapic: Lapic {
            id: 0x0700_0000,
            version: 0x0006_0015,
            tpr: 0x20,
            apr: 0x10,
            ppr: 0x20,
            ldr: 0x0100_0000,
            dfr: 0x0fff_ffff,
            svr: 0x01ff,
            isr: [0x0001_0000; 8],
            tmr: [0x0002_0000; 8],
            irr: [0x0004_0000; 8],
            esr: 0x40,
            icr: 0x0100_0000_0000_00fd,
            lvt_timer: 0x0002_00ec,
            lvt_thermal: 0x0000_00fa,
            lvt_perf: 0x0000_0400,
            lvt_lint0: 0x0000_0700,
            lvt_lint1: 0x0000_0400,
            lvt_error: 0x0000_00fe,
            lvt_cmci: 0x0000_00f9,
            timer_initial: 0x0010_0000,
            timer_current: 0x0008_0000,
            timer_divide: 0xb,
            ..Lapic::default()
        },
        activity: Activity::Hlt,
        events: Events {
            nmi_pending: true,
            nmi_masked: true,
            exception_pending: true,
            interrupt_pending: true,
            smi_pending: true,
            smm: true,
            interrupt_shadow: true,
            ..Events::default()
        },
        // In VMX non-root operation with an enlightened VMCS, GIF clear, INIT intercepted:
        // every part away from its RESET value.
        nested: Nested {
            present: true,
            vmxon_pointer: 0x0010_0000,
            current_vmcs_pointer: 0x0010_1000,
            evmcs_pointer: 0x0010_2000,
            guest_mode: true,
            gif: false,
            intercept_init: true,
        },
    };
    fill_unnamed(&mut s);
    s
}

/// Give each single MSR, LAPIC register and event flag that is 0 in `s` a value no table gives
/// it: a set flag, else `0xd1d1_0000` ORed with the MSR index or APIC offset and 1.
fn fill_unnamed(s: &mut VcpuState) {
    for f in Field::all() {
        let tag = match f {
            Field::Msr(m) => m.index(),
            Field::Lapic(r) => r.offset(),
            Field::Event(_) => 0,
            _ => continue,
        };
        if f.get(s) == 0 {
            f.set(s, (0xd1d1u128 << 16) | u128::from(tag) | 1);
        }
    }
}

fn reset(model: CpuModel, vcpu: VcpuIdentity) -> VcpuState {
    expected_state(&model, vcpu, Transition::Reset)
}

fn init(model: CpuModel, vcpu: VcpuIdentity, prior: &VcpuState) -> VcpuState {
    expected_state(&model, vcpu, Transition::Init(prior))
}

/// The four states under test for a model: RESET and INIT (from the dirty prior), BSP and AP.
fn states(model: CpuModel) -> Vec<(&'static str, VcpuIdentity, VcpuState)> {
    let prior = dirty_prior();
    let mut v = Vec::new();
    for vcpu in VCPUS {
        v.push(("reset", vcpu, reset(model, vcpu)));
        v.push(("init", vcpu, init(model, vcpu, &prior)));
    }
    v
}

/// Read a field by its dotted name (which must exist).
fn val(s: &VcpuState, name: &str) -> u128 {
    Field::from_name(name)
        .unwrap_or_else(|| panic!("no field named {name}"))
        .get(s)
}

fn seg(s: &VcpuState, r: Seg) -> Segment {
    s.segments[r as usize]
}

/// The six LVT entries every local APIC has (the CMCI LVT, a 7th, only with more entries).
const LVTS: [&str; 6] = [
    "lapic.lvt_timer",
    "lapic.lvt_thermal",
    "lapic.lvt_perf",
    "lapic.lvt_lint0",
    "lapic.lvt_lint1",
    "lapic.lvt_error",
];

// ---------------------------------------------------------------------------------------------
// The fixture itself
// ---------------------------------------------------------------------------------------------

#[test]
fn dirty_prior_differs_from_reset_in_every_field() {
    let prior = dirty_prior();
    for model in MODELS {
        for vcpu in VCPUS {
            let r = reset(model, vcpu);
            for f in Field::all() {
                assert_ne!(
                    f.get(&prior),
                    f.get(&r),
                    "{f}: the INIT fixture must hold a non-reset value ({:?}, {vcpu:?})",
                    model.vendor
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// General-purpose registers, RIP, RFLAGS
// SDM Vol. 3A Table 10-1: EAX 0 (note 4), EDX 000n06xxH (note 3), EBX/ECX/ESI/EDI/EBP/ESP and
// R8-R15 0, EIP 0000FFF0H, EFLAGS 00000002H, for power-up, RESET and INIT alike.
// APM Vol. 2 Table 14-1: RAX 0, RDX family/model/stepping, others 0, RIP FFF0h, RFLAGS 2h.
// ---------------------------------------------------------------------------------------------

#[test]
fn gprs_are_zero_except_rdx() {
    for model in MODELS {
        for (event, vcpu, s) in states(model) {
            for name in [
                "rax", "rbx", "rcx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
                "r13", "r14", "r15",
            ] {
                assert_eq!(
                    val(&s, name),
                    0,
                    "{name} {:?} {event} {vcpu:?}",
                    model.vendor
                );
            }
        }
    }
}

#[test]
fn rdx_holds_the_processor_signature() {
    for (_, _, s) in states(INTEL) {
        assert_eq!(val(&s, "rdx"), 0x0009_06ea);
        assert_eq!(s.gprs[Gpr::Rdx as usize], 0x0009_06ea);
    }
    for (_, _, s) in states(AMD) {
        assert_eq!(val(&s, "rdx"), 0x00a2_0f12);
    }
}

#[test]
fn rip_is_fff0_and_rflags_is_2() {
    for model in MODELS {
        for (event, _, s) in states(model) {
            assert_eq!(s.rip, 0xfff0, "{event}");
            assert_eq!(val(&s, "rip"), 0x0000_fff0);
            assert_eq!(s.rflags, 0x2, "{event}");
            assert_eq!(val(&s, "rflags"), 0x0000_0002);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Segment registers
// SDM Table 10-1: CS selector F000H, base FFFF0000H, limit FFFFH; SS/DS/ES/FS/GS selector 0,
// base 0, limit FFFFH; LDTR/TR selector 0, base 0, limit FFFFH. Attributes in the VMX layout
// (SDM Vol. 3C Table 25-2): Intel CS 9BH, data 93H, LDTR 82H, TR 8BH.
// APM Table 14-1 (same selectors, bases, limits) and Table 14-2 (attributes): CS type 1010b
// => 9Ah, data type 0010b => 92h, LDTR type 0010b => 82h, TR busy 16-bit TSS 0011b => 83h.
// ---------------------------------------------------------------------------------------------

fn check_segments(model: CpuModel, cs: u16, data: u16, ldtr: u16, tr: u16) {
    for (event, vcpu, s) in states(model) {
        let ctx = format!("{:?} {event} {vcpu:?}", model.vendor);
        assert_eq!(
            seg(&s, Seg::Cs),
            Segment {
                selector: 0xf000,
                base: 0xffff_0000,
                limit: 0xffff,
                attributes: cs
            },
            "cs {ctx}"
        );
        for r in [Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs, Seg::Ss] {
            assert_eq!(
                seg(&s, r),
                Segment {
                    selector: 0,
                    base: 0,
                    limit: 0xffff,
                    attributes: data
                },
                "{r:?} {ctx}"
            );
        }
        assert_eq!(
            seg(&s, Seg::Ldtr),
            Segment {
                selector: 0,
                base: 0,
                limit: 0xffff,
                attributes: ldtr
            },
            "ldtr {ctx}"
        );
        assert_eq!(
            seg(&s, Seg::Tr),
            Segment {
                selector: 0,
                base: 0,
                limit: 0xffff,
                attributes: tr
            },
            "tr {ctx}"
        );
    }
}

#[test]
fn intel_segments_after_reset_and_init() {
    check_segments(INTEL, 0x9b, 0x93, 0x82, 0x8b);
}

#[test]
fn amd_segments_after_reset_and_init() {
    check_segments(AMD, 0x9a, 0x92, 0x82, 0x83);
}

#[test]
fn segment_parts_by_name() {
    for (_, _, s) in states(INTEL) {
        assert_eq!(val(&s, "cs.selector"), 0xf000);
        assert_eq!(val(&s, "cs.base"), 0xffff_0000);
        assert_eq!(val(&s, "cs.limit"), 0xffff);
        assert_eq!(val(&s, "cs.attributes"), 0x9b);
        assert_eq!(val(&s, "ss.attributes"), 0x93);
        assert_eq!(val(&s, "tr.attributes"), 0x8b);
    }
    for (_, _, s) in states(AMD) {
        assert_eq!(val(&s, "cs.attributes"), 0x9a);
        assert_eq!(val(&s, "ds.attributes"), 0x92);
        assert_eq!(val(&s, "ldtr.attributes"), 0x82);
        assert_eq!(val(&s, "tr.attributes"), 0x83);
    }
}

// ---------------------------------------------------------------------------------------------
// GDTR, IDTR
// SDM Table 10-1 and Vol. 3A §2.4.1: base 00000000H, limit FFFFH. APM Table 14-1: base 0,
// limit FFFFh. Both events.
// ---------------------------------------------------------------------------------------------

#[test]
fn descriptor_tables_base_0_limit_ffff() {
    for model in MODELS {
        for (event, _, s) in states(model) {
            for t in [s.gdtr, s.idtr] {
                assert_eq!(
                    t,
                    DescriptorTable {
                        base: 0,
                        limit: 0xffff
                    },
                    "{event}"
                );
            }
            assert_eq!(val(&s, "gdtr.limit"), 0xffff);
            assert_eq!(val(&s, "idtr.base"), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CR0
// RESET: 60000010H (SDM Table 10-1; APM Table 14-1 "0000 0000 6000 0010h").
// INIT: "CD and NW are unchanged, bit 4 is set to 1, all other bits are cleared" (SDM Table 10-1
// note 2; APM Table 14-1 INIT column).
// ---------------------------------------------------------------------------------------------

#[test]
fn cr0_after_reset_is_6000_0010() {
    for model in MODELS {
        for vcpu in VCPUS {
            assert_eq!(reset(model, vcpu).cr0, 0x6000_0010);
        }
    }
}

#[test]
fn init_keeps_cd_nw() {
    // (CR0 before INIT, CR0 after INIT)
    let cases: [(u64, u64); 5] = [
        // CD and NW both clear (a running OS): only ET remains.
        (0x8005_0033, 0x0000_0010),
        // CD and NW both set (as after RESET), with PE and PG.
        (0xe000_0011, 0x6000_0010),
        // CD set, NW clear.
        (0xc001_0031, 0x4000_0010),
        // NW set, CD clear (an invalid combination, but INIT still keeps the bits).
        (0xa000_0001, 0x2000_0010),
        // Bits 63:32 and everything else set: all cleared but CD, NW, ET.
        (0xffff_ffff_ffff_ffff, 0x6000_0010),
    ];
    for model in MODELS {
        for vcpu in VCPUS {
            for (before, after) in cases {
                let mut prior = dirty_prior();
                prior.cr0 = before;
                let s = init(model, vcpu, &prior);
                assert_eq!(
                    s.cr0, after,
                    "{:?} {vcpu:?} CR0 {before:#x} before INIT",
                    model.vendor
                );
                assert_eq!(val(&s, "cr0"), u128::from(after));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CR2, CR3, CR4, CR8, EFER
// SDM Table 10-1: CR2, CR3, CR4 00000000H; CR8 is TPR[7:4] and the TPR is 0 after RESET and
// INIT (§11.4.7.1, §11.4.7.3). APM Table 14-1: CR2, CR3, CR4, CR8 and EFER 0 after RESET and INIT.
// ---------------------------------------------------------------------------------------------

#[test]
fn cr2_cr3_cr4_cr8_cleared() {
    for model in MODELS {
        for (event, _, s) in states(model) {
            for name in ["cr2", "cr3", "cr4", "cr8"] {
                assert_eq!(val(&s, name), 0, "{name} {:?} {event}", model.vendor);
            }
        }
    }
}

#[test]
fn efer_cleared() {
    for model in MODELS {
        for (event, _, s) in states(model) {
            assert_eq!(s.efer, 0, "{:?} {event}", model.vendor);
            assert_eq!(val(&s, "efer"), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Debug registers
// SDM Table 10-1: DR0-DR3 00000000H, DR6 FFFF0FF0H, DR7 00000400H, for power-up, RESET and INIT.
// APM Table 14-1: DR0-DR3 0, DR6 0000 0000 FFFF 0FF0h, DR7 0000 0000 0000 0400h after RESET;
// "Not modified" after INIT.
// ---------------------------------------------------------------------------------------------

#[test]
fn debug_registers_after_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.dr, [0, 0, 0, 0]);
            assert_eq!(s.dr6, 0xffff_0ff0);
            assert_eq!(s.dr7, 0x0000_0400);
            assert_eq!(val(&s, "dr6"), 0xffff_0ff0);
            assert_eq!(val(&s, "dr7"), 0x400);
        }
    }
}

#[test]
fn intel_init_resets_debug_registers() {
    for vcpu in VCPUS {
        let s = init(INTEL, vcpu, &dirty_prior());
        assert_eq!(s.dr, [0, 0, 0, 0]);
        assert_eq!(s.dr6, 0xffff_0ff0);
        assert_eq!(s.dr7, 0x0000_0400);
    }
}

#[test]
fn amd_init_keeps_debug_registers() {
    for vcpu in VCPUS {
        let s = init(AMD, vcpu, &dirty_prior());
        assert_eq!(s.dr, [0x1000, 0x2000, 0x3000, 0x4000]);
        assert_eq!(s.dr6, 0xffff_4ff0);
        assert_eq!(s.dr7, 0x0000_0701);
    }
}

// ---------------------------------------------------------------------------------------------
// x87, MXCSR, vector state, XCR0, PKRU
// Power-up/RESET x87 state: FCW 0040H, FSW 0000H, FTW 5555H, FIP/FDP/FCS/FDS/FOP 0, ST0-ST7 0
// (SDM Table 10-1; APM Table 14-1 and Table 14-3). MXCSR 1F80H, XMM 0 (SDM Table 10-1; APM
// Table 14-1). XCR0 1 (APM Table 14-1 "0000 0000 0000 0001h"; SDM Vol. 3A: "After reset, all
// bits (except bit 0) in XCR0 are cleared to zero; XCR0[0] is set to 1"). PKRU 0 (APM Table
// 14-1 "0000 0000h"). INIT leaves all of it unchanged (SDM §10.1: "during an INIT, the internal
// caches, MSRs, MTRRs, and x87 FPU state are left unchanged"; APM Table 14-1 "Not modified").
// ---------------------------------------------------------------------------------------------

#[test]
fn x87_power_up_state() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.fpu.fcw, 0x0040);
            assert_eq!(s.fpu.fsw, 0x0000);
            assert_eq!(s.fpu.ftw, 0x5555);
            assert_eq!(s.fpu.fop, 0);
            assert_eq!(s.fpu.fip, 0);
            assert_eq!(s.fpu.fdp, 0);
            assert_eq!(s.fpu.fcs, 0);
            assert_eq!(s.fpu.fds, 0);
            assert_eq!(s.fpu.st, [0; 8]);
            assert_eq!(val(&s, "x87.fcw"), 0x0040);
            assert_eq!(val(&s, "x87.ftw"), 0x5555);
        }
    }
}

#[test]
fn mxcsr_is_1f80_after_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.fpu.mxcsr, 0x1f80);
            assert_eq!(val(&s, "mxcsr"), 0x1f80);
        }
    }
}

#[test]
fn vector_registers_zero_after_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.vectors.xmm, [0; 16]);
            assert_eq!(s.vectors.ymm_hi, [0; 16]);
            assert_eq!(s.vectors.zmm_hi256, [[0; 2]; 16]);
            assert_eq!(s.vectors.hi16_zmm, [[0; 4]; 16]);
            assert_eq!(s.vectors.opmask, [0; 8]);
            // AMX's XTILECFG and XTILEDATA in their initial configuration: all zero (SDM
            // Vol. 2A, LDTILECFG: palette 0 is the INIT state, tiles zeroed).
            assert_eq!(s.vectors.xtilecfg, [0; 4]);
            assert_eq!(s.vectors.xtiledata, [[0; 32]; 16]);
            assert_eq!(val(&s, "tmm7.63"), 0);
        }
    }
}

#[test]
fn xcr0_is_1_and_pkru_0_after_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.xcr0, 1);
            assert_eq!(val(&s, "xcr0"), 1);
            assert_eq!(s.pkru, 0);
        }
    }
}

#[test]
fn init_keeps_x87_sse_avx_xcr0_and_pkru() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = init(model, vcpu, &dirty_prior());
            assert_eq!(
                s.fpu,
                Fpu {
                    fcw: 0x037f,
                    fsw: 0x3800,
                    ftw: 0x3fff,
                    fop: 0x05d9,
                    fip: 0x0040_1000,
                    fdp: 0x0060_2000,
                    fcs: 0x0033,
                    fds: 0x002b,
                    st: [0x3fff_8000_0000_0000_0000; 8],
                    mxcsr: 0x9fc0,
                },
                "{:?} {vcpu:?}",
                model.vendor
            );
            assert_eq!(
                s.vectors.xmm,
                [0x0123_4567_89ab_cdef_fedc_ba98_7654_3210; 16]
            );
            assert_eq!(
                s.vectors.ymm_hi,
                [0x1111_1111_1111_1111_1111_1111_1111_1111; 16]
            );
            assert_eq!(
                s.vectors.zmm_hi256,
                [[0x2222_2222_2222_2222_2222_2222_2222_2222; 2]; 16]
            );
            assert_eq!(
                s.vectors.hi16_zmm,
                [[0x3333_3333_3333_3333_3333_3333_3333_3333; 4]; 16]
            );
            assert_eq!(s.vectors.opmask, [0xffff_0000_ffff_0000; 8]);
            assert_eq!(
                s.vectors.xtilecfg,
                [1, 0x40, 0x40 << 64, 0x10],
                "INIT keeps the tiles"
            );
            assert_eq!(
                s.vectors.xtiledata,
                [[0x4444_4444_4444_4444_4444_4444_4444_4444; 32]; 16]
            );
            assert_eq!(s.xcr0, 0xe7);
            assert_eq!(s.pkru, 0x5555_5554);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MSRs after RESET
// IA32_PAT 0007040600070406H (SDM Vol. 3A §12.12.4; APM §7.8). IA32_MTRR_DEF_TYPE 0: E clear
// (SDM §12.11.5; APM §14.2.2 "the MTRRdefType register is cleared to 0"). SMBASE 30000H (APM
// Table 14-1 "0003 0000h"; SDM SMM chapter default SMBASE). IA32_APIC_BASE: base FEE00000H, EN
// (bit 11) set, BSP (bit 8) on the BSP only => FEE00900H / FEE00800H (SDM §11.4.4, Figure 11-5;
// APM §16.3.1). TSC 0 (SDM Table 10-1; APM Table 14-1). IA32_FEATURE_CONTROL 0: "This MSR is
// cleared to zero when a logical processor is reset" (SDM Vol. 3C §24.7). IA32_PERF_GLOBAL_CTRL:
// "Sets bits n-1:0 and clears the upper bits" (SDM Table 10-1 from 325462-079US).
// ---------------------------------------------------------------------------------------------

#[test]
fn pat_default_after_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.msrs.pat, 0x0007_0406_0007_0406);
            assert_eq!(val(&s, "msr.ia32_pat"), 0x0007_0406_0007_0406);
        }
    }
}

#[test]
fn mtrr_def_type_cleared_at_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.msrs.mtrr_def_type, 0);
            assert_eq!(val(&s, "msr.ia32_mtrr_def_type"), 0);
            // PHYSMASKn.V (bit 11) is clear: every variable range is disabled.
            for m in s.msrs.mtrr_phys_mask {
                assert_eq!(m & 0x800, 0);
            }
        }
    }
}

#[test]
fn smbase_is_30000_after_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.msrs.smbase, 0x0003_0000);
            assert_eq!(val(&s, "msr.ia32_smbase"), 0x30000);
        }
    }
}

#[test]
fn apic_base_bsp_fee00900_ap_fee00800() {
    for model in MODELS {
        assert_eq!(reset(model, BSP).msrs.apic_base, 0xfee0_0900);
        assert_eq!(reset(model, AP).msrs.apic_base, 0xfee0_0800);
        assert_eq!(val(&reset(model, BSP), "msr.ia32_apic_base"), 0xfee0_0900);
    }
}

#[test]
fn tsc_zero_after_reset() {
    for model in MODELS {
        for vcpu in VCPUS {
            assert_eq!(reset(model, vcpu).msrs.tsc, 0);
            assert_eq!(val(&reset(model, vcpu), "msr.ia32_tsc"), 0);
        }
    }
    // SDM §18.17.3: "On RESET, the value of [IA32_TSC_ADJUST] is 0"; Table 10-1: IA32_TSC_AUX 0.
    let s = reset(INTEL, BSP);
    assert_eq!(s.msrs.tsc_adjust, 0);
    assert_eq!(s.msrs.tsc_aux, 0);
}

#[test]
fn intel_feature_control_cleared_at_reset() {
    for vcpu in VCPUS {
        let s = reset(INTEL, vcpu);
        assert_eq!(s.msrs.feature_control, 0);
        assert_eq!(val(&s, "msr.ia32_feature_control"), 0);
    }
}

#[test]
fn intel_debugctl_cleared_at_reset() {
    // SDM Vol. 3B §18.4.1.
    assert_eq!(reset(INTEL, BSP).msrs.debugctl, 0);
}

#[test]
fn intel_perf_global_ctrl_enables_each_gp_counter() {
    // n counters => bits n-1:0 set.
    for (n, expected) in [
        (0u8, 0x0u64),
        (1, 0x1),
        (4, 0xf),
        (8, 0xff),
        (32, 0xffff_ffff),
    ] {
        let model = CpuModel {
            gp_counters: n,
            ..INTEL
        };
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(s.msrs.perf_global_ctrl, expected, "{n} counters");
        }
    }
    assert_eq!(val(&reset(INTEL, AP), "msr.ia32_perf_global_ctrl"), 0xf);
}

// ---------------------------------------------------------------------------------------------
// MSRs after INIT
// SDM §10.1 / Table 10-1: MSRs, MTRRs, TSC, PAT unchanged by INIT ("Unchanged" column; §12.12.4
// "remain unchanged following a soft reset (INIT reset)"). APM Table 14-1: MTRRs, machine-check,
// performance-monitor and other MSRs, TSC, SMBASE "Not modified".
// IA32_FS_BASE / IA32_GS_BASE are the FS/GS segment bases, which INIT sets to 0 (SDM Table 10-1;
// APM Table 14-1 "DS, ES, FS, GS, SS ... Base = 0").
// ---------------------------------------------------------------------------------------------

#[test]
fn init_keeps_msrs() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = init(model, vcpu, &dirty_prior());
            let m = s.msrs;
            assert_eq!(m.apic_base, 0xfee0_0c00);
            assert_eq!(m.tsc, 0x0000_1234_5678_9abc);
            assert_eq!(m.tsc_adjust, 0xffff_ffff_ffff_f000);
            assert_eq!(m.tsc_aux, 0x7);
            // INIT disarms the local APIC timer: Intel's TSC_DEADLINE then reads 0.
            let deadline = if model.vendor == Vendor::Intel {
                0
            } else {
                0x0000_0001_0000_0000
            };
            assert_eq!(m.tsc_deadline, deadline);
            assert_eq!(m.pat, 0x0007_0106_0007_0106);
            assert_eq!(m.mtrr_cap, 0x0d0a);
            assert_eq!(m.mtrr_def_type, 0x0c06);
            assert_eq!(m.mtrr_fixed, [0x0606_0606_0606_0606; FIXED_MTRRS]);
            assert_eq!(m.mtrr_phys_base, [0xc000_0000; VARIABLE_MTRRS]);
            assert_eq!(m.mtrr_phys_mask, [0x000f_c000_0800; VARIABLE_MTRRS]);
            assert_eq!(m.misc_enable, 0x0085_0089);
            assert_eq!(m.sysenter_cs, 0x10);
            assert_eq!(m.star, 0x0023_0010_0000_0000);
            assert_eq!(m.lstar, 0xffff_ffff_81a0_0080);
            assert_eq!(m.sfmask, 0x0004_7700);
            assert_eq!(m.kernel_gs_base, 0xffff_8880_7fc0_0000);
            assert_eq!(m.spec_ctrl, 0x1);
            assert_eq!(m.debugctl, 0x1);
            assert_eq!(m.perf_global_ctrl, 0x0000_0007_0000_00ff);
            assert_eq!(m.feature_control, 0x5);
            assert_eq!(m.smbase, 0x7ff0_0000);
            assert_eq!(m.xss, 0x100);
            assert_eq!(m.mcg_status, 0x4);
            assert_eq!(m.mc_banks[9].status, 0x9c00_0000_0000_0011);
            assert_eq!(val(&s, "msr.ia32_pat"), 0x0007_0106_0007_0106);
            assert_eq!(val(&s, "msr.ia32_apic_base"), 0xfee0_0c00);
        }
    }
}

#[test]
fn init_clears_fs_gs_base_msrs() {
    for model in MODELS {
        for vcpu in VCPUS {
            let s = init(model, vcpu, &dirty_prior());
            assert_eq!(val(&s, "msr.ia32_fs_base"), 0);
            assert_eq!(val(&s, "msr.ia32_gs_base"), 0);
            assert_eq!(seg(&s, Seg::Fs).base, 0);
            assert_eq!(seg(&s, Seg::Gs).base, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Local APIC
// SDM Vol. 3A §11.4.7.1 (RESET): IRR, ISR, TMR, ICR, LDR, TPR 0; timer initial and current count
// 0, divide configuration 0; DFR all 1s; LVT entries 0 except the mask bits (=> 00010000H);
// SVR 000000FFH; APIC ID assigned by hardware. §11.4.7.3 (INIT): the same, "except that the APIC
// ID and arbitration ID registers are not affected". APM Table 16-2: ID ??000000h, TPR/APR/PPR/
// LDR 0, DFR FFFFFFFFh, SVR 000000FFh, ISR/TMR/IRR/ESR/ICR 0, every LVT 00010000h, timers 0.
// ---------------------------------------------------------------------------------------------

#[test]
fn lapic_id_from_apic_id_at_reset_kept_at_init() {
    for model in MODELS {
        assert_eq!(reset(model, BSP).lapic.id, 0x0000_0000);
        assert_eq!(reset(model, AP).lapic.id, 0x0300_0000);
        assert_eq!(val(&reset(model, AP), "lapic.id"), 0x0300_0000);
        for vcpu in VCPUS {
            assert_eq!(init(model, vcpu, &dirty_prior()).lapic.id, 0x0700_0000);
        }
    }
    let s = reset(
        INTEL,
        VcpuIdentity {
            apic_id: 0xfe,
            bsp: false,
        },
    );
    assert_eq!(s.lapic.id, 0xfe00_0000);
}

#[test]
fn lapic_version_from_model_at_reset_kept_at_init() {
    assert_eq!(reset(INTEL, BSP).lapic.version, 0x0005_0014);
    assert_eq!(reset(AMD, BSP).lapic.version, 0x8005_0010);
    for model in MODELS {
        assert_eq!(init(model, AP, &dirty_prior()).lapic.version, 0x0006_0015);
    }
}

#[test]
fn lapic_registers_after_reset_and_init() {
    for model in MODELS {
        for (event, vcpu, s) in states(model) {
            let ctx = format!("{:?} {event} {vcpu:?}", model.vendor);
            let l = s.lapic;
            assert_eq!(l.dfr, 0xffff_ffff, "{ctx}");
            assert_eq!(l.svr, 0x0000_00ff, "{ctx}");
            assert_eq!(l.tpr, 0, "{ctx}");
            assert_eq!(l.apr, 0, "{ctx}");
            assert_eq!(l.ppr, 0, "{ctx}");
            // The dirtied prior is in x2APIC mode (APIC base C00H), which INIT keeps: the LDR
            // is then the logical x2APIC ID (SDM Vol. 3A §11.12.10.2).
            let ldr = if event == "init" {
                ((vcpu.apic_id >> 4) << 16) | (1 << (vcpu.apic_id & 0xf))
            } else {
                0
            };
            assert_eq!(l.ldr, ldr, "{ctx}");
            assert_eq!(l.esr, 0, "{ctx}");
            assert_eq!(l.icr, 0, "{ctx}");
            assert_eq!(l.isr, [0; 8], "{ctx}");
            assert_eq!(l.tmr, [0; 8], "{ctx}");
            assert_eq!(l.irr, [0; 8], "{ctx}");
            assert_eq!(l.timer_initial, 0, "{ctx}");
            assert_eq!(l.timer_current, 0, "{ctx}");
            assert_eq!(l.timer_divide, 0, "{ctx}");
            assert_eq!(val(&s, "lapic.svr"), 0xff);
            assert_eq!(val(&s, "lapic.dfr"), 0xffff_ffff);
            for bm in LapicBitmap::ALL {
                for i in 0..8 {
                    assert_eq!(Field::LapicBitmap(bm, i).get(&s), 0, "{bm:?}{i} {ctx}");
                }
            }
        }
    }
}

#[test]
fn every_lvt_masked_including_bsp_lint0() {
    for model in MODELS {
        for (event, vcpu, s) in states(model) {
            for name in LVTS {
                assert_eq!(
                    val(&s, name),
                    0x0001_0000,
                    "{name} {:?} {event} {vcpu:?}",
                    model.vendor
                );
            }
            assert_eq!(s.lapic.lvt_lint0, 0x0001_0000);
        }
    }
}

#[test]
fn init_clears_the_ldr_in_xapic_mode_and_keeps_the_x2apic_logical_id() {
    let mut xapic = dirty_prior();
    xapic.msrs.apic_base = 0xfee0_0800;
    for model in MODELS {
        assert_eq!(init(model, AP, &xapic).lapic.ldr, 0);
        let x2 = init(model, AP, &dirty_prior());
        let id = AP.apic_id;
        assert_eq!(x2.lapic.ldr, ((id >> 4) << 16) | (1 << (id & 0xf)));
        assert_eq!(x2.lapic.dfr, 0xffff_ffff);
    }
}

#[test]
fn the_cmci_lvt_is_masked_where_the_apic_has_seven_entries_and_absent_with_six() {
    let prior = dirty_prior();
    for model in MODELS {
        let mut seven = model;
        seven.apic_version = (model.apic_version & !0x00ff_0000) | 0x0006_0000;
        let mut six = model;
        six.apic_version = (model.apic_version & !0x00ff_0000) | 0x0005_0000;
        for vcpu in VCPUS {
            let ctx = format!("{:?} {vcpu:?}", model.vendor);
            assert_eq!(reset(seven, vcpu).lapic.lvt_cmci, 0x0001_0000, "{ctx}");
            assert_eq!(
                init(seven, vcpu, &prior).lapic.lvt_cmci,
                0x0001_0000,
                "{ctx}"
            );
            assert_eq!(reset(six, vcpu).lapic.lvt_cmci, 0, "{ctx}");
            assert_eq!(init(six, vcpu, &prior).lapic.lvt_cmci, 0, "{ctx}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activity state
// SDM Vol. 3A §9.4.1-§9.4.2: after RESET the BSP executes from the reset vector and the APs wait
// for a startup IPI; after INIT a processor that is not the BSP waits for SIPI (§11.4.7.3
// "wait-for-SIPI state"). Encoding: VMX guest activity state (SDM Vol. 3C §25.4.2): 0 active,
// 3 wait-for-SIPI.
// ---------------------------------------------------------------------------------------------

#[test]
fn activity_bsp_active_ap_waits_for_sipi() {
    for model in MODELS {
        for (event, vcpu, s) in states(model) {
            let expected = if vcpu.bsp { 0 } else { 3 };
            assert_eq!(val(&s, "activity.state"), expected, "{event} {vcpu:?}");
        }
        assert_eq!(reset(model, BSP).activity, Activity::Active);
        assert_eq!(reset(model, AP).activity, Activity::WaitForSipi);
        assert_eq!(
            init(model, AP, &dirty_prior()).activity,
            Activity::WaitForSipi
        );
        assert_eq!(init(model, BSP, &dirty_prior()).activity, Activity::Active);
    }
}

// ---------------------------------------------------------------------------------------------
// Pending events and nested state
// Nothing is pending or being delivered after RESET or INIT (SDM §10.1; APM §14.1).
// Nested: RESET clears IA32_FEATURE_CONTROL and leaves VMX operation (SDM §24.7); INIT is blocked
// in VMX root operation (SDM §24.8), so an INIT that takes effect leaves VMX state alone. AMD:
// EFER (and with it SVME) is 0 after RESET and INIT (APM Table 14-1).
// ---------------------------------------------------------------------------------------------

#[test]
fn events_cleared() {
    for model in MODELS {
        for (event, _, s) in states(model) {
            assert_eq!(s.events, Events::default(), "{:?} {event}", model.vendor);
            for e in EventFlag::ALL {
                assert_eq!(Field::Event(e).get(&s), 0);
            }
        }
    }
}

#[test]
fn nested_state() {
    for vcpu in VCPUS {
        assert_eq!(val(&reset(INTEL, vcpu), "nested.state"), 0);
        assert_eq!(val(&init(INTEL, vcpu, &dirty_prior()), "nested.state"), 1);
        assert_eq!(val(&reset(AMD, vcpu), "nested.state"), 0);
        assert_eq!(val(&init(AMD, vcpu, &dirty_prior()), "nested.state"), 0);
    }
}

/// SDM Vol. 3C §24.7 (RESET leaves VMX operation), §25.1 (no current VMCS: FFFFFFFF_FFFFFFFFH);
/// AMD APM Vol. 2 Table 14-1 (EFER.SVME = 0) and §15.17 (GIF).
#[test]
fn nested_parts_after_reset() {
    for model in [INTEL, AMD] {
        for vcpu in VCPUS {
            let s = reset(model, vcpu);
            assert_eq!(val(&s, "nested.vmxon_pointer"), 0xffff_ffff_ffff_ffff);
            assert_eq!(
                val(&s, "nested.current_vmcs_pointer"),
                0xffff_ffff_ffff_ffff
            );
            assert_eq!(val(&s, "nested.evmcs_pointer"), 0xffff_ffff_ffff_ffff);
            assert_eq!(val(&s, "nested.guest_mode"), 0);
            assert_eq!(val(&s, "nested.gif"), 1);
            assert_eq!(val(&s, "nested.intercept_init"), 0);
            assert_eq!(s.nested, Nested::NONE);
        }
    }
}

/// Intel: an INIT that takes effect keeps VMX state (SDM Vol. 3C §24.8, §26.2: it cannot take
/// effect in VMX operation at all); AMD: INIT leaves guest mode (Table 14-1: EFER = 0) and is
/// recognised only with GIF = 1 (§15.17).
#[test]
fn nested_parts_after_init() {
    let prior = dirty_prior();
    for vcpu in VCPUS {
        let s = init(INTEL, vcpu, &prior);
        assert_eq!(val(&s, "nested.vmxon_pointer"), 0x0010_0000);
        assert_eq!(val(&s, "nested.current_vmcs_pointer"), 0x0010_1000);
        assert_eq!(val(&s, "nested.evmcs_pointer"), 0x0010_2000);
        assert_eq!(val(&s, "nested.guest_mode"), 1);
        assert_eq!(val(&s, "nested.gif"), 0);
        assert_eq!(val(&s, "nested.intercept_init"), 1);
        let s = init(AMD, vcpu, &prior);
        assert_eq!(s.nested, Nested::NONE);
    }
}

/// IA32_VMX_BASIC … IA32_VMX_VMFUNC: RESET gives the model's configuration (SDM Vol. 3D,
/// Appendix A), INIT keeps whatever the VMM configured; AMD has none.
#[test]
fn vmx_capability_msrs() {
    let names = [
        ("msr.ia32_vmx_basic", 0x480),
        ("msr.ia32_vmx_pinbased_ctls", 0x481),
        ("msr.ia32_vmx_procbased_ctls", 0x482),
        ("msr.ia32_vmx_exit_ctls", 0x483),
        ("msr.ia32_vmx_entry_ctls", 0x484),
        ("msr.ia32_vmx_misc", 0x485),
        ("msr.ia32_vmx_cr0_fixed0", 0x486),
        ("msr.ia32_vmx_cr0_fixed1", 0x487),
        ("msr.ia32_vmx_cr4_fixed0", 0x488),
        ("msr.ia32_vmx_cr4_fixed1", 0x489),
        ("msr.ia32_vmx_vmcs_enum", 0x48a),
        ("msr.ia32_vmx_procbased_ctls2", 0x48b),
        ("msr.ia32_vmx_ept_vpid_cap", 0x48c),
        ("msr.ia32_vmx_true_pinbased_ctls", 0x48d),
        ("msr.ia32_vmx_true_procbased_ctls", 0x48e),
        ("msr.ia32_vmx_true_exit_ctls", 0x48f),
        ("msr.ia32_vmx_true_entry_ctls", 0x490),
        ("msr.ia32_vmx_vmfunc", 0x491),
    ];
    let prior = dirty_prior();
    for vcpu in VCPUS {
        for (i, (name, index)) in names.iter().enumerate() {
            let f = Field::from_name(name).unwrap_or_else(|| panic!("no field named {name}"));
            assert_eq!(f.msr_index(), Some(*index), "{name}");
            assert_eq!(
                val(&reset(INTEL, vcpu), name),
                u128::from(INTEL_VMX[i]),
                "{name}"
            );
            assert_eq!(
                val(&init(INTEL, vcpu, &prior), name),
                0x0000_0001_0000_0000,
                "{name}"
            );
            assert_eq!(val(&reset(AMD, vcpu), name), 0, "{name}");
        }
    }
    assert_eq!(
        row(Field::VmxCap(0), Vendor::Intel, Event::Reset)
            .citation
            .source,
        Source::SdmVol3D
    );
}

/// IA32_SGXLEPUBKEYHASH0–3 (8CH–8FH): "On reset, the default value is the digest of Intel's
/// signing key" (SDM Vol. 4, Table 2-2); the digest as KVM and QEMU write it.
#[test]
fn sgx_launch_enclave_hash_msrs() {
    let prior = dirty_prior();
    let digest: [u128; 4] = [
        0xa605_3e05_1270_b7ac,
        0x6cfb_e8ba_8b3b_413d,
        0xc491_6d99_f2b3_735d,
        0xd4f8_c059_09f9_bb3b,
    ];
    let no_lc = CpuModel {
        sgx_launch_control: false,
        ..INTEL
    };
    for vcpu in VCPUS {
        for (i, d) in digest.iter().enumerate() {
            let name = format!("msr.ia32_sgxlepubkeyhash{i}");
            let f = Field::from_name(&name).unwrap_or_else(|| panic!("no field named {name}"));
            assert_eq!(f.msr_index(), Some(0x8c + i as u32));
            assert_eq!(val(&reset(INTEL, vcpu), &name), *d, "{name}");
            assert_eq!(
                val(&reset(no_lc, vcpu), &name),
                0,
                "{name} without launch control"
            );
            assert_eq!(
                val(&init(INTEL, vcpu, &prior), &name),
                0x1234_5678_9abc_def0
            );
            assert_eq!(val(&reset(AMD, vcpu), &name), 0);
        }
    }
}

/// VM_HSAVE_PA (C001_0117H, APM Vol. 2 §15.30.4): 0 at RESET (undefined; what KVM and Bochs
/// use), kept by INIT (INIT modifies no MSR, APM Table 14-1).
#[test]
fn vm_hsave_pa() {
    let prior = dirty_prior();
    assert_eq!(Field::Msr(Msr::VmHsavePa).msr_index(), Some(0xc001_0117));
    for vcpu in VCPUS {
        assert_eq!(val(&reset(AMD, vcpu), "msr.vm_hsave_pa"), 0);
        assert_eq!(
            val(&init(AMD, vcpu, &prior), "msr.vm_hsave_pa"),
            0x7fff_e000
        );
        assert_eq!(val(&reset(INTEL, vcpu), "msr.vm_hsave_pa"), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Rule kinds, through `row`
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_kinds_of_key_rows() {
    use Event::{Init, Reset};
    use Vendor::{Amd, Intel};
    for v in [Intel, Amd] {
        for e in [Reset, Init] {
            assert_eq!(
                row(Field::Gpr(Gpr::Rdx), v, e).rule,
                Rule::Derived(Derivation::Signature)
            );
            assert_eq!(row(Field::Rip, v, e).rule, Rule::Value(0xfff0));
            assert_eq!(
                row(Field::Activity, v, e).rule,
                Rule::Derived(Derivation::Activity)
            );
            assert_eq!(
                row(Field::Lapic(LapicReg::LvtLint0), v, e).rule,
                Rule::Value(0x0001_0000)
            );
            assert_eq!(
                row(Field::Msr(Msr::FsBase), v, e).rule,
                Rule::Value(0),
                "{v:?} {e:?}"
            );
        }
        assert_eq!(row(Field::Cr0, v, Reset).rule, Rule::Value(0x6000_0010));
        assert_eq!(
            row(Field::Cr0, v, Init).rule,
            Rule::Derived(Derivation::Cr0Init)
        );
        assert_eq!(
            row(Field::Lapic(LapicReg::Id), v, Reset).rule,
            Rule::Derived(Derivation::ApicId)
        );
        assert_eq!(
            row(Field::Lapic(LapicReg::Id), v, Init).rule,
            Rule::Preserved
        );
        assert_eq!(
            row(Field::Lapic(LapicReg::Version), v, Init).rule,
            Rule::Preserved
        );
        assert_eq!(
            row(Field::Msr(Msr::ApicBase), v, Reset).rule,
            Rule::Derived(Derivation::ApicBase)
        );
        assert_eq!(
            row(Field::Msr(Msr::ApicBase), v, Init).rule,
            Rule::Preserved
        );
        assert_eq!(
            row(Field::Msr(Msr::Pat), v, Reset).rule,
            Rule::Value(0x0007_0406_0007_0406)
        );
        assert_eq!(row(Field::Msr(Msr::Pat), v, Init).rule, Rule::Preserved);
        assert_eq!(
            row(Field::Msr(Msr::Smbase), v, Reset).rule,
            Rule::Value(0x30000)
        );
        assert_eq!(row(Field::Msr(Msr::Tsc), v, Init).rule, Rule::Preserved);
        assert_eq!(
            row(Field::X87(X87::Fcw), v, Reset).rule,
            Rule::Value(0x0040)
        );
        assert_eq!(
            row(Field::X87(X87::Ftw), v, Reset).rule,
            Rule::Value(0x5555)
        );
        assert_eq!(row(Field::X87(X87::Fcw), v, Init).rule, Rule::Preserved);
        assert_eq!(row(Field::Mxcsr, v, Reset).rule, Rule::Value(0x1f80));
        assert_eq!(row(Field::Mxcsr, v, Init).rule, Rule::Preserved);
        assert_eq!(row(Field::Xcr0, v, Reset).rule, Rule::Value(1));
        assert_eq!(row(Field::Xcr0, v, Init).rule, Rule::Preserved);
        assert_eq!(row(Field::Efer, v, Init).rule, Rule::Value(0));
        assert_eq!(row(Field::Dr6, v, Reset).rule, Rule::Value(0xffff_0ff0));
        assert_eq!(row(Field::Dr7, v, Reset).rule, Rule::Value(0x400));
    }
    // Debug registers on INIT: Intel resets, AMD keeps.
    for f in [Field::Dr(0), Field::Dr(3), Field::Dr6, Field::Dr7] {
        assert_eq!(row(f, Amd, Init).rule, Rule::Preserved, "{f}");
        assert!(matches!(row(f, Intel, Init).rule, Rule::Value(_)), "{f}");
    }
    assert_eq!(row(Field::Dr6, Intel, Init).rule, Rule::Value(0xffff_0ff0));
    assert_eq!(row(Field::Dr7, Intel, Init).rule, Rule::Value(0x400));
    // Segment attributes per vendor.
    let attr = |s| Field::Seg(s, SegPart::Attributes);
    assert_eq!(row(attr(Seg::Cs), Intel, Reset).rule, Rule::Value(0x9b));
    assert_eq!(row(attr(Seg::Cs), Amd, Reset).rule, Rule::Value(0x9a));
    assert_eq!(row(attr(Seg::Ss), Intel, Init).rule, Rule::Value(0x93));
    assert_eq!(row(attr(Seg::Ss), Amd, Init).rule, Rule::Value(0x92));
    assert_eq!(row(attr(Seg::Tr), Intel, Reset).rule, Rule::Value(0x8b));
    assert_eq!(row(attr(Seg::Tr), Amd, Reset).rule, Rule::Value(0x83));
    assert_eq!(row(attr(Seg::Ldtr), Amd, Init).rule, Rule::Value(0x82));
    // Intel-only MSRs.
    assert_eq!(
        row(Field::Msr(Msr::PerfGlobalCtrl), Intel, Reset).rule,
        Rule::Derived(Derivation::PerfGlobalCtrl)
    );
    assert_eq!(
        row(Field::Msr(Msr::FeatureControl), Intel, Reset).rule,
        Rule::Value(0)
    );
    // Nested state.
    assert_eq!(row(Field::Nested, Intel, Reset).rule, Rule::Value(0));
    assert_eq!(row(Field::Nested, Intel, Init).rule, Rule::Preserved);
    assert_eq!(row(Field::Nested, Amd, Init).rule, Rule::Value(0));
    let cur = Field::NestedReg(NestedReg::CurrentVmcs);
    assert_eq!(row(cur, Intel, Reset).rule, Rule::Value(u64::MAX.into()));
    assert_eq!(row(cur, Intel, Init).rule, Rule::Preserved);
    assert_eq!(row(cur, Amd, Init).rule, Rule::Value(u64::MAX.into()));
    // VMX capabilities and SGX hashes: derived from the model at RESET, kept by INIT.
    assert_eq!(
        row(Field::VmxCap(0), Intel, Reset).rule,
        Rule::Derived(Derivation::VmxCapability(0))
    );
    assert_eq!(row(Field::VmxCap(17), Intel, Init).rule, Rule::Preserved);
    assert_eq!(
        row(Field::SgxLeHash(3), Intel, Reset).rule,
        Rule::Derived(Derivation::SgxLePubKeyHash(3))
    );
    assert_eq!(row(Field::SgxLeHash(3), Intel, Init).rule, Rule::Preserved);
    assert_eq!(row(Field::VmxCap(0), Amd, Reset).rule.kind(), "undefined");
    assert_eq!(
        row(Field::Msr(Msr::VmHsavePa), Amd, Reset).rule.kind(),
        "undefined"
    );
    assert_eq!(
        row(Field::Msr(Msr::VmHsavePa), Amd, Init).rule,
        Rule::Preserved
    );
}

// ---------------------------------------------------------------------------------------------
// Table-wide properties
// ---------------------------------------------------------------------------------------------

const VENDOR_EVENTS: [(Vendor, Event); 4] = [
    (Vendor::Intel, Event::Reset),
    (Vendor::Intel, Event::Init),
    (Vendor::Amd, Event::Reset),
    (Vendor::Amd, Event::Init),
];

#[test]
fn every_row_is_cited() {
    for (v, e) in VENDOR_EVENTS {
        let rows = table(v, e);
        assert_eq!(rows.len(), Field::all().len());
        for r in rows {
            assert!(
                !r.citation.locator.trim().is_empty(),
                "{} {v:?} {e:?} has no locator",
                r.field
            );
            assert!(!r.citation.source.title().is_empty());
            assert!(!r.citation.to_string().trim().is_empty());
        }
    }
}

#[test]
fn reset_tables_have_no_preserved_rule() {
    for v in [Vendor::Intel, Vendor::Amd] {
        for r in table(v, Event::Reset) {
            assert_ne!(r.rule, Rule::Preserved, "{} {v:?}", r.field);
            assert_ne!(
                r.rule,
                Rule::Derived(Derivation::Cr0Init),
                "{} {v:?}: RESET has no earlier state",
                r.field
            );
        }
    }
}

#[test]
fn no_row_is_routed_to_the_wrong_class_table() {
    for (v, e) in VENDOR_EVENTS {
        for r in table(v, e) {
            if let Rule::Undefined { reason, .. } = r.rule {
                assert!(
                    !reason.contains("wrong class table"),
                    "{} {v:?} {e:?}: {reason}",
                    r.field
                );
            }
        }
        for f in Field::all() {
            assert_eq!(row(f, v, e).field, f);
        }
    }
}

#[test]
fn field_names_unique_lower_case_dotted() {
    let all = Field::all();
    let mut names: Vec<String> = all.iter().map(Field::name).collect();
    for n in &names {
        assert!(!n.is_empty());
        assert!(
            n.split('.').all(|part| !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')),
            "{n} is not a dotted lower-case name"
        );
    }
    // Grouped names carry their group as a dotted prefix.
    for f in &all {
        let n = f.name();
        let prefix = match f {
            Field::Seg(s, _) => Some(format!("{}.", s.name())),
            Field::Dt(..) => Some(
                if n.starts_with("gdtr") {
                    "gdtr."
                } else {
                    "idtr."
                }
                .into(),
            ),
            Field::X87(_) | Field::St(_) => Some("x87.".into()),
            Field::Msr(_)
            | Field::MtrrFixed(_)
            | Field::MtrrPhysBase(_)
            | Field::MtrrPhysMask(_)
            | Field::Mc(..)
            | Field::VmxCap(_)
            | Field::SgxLeHash(_) => Some("msr.".into()),
            Field::Nested | Field::NestedReg(_) => Some("nested.".into()),
            Field::Lapic(_) | Field::LapicBitmap(..) => Some("lapic.".into()),
            Field::Event(_) => Some("events.".into()),
            _ => None,
        };
        if let Some(p) = prefix {
            assert!(n.starts_with(&p), "{n} should start with {p}");
        }
    }
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "field names are not unique");
    // Every field round-trips through its name.
    for f in all {
        assert_eq!(Field::from_name(&f.name()), Some(f));
    }
}

#[test]
fn named_fields_exist() {
    for name in [
        "rip",
        "rflags",
        "rdx",
        "cr0",
        "cr3",
        "efer",
        "cs.selector",
        "cs.base",
        "cs.limit",
        "cs.attributes",
        "gdtr.limit",
        "dr6",
        "dr7",
        "x87.fcw",
        "x87.ftw",
        "mxcsr",
        "xcr0",
        "msr.ia32_pat",
        "msr.ia32_apic_base",
        "lapic.svr",
        "lapic.lvt_lint0",
    ] {
        let f = Field::from_name(name).unwrap_or_else(|| panic!("no field named {name}"));
        assert_eq!(f.name(), name);
    }
    assert_eq!(
        Field::from_name("cs.attributes"),
        Some(Field::Seg(Seg::Cs, SegPart::Attributes))
    );
    assert_eq!(
        Field::from_name("gdtr.limit"),
        Some(Field::Dt(Dt::Gdtr, true))
    );
    assert_eq!(Field::from_name("msr.ia32_pat"), Some(Field::Msr(Msr::Pat)));
    assert_eq!(Field::from_name("no.such.field"), None);
    assert_eq!(Field::from_name("CS.ATTRIBUTES"), None);
}

#[test]
fn classes_cover_every_field() {
    for c in Class::ALL {
        assert!(
            Field::all().iter().any(|f| f.class() == c),
            "class {} has no field",
            c.name()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Field::get / Field::set
// ---------------------------------------------------------------------------------------------

#[test]
fn get_set_round_trip_masks_to_width() {
    let patterns: [u128; 4] = [
        u128::MAX,
        0xa5a5_a5a5_a5a5_a5a5_a5a5_a5a5_a5a5_a5a5,
        0x5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a,
        1,
    ];
    for f in Field::all() {
        let w = f.width();
        assert!((1..=128).contains(&w), "{f} width {w}");
        let mask = if w == 128 {
            u128::MAX
        } else {
            (1u128 << w) - 1
        };
        assert_eq!(f.mask(), mask, "{f}");
        for p in patterns {
            if f == Field::Activity && Activity::from_code(p & mask).is_none() {
                // Not an encoding: `set` leaves the state unchanged (its documented rule).
                continue;
            }
            let mut s = VcpuState::default();
            f.set(&mut s, p);
            assert_eq!(f.get(&s), p & mask, "{f} set {p:#x}");
        }
    }
}

#[test]
fn field_widths() {
    let w = |n: &str| Field::from_name(n).unwrap().width();
    assert_eq!(w("rip"), 64);
    assert_eq!(w("cs.selector"), 16);
    assert_eq!(w("cs.attributes"), 16);
    assert_eq!(w("cs.limit"), 32);
    assert_eq!(w("gdtr.limit"), 16);
    assert_eq!(w("x87.fcw"), 16);
    assert_eq!(w("x87.fop"), 11);
    assert_eq!(w("x87.st0"), 80);
    assert_eq!(w("mxcsr"), 32);
    assert_eq!(w("xmm0"), 128);
    assert_eq!(w("pkru"), 32);
    assert_eq!(w("lapic.icr"), 64);
    assert_eq!(w("lapic.svr"), 32);
    assert_eq!(w("activity.state"), 3, "encodings 0-4");
    assert_eq!(w("nested.state"), 1);
}

#[test]
fn set_touches_only_its_own_field() {
    // IA32_FS_BASE and IA32_GS_BASE are the FS and GS bases (SDM Vol. 3A §3.4.4): the only
    // fields that share storage.
    let aliases = [
        ("fs.base", "msr.ia32_fs_base"),
        ("gs.base", "msr.ia32_gs_base"),
    ];
    let alias_of = |n: &str| {
        aliases.iter().find_map(|&(a, b)| {
            if n == a {
                Some(b)
            } else if n == b {
                Some(a)
            } else {
                None
            }
        })
    };
    let all = Field::all();
    for f in &all {
        let mut s = VcpuState::default();
        f.set(&mut s, 1);
        let name = f.name();
        for g in &all {
            let gn = g.name();
            if *g == *f || alias_of(&name) == Some(gn.as_str()) {
                assert_eq!(g.get(&s), 1, "{gn} after setting {name}");
            } else {
                assert_eq!(g.get(&s), 0, "{gn} changed by setting {name}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Startup IPI
// SDM Vol. 3A §9.4 and §11.6.1: the AP starts executing at 000VV000H for vector VV, i.e. CS
// selector VV00H, CS base VV000H, EIP 0. APM §16.5.
// ---------------------------------------------------------------------------------------------

#[test]
fn sipi_starts_a_waiting_ap_at_vector_page() {
    for model in MODELS {
        for mut s in [reset(model, AP), init(model, AP, &dirty_prior())] {
            assert_eq!(s.activity, Activity::WaitForSipi);
            assert!(sipi(&mut s, 0x9a));
            assert_eq!(seg(&s, Seg::Cs).selector, 0x9a00);
            assert_eq!(seg(&s, Seg::Cs).base, 0x0009_a000);
            assert_eq!(s.rip, 0);
            assert_eq!(s.activity, Activity::Active);
            // Limit and attributes keep their INIT values.
            assert_eq!(seg(&s, Seg::Cs).limit, 0xffff);
            let cs_attr = if model.vendor == Vendor::Intel {
                0x9b
            } else {
                0x9a
            };
            assert_eq!(seg(&s, Seg::Cs).attributes, cs_attr);
            // A second SIPI finds the AP running and is ignored.
            let before = s;
            assert!(!sipi(&mut s, 0x10));
            assert_eq!(s, before);
        }
    }
}

#[test]
fn sipi_ignored_when_not_waiting() {
    for model in MODELS {
        let mut s = reset(model, BSP);
        let before = s;
        assert!(!sipi(&mut s, 0x9a));
        assert_eq!(s, before);
        let mut halted = dirty_prior();
        let before = halted;
        assert!(!sipi(&mut halted, 0x9a));
        assert_eq!(halted, before);
    }
}

// ---------------------------------------------------------------------------------------------
// The default VMX configuration
// ---------------------------------------------------------------------------------------------

/// `CpuModel::generic(Intel)`'s VMX capabilities obey the SDM's reporting rules (Vol. 3D,
/// Appendix A) and encode KVM's virtual VMCS in IA32_VMX_BASIC.
#[test]
fn default_vmx_capabilities_are_consistent() {
    let caps = CpuModel::generic(Vendor::Intel).vmx_capabilities;
    assert_eq!(caps, vcpu_reset_spec::DEFAULT_VMX_CAPABILITIES);
    // A.1: revision in bits 30:0 (KVM's VMCS12_REVISION 11E57ED0H), region size in bits 44:32
    // (4 KiB), memory type in bits 53:50 (6 = WB), INS/OUTS info bit 54, TRUE controls bit 55.
    let basic = caps[0];
    assert_eq!(basic & 0x7fff_ffff, 0x11e5_7ed0);
    assert_eq!((basic >> 32) & 0x1fff, 0x1000);
    assert_eq!((basic >> 50) & 0xf, 6);
    assert_eq!((basic >> 54) & 3, 3);
    // A.3: allowed-0 settings (bits 31:0) are a subset of allowed-1 settings (bits 63:32), and
    // the non-TRUE MSRs report the default1 bits as required: pin-based 16H, primary
    // processor-based 0401E172H, exit 00036DFFH, entry 000011FFH.
    for (i, default1) in [
        (1, 0x16u64),
        (2, 0x0401_e172),
        (3, 0x0003_6dff),
        (4, 0x11ff),
    ] {
        let (a0, a1) = (caps[i] & 0xffff_ffff, caps[i] >> 32);
        assert_eq!(a0 & !a1, 0, "MSR {i}: allowed-0 not within allowed-1");
        assert_eq!(
            a0 & default1,
            default1,
            "MSR {i}: default1 bits not required"
        );
        // The TRUE MSR (i + 12) allows the same and requires no more.
        let t = caps[i + 12];
        assert_eq!(t >> 32, a1, "TRUE MSR {i}: allowed-1 differs");
        assert_eq!((t & 0xffff_ffff) & !a0, 0, "TRUE MSR {i} requires more");
    }
    // A.7, A.8: CR0.PE, NE, PG and CR4.VMXE fixed to 1 in VMX operation, and allowed.
    assert_eq!(caps[6], 0x8000_0021);
    assert_eq!(caps[6] & !caps[7], 0);
    assert_eq!(caps[8], 0x2000);
    assert_eq!(caps[8] & !caps[9], 0);
    // AMD has none.
    assert_eq!(
        CpuModel::generic(Vendor::Amd).vmx_capabilities,
        [0; VMX_CAPABILITY_MSRS]
    );
}

/// Every activity state reads back as itself through its field, the host's not-yet-started
/// state included: a field too narrow for it would read an AP the host never started as
/// running.
#[test]
fn every_activity_state_survives_its_field() {
    for a in [
        Activity::Active,
        Activity::Hlt,
        Activity::Shutdown,
        Activity::WaitForSipi,
        Activity::Uninitialized,
    ] {
        let s = VcpuState {
            activity: a,
            ..Default::default()
        };
        let code = Field::Activity.get(&s);
        assert_eq!(Activity::from_code(code), Some(a));
        let mut t = VcpuState {
            activity: Activity::Hlt,
            ..Default::default()
        };
        Field::Activity.set(&mut t, code);
        assert_eq!(t.activity, a);
    }
}
