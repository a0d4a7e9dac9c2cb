//! Unit tests of the cache's invariants over a minimal in-memory backend that records every
//! call. (The property test against the VMX-style model backend lives in `tests/`.)

use super::*;
use crate::backend::StateClass;
use crate::backend::recorder::Recorder;
use vcpu_reset_spec::{Field, Gpr, Msr, Seg, SegPart};

#[test]
fn adopted_cache_has_nothing_available() {
    let c = VcpuCache::adopt(Recorder::new());
    for r in Reg::all() {
        assert!(!c.is_available(r), "{r}");
        assert!(!c.is_dirty(r), "{r}");
    }
}

#[test]
fn read_loads_the_class_once() {
    let mut c = VcpuCache::adopt(Recorder::new());
    assert_eq!(c.gpr(Gpr::Rax).unwrap(), 0x1000);
    assert_eq!(c.gpr(Gpr::Rbx).unwrap(), 0x1003);
    assert_eq!(c.rip().unwrap(), 0xfff0);
    assert_eq!(c.backend().loads[StateClass::Regs as usize], 1);
    assert_eq!(c.backend().loads[StateClass::Sregs as usize], 0);
    assert_eq!(c.loads_since_run(StateClass::Regs), 1);
}

#[test]
fn write_needs_no_load_and_is_flushed_once_before_run() {
    let mut c = VcpuCache::adopt(Recorder::new());
    c.set_gpr(Gpr::Rax, 7);
    c.set_gpr(Gpr::Rcx, 8);
    assert!(c.is_dirty(Reg::Gpr(Gpr::Rax)));
    assert_eq!(c.backend().loads[StateClass::Regs as usize], 0);
    c.run().unwrap();
    // The store needed the rest of the class, so one load, then one store.
    assert_eq!(c.backend().loads[StateClass::Regs as usize], 1);
    assert_eq!(c.backend().stores[StateClass::Regs as usize], 1);
    assert_eq!(c.backend().stores.iter().sum::<u32>(), 1);
    // The guest incremented RAX from the value written.
    assert_eq!(c.gpr(Gpr::Rax).unwrap(), 8);
    assert_eq!(c.gpr(Gpr::Rcx).unwrap(), 8);
    assert_eq!(c.gpr(Gpr::Rdx).unwrap(), 0x1002);
}

#[test]
fn partial_load_keeps_dirty_values() {
    let mut c = VcpuCache::adopt(Recorder::new());
    c.set_gpr(Gpr::Rax, 0xdead);
    assert_eq!(c.gpr(Gpr::Rbx).unwrap(), 0x1003);
    assert_eq!(c.gpr(Gpr::Rax).unwrap(), 0xdead);
    assert!(c.is_dirty(Reg::Gpr(Gpr::Rax)));
    assert!(!c.is_dirty(Reg::Gpr(Gpr::Rbx)));
}

#[test]
fn exit_invalidates_volatile_state() {
    let mut c = VcpuCache::adopt(Recorder::new());
    assert_eq!(c.gpr(Gpr::Rax).unwrap(), 0x1000);
    c.run().unwrap();
    assert!(!c.is_available(Reg::Gpr(Gpr::Rax)));
    assert_eq!(c.gpr(Gpr::Rax).unwrap(), 0x1001);
    assert_eq!(c.backend().loads[StateClass::Regs as usize], 2);
    assert_eq!(c.loads_since_run(StateClass::Regs), 1);
}

#[test]
fn writing_part_of_a_segment_loads_the_rest_first() {
    let mut c = VcpuCache::adopt(Recorder::new());
    c.set(Field::Seg(Seg::Cs, SegPart::Limit), 0xffff).unwrap();
    assert_eq!(c.backend().loads[StateClass::Sregs as usize], 1);
    let cs = c.segment(Seg::Cs).unwrap();
    assert_eq!(
        (cs.selector, cs.base, cs.limit),
        (0xf000, 0xffff_0000, 0xffff)
    );
}

#[test]
fn fs_base_msr_is_the_fs_segment_base() {
    let mut c = VcpuCache::adopt(Recorder::new());
    c.set(Field::Msr(Msr::FsBase), 0x1234).unwrap();
    assert_eq!(c.segment(Seg::Fs).unwrap().base, 0x1234);
    assert!(c.is_dirty(Reg::Seg(Seg::Fs)));
    assert!(!c.is_dirty(Reg::Msrs));
}

#[test]
fn with_state_makes_everything_available_and_dirty_and_stores_each_class_once() {
    let s = VcpuState {
        rip: 0x1234,
        ..Default::default()
    };
    let mut c = VcpuCache::with_state(Recorder::new(), &s);
    for r in Reg::all() {
        assert!(c.is_available(r) && c.is_dirty(r), "{r}");
    }
    c.flush().unwrap();
    assert_eq!(c.backend().loads.iter().sum::<u32>(), 0);
    assert_eq!(c.backend().stores, [1; 10]);
    assert_eq!(c.backend().state.rip, 0x1234);
    c.flush().unwrap();
    assert_eq!(c.backend().stores, [1; 10], "a clean cache stores nothing");
}

#[test]
fn field_not_held_is_an_error() {
    let mut b = Recorder::new();
    b.not_held = Some(Field::Msr(Msr::SpecCtrl));
    let mut c = VcpuCache::adopt(b);
    assert!(matches!(
        c.get(Field::Msr(Msr::SpecCtrl)),
        Err(CacheError::NotHeld { .. })
    ));
    assert!(c.set(Field::Msr(Msr::SpecCtrl), 1).is_err());
    assert_eq!(c.get(Field::Msr(Msr::Pat)).unwrap(), 0);
}

#[test]
fn invalidate_keeps_dirty_slots() {
    let mut c = VcpuCache::adopt(Recorder::new());
    c.set_rip(0x42);
    let _ = c.gpr(Gpr::Rax).unwrap();
    c.invalidate();
    assert!(c.is_available(Reg::Rip));
    assert!(!c.is_available(Reg::Gpr(Gpr::Rax)));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "read of rip which was neither loaded nor written")]
fn reading_an_unloaded_register_panics_in_debug_builds() {
    let c = VcpuCache::adopt(Recorder::new());
    let _ = c.checked(Reg::Rip);
}

#[test]
fn write_state_skips_slots_known_to_hold_the_target() {
    let mut c = VcpuCache::adopt(Recorder::new());
    let current = *c.state().unwrap();
    let mut target = current;
    target.rip = 0x9999;
    let dirtied = c.write_state(&target);
    assert_eq!(dirtied, 1);
    assert!(c.is_dirty(Reg::Rip));
    assert!(!c.is_dirty(Reg::Gpr(Gpr::Rax)));
    c.flush().unwrap();
    assert_eq!(
        c.backend().stores.iter().sum::<u32>(),
        1,
        "only REGS is stored"
    );
    assert_eq!(c.backend().state.rip, 0x9999);
}

#[test]
fn write_state_writes_unknown_classes_whole_without_loading() {
    let mut c = VcpuCache::adopt(Recorder::new());
    let target = VcpuState::default();
    c.write_state(&target);
    c.flush().unwrap();
    assert_eq!(c.backend().loads.iter().sum::<u32>(), 0);
    assert_eq!(c.backend().stores, [1; 10]);
    assert_eq!(c.backend().state, target);
}
