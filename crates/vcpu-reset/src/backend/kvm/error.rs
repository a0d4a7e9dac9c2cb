//! Errors from opening KVM and creating VMs and vCPUs.

use vmm_sys_util::errno;

use super::ioctls::IoctlError;

/// Why KVM, a VM or a vCPU could not be set up. Errors of state transfers and runs are
/// [`crate::backend::BackendError`]s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error("no {path} — load the kvm module or run on a host with virtualization enabled")]
    NoDevice {
        /// The device path.
        path: String,
    },
    /// The path names something that is not the KVM device: not a character device (a
    /// directory, a regular file), or a character device whose driver is not there or not
    /// KVM's (`/dev/tty` without a controlling terminal).
    #[error("{path} is {what}, not the KVM device — open /dev/kvm (character device 10:232)")]
    NotADevice {
        /// The device path.
        path: String,
        /// What it is instead.
        what: String,
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
        "{path} is not a KVM device: KVM_GET_API_VERSION on it failed with {errno} — open /dev/kvm (character device 10:232)"
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
    /// [`KvmVcpu::adopt`](super::KvmVcpu::adopt) refused a vCPU. The vCPU's fd is inside:
    /// [`KvmError::into_fd`] gives it back, so the VMM keeps its vCPU.
    #[error("cannot adopt vCPU {id}: {refusal}")]
    Adopt {
        /// The vCPU id the caller gave.
        id: u64,
        /// Why.
        refusal: AdoptRefusal,
        /// The caller's vCPU fd, untouched apart from the reads adoption made.
        fd: ReturnedFd,
    },
    /// An ioctl on `/dev/kvm`, a VM or a new vCPU failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
}

/// Why [`KvmVcpu::adopt`](super::KvmVcpu::adopt) refused a vCPU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptRefusal {
    /// The id given is not the one the vCPU was created with (KVM names each vCPU fd
    /// `kvm-vcpu:<id>`).
    #[error(
        "the fd is vCPU {actual}, not {given} — pass the id the VMM gave KVM_CREATE_VCPU for this fd"
    )]
    IdMismatch {
        /// The id the caller gave.
        given: u64,
        /// The id KVM created the vCPU with.
        actual: u64,
    },
    /// The vCPU cannot belong to the VM given.
    #[error(
        "the vCPU does not belong to the VM given: {why} — pass the VmFd the vCPU was created from"
    )]
    OtherVm {
        /// What showed it.
        why: &'static str,
    },
    /// KVM_GET_CPUID2 returned no entries: the VMM never set the vCPU's CPUID.
    #[error(
        "the vCPU has no CPUID (KVM_GET_CPUID2 returned no entries) — set it with KVM_SET_CPUID2 (VcpuFd::set_cpuid2) before adopting; vcpu-reset takes the CPU model from it and never changes it"
    )]
    NoCpuid,
    /// A store the VMM left pending in `kvm_run` (`kvm_dirty_regs`), which adoption applies
    /// first, was rejected.
    #[error(
        "applying the store the VMM left pending in kvm_run (kvm_dirty_regs): {0}; correct that store, or clear kvm_dirty_regs, before adopting"
    )]
    PendingStore(IoctlError),
    /// An ioctl adoption makes failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
}

/// A vCPU fd carried back in an error, so that the caller does not lose its vCPU.
pub struct ReturnedFd(pub kvm_ioctls::VcpuFd);

impl std::fmt::Debug for ReturnedFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        write!(f, "VcpuFd({})", self.0.as_raw_fd())
    }
}

impl KvmError {
    /// The vCPU fd a refused [`KvmVcpu::adopt`](super::KvmVcpu::adopt) carries back (`None`
    /// for every other error).
    pub fn into_fd(self) -> Option<kvm_ioctls::VcpuFd> {
        match self {
            KvmError::Adopt { fd, .. } => Some(fd.0),
            _ => None,
        }
    }

    /// Why adoption was refused, for an [`KvmError::Adopt`].
    pub fn refusal(&self) -> Option<&AdoptRefusal> {
        match self {
            KvmError::Adopt { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}
