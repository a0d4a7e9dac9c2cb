//! Sync regs (KVM_CAP_SYNC_REGS): REGS, SREGS and EVENTS in the `kvm_run` page.
//!
//! With `kvm_valid_regs` = REGS|SREGS|EVENTS, KVM copies those three structures into
//! `kvm_run.s.regs` at the end of every KVM_RUN, and copies the ones flagged in
//! `kvm_dirty_regs` back in at the start of the next one, clearing the flags. A load of a
//! class whose copy is current ("the mirror") costs no ioctl; a store writes the mirror and
//! sets the dirty flag. The traps, and what this backend does about them:
//!
//! - Before the first run the mirror is not populated: loads use the ioctl (and fill the mirror).
//! - A load after a deferred store reads the mirror, i.e. the stored value.
//! - KVM clears `kvm_dirty_regs` on entry; a rejected deferred store fails KVM_RUN, and the
//!   flags are then cleared here so the next run does not fail again.
//! - A SET ioctl that overlaps a deferred store would be undone by it at the next entry:
//!   IA32_APIC_BASE (KVM_SET_MSRS) and the TPR (KVM_SET_LAPIC, CR8) are patched into the
//!   mirrored `kvm_sregs`; a deferred `kvm_sregs` that would make KVM force the BSP runnable is
//!   written with its ioctl before KVM_SET_MP_STATE; everything pending is written before
//!   KVM_SET_NESTED_STATE.
//! - A GET ioctl that overlaps a deferred store would miss it: a pending `kvm_sregs` is written
//!   with its ioctl before KVM_GET_LAPIC (CR8 is the TPR), and a pending `kvm_vcpu_events`
//!   before KVM_GET_MP_STATE (which accepts an INIT its `smi.latched_init` may have cleared).
//! - In KVM_MP_STATE_UNINITIALIZED (an AP of a VM with an in-kernel irqchip, until it is first
//!   started or its MP state is stored) KVM_RUN returns before applying `kvm_dirty_regs` and
//!   then overwrites the mirror, so stores are not deferred there.
//! - Fields are read in place through `sync_regs_mut()`, never with the 520-byte `sync_regs()`
//!   copy.

