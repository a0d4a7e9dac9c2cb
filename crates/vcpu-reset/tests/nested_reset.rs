//! RESET frees everything nested: from VMX non-root operation it drops the VMXON region, the
//! current VMCS and the enlightened VMCS (SDM Vol. 3C §24.7, §25.1; KVM's __vmx_vcpu_reset);
//! it restores the VMX capability MSRs after the VMM or the guest changed them (SDM Vol. 3D,
//! Appendix A), the SGX launch-enclave hashes (SDM Vol. 4, Table 2-2) and clears
//! IA32_FEATURE_CONTROL; and verify() names a nested field a backend failed to free.

use vcpu_reset::backend::Exit;
use vcpu_reset::backend::model::{INVALID_VMCS_POINTER, ModelVcpu};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::{DeviationKind, NESTED_FIELDS, Vcpu};
use vcpu_reset::spec::{
    self, CpuModel, DEFAULT_VMX_CAPABILITIES, Field, INTEL_LE_PUBKEY_HASH, Msr, NestedReg,
    Transition, VcpuIdentity, Vendor,
};

const INTEL: CpuModel = CpuModel {
    sgx_launch_control: true,
    ..CpuModel::generic(Vendor::Intel)
};

fn powered_on(model: CpuModel) -> Vcpu<ModelVcpu> {
    let mut v = Vcpu::new(
        VcpuCache::adopt(ModelVcpu::new_poisoned()),
        model,
        VcpuIdentity::new(0),
    );
    v.reset().unwrap();
    v
}

/// VMXON, VMPTRLD, VMLAUNCH, VM entry and an enlightened VMCS, done by the guest.
fn enter_vmx_non_root(v: &mut Vcpu<ModelVcpu>) {
    v.cache_mut().backend_mut().set_guest(Box::new(|g| {
        let n = g.nested();
        let ok = n.vmxon(0x1000).is_ok()
            && n.vmptrld(0x2000).is_ok()
            && n.vmlaunch().is_ok()
            && n.set_evmcs(Some(0x3000)).is_ok()
            && n.vm_entry().is_ok();
        if ok { Exit::Hlt } else { Exit::Shutdown }
    }));
    assert_eq!(v.cache_mut().run().unwrap(), Exit::Hlt);
    v.cache_mut().backend_mut().clear_guest();
}

#[test]
fn reset_in_vmx_non_root_drops_the_current_vmcs_and_the_evmcs_pointer() {
    let mut v = powered_on(INTEL);
    enter_vmx_non_root(&mut v);
    {
        let n = v.cache().backend().nested();
        assert_eq!(n.current_vmcs(), Some(0x2000));
        assert_eq!(n.evmcs_pointer(), Some(0x3000));
        assert!(n.in_guest_mode());
    }
    v.reset().unwrap();
    let n = v.cache().backend().nested();
    assert_eq!(n.vmxon_pointer(), None);
    assert_eq!(n.current_vmcs_pointer(), INVALID_VMCS_POINTER);
    assert_eq!(n.current_vmcs_pointer(), 0xffff_ffff_ffff_ffff);
    assert_eq!(n.evmcs_pointer(), None);
    assert!(!n.in_guest_mode());
    assert!(n.gif());
    assert!(!n.is_present());
    assert_eq!(n.launch_state(0x2000), None);
    assert!(v.verify().unwrap().is_empty());
    // Through the fields, as a VMM adopting the vCPU sees it.
    for (r, want) in [
        (NestedReg::VmxonPointer, u128::from(u64::MAX)),
        (NestedReg::CurrentVmcs, u128::from(u64::MAX)),
        (NestedReg::EvmcsPointer, u128::from(u64::MAX)),
        (NestedReg::GuestMode, 0),
        (NestedReg::Gif, 1),
        (NestedReg::InterceptInit, 0),
    ] {
        assert_eq!(
            v.cache_mut().get(Field::NestedReg(r)).unwrap(),
            want,
            "{r:?}"
        );
    }
    assert_eq!(v.cache_mut().get(Field::Nested).unwrap(), 0);
}

