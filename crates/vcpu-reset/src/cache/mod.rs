//! The register cache: a [`VcpuState`] in front of a [`Backend`], with an *available* and a
//! *dirty* bit per slot ([`Reg`]), after Linux KVM's `regs_avail`/`regs_dirty`.
//!
//! Invariants, one per accessor:
//! - a read of an unavailable slot loads its whole class from the backend (one call), merging
//!   around slots of that class that are dirty, and marks the class available — unless the
//!   backend can load just that slot without a call ([`Backend::load_slots`], e.g. from what
//!   the last exit delivered), which then makes only that slot available;
//! - a write marks its slot dirty and available; writing one field of a multi-field slot
//!   (a segment, the MSRs) first makes the slot available, so no field is ever guessed;
//! - before the vCPU runs, each class with a dirty slot is stored exactly once: just the dirty
//!   slots where the backend can do that without a call ([`Backend::store_slots`]), else the
//!   whole class, loading what is not available first;
//! - after an exit, every slot of a class the vCPU can change becomes unavailable;
//! - dirty implies available (`avail=0, dirty=1` is invalid, as in KVM).
//!
//! A vCPU whose whole state the caller has just set ([`VcpuCache::with_state`],
//! [`VcpuCache::set_state`]) starts with everything available and dirty; an adopted vCPU
//! ([`VcpuCache::adopt`]) starts with nothing available. In debug builds, reading a slot that
//! was neither loaded nor written panics with the register's name.

/// The slots, re-exported from [`crate::slots`] where they are defined.
pub use crate::slots::{NR_REGS, Reg, fields_of};

use vcpu_reset_spec::{Field, Gpr, Seg, Segment, VcpuState};

use crate::backend::{Backend, BackendError, Exit, Stats};
use crate::slots::RegSet;
use crate::slots::{ClassSet, StateClass};

/// Errors from the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend does not hold this field.
    #[error(
        "{field} is not held by this backend (host limit); leave it out or use another backend"
    )]
    NotHeld {
        /// The field.
        field: Field,
    },
}

/// Counters of the cache's own traffic with its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Class loads requested from the backend.
    pub class_loads: u64,
    /// Class stores requested from the backend.
    pub class_stores: u64,
    /// Single-slot loads the backend served without a call ([`Backend::load_slots`]).
    pub slot_loads: u64,
    /// Stores of just the dirty slots of a class ([`Backend::store_slots`]).
    pub slot_stores: u64,
    /// Runs.
    pub runs: u64,
}

/// A cached vCPU.
pub struct VcpuCache<B: Backend> {
    backend: B,
    state: VcpuState,
    avail: u64,
    dirty: u64,
    supported: ClassSet,
    stats: CacheStats,
    /// Class loads since the last run, per class (index = `StateClass as usize`).
    loads_since_run: [u16; 10],
}

fn mask_of(classes: ClassSet) -> u64 {
    classes.iter().fold(0, |m, c| m | Reg::class_mask(c))
}

impl<B: Backend> VcpuCache<B> {
    /// Adopt a vCPU whose state the cache knows nothing about: nothing is available.
    pub fn adopt(backend: B) -> Self {
        let supported = backend.supported();
        VcpuCache {
            backend,
            state: VcpuState::default(),
            avail: 0,
            dirty: 0,
            supported,
            stats: CacheStats::default(),
            loads_since_run: [0; 10],
        }
    }

    /// A vCPU whose whole state is `state`: every supported slot is available and dirty, so
    /// the first run (or [`VcpuCache::flush`]) writes all of it.
    pub fn with_state(backend: B, state: &VcpuState) -> Self {
        let mut c = Self::adopt(backend);
        c.set_state(state);
        c
    }

    /// Replace the whole state: every supported slot becomes available and dirty.
    pub fn set_state(&mut self, state: &VcpuState) {
        self.state = *state;
        let m = mask_of(self.supported);
        self.avail = m;
        self.dirty = m;
    }

