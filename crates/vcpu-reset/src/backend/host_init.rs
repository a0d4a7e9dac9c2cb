//! The host's own INIT as the bulk of a RESET: an extension of [`Backend`](super::Backend) for hosts that have
//! one (KVM's in-kernel INIT). The engine drives it through the cache
//! ([`VcpuCache::host_init`](crate::cache::VcpuCache::host_init)), which forgets what the INIT
//! changed; the defaults offer nothing, so a backend without such an INIT implements this trait
//! with an empty body.

use vcpu_reset_spec::VcpuState;

use super::{BackendError, ClassSet};

/// What a [`HostInitBackend::host_init`](crate::backend::HostInitBackend::host_init) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostInit {
    /// Classes the backend stored from the target itself (on KVM the MSRs, which the host's
    /// INIT keeps; with `lazy` also REGS, SREGS and EVENTS).
    pub stored: ClassSet,
    /// Classes the host's INIT is meant to leave at the RESET target.
    pub established: ClassSet,
    /// Classes the host's INIT overwrote with values of its own, to be stored again.
    pub clobbered: ClassSet,
}

/// A backend's host INIT and the count that tells whether a vCPU was touched since its last
/// RESET (see the module documentation).
pub trait HostInitBackend {
    /// Let the host perform its own INIT of the vCPU as the bulk of a RESET to `target`, where
    /// the host has one that costs (almost) no call: the backend stores the MSRs of `target`
    /// (including IA32_APIC_BASE) and raises the host's INIT in the same store.
    ///
    /// Without `lazy` the INIT takes effect before this returns: [`HostInit::established`]
    /// then holds what the host's INIT gives those classes, which the caller checks against the
    /// spec before trusting it, and the classes in [`HostInit::clobbered`] hold the host's INIT
    /// values, to be stored again. With `lazy` the backend also stores the classes the INIT
    /// would clobber from `target` itself (in [`HostInit::stored`]) and leaves the INIT to take
    /// effect when the vCPU next runs, or before anything else of the vCPU is read or written;
    /// the INIT then overwrites those classes, so `lazy` is only exact where the host's INIT
    /// gives them `target`'s values (CR0.CD/NW aside, which INIT keeps). Returns `None`, having
    /// changed nothing, where the backend cannot (the default).
    ///
    /// `kept` are classes the caller vouches hold `target` already (nothing changed them since
    /// they were stored: [`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count)); the backend may leave them out of its
    /// stores, except fields that change by themselves (the TSC) and what raising the INIT
    /// needs (IA32_APIC_BASE).
    fn host_init(
        &mut self,
        target: &VcpuState,
        lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<HostInit>, BackendError> {
        let _ = (target, lazy, kept);
        Ok(None)
    }

    /// A count that moves whenever the vCPU's x87/SSE/AVX state, XCR0 or MSRs may have
    /// changed: at every guest entry, and at every store of those classes (or of nested
    /// state) by the host. Where it has not moved between two reads, those classes are as they
    /// were at the first. On KVM: the vCPU's `exits` statistic (read with one `pread` after a
    /// KVM_RUN, without one otherwise) plus the backend's own stores of those classes. `None`
    /// (the default) where the host gives no count of guest entries.
    fn touch_count(&mut self) -> Option<u64> {
        None
    }
}