use kvm_bindings::{KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
use kvm_ioctls::SyncReg;

use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::store;
use super::codec::regs::{regs_slots_from_state, regs_slots_to_state};
use super::codec::sregs::sregs_slots_to_state;
use super::ioctls::Ioctl;
use super::vcpu::SYNC_CLASSES;
use crate::backend::{BackendError, ClassSet, StateClass};
use crate::slots::Reg;
use crate::slots::RegSet;

fn sync_reg(class: StateClass) -> Option<(SyncReg, u64)> {
    match class {
        StateClass::Regs => Some((SyncReg::Register, u64::from(KVM_SYNC_X86_REGS))),
        StateClass::Sregs => Some((SyncReg::SystemRegister, u64::from(KVM_SYNC_X86_SREGS))),
        StateClass::Events => Some((SyncReg::VcpuEvents, u64::from(KVM_SYNC_X86_EVENTS))),
        _ => None,
    }
}

impl KvmVcpu {
    /// Ask KVM to deliver REGS, SREGS and EVENTS on every exit (no ioctl: a `kvm_run` field).
    pub(super) fn enable_sync_regs(&mut self) {
        for class in SYNC_CLASSES.iter() {
            if let Some((reg, _)) = sync_reg(class) {
                self.fd.set_sync_valid_reg(reg);
            }
        }
    }

    /// Whether a load of `class` can be served from the mirror.
    pub(super) fn mirrored(&self, class: StateClass) -> bool {
        self.sync && self.mirror.contains(class)
    }

    /// Whether a store of `class` may be deferred to the next KVM_RUN.
    pub(super) fn can_defer(&self) -> bool {
        self.sync && !self.may_be_uninitialized
    }

    /// Whether a deferred store of `class` is waiting for the next KVM_RUN.
    pub(super) fn pending(&mut self, class: StateClass) -> bool {
        match sync_reg(class) {
            Some((_, bit)) if self.sync => self.fd.get_kvm_run().kvm_dirty_regs & bit != 0,
            _ => false,
        }
    }

    /// Mark the mirror of `class` as written by us and to be applied by the next KVM_RUN.
    pub(super) fn defer(&mut self, class: StateClass) {
        if let Some((reg, _)) = sync_reg(class) {
            self.fd.set_sync_dirty_reg(reg);
            self.mirror = self.mirror.with(class);
            self.stats.sync_stores += 1;
        }
    }

    /// After a SET ioctl of `class`: a pending deferred store of it is superseded, and the
    /// mirror no longer shows what KVM holds.
    pub(super) fn stored_by_ioctl(&mut self, class: StateClass) {
        if let Some((reg, _)) = sync_reg(class)
            && self.sync
        {
            self.fd.clear_sync_dirty_reg(reg);
            self.mirror = self.mirror.without(class);
        }
    }

    /// After a GET ioctl of `class` whose result was copied into the mirror.
    pub(super) fn mirror_filled(&mut self, class: StateClass) {
        if self.sync {
            self.mirror = self.mirror.with(class);
        }
    }

    /// Write a pending deferred `kvm_sregs` now, with KVM_SET_SREGS (what KVM_RUN would do).
    pub(super) fn flush_sregs(&mut self) -> Result<(), BackendError> {
        if !self.pending(StateClass::Sregs) {
            return Ok(());
        }
        let sregs = self.fd.sync_regs_mut().sregs;
        store(&mut self.stats, Ioctl::SetSregs, || {
            self.fd.set_sregs(&sregs)
        })?;
        self.stored_by_ioctl(StateClass::Sregs);
        Ok(())
    }

    /// Write every pending deferred store now, with its ioctl.
    pub(super) fn flush_all(&mut self) -> Result<(), BackendError> {
        if self.pending(StateClass::Regs) {
            let regs = self.fd.sync_regs_mut().regs;
            store(&mut self.stats, Ioctl::SetRegs, || self.fd.set_regs(&regs))?;
            self.stored_by_ioctl(StateClass::Regs);
        }
        self.flush_sregs()?;
        self.flush_events()
    }

    /// Write a pending deferred `kvm_vcpu_events` now, with KVM_SET_VCPU_EVENTS.
    pub(super) fn flush_events(&mut self) -> Result<(), BackendError> {
        if !self.pending(StateClass::Events) {
            return Ok(());
        }
        let events = self.fd.sync_regs_mut().events;
        store(&mut self.stats, Ioctl::SetVcpuEvents, || {
            self.fd.set_vcpu_events(&events)
        })?;
        self.stored_by_ioctl(StateClass::Events);
        Ok(())
    }

    /// Drop deferred stores KVM did not apply (KVM_RUN failed), so the next run can proceed.
    pub(super) fn drop_pending(&mut self) -> ClassSet {
        let mut dropped = ClassSet::EMPTY;
        for class in SYNC_CLASSES.iter() {
            if self.pending(class) {
                dropped = dropped.with(class);
                if let Some((reg, _)) = sync_reg(class) {
                    self.fd.clear_sync_dirty_reg(reg);
                }
            }
        }
        dropped
    }

    /// [`Backend::load_slots`](crate::backend::Backend::load_slots): REGS and SREGS slots from
    /// the mirror, where their load is free (the PDPTRs go with the whole class).
    pub(super) fn load_mirrored_slots(
        &mut self,
        class: StateClass,
        slots: RegSet,
        state: &mut VcpuState,
    ) -> bool {
        if !self.free_classes().contains(class) {
            return false;
        }
        let mirror = self.fd.sync_regs_mut();
        match class {
            StateClass::Regs => regs_slots_to_state(&mirror.regs, slots, state),
            StateClass::Sregs if !slots.contains(Reg::Pdptrs) => {
                sregs_slots_to_state(&mirror.sregs, slots, state);
            }
            _ => return false,
        }
        self.stats.sync_loads += 1;
        true
    }

    /// [`Backend::store_slots`](crate::backend::Backend::store_slots): REGS slots into a mirror
    /// that holds the vCPU's current `kvm_regs`, deferred to the next KVM_RUN like a whole
    /// REGS store. SREGS is stored whole: its mirror also carries IA32_APIC_BASE and the
    /// interrupt bitmap, which a store sets on purpose.
    pub(super) fn store_mirrored_slots(
        &mut self,
        class: StateClass,
        slots: RegSet,
        state: &VcpuState,
    ) -> bool {
        if class != StateClass::Regs || !self.can_defer() || !self.mirrored(class) {
            return false;
        }
        regs_slots_from_state(state, slots, &mut self.fd.sync_regs_mut().regs);
        self.defer(class);
        true
    }

    /// Classes whose load costs no ioctl now: mirrored sync classes, except SREGS when PAE
    /// paging is on and the PDPTRs would need KVM_GET_SREGS2.
    pub(super) fn free_classes(&self) -> ClassSet {
        if !self.sync {
            return ClassSet::EMPTY;
        }
        let mut free = self.mirror.intersection(SYNC_CLASSES);
        if free.contains(StateClass::Sregs) && self.caps.sregs2 && self.shadow.pdptrs.is_none() {
            free = free.without(StateClass::Sregs);
        }
        free
    }
}