    /// Make the vCPU's state `target`, writing as little as possible: a class the cache holds
    /// completely is compared slot by slot and only differing slots become dirty; a class it
    /// does not hold completely is written whole (every slot dirty, no load). Returns the number
    /// of slots made dirty. Nothing reaches the backend before [`VcpuCache::flush`] or
    /// [`VcpuCache::run`].
    pub fn write_state(&mut self, target: &VcpuState) -> usize {
        let mut dirtied = 0;
        for class in self.supported.iter() {
            let mask = Reg::class_mask(class);
            let fields = fields_of(class);
            if self.avail & mask == mask {
                let mut changed = 0u64;
                for f in fields {
                    if f.get(&self.state) != f.get(target) {
                        changed |= Reg::of(*f).bit();
                    }
                }
                for f in fields {
                    if changed & Reg::of(*f).bit() != 0 {
                        f.set(&mut self.state, f.get(target));
                    }
                }
                self.avail |= changed;
                self.dirty |= changed;
                dirtied += changed.count_ones() as usize;
            } else {
                for f in fields {
                    f.set(&mut self.state, f.get(target));
                }
                self.avail |= mask;
                self.dirty |= mask;
                dirtied += mask.count_ones() as usize;
            }
        }
        self.check_invariant();
        dirtied
    }

    /// Whether every slot of every supported class is available (nothing would be loaded).
    pub fn holds_everything(&self) -> bool {
        mask_of(self.supported) & !self.avail == 0
    }

    /// Forget `classes` entirely, dirty slots included: the backend changed them behind the
    /// cache's back and what was dirty is no longer wanted.
    pub fn forget(&mut self, classes: ClassSet) {
        let m = mask_of(classes);
        self.avail &= !m;
        self.dirty &= !m;
    }

    /// Take the fields of `classes` in `state` as what the backend holds (available, not
    /// dirty): the backend put them there itself (e.g. the host's own INIT).
    pub fn assume(&mut self, classes: ClassSet, state: &VcpuState) {
        let classes = classes.intersection(self.supported);
        for class in classes.iter() {
            for f in fields_of(class) {
                f.set(&mut self.state, f.get(state));
            }
        }
        let m = mask_of(classes);
        self.avail |= m;
        self.dirty &= !m;
        self.check_invariant();
    }

