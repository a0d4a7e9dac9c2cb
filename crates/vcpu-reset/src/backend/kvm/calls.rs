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
    call().map_err(|errno| ioctl.failed(errno))
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
