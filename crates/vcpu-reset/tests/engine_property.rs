//! Properties of the RESET/INIT engine on the VMX-style model backend:
//! - RESET of a poisoned vCPU (never written) leaves no poison anywhere and exactly the spec's
//!   RESET state;
//! - RESET from any prior state gives exactly the spec's RESET state;
//! - INIT from any prior state gives exactly the spec's INIT state of that prior (preserved
//!   fields equal to the prior, the rest their INIT values).

use proptest::prelude::*;
use vcpu_reset::backend::model::ModelVcpu;
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{
    self, Activity, CpuModel, Field, Msr, Transition, VcpuIdentity, VcpuState, Vendor,
};

/// A random state the model can hold (SYSENTER_CS and SMBASE are 32-bit VMCS fields; nested
/// state only comes from VMXON, so there is none here — nested RESET is tested in
/// `nested_reset_property.rs`; the activity state is one of the four).
fn any_state() -> impl Strategy<Value = VcpuState> {
    let n = Field::all().len();
    (prop::collection::vec(any::<u128>(), n), 0u8..4).prop_map(|(values, act)| {
        let mut s = VcpuState::default();
        for (f, v) in Field::all().into_iter().zip(values) {
            let v = match f {
                Field::Msr(Msr::SysenterCs | Msr::Smbase) => v & 0xffff_ffff,
                Field::Nested => 0,
                Field::NestedReg(r) => r.none(),
                _ => v,
            };
            f.set(&mut s, v);
        }
        s.activity = Activity::from_code(act.into()).unwrap_or_default();
        s
    })
}

fn model_of(vendor: Vendor, signature: u32) -> CpuModel {
    CpuModel {
        signature,
        ..CpuModel::generic(vendor)
    }
}

/// The whole state the backend holds, read through a fresh cache.
fn backend_state(model: ModelVcpu) -> VcpuState {
    let mut c = VcpuCache::adopt(model);
    *c.state().unwrap()
}

fn vendor() -> impl Strategy<Value = Vendor> {
    prop_oneof![Just(Vendor::Intel), Just(Vendor::Amd)]
}

#[test]
fn reset_leaves_no_poison() {
    let model = model_of(Vendor::Intel, 0x000a_06a4);
    for id in [0, 1] {
        let mut v = Vcpu::new(
            VcpuCache::adopt(ModelVcpu::new_poisoned()),
            model,
            VcpuIdentity::new(id),
        );
        v.reset().unwrap();
        let backend = v.into_cache().into_backend().unwrap();
        assert_eq!(backend.poisoned(), Vec::<String>::new(), "vCPU {id}");
        let got = backend_state(backend);
        let want = spec::expected_state(&model, VcpuIdentity::new(id), Transition::Reset);
        assert_eq!(got, want, "vCPU {id}");
    }
}

/// The MSRs a previous boot could leave behind beyond the SDM tables (KVM PV, Hyper-V, PMU,
/// CET, XFD, MCE, AMD): a RESET of a poisoned vCPU of either vendor gives each its RESET value.
#[test]
fn reset_establishes_the_msrs_a_previous_boot_could_leave_on_either_vendor() {
    let names = [
        "msr.msr_kvm_poll_control",
        "msr.msr_misc_features_enables",
        "msr.msr_kvm_steal_time",
        "msr.msr_kvm_wall_clock_new",
        "msr.msr_kvm_async_pf_int",
        "msr.hv_x64_msr_hypercall",
        "msr.hv_x64_msr_sint0",
        "msr.hv_x64_msr_stimer3_count",
        "msr.ia32_perfevtsel0",
        "msr.ia32_pmc7",
        "msr.ia32_fixed_ctr_ctrl",
        "msr.ia32_ds_area",
        "msr.perf_ctl5",
        "msr.perf_cntr_global_ctl",
        "msr.ia32_xfd",
        "msr.ia32_s_cet",
        "msr.ia32_pl3_ssp",
        "msr.ia32_umwait_control",
        "msr.ia32_tsx_ctrl",
        "msr.ia32_bndcfgs",
        "msr.ia32_mcg_ctl",
        "msr.ia32_mc3_ctl2",
        "msr.msr_smi_count",
        "msr.hwcr",
        "msr.vm_cr",
        "msr.tsc_ratio",
        "msr.virt_spec_ctrl",
    ];
    for vendor in [Vendor::Intel, Vendor::Amd] {
        let model = model_of(vendor, 0x000a_06a4);
        let mut v = Vcpu::new(
            VcpuCache::adopt(ModelVcpu::new_poisoned()),
            model,
            VcpuIdentity::new(0),
        );
        v.reset().unwrap();
        let got = backend_state(v.into_cache().into_backend().unwrap());
        let want = spec::expected_state(&model, VcpuIdentity::new(0), Transition::Reset);
        for name in names {
            let f = Field::from_name(name).unwrap_or_else(|| panic!("no field {name}"));
            assert_eq!(f.get(&got), f.get(&want), "{name} {vendor:?}");
        }
        assert_eq!(got.msrs.kvm_poll_control, 1, "{vendor:?}");
        assert_eq!(got.msrs.hv_sint0, 0x1_0000, "{vendor:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn reset_from_any_state_is_the_spec_reset_state(
        prior in any_state(), vendor in vendor(), id in 0u32..4, sig in any::<u32>()
    ) {
        let model = model_of(vendor, sig);
        let ident = VcpuIdentity::new(id);
        let mut v = Vcpu::new(VcpuCache::with_state(ModelVcpu::new_poisoned(), &prior), model, ident);
        v.cache_mut().flush().unwrap();
        v.cache_mut().invalidate();
        v.reset().unwrap();
        prop_assert!(v.verify().unwrap().is_empty());
        let got = backend_state(v.into_cache().into_backend().unwrap());
        prop_assert_eq!(got, spec::expected_state(&model, ident, Transition::Reset));
    }

    #[test]
    fn init_from_any_state_is_the_spec_init_state(
        prior in any_state(), vendor in vendor(), id in 0u32..4, sig in any::<u32>()
    ) {
        let model = model_of(vendor, sig);
        let ident = VcpuIdentity::new(id);
        // The vCPU holds `prior`; the engine adopts it knowing nothing.
        let mut loaded = VcpuCache::with_state(ModelVcpu::new_poisoned(), &prior);
        loaded.flush().unwrap();
        let mut v = Vcpu::new(VcpuCache::adopt(loaded.into_backend().unwrap()), model, ident);
        v.init().unwrap();
        prop_assert!(v.verify().unwrap().is_empty());
        let got = backend_state(v.into_cache().into_backend().unwrap());
        let want = spec::expected_state(&model, ident, Transition::Init(&prior));
        for f in Field::all() {
            prop_assert_eq!(f.get(&got), f.get(&want), "{}", f);
        }
        // Spot checks typed from the tables, independent of expected_state.
        prop_assert_eq!(got.cr0, 0x10 | (prior.cr0 & 0x6000_0000));
        prop_assert_eq!(got.cr3, 0);
        prop_assert_eq!(got.fpu, prior.fpu);
        prop_assert_eq!(got.msrs.pat, prior.msrs.pat);
        prop_assert_eq!(got.lapic.id, prior.lapic.id);
        prop_assert_eq!(got.activity, if id == 0 { Activity::Active } else { Activity::WaitForSipi });
    }
}
