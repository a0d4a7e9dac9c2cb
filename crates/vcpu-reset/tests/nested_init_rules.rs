//! INIT under the virtualization extensions' blocking rules, one test per rule, on the
//! VMX-style model through the engine: held in VMX root operation until VMXOFF (SDM Vol. 3C
//! §24.8), a VM exit in VMX non-root operation (§24.8, §26.2), held while GIF = 0 until STGI
//! (APM Vol. 2 §15.17), a #VMEXIT when SVM guest mode intercepts INIT (§15.13.4), and taken
//! (leaving guest mode) when it does not.

use vcpu_reset::backend::Exit;
use vcpu_reset::backend::model::{GuestView, ModelVcpu};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{
    self, Activity, CpuModel, Field, Gpr, InitOutcome, InitRule, NestedReg, Transition,
    VcpuIdentity, Vendor,
};

const INTEL: CpuModel = CpuModel::generic(Vendor::Intel);
const AMD: CpuModel = CpuModel::generic(Vendor::Amd);

/// A RESET vCPU 1 (an AP, so a taken INIT shows as wait-for-SIPI) with RAX changed.
fn vcpu(model: CpuModel) -> Vcpu<ModelVcpu> {
    let mut v = Vcpu::new(
        VcpuCache::adopt(ModelVcpu::new_poisoned()),
        model,
        VcpuIdentity::new(1),
    );
    v.reset().unwrap();
    v.cache_mut().set(Field::Gpr(Gpr::Rax), 0x1234).unwrap();
    v.cache_mut().set(Field::Cr3, 0x5000).unwrap();
    v.cache_mut().flush().unwrap();
    v
}

