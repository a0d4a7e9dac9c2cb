//! Property tests: INIT keeps exactly the state the documents say it keeps and resets the rest;
//! RESET depends on nothing but the CPU model and the vCPU.
//!
//! The set of fields INIT preserves is written out below by hand, from the documents, as a
//! predicate on field names, and compared with both the tables (`row`) and `expected_state`:
//!
//! - Intel SDM Vol. 3A §10.1: "during an INIT, the internal caches, MSRs, MTRRs, and x87 FPU
//!   state are left unchanged"; Table 10-1 lists XMM/YMM, MXCSR, TSC, PAT, performance counters
//!   and "all other MSRs" as unchanged by INIT, and DR0–DR7 as reset by it. §11.4.7.3: INIT
//!   leaves the APIC ID (and, being hard-wired, the version) alone.
//! - AMD APM Vol. 2 Table 14-1: x87, 64-bit media, SSE state, MTRRs, machine-check, performance
//!   and other MSRs, TSC, SMBASE, XCR0, PKRU and DR0–DR7 are "Not modified" by INIT.
//! - The FS and GS base MSRs are the FS/GS segment bases, which INIT sets to 0.
//! - Intel: INIT is blocked in VMX root operation and is a VM exit in non-root operation, so
//!   every part of the nested state survives an INIT that takes effect (and the SVM-only parts,
//!   which Intel lacks, are left alone); AMD: INIT clears EFER and with it SVME, leaving guest
//!   mode, and is only recognised with GIF = 1, so every nested part takes its RESET value.
//! - CR0 is neither: INIT sets it to 0x10 | (CR0 before & 0x6000_0000) (SDM Table 10-1 note 2,
//!   APM Table 14-1).

use proptest::collection::vec;
use proptest::prelude::*;
use vcpu_reset_spec::{
    CpuModel, Derivation, Event, Field, Rule, Transition, VcpuIdentity, VcpuState, Vendor,
    expected_state, expected_value, row, table,
};

/// The fields INIT leaves unchanged, by name, per vendor. Independent of the tables on purpose.
fn preserved_by_init(name: &str, vendor: Vendor) -> bool {
    let opmask = matches!(name, "k0" | "k1" | "k2" | "k3" | "k4" | "k5" | "k6" | "k7");
    let debug = matches!(name, "dr0" | "dr1" | "dr2" | "dr3" | "dr6" | "dr7");
    // KVM's paravirtual areas, which KVM turns off on INIT too.
    let kvm_pv_area = matches!(
        name,
        "msr.msr_kvm_system_time_new"
            | "msr.msr_kvm_system_time"
            | "msr.msr_kvm_async_pf_en"
            | "msr.msr_kvm_async_pf_int"
            | "msr.msr_kvm_async_pf_ack"
            | "msr.msr_kvm_steal_time"
            | "msr.msr_kvm_pv_eoi_en"
    );
    // CET state, which KVM clears on INIT (and IA32_BNDCFGS, Intel's MSR, with the MPX state).
    let cleared_with_xstate = matches!(
        name,
        "msr.ia32_u_cet"
            | "msr.ia32_s_cet"
            | "msr.ia32_pl0_ssp"
            | "msr.ia32_pl1_ssp"
            | "msr.ia32_pl2_ssp"
            | "msr.ia32_pl3_ssp"
            | "msr.ia32_interrupt_ssp_table_addr"
    ) || (vendor == Vendor::Intel && name == "msr.ia32_bndcfgs");
    name.starts_with("x87.")
        || name == "mxcsr"
        || name.starts_with("xmm")
        || name.starts_with("ymm")
        || name.starts_with("zmm")
        || opmask
        // AMX's tile configuration and tile data, XSAVE state like the rest.
        || name.starts_with("xtilecfg.")
        || name.starts_with("tmm")
        || name == "xcr0"
        || name == "pkru"
        || (name.starts_with("msr.")
            && name != "msr.ia32_fs_base"
            && name != "msr.ia32_gs_base"
            && !kvm_pv_area
            && !cleared_with_xstate
            // A view of the local APIC timer, which INIT disarms (Intel's MSR).
            && !(vendor == Vendor::Intel && name == "msr.ia32_tsc_deadline"))
        || name == "lapic.id"
        || name == "lapic.version"
        || (vendor == Vendor::Amd && debug)
        || (vendor == Vendor::Intel && name.starts_with("nested."))
}

fn model(vendor: Vendor, gp_counters: u8) -> CpuModel {
    CpuModel {
        vendor,
        signature: match vendor {
            Vendor::Intel => 0x0009_06ea,
            Vendor::Amd => 0x00a2_0f12,
        },
        gp_counters,
        apic_version: 0x0005_0014,
        mtrr_cap: 0x508,
        vmx_capabilities: match vendor {
            Vendor::Intel => vcpu_reset_spec::DEFAULT_VMX_CAPABILITIES,
            Vendor::Amd => [0; vcpu_reset_spec::VMX_CAPABILITY_MSRS],
        },
        sgx_launch_control: vendor == Vendor::Intel,
        mcg_cap: None,
        arch_capabilities: None,
    }
}

