//! RESET with the host's own INIT doing the bulk ([`HostInitBackend::host_init`](crate::backend::HostInitBackend::host_init)).
//!
//! A RESET differs from an INIT only in what INIT keeps (Intel SDM Vol. 3A §10.1.1 and Table
//! 10-1, AMD APM Vol. 2 §14.1.3 and Table 14-1): the MSRs, x87/SSE/AVX state, XCR0, CR0.CD/NW,
//! the APIC ID and base, the TSC. Where the backend's host performs INIT cheaply (KVM's
//! in-kernel INIT, raised inside the KVM_SET_MSRS that writes the RESET MSRs), the engine lets
//! it: the classes the INIT establishes are taken as written, and only the rest is stored.
//!
//! The host's INIT is trusted per class only after it was checked: the first time a vCPU uses
//! it, every field of every class it establishes is read back and compared with the RESET
//! state (the TSC as a counter). A class with any field off is recorded as *inexact* and from
//! then on stored by the engine after the INIT, like the classes the INIT clobbers. So the
//! result is exact on every host, and as cheap as the host's INIT allows where it is right.
//! The first check also reads the classes the INIT clobbers (REGS, SREGS, EVENTS on KVM) and
//! compares them with the RESET state, CR0.CD/NW aside: where they match and no class is
//! inexact, later RESETs leave the INIT to the vCPU's next run (the backend's `lazy`), which
//! on KVM saves one ioctl. Fields the backend does not hold are skipped. A class is checked
//! again only if the backend did not establish it the first time (its INIT did not take effect
//! then). Classes the backend stored from the RESET state itself in the same call (the MSRs on
//! KVM, which INIT keeps: SDM Table 10-1, APM Table 14-1) are taken as stored without reading
//! them back.
//!
//! A vCPU that has not entered the guest since its last RESET, and whose x87/SSE state, XCR0,
//! MSRs and local APIC the host has not stored since, still holds the RESET values of the
//! classes INIT keeps ([`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count) tells): the backend is told so (`kept`) and
//! the engine stores none of them again. On KVM that is an AP that waited for SIPI through a
//! whole boot, the usual AP at a reboot from firmware: KVM_SET_VCPU_EVENTS (raising the INIT)
//! and KVM_GET_MP_STATE, two ioctls.

use vcpu_reset_spec::{self as spec, Alternative, Event, Field, VcpuState, Vendor};

use super::verify::counted_from;
use super::{EngineError, Vcpu};
use crate::backend::{Backend, ClassSet, StateClass};

/// Classes only the guest's own instructions (or a store by the host) change, which INIT
/// keeps: x87/SSE/AVX state, XCR0 and the MSRs (SDM Table 10-1, APM Table 14-1). Where the vCPU
/// has not entered the guest since a RESET left them at their RESET values and the host has
/// stored none of them since ([`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count)), the next RESET need not store them again (the TSC aside, which counts
/// and which the backend writes anyway). KVM's INIT, which the vCPU may have taken while it
/// waited (an INIT IPI from another vCPU), keeps them too, and clears only MPX state, which is
/// zero at RESET as well.
const UNTOUCHED_WITHOUT_GUEST: ClassSet = ClassSet::EMPTY
    .with(StateClass::Msrs)
    .with(StateClass::Fpu)
    .with(StateClass::Xcrs);

/// CR0.CD (bit 30) and CR0.NW (bit 29).
const CR0_CD_NW: u128 = (1 << 30) | (1 << 29);

/// The classes the host's INIT sets to their RESET values (on KVM); where the engine found one
/// off, it stores it after the INIT, so the INIT cannot be left to the next run.
const SET_BY_INIT: ClassSet = ClassSet::EMPTY
    .with(StateClass::Lapic)
    .with(StateClass::Debug)
    .with(StateClass::MpState);

impl<B: Backend> Vcpu<B> {
    /// The classes the host's INIT leaves wrong for this vCPU, as far as checked: these are
    /// stored by the engine after the INIT. `None` where the host INIT is not used.
    pub fn host_init_inexact(&self) -> Option<ClassSet> {
        (!self.host_init.unavailable && self.host_init.checked != ClassSet::EMPTY)
            .then_some(self.host_init.inexact)
    }

    /// The classes the host's INIT clobbers that it leaves different from the RESET state
    /// (CR0.CD/NW aside), as far as checked. Where this is empty, RESET leaves the INIT to the
    /// vCPU's next run, which saves a call on KVM.
    pub fn host_init_clobbered_off(&self) -> Option<ClassSet> {
        self.host_init.clobbered_off
    }