/// Let the guest do `f` to its nested state in one run.
fn guest(v: &mut Vcpu<ModelVcpu>, f: fn(&mut GuestView<'_>) -> bool) {
    v.cache_mut().backend_mut().set_guest(Box::new(
        move |g| if f(g) { Exit::Hlt } else { Exit::Shutdown },
    ));
    assert_eq!(
        v.cache_mut().run().unwrap(),
        Exit::Hlt,
        "guest instruction failed"
    );
    v.cache_mut().backend_mut().clear_guest();
}

fn nested(v: &mut Vcpu<ModelVcpu>, r: NestedReg) -> u128 {
    v.cache_mut().get(Field::NestedReg(r)).unwrap()
}

#[test]
fn init_in_vmx_root_is_held_and_applied_after_vmxoff() {
    let mut v = vcpu(INTEL);
    guest(&mut v, |g| {
        g.nested().vmxon(0x1000).is_ok() && g.nested().vmptrld(0x2000).is_ok()
    });
    let out = v.init().unwrap();
    assert_eq!(out.init, Some(InitOutcome::Held(InitRule::VmxRoot)));
    assert_eq!(out.slots_written, 0, "a held INIT writes nothing");
    assert_eq!(v.init_latched(), Some(InitRule::VmxRoot));
    assert!(v.verify().unwrap().is_empty());
    assert_eq!(v.cache_mut().get(Field::Gpr(Gpr::Rax)).unwrap(), 0x1234);
    assert_eq!(v.cache_mut().get(Field::Cr3).unwrap(), 0x5000);
    assert_eq!(nested(&mut v, NestedReg::VmxonPointer), 0x1000);
    // Still in VMX root: delivering does nothing and the INIT stays latched.
    assert_eq!(v.deliver_latched_init().unwrap(), None);
    assert_eq!(v.init_latched(), Some(InitRule::VmxRoot));

    guest(&mut v, |g| g.nested().vmxoff().is_ok());
    let out = v.deliver_latched_init().unwrap().unwrap();
    assert_eq!(out.init, Some(InitOutcome::Taken));
    assert_eq!(v.init_latched(), None);
    assert_eq!(v.cache_mut().get(Field::Gpr(Gpr::Rax)).unwrap(), 0);
    assert_eq!(v.cache_mut().get(Field::Cr3).unwrap(), 0);
    assert_eq!(
        v.cache_mut().get(Field::Activity).unwrap(),
        Activity::WaitForSipi as u128
    );
    assert_eq!(nested(&mut v, NestedReg::CurrentVmcs), u64::MAX.into());
    assert!(v.verify().unwrap().is_empty());
    // Nothing left to deliver.
    assert_eq!(v.deliver_latched_init().unwrap(), None);
}

#[test]
fn init_in_vmx_non_root_is_a_vm_exit() {
    let mut v = vcpu(INTEL);
    guest(&mut v, |g| {
        let n = g.nested();
        n.vmxon(0x1000).is_ok()
            && n.vmptrld(0x2000).is_ok()
            && n.vmlaunch().is_ok()
            && n.vm_entry().is_ok()
    });
    let out = v.init().unwrap();
    assert_eq!(out.init, Some(InitOutcome::VmExit(InitRule::VmxNonRoot)));
    assert_eq!(InitRule::VmxNonRoot.exit_code(), Some(3));
    assert_eq!(v.init_latched(), None, "the INIT is consumed");
    assert_eq!(nested(&mut v, NestedReg::GuestMode), 0);
    assert_eq!(nested(&mut v, NestedReg::VmxonPointer), 0x1000);
    assert_eq!(nested(&mut v, NestedReg::CurrentVmcs), 0x2000);
    // No INIT happened: registers as they were.
    assert_eq!(v.cache_mut().get(Field::Gpr(Gpr::Rax)).unwrap(), 0x1234);
    assert_eq!(v.cache_mut().get(Field::Cr3).unwrap(), 0x5000);
    assert!(v.verify().unwrap().is_empty());
    let n = v.cache().backend().nested();
    assert!(!n.in_guest_mode() && n.in_operation());
    // A second INIT, now in root operation, is held.
    assert_eq!(
        v.init().unwrap().init,
        Some(InitOutcome::Held(InitRule::VmxRoot))
    );
}

#[test]
fn init_with_gif_clear_is_held_until_stgi() {
    let mut v = vcpu(AMD);
    guest(&mut v, |g| g.nested().clgi().is_ok());
    let out = v.init().unwrap();
    assert_eq!(out.init, Some(InitOutcome::Held(InitRule::SvmGif)));
    assert_eq!(v.cache_mut().get(Field::Gpr(Gpr::Rax)).unwrap(), 0x1234);
    assert_eq!(v.deliver_latched_init().unwrap(), None);
    guest(&mut v, |g| g.nested().stgi().is_ok());
    let out = v.deliver_latched_init().unwrap().unwrap();
    assert_eq!(out.init, Some(InitOutcome::Taken));
    assert_eq!(v.cache_mut().get(Field::Gpr(Gpr::Rax)).unwrap(), 0);
    assert_eq!(nested(&mut v, NestedReg::Gif), 1);
    assert!(v.verify().unwrap().is_empty());
}

#[test]
fn intercepted_init_in_svm_guest_mode_is_a_vmexit() {
    let mut v = vcpu(AMD);
    guest(&mut v, |g| g.nested().vmrun(true).is_ok());
    let out = v.init().unwrap();
    assert_eq!(out.init, Some(InitOutcome::VmExit(InitRule::SvmIntercept)));
    assert_eq!(InitRule::SvmIntercept.exit_code(), Some(0x63));
    assert_eq!(nested(&mut v, NestedReg::GuestMode), 0);
    assert_eq!(nested(&mut v, NestedReg::Gif), 0, "#VMEXIT clears GIF");
    assert_eq!(nested(&mut v, NestedReg::InterceptInit), 0);
    assert_eq!(v.cache_mut().get(Field::Gpr(Gpr::Rax)).unwrap(), 0x1234);
    assert!(v.verify().unwrap().is_empty());
    // GIF is now 0: the next INIT is held.
    assert_eq!(
        v.init().unwrap().init,
        Some(InitOutcome::Held(InitRule::SvmGif))
    );
}

#[test]
fn unintercepted_init_in_svm_guest_mode_is_taken_and_leaves_it() {
    let mut v = vcpu(AMD);
    guest(&mut v, |g| g.nested().vmrun(false).is_ok());
    let prior = *v.cache_mut().state().unwrap();
    let out = v.init().unwrap();
    assert_eq!(out.init, Some(InitOutcome::Taken));
    assert_eq!(nested(&mut v, NestedReg::GuestMode), 0);
    assert_eq!(nested(&mut v, NestedReg::Gif), 1);
    assert_eq!(v.cache_mut().get(Field::Nested).unwrap(), 0);
    assert_eq!(v.cache_mut().get(Field::Gpr(Gpr::Rax)).unwrap(), 0);
    let want = spec::expected_state(&AMD, VcpuIdentity::new(1), Transition::Init(&prior));
    assert_eq!(*v.cache_mut().state().unwrap(), want);
    assert!(v.verify().unwrap().is_empty());
}

#[test]
fn reset_drops_a_latched_init() {
    let mut v = vcpu(INTEL);
    guest(&mut v, |g| g.nested().vmxon(0x1000).is_ok());
    v.init().unwrap();
    assert_eq!(v.init_latched(), Some(InitRule::VmxRoot));
    v.reset().unwrap();
    assert_eq!(v.init_latched(), None);
    assert_eq!(v.deliver_latched_init().unwrap(), None);
    assert!(!v.cache().backend().nested().is_present());
    assert!(v.verify().unwrap().is_empty());
}
