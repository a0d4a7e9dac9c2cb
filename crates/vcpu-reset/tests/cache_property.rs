//! Property: the register cache over the (poisoned) VMX-style model behaves exactly like an
//! uncached `VcpuState` under random sequences of read / write / run / reset.
//!
//! Checked after every step: each read equals the reference and is never the poison pattern;
//! no class is loaded more than once between two runs; and, from inside the guest at each run,
//! every value the caller wrote has reached the backend (every dirty slot was flushed).

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use vcpu_reset::backend::model::{ModelVcpu, is_poison};
use vcpu_reset::backend::{Exit, StateClass};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::spec::{
    self, CpuModel, Field, Gpr, Msr, Transition, VcpuIdentity, VcpuState, Vendor,
};

#[derive(Clone, Debug)]
enum Op {
    Read(usize),
    Write(usize, u128),
    Run(u64),
    Reset,
}

fn fields() -> &'static [Field] {
    static F: std::sync::OnceLock<Vec<Field>> = std::sync::OnceLock::new();
    F.get_or_init(Field::all)
}

/// What the model can hold: SYSENTER_CS and SMBASE are 32-bit VMCS fields, the activity state
/// one of the four VMX encodings (a host's never-started AP, 4, is refused), and nested state
/// can only be dropped (1 means "in VMX operation", entered by VMXON, not by a write; each part
/// can be written only with its "none" value).
fn held(field: Field, v: u128) -> u128 {
    match field {
        Field::Msr(Msr::SysenterCs | Msr::Smbase) => v & 0xffff_ffff,
        Field::Activity => v & 3,
        Field::Nested => 0,
        Field::NestedReg(r) => r.none(),
        _ => v & field.mask(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let n = fields().len();
    prop_oneof![
        4 => (0..n).prop_map(Op::Read),
        4 => (0..n, any::<u128>()).prop_map(|(i, v)| Op::Write(i, v)),
        2 => any::<u64>().prop_map(Op::Run),
        1 => Just(Op::Reset),
    ]
}

/// The guest's doing on a run: a few registers change as a function of `seed`.
fn guest_changes(seed: u64) -> Vec<(Field, u128)> {
    vec![
        (Field::Gpr(Gpr::Rax), u128::from(seed)),
        (Field::Rip, u128::from(seed.rotate_left(7))),
        (Field::Cr3, u128::from(seed & 0xffff_f000)),
        (
            Field::Xmm((seed % 16) as u8),
            u128::from(seed) << 64 | 0x1234,
        ),
        (
            Field::Msr(Msr::Pat),
            u128::from(seed ^ 0x0007_0406_0007_0406),
        ),
    ]
}

fn reset_state() -> VcpuState {
    spec::expected_state(
        &CpuModel::generic(Vendor::Intel),
        VcpuIdentity::new(0),
        Transition::Reset,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn cache_matches_an_uncached_reference(ops in prop::collection::vec(op(), 1..60)) {
        let initial = reset_state();
        let reference = Arc::new(Mutex::new(initial));
        let flush_ok = Arc::new(Mutex::new(Vec::<String>::new()));

        let mut model = ModelVcpu::new_poisoned();
        let seed = Arc::new(Mutex::new(0u64));
        {
            let reference = reference.clone();
            let flush_ok = flush_ok.clone();
            let seed = seed.clone();
            model.set_guest(Box::new(move |view| {
                let mut r = reference.lock().unwrap();
                // Everything the caller wrote must have been flushed before the run.
                for f in fields() {
                    if matches!(f, Field::Msr(Msr::FsBase | Msr::GsBase)) {
                        continue;
                    }
                    let got = view.get(*f).unwrap();
                    if got != held(*f, f.get(&r)) {
                        flush_ok.lock().unwrap().push(format!("{f}: backend {got:#x}, written {:#x}", f.get(&r)));
                    }
                }
                for (f, v) in guest_changes(*seed.lock().unwrap()) {
                    view.set(f, v).unwrap();
                    f.set(&mut r, held(f, v));
                }
                Exit::Hlt
            }));
        }
        let mut cache = VcpuCache::with_state(model, &initial);

        for op in ops {
            match op {
                Op::Read(i) => {
                    let f = fields()[i];
                    let got = cache.get(f).unwrap();
                    let want = f.get(&reference.lock().unwrap());
                    prop_assert_eq!(got, want, "read of {}", f);
                    prop_assert!(!is_poison(f, got) || is_poison(f, want), "{} returned poison", f);
                }
                Op::Write(i, v) => {
                    let f = fields()[i];
                    let v = held(f, v);
                    cache.set(f, v).unwrap();
                    f.set(&mut reference.lock().unwrap(), v);
                }
                Op::Run(s) => {
                    *seed.lock().unwrap() = s;
                    prop_assert_eq!(cache.run().unwrap(), Exit::Hlt);
                    let problems = std::mem::take(&mut *flush_ok.lock().unwrap());
                    prop_assert!(problems.is_empty(), "not flushed before run: {:?}", problems);
                }
                Op::Reset => {
                    let r = reset_state();
                    cache.write_state(&r);
                    *reference.lock().unwrap() = r;
                }
            }
            for c in StateClass::ALL {
                prop_assert!(cache.loads_since_run(c) <= 1, "{} loaded {} times between runs", c, cache.loads_since_run(c));
            }
        }
        // Finally the backend, read directly, equals the reference.
        let mut model = cache.into_backend().unwrap();
        model.clear_guest();
        let mut fresh = VcpuCache::adopt(model);
        let state = *fresh.state().unwrap();
        let r = reference.lock().unwrap();
        for f in fields() {
            prop_assert_eq!(f.get(&state), held(*f, f.get(&r)), "final {}", f);
        }
    }
}
