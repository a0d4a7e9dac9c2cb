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
    /// `/dev/kvm` exists but may not be opened read-write; its group may, so joining it helps.
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
    /// The device may not be opened and no group grants access to it (e.g. mode 0600).
    #[error(
        "permission denied on {path} ({detail}) — run as its owner, or ask the administrator to grant access (e.g. a udev rule making it group kvm read-write, or an ACL)"
    )]
    AccessRestricted {
        /// The device path.
        path: String,
        /// Owner, group and mode of the device.
        detail: String,
    },
    /// The device opened but KVM_GET_API_VERSION failed on it: it is not a KVM device.
    #[error(
        "{path} is not a KVM device: KVM_GET_API_VERSION on it failed with {errno} — point VCPU_RESET_KVM_DEVICE at /dev/kvm, or unset it"
    )]
    NotKvm {
        /// The device path.
        path: String,
        /// The error the ioctl returned.
        errno: errno::Error,
    },
    /// KVM_GET_API_VERSION did not return 12.
    #[error(
        "{path} reports KVM API version {version}, not 12 — this is not a KVM this crate can drive"
    )]
    ApiVersion {
        /// The device path.
        path: String,
        /// The version it reported.
        version: i32,
    },
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