    /// Whether the next RESET through the host's INIT leaves that INIT to the vCPU's next run
    /// (KVM: no KVM_GET_MP_STATE in the RESET; REGS, SREGS and EVENTS ride `kvm_run`). It
    /// does where the first RESET found the classes the INIT clobbers at their RESET values
    /// ([`Vcpu::host_init_clobbered_off`] empty) and the classes it sets exact, or where
    /// the selftest tool forced it (feature `selftest`). A read of the vCPU before that run
    /// settles the INIT first (one more call), so what it returns is the RESET state.
    pub fn host_init_lazy(&self) -> bool {
        !self.host_init.unavailable
            && (self.host_init.force_lazy
                || self.host_init.clobbered_off == Some(ClassSet::EMPTY)
                    && self.host_init.inexact.intersection(SET_BY_INIT).is_empty())
    }

    /// Leave the host's INIT to the next run even where it leaves classes it clobbers wrong
    /// ([`Vcpu::host_init_clobbered_off`]): those fields then end as the host's INIT sets
    /// them, not as the spec says. For measuring what that path costs; not exact there.
    #[cfg(feature = "selftest")]
    pub fn force_lazy_host_init(&mut self) {
        self.host_init.force_lazy = true;
    }

    /// RESET through the host's INIT, where the backend offers it and the cache does not hold
    /// the whole state already (then writing just the differences is cheaper). Returns the
    /// slots written, or `None` (nothing done) where the host INIT is not used.
    pub(super) fn reset_with_host_init(
        &mut self,
        target: &VcpuState,
    ) -> Result<Option<usize>, EngineError> {
        if self.host_init.unavailable || self.cache.holds_everything() {
            return Ok(None);
        }
        let lazy = self.host_init_lazy();
        let untouched = match self.host_init.pristine.take() {
            Some(then) => self.cache.touch_count() == Some(then),
            None => false,
        };
        let kept = if untouched {
            UNTOUCHED_WITHOUT_GUEST
        } else {
            ClassSet::EMPTY
        };
        let Some(done) = self.cache.host_init(target, lazy, kept)? else {
            self.host_init.unavailable = true;
            return Ok(None);
        };
        if done.stored == ClassSet::EMPTY && done.established == ClassSet::EMPTY {
            // The host could not raise its INIT after all: store everything, and from now on
            // do not ask.
            self.host_init.unavailable = true;
        }
        let unchecked = done.established.difference(self.host_init.checked);
        if unchecked != ClassSet::EMPTY {
            let wrong = self.classes_off(unchecked, target, false)?;
            self.host_init.checked = self.host_init.checked.union(unchecked);
            self.host_init.inexact = self.host_init.inexact.union(wrong);
        }
        if self.host_init.clobbered_off.is_none()
            && done.clobbered != ClassSet::EMPTY
            && done.established != ClassSet::EMPTY
        {
            self.host_init.clobbered_off = Some(self.classes_off(done.clobbered, target, true)?);
        }
        let trusted = done
            .established
            .difference(self.host_init.inexact)
            .union(done.stored)
            .union(kept.difference(done.clobbered));
        self.cache.assume(trusted, target);
        let slots_written = self.cache.write_state(target);
        self.cache.flush()?;
        if done.stored.contains(StateClass::Msrs) {
            self.host_init.pristine = self.cache.touch_count();
        }
        Ok(Some(slots_written))
    }

    /// The classes in `classes` with a held field that differs from `target` (read through
    /// the cache, which loads each class once). With `allowed`, a value the spec lists as an
    /// alternative of the RESET value is not a difference (AMD's CS attributes 0x9B for 0x9A,
    /// which differ only in the accessed bit): the host's INIT may then be left to the next run.
    fn classes_off(
        &mut self,
        classes: ClassSet,
        target: &VcpuState,
        allowed: bool,
    ) -> Result<ClassSet, EngineError> {
        let mut off = ClassSet::EMPTY;
        for field in Field::all() {
            let class = StateClass::of(field);
            if !classes.contains(class) || off.contains(class) || !self.cache.holds(field) {
                continue;
            }
            let mut actual = self.cache.get(field)?;
            let mut expected = field.get(target);
            if field == Field::Cr0 {
                // INIT keeps CD and NW (SDM Table 10-1 note 2, APM Table 14-1): a RESET left
                // to the next run sets them before the INIT.
                actual &= !CR0_CD_NW;
                expected &= !CR0_CD_NW;
            }
            if actual != expected
                && !counted_from(field, expected, actual)
                && !(allowed && spec_allows(field, actual, self.model.vendor))
            {
                off = off.with(class);
            }
        }
        Ok(off)
    }
}

/// Whether `actual` is one of the spec's alternatives of `field`'s RESET value for `vendor`.
fn spec_allows(field: Field, actual: u128, vendor: Vendor) -> bool {
    spec::row(field, vendor, Event::Reset)
        .also
        .iter()
        .any(|a| matches!(a, Alternative::Value(v) if *v == actual))
}
