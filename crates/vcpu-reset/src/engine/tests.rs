//! Engine logic over the in-memory recording backend. The same operations against the
//! VMX-style model (with poison) and against KVM are tested in `tests/`.

use super::*;
use crate::backend::StateClass;
use crate::backend::recorder::Recorder;
use vcpu_reset_spec::{Activity, Gpr, Seg, Vendor};

fn vcpu(id: u32) -> Vcpu<Recorder> {
    let mut model = CpuModel::generic(Vendor::Intel);
    model.signature = 0x000a_06a4;
    Vcpu::new(
        VcpuCache::adopt(Recorder::new()),
        model,
        VcpuIdentity::new(id),
    )
}

#[test]
fn reset_writes_the_spec_state_without_loading_anything() {
    let mut v = vcpu(0);
    let out = v.reset().unwrap();
    let b = v.cache().backend();
    assert_eq!(b.loads.iter().sum::<u32>(), 0);
    assert_eq!(b.stores, [1; 10]);
    assert_eq!(out.calls.stores, 10);
    assert_eq!(b.state.gprs[Gpr::Rdx as usize], 0x000a_06a4);
    assert_eq!(b.state.cr0, 0x6000_0010);
    assert_eq!(b.state.segments[Seg::Cs as usize].attributes, 0x9b);
    assert_eq!(b.state.fpu.fcw, 0x0040);
    assert_eq!(b.state.msrs.apic_base, 0xfee0_0900);
    assert!(v.verify().unwrap().is_empty());
}

#[test]
fn where_signals_queue_reset_and_init_read_the_activity_state_first() {
    let mut v = vcpu(1);
    v.cache_mut().backend_mut().queues_signals = true;
    v.cache_mut().run().unwrap();
    let out = v.reset().unwrap();
    let b = v.cache().backend();
    let mp = StateClass::MpState as usize;
    assert_eq!(b.loads.iter().sum::<u32>(), 1, "only the activity state");
    assert_eq!(b.loads[mp], 1);
    assert_eq!(out.calls.loads, 1, "counted in the RESET");
    assert_eq!(b.state.activity, Activity::WaitForSipi);
    // The BSP stays active: its MP state is read but not written.
    let mut bsp = vcpu(0);
    bsp.cache_mut().backend_mut().queues_signals = true;
    bsp.cache_mut().run().unwrap();
    let out = bsp.reset().unwrap();
    assert_eq!((out.calls.loads, out.calls.stores), (1, 9));
    assert_eq!(bsp.cache().backend().stores[mp], 0);
    // Nothing ran since: the cache holds the activity, so nothing is read again.
    let out = bsp.reset().unwrap();
    assert_eq!(out.calls.calls(), 0);
    // INIT reads it first too (and then everything else).
    bsp.cache_mut().run().unwrap();
    let before = bsp.cache().backend().loads;
    bsp.init().unwrap();
    let after = bsp.cache().backend().loads;
    assert_eq!(after[mp] - before[mp], 1);
}

#[test]
fn second_reset_writes_nothing_when_nothing_changed() {
    let mut v = vcpu(0);
    v.reset().unwrap();
    let out = v.reset().unwrap();
    assert_eq!(out.slots_written, 0);
    assert_eq!(out.calls.calls(), 0);
}

#[test]
fn init_keeps_cd_nw_and_zeroes_cr3() {
    let mut v = vcpu(1);
    v.reset().unwrap();
    {
        let b = v.cache_mut().backend_mut();
        b.state.cr0 = 0x8000_0011; // PG|ET|PE, CD/NW clear
        b.state.cr3 = 0x1000;
        b.state.fpu.fcw = 0x037f;
        b.state.msrs.pat = 0x0606_0606_0606_0606;
    }
    v.cache_mut().invalidate();
    v.init().unwrap();
    let b = v.cache().backend();
    assert_eq!(b.state.cr0, 0x10);
    assert_eq!(b.state.cr3, 0);
    assert_eq!(b.state.fpu.fcw, 0x037f, "x87 state is kept");
    assert_eq!(b.state.msrs.pat, 0x0606_0606_0606_0606, "MSRs are kept");
    assert_eq!(b.state.activity, Activity::WaitForSipi);
    assert_eq!(b.state.lapic.id, 1 << 24);
}

#[test]
fn sipi_starts_a_waiting_ap_and_is_ignored_otherwise() {
    let mut ap = vcpu(1);
    ap.reset().unwrap();
    assert!(ap.sipi(0x9a).unwrap());
    let s = ap.cache().backend().state;
    assert_eq!(s.segments[Seg::Cs as usize].selector, 0x9a00);
    assert_eq!(s.segments[Seg::Cs as usize].base, 0x9a000);
    assert_eq!(s.rip, 0);
    assert_eq!(s.activity, Activity::Active);
    assert!(!ap.sipi(0x10).unwrap(), "a running AP ignores SIPI");
    assert!(ap.verify().unwrap().is_empty());
}

