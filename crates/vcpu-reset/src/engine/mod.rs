//! The RESET/INIT engine: puts a live vCPU into the exact state of the spec.
//!
//! [`Vcpu`] wraps a [`VcpuCache`] with the vCPU's identity (APIC ID, BSP or AP) and the CPU
//! model the VM presents. [`Vcpu::reset`] computes the spec's RESET state and writes it through
//! the cache, skipping what the cache already knows to hold its RESET value; [`Vcpu::init`]
//! reads the current state, applies the spec's INIT rules to it and writes the result;
//! [`Vcpu::sipi`] applies a startup IPI; [`Vcpu::verify`] reads everything back and reports
//! every field that differs from what was established. Nothing here knows which backend it
//! drives.
//!
//! Where the backend's host can perform INIT itself cheaply ([`HostInitBackend::host_init`](crate::backend::HostInitBackend::host_init): KVM's
//! in-kernel INIT), [`Vcpu::reset`] lets it do the bulk of the RESET and writes only what INIT
//! keeps but RESET changes; each class the host's INIT sets is checked against the spec the
//! first time and stored by the engine from then on where it is off (`host_init.rs`). The
//! result is the same state; on KVM it takes four ioctls instead of six or seven, and two for a
//! vCPU that has not run since its last RESET (its x87/SSE state, XCR0 and MSRs are kept).
//!
//! INIT honours the virtualization extensions' blocking rules ([`spec::init_outcome`]): held
//! in VMX root operation or with SVM's GIF clear (latched, and applied by
//! [`Vcpu::deliver_latched_init`] once the rule no longer applies), a VM exit in VMX non-root
//! operation or SVM guest mode with INIT intercepted. [`Outcome::init`] says which applied.
//! RESET drops all nested state and any latched INIT; [`Vcpu::verify`] checks every nested
//! part with the rest.
//!
//! # The TSC
//!
//! RESET sets IA32_TSC to 0 (Intel SDM Vol. 3A Table 10-1, AMD APM Vol. 2 Table 14-1) and INIT
//! leaves it alone (same tables). The counter runs on by itself, so "0 after RESET" means
//! "counting from 0 since the RESET": [`Vcpu::verify`] accepts any value from the one
//! established up to 2^40 above it (over 100 s at 10 GHz), and a second RESET with nothing
//! else changed does not write it again. The engine asks for 0; what that takes is the
//! backend's business. KVM reads a host write of 0 as "synchronise this new or hot-plugged vCPU
//! with the others" and leaves the counter running, so the KVM backend writes 1 instead, as
//! QEMU does; KVM matches host writes that land within a second of each other onto one TSC
//! offset, so the vCPUs of a VM RESET together keep equal TSCs. The KVM backend never writes
//! back a TSC value it read (that would set the counter back), so INIT, and any store of the
//! MSRs that does not change the TSC, leave it counting. Where the host accepts TSC writes but
//! ignores them, the backend finds out when it reads the TSC back before the vCPU runs again
//! (verify does) and stops holding the field: verify then reports it
//! [`DeviationKind::NotHeld`], a host limit.
//!
//! # Signals in flight
//!
//! A RESET or INIT replaces an INIT or startup IPI the vCPU had received but not yet acted on.
//! KVM keeps those in the in-kernel local APIC, out of reach of every state class, and acts on
//! them when the MP state is read or the vCPU next runs: a SIPI left there would start an AP
//! that RESET just put into wait-for-SIPI. Where the backend says it
//! [queues signals](crate::backend::Backend::queues_signals), RESET and INIT therefore read the
//! activity state first (unless the cache already holds it, i.e. nothing ran since it was read
//! or written): the host settles what it holds then, and everything the RESET or INIT writes
//! comes after. On KVM this costs one KVM_GET_MP_STATE, which RESET makes up for where the
//! activity does not change (the BSP stays active, a waiting AP stays waiting).

mod host_init;
mod nested;
pub mod parallel;
mod verify;

pub use nested::NESTED_FIELDS;
pub use verify::{Deviation, DeviationKind, counted_from};

use vcpu_reset_spec::{self as spec, CpuModel, Field, Transition, VcpuIdentity, VcpuState};

use crate::backend::{Backend, Stats};
use crate::cache::{CacheError, VcpuCache};
use crate::slots::ClassSet;

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Reading or writing vCPU state failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// `verify()` was called before any RESET or INIT established an expected state.
    #[error("nothing to verify: call reset() or init() first")]
    NothingToVerify,
}

/// What a RESET, INIT or SIPI did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Cache slots that had to be written.
    pub slots_written: usize,
    /// Backend calls (ioctls on KVM) the operation made, including its flush.
    pub calls: Stats,
    /// For an INIT: whether it took effect, was held (and by which rule) or became a VM exit.
    pub init: Option<spec::InitOutcome>,
}

/// What the engine knows about a vCPU's host INIT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HostInitUse {
    /// The backend said it has none: do not ask again.
    unavailable: bool,
    /// Classes whose INIT result was compared with the RESET state.
    checked: ClassSet,
    /// Of those, the classes the host's INIT leaves wrong.
    inexact: ClassSet,
    /// Whether the classes the INIT clobbers were compared with the RESET state, and which
    /// were off (CR0.CD/NW aside): where none is, the INIT may be left to the next run.
    clobbered_off: Option<ClassSet>,
    /// Leave the INIT to the next run even where the clobbered classes were found off.
    force_lazy: bool,
    /// The backend's [`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count) right after the last RESET through the host's
    /// INIT (`host_init.rs`).
    pristine: Option<u64>,
}

