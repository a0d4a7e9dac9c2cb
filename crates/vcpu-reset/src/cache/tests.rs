//! Unit tests of the cache's invariants over a minimal in-memory backend that records every
//! call. (The property test against the VMX-style model backend lives in `tests/`.)

use super::*;
use crate::backend::recorder::Recorder;
use crate::backend::{HostInitBackend, StateClass};
use crate::slots::RegSet;
use vcpu_reset_spec::{Field, Gpr, Msr, NestedReg, Seg, SegPart, Segment};

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
fn writing_one_nested_part_loads_the_rest_first() {
    // The nested slot holds nested.state and its parts (Reg::fields), so writing one part
    // must not guess the others.
    let mut rec = Recorder::new();
    rec.state.nested.present = true;
    let mut c = VcpuCache::adopt(rec);
    c.set(Field::NestedReg(NestedReg::Gif), 1).unwrap();
    assert_eq!(c.backend().loads[StateClass::Nested as usize], 1);
    assert_eq!(c.get(Field::Nested).unwrap(), 1);
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

/// A [`Recorder`] that, once it has run, serves single REGS slots and stores just the dirty
/// REGS slots without a call, as KVM's sync regs do.
struct Slotted {
    inner: Recorder,
    ran: bool,
    slot_loads: u32,
    slot_stores: u32,
}

impl Slotted {
    fn new() -> Self {
        Slotted {
            inner: Recorder::new(),
            ran: false,
            slot_loads: 0,
            slot_stores: 0,
        }
    }

    fn copy_slots(slots: RegSet, from: &VcpuState, to: &mut VcpuState) {
        for f in fields_of(StateClass::Regs) {
            if slots.contains(Reg::of(*f)) {
                f.set(to, f.get(from));
            }
        }
    }
}

impl HostInitBackend for Slotted {}

impl Backend for Slotted {
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        self.inner.load(class, state)
    }
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        self.inner.store(class, state)
    }
    fn run(&mut self) -> Result<Exit, BackendError> {
        self.ran = true;
        self.inner.run()
    }
    fn set_io_in(&mut self, data: &[u8]) {
        self.inner.set_io_in(data);
    }
    fn volatile(&self) -> ClassSet {
        self.inner.volatile()
    }
    fn delivered(&self) -> ClassSet {
        self.inner.delivered()
    }
    fn supported(&self) -> ClassSet {
        self.inner.supported()
    }
    fn load_slots(&mut self, class: StateClass, slots: RegSet, state: &mut VcpuState) -> bool {
        if class != StateClass::Regs || !self.ran {
            return false;
        }
        Self::copy_slots(slots, &self.inner.state, state);
        self.slot_loads += 1;
        true
    }
    fn store_slots(&mut self, class: StateClass, slots: RegSet, state: &VcpuState) -> bool {
        if class != StateClass::Regs || !self.ran {
            return false;
        }
        Self::copy_slots(slots, state, &mut self.inner.state);
        self.slot_stores += 1;
        true
    }
    fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

#[test]
fn a_slot_the_backend_serves_is_loaded_alone() {
    let mut c = VcpuCache::adopt(Slotted::new());
    // Before any run the backend cannot: the whole class is loaded.
    assert_eq!(c.gpr(Gpr::Rbx).unwrap(), 0x1003);
    assert_eq!(c.backend().inner.loads[StateClass::Regs as usize], 1);
    c.run().unwrap();
    assert_eq!(
        c.gpr(Gpr::Rax).unwrap(),
        0x1001,
        "the guest incremented RAX"
    );
    assert!(c.is_available(Reg::Gpr(Gpr::Rax)));
    assert!(
        !c.is_available(Reg::Gpr(Gpr::Rbx)),
        "only the slot asked for"
    );
    assert_eq!(c.rip().unwrap(), 0xfff0);
    assert_eq!(c.backend().inner.loads[StateClass::Regs as usize], 1);
    assert_eq!(c.backend().slot_loads, 2);
    assert_eq!(c.cache_stats().slot_loads, 2);
    assert_eq!(c.loads_since_run(StateClass::Regs), 0, "no class load");
}

#[test]
fn only_dirty_slots_are_stored_where_the_backend_can() {
    let mut c = VcpuCache::adopt(Slotted::new());
    c.run().unwrap();
    let rax = c.gpr(Gpr::Rax).unwrap();
    c.set_gpr(Gpr::Rax, rax + 0x100);
    c.set_gpr(Gpr::R15, 0xf);
    c.run().unwrap();
    let b = c.backend();
    assert_eq!(b.slot_stores, 1, "one store for the class");
    assert_eq!(b.inner.stores.iter().sum::<u32>(), 0);
    assert_eq!(
        b.inner.loads.iter().sum::<u32>(),
        0,
        "nothing loaded to fill the class"
    );
    assert_eq!(b.inner.state.gprs[Gpr::Rax as usize], 0x1001 + 0x100 + 1);
    assert_eq!(b.inner.state.gprs[Gpr::R15 as usize], 0xf);
    assert_eq!(
        b.inner.state.gprs[Gpr::Rbx as usize],
        0x1003,
        "slots the cache never had are left alone"
    );
    assert_eq!(c.cache_stats().slot_stores, 1);
    assert_eq!(c.cache_stats().class_stores, 0);
}

#[test]
fn a_slot_load_keeps_dirty_slots_of_its_class() {
    let mut c = VcpuCache::adopt(Slotted::new());
    c.run().unwrap();
    c.set_gpr(Gpr::Rax, 0xdead);
    assert_eq!(c.gpr(Gpr::Rbx).unwrap(), 0x1003);
    assert_eq!(c.gpr(Gpr::Rax).unwrap(), 0xdead);
    assert!(c.is_dirty(Reg::Gpr(Gpr::Rax)) && !c.is_dirty(Reg::Gpr(Gpr::Rbx)));
}

#[test]
fn classes_the_backend_cannot_slot_are_stored_whole() {
    let mut c = VcpuCache::adopt(Slotted::new());
    c.run().unwrap();
    c.set_segment(Seg::Ds, Segment::default());
    c.flush().unwrap();
    assert_eq!(c.backend().inner.loads[StateClass::Sregs as usize], 1);
    assert_eq!(c.backend().inner.stores[StateClass::Sregs as usize], 1);
    assert_eq!(c.cache_stats().class_stores, 1);
}
