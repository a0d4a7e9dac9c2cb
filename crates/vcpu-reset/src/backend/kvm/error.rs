//! Errors from opening KVM and creating VMs and vCPUs.

use vmm_sys_util::errno;

/// Why KVM, a VM or a vCPU could not be set up. Errors of state transfers and runs are
/// [`crate::backend::BackendError`]s.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error("no {path} — load the kvm module or run on a host with virtualization enabled")]
    NoDevice {
        /// The device path (`/dev/kvm` unless `VCPU_RESET_KVM_DEVICE` says otherwise).
        path: String,
    },
    /// `/dev/kvm` exists but may not be opened read-write.
    #[error("permission denied on {path} — add the user to group kvm")]
    PermissionDenied {
        /// The device path.
        path: String,
    },
    /// `/dev/kvm` could not be opened for another reason.
    #[error(
        "cannot open {path}: {errno} — check that the kvm module loaded without errors (dmesg)"
    )]
    Open {
        /// The device path.
        path: String,
        /// The error.
        errno: errno::Error,
    },
    /// KVM_GET_API_VERSION did not return 12.
    #[error(
        "/dev/kvm reports KVM API version {0}, not 12 — this is not a KVM this crate can drive"
    )]
    ApiVersion(i32),
    /// An ioctl on `/dev/kvm`, a VM or a new vCPU failed.
    #[error("{op} failed: {errno} — {hint}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The error the kernel returned.
        errno: errno::Error,
        /// What to do about it.
        hint: &'static str,
    },
}

impl KvmError {
    pub(super) fn ioctl(op: &'static str, errno: errno::Error, hint: &'static str) -> Self {
        KvmError::Ioctl { op, errno, hint }
    }
}
