//! Counted ioctls: every ioctl the backend makes goes through one of these helpers, which
//! counts it in the right [`Stats`] counter and turns its errno into the [`IoctlError`] of its
//! [`Ioctl`] (as `kvm-ioctls` has one wrapper per ioctl, these are one per kind of call).

use vmm_sys_util::errno;

use super::ioctls::{Ioctl, IoctlError};
use crate::backend::Stats;

/// Make `call`, one ioctl, counted in `count`; its error becomes the [`IoctlError`] of
/// `ioctl`.
pub(super) fn counted<T>(
    count: &mut u64,
    ioctl: Ioctl,
    call: impl FnOnce() -> Result<T, errno::Error>,
) -> Result<T, IoctlError> {
    *count += 1;
    #[cfg(feature = "selftest")]
    if fault::fires() {
        return Err(ioctl.failed(errno::Error::new(libc::EIO)));
    }
    call().map_err(|errno| ioctl.failed(errno))
}

/// A fault injected into the counted calls of the current thread, for tests that prove every
/// failure is survived ([`fail_nth_call`]).
#[cfg(feature = "selftest")]
mod fault {
    use std::cell::Cell;

    thread_local! {
        /// Counted calls left before the one that fails (1: the next).
        static LEFT: Cell<u64> = const { Cell::new(0) };
    }

    /// Make the `n`-th counted call from now on (1: the next) on this thread fail with EIO
    /// without being made; 0 cancels.
    pub(super) fn arm(n: u64) {
        LEFT.with(|l| l.set(n));
    }

    /// Whether this call is the one to fail.
    pub(super) fn fires() -> bool {
        LEFT.with(|l| match l.get() {
            0 => false,
            1 => {
                l.set(0);
                true
            }
            n => {
                l.set(n - 1);
                false
            }
        })
    }

    /// Whether an armed fault is still waiting.
    pub(super) fn armed() -> bool {
        LEFT.with(|l| l.get() != 0)
    }
}

/// Make the `n`-th counted ioctl from now on (1: the next) made by the KVM backend on the
/// calling thread fail with EIO, without making it; 0 cancels. Returns whether a fault was
/// still armed (not yet fired) when this was called. For tests that make every call of an
/// operation fail in turn.
#[cfg(feature = "selftest")]
pub fn fail_nth_call(n: u64) -> bool {
    let armed = fault::armed();
    fault::arm(n);
    armed
}

/// A load of vCPU state (a KVM_GET_* ioctl), counted in [`Stats::loads`].
pub(super) fn load<T>(
    stats: &mut Stats,
    ioctl: Ioctl,
    call: impl FnOnce() -> Result<T, errno::Error>,
) -> Result<T, IoctlError> {
    counted(&mut stats.loads, ioctl, call)
}

/// A store of vCPU state (a KVM_SET_* ioctl), counted in [`Stats::stores`].
pub(super) fn store<T>(
    stats: &mut Stats,
    ioctl: Ioctl,
    call: impl FnOnce() -> Result<T, errno::Error>,
) -> Result<T, IoctlError> {
    counted(&mut stats.stores, ioctl, call)
}

/// Any other call (creation, capability checks, probes), counted in [`Stats::other`].
pub(super) fn other<T>(
    stats: &mut Stats,
    ioctl: Ioctl,
    call: impl FnOnce() -> Result<T, errno::Error>,
) -> Result<T, IoctlError> {
    counted(&mut stats.other, ioctl, call)
}

/// The result of a raw ioctl (`vmm_sys_util::ioctl`): 0 or the errno it left.
pub(super) fn raw_result(ret: i32) -> Result<(), errno::Error> {
    if ret == 0 {
        Ok(())
    } else {
        Err(errno::Error::last())
    }
}