    /// Have the backend's host perform its own INIT as the bulk of a RESET to `target`
    /// ([`HostInitBackend::host_init`](crate::backend::HostInitBackend::host_init)). What is
    /// dirty is dropped (the RESET writes everything again) and every class the INIT stored,
    /// set or overwrote is forgotten, so the next read loads it. `None` where the host has no
    /// such INIT.
    ///
    /// # Errors
    /// The backend's error.
    pub fn host_init(
        &mut self,
        target: &VcpuState,
        lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<crate::backend::HostInit>, CacheError> {
        let done = self.backend.host_init(target, lazy, kept)?;
        if let Some(d) = done {
            self.forget(d.stored.union(d.established).union(d.clobbered));
        }
        Ok(done)
    }

    /// The backend's count of what touches the classes INIT keeps
    /// ([`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count)).
    pub fn touch_count(&mut self) -> Option<u64> {
        self.backend.touch_count()
    }

    /// The backend, for reading its counters or identity. Changing vCPU state behind the
    /// cache's back needs [`VcpuCache::invalidate`] afterwards.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably. Call [`VcpuCache::flush`] before and [`VcpuCache::invalidate`]
    /// after changing vCPU state through it.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Give the backend back (after flushing what is dirty).
    pub fn into_backend(mut self) -> Result<B, CacheError> {
        self.flush()?;
        Ok(self.backend)
    }

    /// Give the backend back whatever happens: flush what is dirty and return the flush's
    /// result beside the backend, so a caller whose store the backend refused still gets it
    /// (e.g. to hand a VMM's vCPU fd back). Writes that did not reach the backend are lost.
    pub fn into_backend_anyway(mut self) -> (B, Result<(), CacheError>) {
        let flushed = self.flush();
        (self.backend, flushed)
    }

    /// The classes the backend supports.
    pub fn supported(&self) -> ClassSet {
        self.supported
    }

    /// Whether the backend holds `field`.
    pub fn holds(&self, field: Field) -> bool {
        self.supported.contains(Reg::of(field).class()) && self.backend.holds(field)
    }

    /// Whether `reg` is available (cached and valid).
    pub fn is_available(&self, reg: Reg) -> bool {
        self.avail & reg.bit() != 0
    }

    /// Whether `reg` is dirty (must be written before the vCPU runs).
    pub fn is_dirty(&self, reg: Reg) -> bool {
        self.dirty & reg.bit() != 0
    }

    /// Forget everything that is not dirty (the vCPU was changed behind the cache's back).
    pub fn invalidate(&mut self) {
        self.avail = self.dirty;
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.stats
    }

    /// The backend's counters (ioctls on KVM).
    pub fn backend_stats(&self) -> Stats {
        self.backend.stats()
    }

    /// How many times `class` was loaded since the last run.
    pub fn loads_since_run(&self, class: StateClass) -> u16 {
        self.loads_since_run[class as usize]
    }

    fn check_invariant(&self) {
        debug_assert_eq!(
            self.dirty & !self.avail,
            0,
            "register cache: a slot is dirty but not available"
        );
    }

    /// Make every slot of `class` available, loading from the backend if any is not. Dirty
    /// slots keep their cached values.
    fn ensure_class(&mut self, class: StateClass) -> Result<(), CacheError> {
        let mask = Reg::class_mask(class);
        if self.avail & mask == mask {
            return Ok(());
        }
        let take = mask & !self.avail;
        if take == mask {
            // Nothing of the class is cached: the backend writes only this class's fields.
            self.backend.load(class, &mut self.state)?;
        } else {
            // Some slots are cached (possibly dirty): take the loaded values only for the
            // slots that were not available.
            let mut fresh = self.state;
            self.backend.load(class, &mut fresh)?;
            for f in fields_of(class) {
                if take & Reg::of(*f).bit() != 0 {
                    f.set(&mut self.state, f.get(&fresh));
                }
            }
        }
        self.stats.class_loads += 1;
        let n = &mut self.loads_since_run[class as usize];
        *n = n.saturating_add(1);
        self.avail |= mask;
        self.check_invariant();
        Ok(())
    }

    /// Make `reg` available: just the slot where the backend can load it without a call, else
    /// its whole class.
    fn ensure(&mut self, reg: Reg) -> Result<(), CacheError> {
        if self.avail & reg.bit() == 0 {
            if self
                .backend
                .load_slots(reg.class(), RegSet::of(reg), &mut self.state)
            {
                self.avail |= reg.bit();
                self.stats.slot_loads += 1;
            } else {
                self.ensure_class(reg.class())?;
            }
        }
        Ok(())
    }

    /// The cached state; in debug builds, panics if `reg` is neither loaded nor written.
    fn checked(&self, reg: Reg) -> &VcpuState {
        debug_assert!(
            self.avail & reg.bit() != 0,
            "register cache: read of {reg} which was neither loaded nor written"
        );
        &self.state
    }

    fn mark_dirty(&mut self, reg: Reg) {
        self.avail |= reg.bit();
        self.dirty |= reg.bit();
    }

    /// Read `field`, loading its class if needed.
    pub fn get(&mut self, field: Field) -> Result<u128, CacheError> {
        if !self.holds(field) {
            return Err(CacheError::NotHeld { field });
        }
        let reg = Reg::of(field);
        self.ensure(reg)?;
        Ok(field.get(self.checked(reg)))
    }

    /// Write `field`. A field that shares its slot with others (a segment part, an MSR)
    /// first makes the slot available.
    pub fn set(&mut self, field: Field, value: u128) -> Result<(), CacheError> {
        if !self.holds(field) {
            return Err(CacheError::NotHeld { field });
        }
        let reg = Reg::of(field);
        if !reg.holds_one_field() {
            self.ensure(reg)?;
        }
        field.set(&mut self.state, value);
        self.mark_dirty(reg);
        Ok(())
    }

    /// The whole state, loading every supported class that is not fully available.
    pub fn state(&mut self) -> Result<&VcpuState, CacheError> {
        for c in self.supported.iter() {
            self.ensure_class(c)?;
        }
        Ok(&self.state)
    }

    /// A general-purpose register.
    #[inline]
    pub fn gpr(&mut self, g: Gpr) -> Result<u64, CacheError> {
        let r = Reg::Gpr(g);
        self.ensure(r)?;
        Ok(self.checked(r).gprs[g as usize])
    }

    /// Write a general-purpose register (no load needed).
    #[inline]
    pub fn set_gpr(&mut self, g: Gpr, v: u64) {
        self.state.gprs[g as usize] = v;
        self.mark_dirty(Reg::Gpr(g));
    }

    /// RIP.
    #[inline]
    pub fn rip(&mut self) -> Result<u64, CacheError> {
        self.ensure(Reg::Rip)?;
        Ok(self.checked(Reg::Rip).rip)
    }

    /// Write RIP.
    #[inline]
    pub fn set_rip(&mut self, v: u64) {
        self.state.rip = v;
        self.mark_dirty(Reg::Rip);
    }

    /// RFLAGS.
    #[inline]
    pub fn rflags(&mut self) -> Result<u64, CacheError> {
        self.ensure(Reg::Rflags)?;
        Ok(self.checked(Reg::Rflags).rflags)
    }

    /// Write RFLAGS.
    #[inline]
    pub fn set_rflags(&mut self, v: u64) {
        self.state.rflags = v;
        self.mark_dirty(Reg::Rflags);
    }

    /// A segment register.
    #[inline]
    pub fn segment(&mut self, s: Seg) -> Result<Segment, CacheError> {
        let r = Reg::Seg(s);
        self.ensure(r)?;
        Ok(self.checked(r).segments[s as usize])
    }

    /// Write a whole segment register (no load needed).
    #[inline]
    pub fn set_segment(&mut self, s: Seg, v: Segment) {
        self.state.segments[s as usize] = v;
        self.mark_dirty(Reg::Seg(s));
    }

    /// Store every class that has a dirty slot, once each, in [`StateClass::ALL`] order.
    pub fn flush(&mut self) -> Result<(), CacheError> {
        if self.dirty == 0 {
            return Ok(());
        }
        for class in StateClass::ALL {
            let mask = Reg::class_mask(class);
            let dirty = self.dirty & mask;
            if dirty == 0 {
                continue;
            }
            if self
                .backend
                .store_slots(class, RegSet::from_bits(dirty), &self.state)
            {
                self.stats.slot_stores += 1;
            } else {
                // The backend writes the whole class: fill in what the cache does not know yet.
                self.ensure_class(class)?;
                self.backend.store(class, &self.state)?;
                self.stats.class_stores += 1;
            }
            self.dirty &= !mask;
        }
        self.check_invariant();
        Ok(())
    }

    /// Flush, run the vCPU to its next exit, and forget what the vCPU may have changed.
    pub fn run(&mut self) -> Result<Exit, CacheError> {
        self.flush()?;
        self.loads_since_run = [0; 10];
        let exit = self.backend.run();
        // Whatever happened, the vCPU may have run: its volatile state is no longer known.
        self.avail &= !mask_of(self.backend.volatile());
        self.check_invariant();
        self.stats.runs += 1;
        Ok(exit?)
    }

    /// Answer the IN access of the last exit.
    pub fn set_io_in(&mut self, data: &[u8]) {
        self.backend.set_io_in(data);
    }
}

#[cfg(test)]
mod tests;