/// A vCPU driven by the engine.
pub struct Vcpu<B: Backend> {
    cache: VcpuCache<B>,
    model: CpuModel,
    identity: VcpuIdentity,
    expected: Option<(VcpuState, spec::Event)>,
    init_latched: Option<spec::InitRule>,
    host_init: HostInitUse,
    /// The RESET state of this vCPU, built once: it depends only on the model and identity.
    reset_state: Option<Box<VcpuState>>,
}

impl<B: Backend> Vcpu<B> {
    /// Drive `cache`, a vCPU of a VM presenting `model`, with `identity`.
    pub fn new(cache: VcpuCache<B>, model: CpuModel, identity: VcpuIdentity) -> Self {
        Vcpu {
            cache,
            model,
            identity,
            expected: None,
            init_latched: None,
            host_init: HostInitUse::default(),
            reset_state: None,
        }
    }

    /// The cache, read-only.
    pub fn cache(&self) -> &VcpuCache<B> {
        &self.cache
    }

    /// The cache.
    pub fn cache_mut(&mut self) -> &mut VcpuCache<B> {
        &mut self.cache
    }

    /// The CPU model.
    pub fn model(&self) -> &CpuModel {
        &self.model
    }

    /// The vCPU's identity.
    pub fn identity(&self) -> VcpuIdentity {
        self.identity
    }

    /// The state the last RESET, INIT or SIPI established, if any.
    pub fn expected(&self) -> Option<&VcpuState> {
        self.expected.as_ref().map(|(s, _)| s)
    }

    /// Give the cache back.
    pub fn into_cache(self) -> VcpuCache<B> {
        self.cache
    }

    fn establish(&mut self, target: VcpuState, event: spec::Event) -> Result<Outcome, EngineError> {
        let before = self.cache.backend_stats();
        let slots_written = self.cache.write_state(&target);
        self.cache.flush()?;
        self.expected = Some((target, event));
        Ok(Outcome {
            slots_written,
            calls: self.cache.backend_stats().since(&before),
            init: None,
        })
    }

    /// Let the backend's host settle signals it holds outside the state classes, by reading
    /// the activity state (see the module documentation).
    fn settle_signals(&mut self) -> Result<(), EngineError> {
        if self.cache.backend().queues_signals() && self.cache.holds(Field::Activity) {
            self.cache.get(Field::Activity)?;
        }
        Ok(())
    }

    /// Power-on RESET: every field of the spec's RESET state, written now.
    ///
    /// Nothing relies on a field having been zero before; fields the backend does not hold
    /// (host limits) are skipped by the backend and reported by [`Vcpu::verify`]. Nested state
    /// (VMX operation, current and enlightened VMCS, guest mode, GIF) is dropped and a latched
    /// INIT forgotten: RESET is not blocked by anything. Where the backend queues signals, the
    /// activity state is read first. Where the backend offers its host's INIT and the cache
    /// does not hold the whole state, that INIT does the bulk (see the module documentation).
    pub fn reset(&mut self) -> Result<Outcome, EngineError> {
        let before = self.cache.backend_stats();
        let (model, identity) = (self.model, self.identity);
        let target = **self.reset_state.get_or_insert_with(|| {
            Box::new(spec::expected_state(&model, identity, Transition::Reset))
        });
        self.init_latched = None;
        if let Some(slots_written) = self.reset_with_host_init(&target)? {
            self.expected = Some((target, spec::Event::Reset));
            return Ok(Outcome {
                slots_written,
                calls: self.cache.backend_stats().since(&before),
                init: None,
            });
        }
        self.settle_signals()?;
        let mut out = self.establish(target, spec::Event::Reset)?;
        out.calls = self.cache.backend_stats().since(&before);
        Ok(out)
    }

    /// INIT: the spec's INIT rules applied to the current state (CR0.CD/NW, x87/SSE/AVX
    /// state, MSRs, APIC ID and base kept; CR3 zeroed; the local APIC to its INIT state; an AP
    /// to wait-for-SIPI) — unless a blocking rule applies: then the INIT is held (nothing
    /// changes; [`Vcpu::init_latched`] says why) or becomes a VM exit to the guest hypervisor.
    /// [`Outcome::init`] reports which.
    pub fn init(&mut self) -> Result<Outcome, EngineError> {
        self.init_with_rules()
    }

    /// A startup IPI with `vector`. A vCPU that is not waiting for SIPI ignores it (returns
    /// `false`), as the processor does.
    pub fn sipi(&mut self, vector: u8) -> Result<bool, EngineError> {
        let mut target = *self.cache.state()?;
        if !spec::sipi(&mut target, vector) {
            return Ok(false);
        }
        let event = self.expected.map_or(spec::Event::Init, |(_, e)| e);
        self.establish(target, event)?;
        Ok(true)
    }

    /// Read every field back from the backend and report each that differs from the state
    /// the last RESET, INIT or SIPI established. The spec's alternatives count as allowed;
    /// fields the backend does not hold are reported as such.
    pub fn verify(&mut self) -> Result<Vec<Deviation>, EngineError> {
        let (expected, event) = self.expected.ok_or(EngineError::NothingToVerify)?;
        self.cache.flush()?;
        self.cache.invalidate();
        // Read everything first: a backend can learn from a read that it does not hold a field
        // (the KVM backend and a host that ignores TSC writes).
        self.cache.state()?;
        let mut out = Vec::new();
        for field in Field::all() {
            if !self.cache.holds(field) {
                out.push(Deviation::not_held(field, field.get(&expected)));
                continue;
            }
            let actual = self.cache.get(field)?;
            if let Some(d) = verify::compare(
                field,
                field.get(&expected),
                actual,
                self.model.vendor,
                event,
            ) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
