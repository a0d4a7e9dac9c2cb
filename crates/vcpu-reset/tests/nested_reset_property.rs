//! Property: RESET from any nested state — any sequence of VMX and SVM instructions the guest
//! executed, with the VMX capability, SGX hash, FEATURE_CONTROL and VM_HSAVE_PA MSRs and every
//! other field set at random — ends in exactly the spec's RESET state, with no poison left and
//! nothing for verify() to report.

use proptest::prelude::*;
use vcpu_reset::backend::Exit;
use vcpu_reset::backend::model::{ModelVcpu, NestedVmx};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::{NESTED_FIELDS, Vcpu};
use vcpu_reset::spec::{
    self, Activity, CpuModel, Field, Msr, Nested, Transition, VcpuIdentity, VcpuState, Vendor,
};

/// One thing a guest hypervisor does. Failures (e.g. VMPTRLD outside VMX operation) are
/// ignored, as a faulting instruction changes nothing.
#[derive(Clone, Copy, Debug)]
enum Op {
    Vmxon(u8),
    Vmxoff,
    Vmptrld(u8),
    Vmclear(u8),
    Vmlaunch,
    VmEntry,
    VmExit,
    Evmcs(Option<u8>),
    Clgi,
    Stgi,
    Vmrun(bool),
    SvmVmexit,
}

fn page(n: u8) -> u64 {
    (u64::from(n) + 1) << 12
}

fn apply(n: &mut NestedVmx, op: Op) {
    let _ = match op {
        Op::Vmxon(p) => n.vmxon(page(p)),
        Op::Vmxoff => n.vmxoff(),
        Op::Vmptrld(p) => n.vmptrld(page(p)),
        Op::Vmclear(p) => n.vmclear(page(p)),
        Op::Vmlaunch => n.vmlaunch(),
        Op::VmEntry => n.vm_entry(),
        Op::VmExit => n.vm_exit(),
        Op::Evmcs(p) => n.set_evmcs(p.map(page)),
        Op::Clgi => n.clgi(),
        Op::Stgi => n.stgi(),
        Op::Vmrun(i) => n.vmrun(i),
        Op::SvmVmexit => n.svm_vmexit(),
    };
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4).prop_map(Op::Vmxon),
        1 => Just(Op::Vmxoff),
        3 => (0u8..4).prop_map(Op::Vmptrld),
        1 => (0u8..4).prop_map(Op::Vmclear),
        2 => Just(Op::Vmlaunch),
        2 => Just(Op::VmEntry),
        1 => Just(Op::VmExit),
        1 => prop::option::of(0u8..4).prop_map(Op::Evmcs),
        2 => Just(Op::Clgi),
        1 => Just(Op::Stgi),
        2 => any::<bool>().prop_map(Op::Vmrun),
        1 => Just(Op::SvmVmexit),
    ]
}

/// A random state the model can hold without nested state (the nested state comes from the
/// instructions), with every extension MSR random.
fn any_state() -> impl Strategy<Value = VcpuState> {
    let n = Field::all().len();
    (prop::collection::vec(any::<u128>(), n), 0u8..4).prop_map(|(values, act)| {
        let mut s = VcpuState::default();
        for (f, v) in Field::all().into_iter().zip(values) {
            let v = match f {
                Field::Msr(Msr::SysenterCs | Msr::Smbase) => v & 0xffff_ffff,
                _ => v,
            };
            f.set(&mut s, v);
        }
        s.nested = Nested::NONE;
        s.activity = Activity::from_code(act.into()).unwrap_or_default();
        s
    })
}

fn model(vendor: Vendor, lc: bool) -> CpuModel {
    CpuModel {
        sgx_launch_control: lc,
        ..CpuModel::generic(vendor)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn reset_from_any_nested_state_is_the_spec_reset_state(
        prior in any_state(),
        ops in prop::collection::vec(op(), 0..24),
        intel in any::<bool>(),
        lc in any::<bool>(),
        id in 0u32..3,
    ) {
        let model = model(if intel { Vendor::Intel } else { Vendor::Amd }, lc);
        let ident = VcpuIdentity::new(id);
        let mut cache = VcpuCache::with_state(ModelVcpu::new_poisoned(), &prior);
        cache.flush().unwrap();
        // The guest executes the instructions.
        cache.backend_mut().set_guest(Box::new(move |g| {
            for op in &ops {
                apply(g.nested(), *op);
            }
            Exit::Hlt
        }));
        prop_assert_eq!(cache.run().unwrap(), Exit::Hlt);
        cache.backend_mut().clear_guest();
        // The engine adopts the vCPU knowing nothing, and RESETs it.
        let mut v = Vcpu::new(VcpuCache::adopt(cache.into_backend().unwrap()), model, ident);
        v.reset().unwrap();
        prop_assert!(v.verify().unwrap().is_empty());
        let backend = v.into_cache().into_backend().unwrap();
        prop_assert_eq!(backend.poisoned(), Vec::<String>::new());
        prop_assert!(!backend.nested().is_present());
        let mut fresh = VcpuCache::adopt(backend);
        let got = *fresh.state().unwrap();
        let want = spec::expected_state(&model, ident, Transition::Reset);
        for f in NESTED_FIELDS {
            prop_assert_eq!(f.get(&got), f.get(&want), "{}", f);
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(got.nested, Nested::NONE);
    }
}