#[test]
fn capability_msrs_are_restored_after_the_vmm_or_the_guest_changed_them() {
    let mut v = powered_on(INTEL);
    // The VMM narrows IA32_VMX_PROCBASED_CTLS2 (no allowed-1 settings) and IA32_VMX_BASIC.
    v.cache_mut().set(Field::VmxCap(11), 0).unwrap();
    v.cache_mut()
        .set(Field::VmxCap(0), 0x0000_1000_11e5_7ed0)
        .unwrap();
    v.cache_mut().flush().unwrap();
    // The guest (on the model, the processor itself) changes IA32_VMX_MISC, a hash MSR and
    // locks IA32_FEATURE_CONTROL.
    v.cache_mut().backend_mut().set_guest(Box::new(|g| {
        let ok = g.set(Field::VmxCap(5), 0xdead).is_ok()
            && g.set(Field::SgxLeHash(2), 0x1234).is_ok()
            && g.set(Field::Msr(Msr::FeatureControl), 0x5).is_ok();
        if ok { Exit::Hlt } else { Exit::Shutdown }
    }));
    assert_eq!(v.cache_mut().run().unwrap(), Exit::Hlt);
    v.cache_mut().backend_mut().clear_guest();
    assert_eq!(v.cache_mut().get(Field::VmxCap(5)).unwrap(), 0xdead);

    // INIT keeps them all (SDM Table 10-1: MSRs unchanged).
    v.init().unwrap();
    assert_eq!(v.cache_mut().get(Field::VmxCap(11)).unwrap(), 0);
    assert_eq!(v.cache_mut().get(Field::VmxCap(5)).unwrap(), 0xdead);
    assert_eq!(v.cache_mut().get(Field::SgxLeHash(2)).unwrap(), 0x1234);
    assert_eq!(
        v.cache_mut().get(Field::Msr(Msr::FeatureControl)).unwrap(),
        0x5
    );

    // RESET restores the configured capabilities and Intel's digest, and clears the lock.
    v.reset().unwrap();
    v.cache_mut().invalidate();
    assert_eq!(
        v.cache_mut().get(Field::VmxCap(0)).unwrap(),
        0x00d8_1000_11e5_7ed0
    );
    assert_eq!(
        v.cache_mut().get(Field::VmxCap(5)).unwrap(),
        0x0000_0000_2000_0165
    );
    assert_eq!(
        v.cache_mut().get(Field::VmxCap(11)).unwrap(),
        0x0013_7bff_0000_0000
    );
    for (i, want) in DEFAULT_VMX_CAPABILITIES.iter().enumerate() {
        assert_eq!(
            v.cache_mut().get(Field::VmxCap(i as u8)).unwrap(),
            u128::from(*want)
        );
    }
    assert_eq!(
        v.cache_mut().get(Field::SgxLeHash(2)).unwrap(),
        0xc491_6d99_f2b3_735d
    );
    assert_eq!(
        u128::from(INTEL_LE_PUBKEY_HASH[2]),
        0xc491_6d99_f2b3_735d_u128
    );
    assert_eq!(
        v.cache_mut().get(Field::Msr(Msr::FeatureControl)).unwrap(),
        0
    );
    assert!(v.verify().unwrap().is_empty());
}

#[test]
fn reset_of_an_svm_vcpu_clears_svme_hsave_gif_and_guest_mode() {
    let amd = CpuModel::generic(Vendor::Amd);
    let mut v = powered_on(amd);
    v.cache_mut().set(Field::Efer, 0x1000).unwrap();
    v.cache_mut()
        .set(Field::Msr(Msr::VmHsavePa), 0x4000)
        .unwrap();
    v.cache_mut().flush().unwrap();
    v.cache_mut().backend_mut().set_guest(Box::new(|g| {
        if g.nested().clgi().is_ok() && g.nested().vmrun(true).is_ok() {
            Exit::Hlt
        } else {
            Exit::Shutdown
        }
    }));
    assert_eq!(v.cache_mut().run().unwrap(), Exit::Hlt);
    v.cache_mut().backend_mut().clear_guest();
    v.reset().unwrap();
    v.cache_mut().invalidate();
    assert_eq!(v.cache_mut().get(Field::Efer).unwrap(), 0);
    assert_eq!(v.cache_mut().get(Field::Msr(Msr::VmHsavePa)).unwrap(), 0);
    let n = v.cache().backend().nested();
    assert!(!n.in_guest_mode() && n.gif() && !n.intercepts_init());
    let want = spec::expected_state(&amd, VcpuIdentity::new(0), Transition::Reset);
    assert_eq!(*v.cache_mut().state().unwrap(), want);
}

#[test]
fn verify_names_a_current_vmcs_pointer_kept_across_reset() {
    let mut v = powered_on(INTEL);
    enter_vmx_non_root(&mut v);
    v.reset().unwrap();
    // A backend that forgot to drop the current VMCS.
    v.cache_mut()
        .backend_mut()
        .nested_mut()
        .force_current_vmcs_pointer(0x2000);
    let d = v.verify().unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field, Field::NestedReg(NestedReg::CurrentVmcs));
    assert_eq!((d[0].expected, d[0].actual), (u64::MAX.into(), 0x2000));
    assert_eq!(d[0].kind, DeviationKind::Mismatch);
    assert!(NESTED_FIELDS.contains(&d[0].field));
}

#[test]
fn the_nested_field_list_covers_every_extension_field_once() {
    let mut seen = NESTED_FIELDS.to_vec();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), NESTED_FIELDS.len());
    for f in Field::all() {
        let ext = matches!(
            f,
            Field::Nested
                | Field::NestedReg(_)
                | Field::VmxCap(_)
                | Field::SgxLeHash(_)
                | Field::Msr(Msr::FeatureControl | Msr::VmHsavePa)
        );
        assert_eq!(NESTED_FIELDS.contains(&f), ext, "{f}");
    }
}