/// A state with every field set, in `Field::all` order, from `values`.
fn state_from(values: &[u128]) -> VcpuState {
    let mut s = VcpuState::default();
    for (f, v) in Field::all().into_iter().zip(values) {
        f.set(&mut s, *v);
    }
    s
}

fn vendor() -> impl Strategy<Value = Vendor> {
    prop_oneof![Just(Vendor::Intel), Just(Vendor::Amd)]
}

fn vcpu() -> impl Strategy<Value = VcpuIdentity> {
    (any::<u32>(), any::<bool>()).prop_map(|(apic_id, bsp)| VcpuIdentity { apic_id, bsp })
}

fn prior() -> impl Strategy<Value = VcpuState> {
    vec(any::<u128>(), Field::all().len()).prop_map(|v| state_from(&v))
}

#[test]
fn tables_preserve_exactly_the_documented_set_on_init() {
    for v in [Vendor::Intel, Vendor::Amd] {
        for f in Field::all() {
            let name = f.name();
            let r = row(f, v, Event::Init);
            if f == Field::Cr0 {
                assert_eq!(r.rule, Rule::Derived(Derivation::Cr0Init));
                continue;
            }
            assert_eq!(
                r.rule == Rule::Preserved,
                preserved_by_init(&name, v),
                "{name} on {v:?}: table rule {:?}",
                r.rule
            );
        }
    }
}

#[test]
fn the_preserved_set_is_not_empty_and_not_everything() {
    // Guards the predicate itself against matching nothing or everything.
    for v in [Vendor::Intel, Vendor::Amd] {
        let names: Vec<String> = Field::all().iter().map(Field::name).collect();
        let kept = names.iter().filter(|n| preserved_by_init(n, v)).count();
        assert!(kept > 100 && kept < names.len() - 50, "{v:?}: {kept}");
        for n in [
            "x87.fcw",
            "xmm15",
            "ymm0.hi",
            "zmm31.3",
            "k7",
            "msr.ia32_pat",
        ] {
            assert!(preserved_by_init(n, v), "{n}");
        }
        for n in [
            "rip",
            "cs.base",
            "cr3",
            "efer",
            "lapic.svr",
            "msr.ia32_fs_base",
        ] {
            assert!(!preserved_by_init(n, v), "{n}");
        }
    }
    assert!(preserved_by_init("dr7", Vendor::Amd));
    assert!(!preserved_by_init("dr7", Vendor::Intel));
    assert!(preserved_by_init("nested.state", Vendor::Intel));
    assert!(!preserved_by_init("nested.state", Vendor::Amd));
}

proptest! {
    #[test]
    fn init_keeps_exactly_the_preserved_set(
        v in vendor(),
        id in vcpu(),
        n in 0u8..=32,
        prior in prior(),
    ) {
        let m = model(v, n);
        let after = expected_state(&m, id, Transition::Init(&prior));
        let reset = expected_state(&m, id, Transition::Reset);
        for f in Field::all() {
            let name = f.name();
            if f == Field::Cr0 {
                prop_assert_eq!(after.cr0, 0x10 | (prior.cr0 & 0x6000_0000), "cr0");
            } else if name == "lapic.ldr" && prior.msrs.apic_base & (1 << 10) != 0 {
                // x2APIC mode stays across INIT, and with it the LDR derived from the ID.
                let x2 = ((id.apic_id >> 4) << 16) | (1 << (id.apic_id & 0xf));
                prop_assert_eq!(after.lapic.ldr, x2, "lapic.ldr in x2APIC mode");
            } else if preserved_by_init(&name, v) {
                prop_assert_eq!(f.get(&after), f.get(&prior), "{} must be kept", name);
            } else {
                prop_assert_eq!(f.get(&after), f.get(&reset), "{} must be reset", name);
            }
        }
    }

    #[test]
    fn init_is_idempotent(v in vendor(), id in vcpu(), prior in prior()) {
        let m = model(v, 4);
        let once = expected_state(&m, id, Transition::Init(&prior));
        let twice = expected_state(&m, id, Transition::Init(&once));
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn init_after_reset_is_reset(v in vendor(), id in vcpu(), n in 0u8..=32) {
        let m = model(v, n);
        let reset = expected_state(&m, id, Transition::Reset);
        prop_assert_eq!(expected_state(&m, id, Transition::Init(&reset)), reset);
    }

    #[test]
    fn reset_depends_only_on_model_and_vcpu(
        v in vendor(),
        id in vcpu(),
        n in 0u8..=32,
        prior in prior(),
    ) {
        let m = model(v, n);
        let a = expected_state(&m, id, Transition::Reset);
        let b = expected_state(&m, id, Transition::Reset);
        prop_assert_eq!(a, b);
        for r in table(v, Event::Reset) {
            prop_assert_ne!(r.rule, Rule::Preserved, "{}", r.field);
            if let Rule::Derived(d) = r.rule {
                prop_assert_eq!(
                    d.evaluate(&m, id, Some(&prior)),
                    d.evaluate(&m, id, None),
                    "{} depends on the earlier state", r.field
                );
            }
            prop_assert_eq!(
                expected_value(&r, &m, id, Transition::Reset),
                r.field.get(&a),
                "{}", r.field
            );
        }
    }
}
