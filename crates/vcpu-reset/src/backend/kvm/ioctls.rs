//! ioctls that `kvm-ioctls` does not wrap, declared from the Linux UAPI (`linux/kvm.h`).

use kvm_bindings::{KVMIO, kvm_sregs2};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

// KVM_X86_GET_MCE_CAP_SUPPORTED: _IOR(KVMIO, 0x9d, __u64), on /dev/kvm.
ioctl_ior_nr!(KVM_X86_GET_MCE_CAP_SUPPORTED, KVMIO, 0x9d, u64);
// KVM_GET_SREGS2: _IOR(KVMIO, 0xcc, struct kvm_sregs2), on a vCPU (KVM_CAP_SREGS2).
ioctl_ior_nr!(KVM_GET_SREGS2, KVMIO, 0xcc, kvm_sregs2);
// KVM_SET_SREGS2: _IOW(KVMIO, 0xcd, struct kvm_sregs2), on a vCPU (KVM_CAP_SREGS2).
ioctl_iow_nr!(KVM_SET_SREGS2, KVMIO, 0xcd, kvm_sregs2);
// KVM_SET_BOOT_CPU_ID: _IO(KVMIO, 0x78), on a VM (KVM_CAP_SET_BOOT_CPU_ID).
ioctl_io_nr!(KVM_SET_BOOT_CPU_ID, KVMIO, 0x78);
// KVM_GET_STATS_FD: _IO(KVMIO, 0xce), on a vCPU (KVM_CAP_BINARY_STATS_FD).
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);