#[test]
fn verify_reports_a_field_changed_behind_the_engines_back() {
    let mut v = vcpu(0);
    v.reset().unwrap();
    v.cache_mut().backend_mut().state.dr7 = 0x401;
    let d = v.verify().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, Field::Dr7);
    assert_eq!((d[0].expected, d[0].actual), (0x400, 0x401));
    assert_eq!(d[0].kind, DeviationKind::Mismatch);
}

#[test]
fn verify_accepts_the_specs_alternatives() {
    let mut v = vcpu(0);
    v.reset().unwrap();
    v.cache_mut().backend_mut().state.segments[Seg::Cs as usize].attributes = 0x93;
    let d = v.verify().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, DeviationKind::Allowed);
}

#[test]
fn verify_before_reset_is_an_error() {
    let mut v = vcpu(0);
    assert!(matches!(v.verify(), Err(EngineError::NothingToVerify)));
    assert_eq!(v.cache().loads_since_run(StateClass::Regs), 0);
}

/// A vCPU over a recorder that offers a host INIT and counts touches.
fn vcpu_with_host_init() -> Vcpu<Recorder> {
    let mut v = vcpu(1);
    let b = v.cache_mut().backend_mut();
    b.host_init = true;
    b.touches = Some(0);
    v
}

const KEPT: ClassSet = ClassSet::EMPTY
    .with(StateClass::Msrs)
    .with(StateClass::Fpu)
    .with(StateClass::Xcrs);

#[test]
fn a_reset_keeps_what_init_keeps_only_where_nothing_touched_the_vcpu_since_the_last() {
    let mut v = vcpu_with_host_init();
    v.reset().unwrap();
    assert_eq!(
        v.cache().backend().kept,
        vec![ClassSet::EMPTY],
        "no RESET before"
    );
    let fpu = v.cache().backend().stores[StateClass::Fpu as usize];

    // Nothing ran, nothing stored: x87/SSE, XCR0 and the MSRs are kept, none stored again.
    v.cache_mut().invalidate();
    v.reset().unwrap();
    assert_eq!(v.cache().backend().kept.last(), Some(&KEPT));
    assert_eq!(v.cache().backend().stores[StateClass::Fpu as usize], fpu);
    assert!(mismatches(&mut v).is_empty());

    // A run in between: everything is stored again.
    v.cache_mut().run().unwrap();
    v.cache_mut().invalidate();
    v.reset().unwrap();
    assert_eq!(v.cache().backend().kept.last(), Some(&ClassSet::EMPTY));
    assert_eq!(
        v.cache().backend().stores[StateClass::Fpu as usize],
        fpu + 1
    );

    // A store of x87 state in between, without a run: likewise.
    v.cache_mut()
        .set(Field::X87(vcpu_reset_spec::X87::Fcw), 0x37f)
        .unwrap();
    v.cache_mut().flush().unwrap();
    v.cache_mut().invalidate();
    v.reset().unwrap();
    assert_eq!(v.cache().backend().kept.last(), Some(&ClassSet::EMPTY));
    assert_eq!(v.cache().backend().state.fpu.fcw, 0x40);
    assert!(mismatches(&mut v).is_empty());
}

#[test]
fn without_a_touch_count_nothing_is_kept_and_an_init_between_keeps_the_kept() {
    let mut v = vcpu_with_host_init();
    v.cache_mut().backend_mut().touches = None;
    v.reset().unwrap();
    v.cache_mut().invalidate();
    v.reset().unwrap();
    assert_eq!(
        v.cache().backend().kept,
        vec![ClassSet::EMPTY, ClassSet::EMPTY]
    );

    // An INIT (by the engine, no run) keeps x87/SSE, XCR0 and the MSRs itself (SDM Table
    // 10-1), so they are still at their RESET values for the RESET after it.
    let mut v = vcpu_with_host_init();
    v.reset().unwrap();
    v.init().unwrap();
    v.cache_mut().invalidate();
    v.reset().unwrap();
    assert_eq!(v.cache().backend().kept.last(), Some(&KEPT));
    assert!(mismatches(&mut v).is_empty());
}

fn mismatches(v: &mut Vcpu<Recorder>) -> Vec<Deviation> {
    v.verify()
        .unwrap()
        .into_iter()
        .filter(|d| d.kind == DeviationKind::Mismatch)
        .collect()
}
