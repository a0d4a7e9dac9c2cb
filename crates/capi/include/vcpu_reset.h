/*
 * vcpu_reset.h: the C API of vcpu-reset (crates/capi; link libvcpu_reset.a or -lvcpu_reset).
 *
 * The exact architectural RESET and INIT of a KVM x86 vCPU (Intel SDM Vol. 3A Table 10-1,
 * AMD APM Vol. 2 Table 14-1), for the CPU model the vCPU's own CPUID presents, through the VM
 * and vCPU fds the VMM already has; and the in-kernel PIC, IOAPIC and PIT put back at a reboot.
 *
 * Every function returns -1 (or NULL) on failure and leaves a message saying what to do next
 * for vcpu_reset_last_error() on the calling thread. Link the static library with
 * -lpthread -ldl -lm.
 *
 * Ownership and threads:
 * - A struct vcpu_reset belongs to the one vCPU it was made for: pass that vCPU's fd to every
 *   call. Another vCPU's fd (or the VM's, or any other file) is refused with an error and
 *   nothing changes, where /proc is mounted (the fd's /proc/self/fd name must be
 *   anon_inode:kvm-vcpu:<id>); a vCPU of another VM with the same id is not detected.
 * - The VM and vCPU fds stay the VMM's. Each struct vcpu_reset keeps one fd of its own, the
 *   vCPU's KVM statistics file (KVM_GET_STATS_FD), which holds a reference on the VM (its
 *   memory stays allocated in the kernel) until vcpu_reset_free(): free every handle when
 *   the VM is closed.
 * - A handle must not be used from two threads at once (handles of different vCPUs may be
 *   used on different threads, e.g. each vCPU's on its own thread).
 * - During vcpu_reset_reset/init/settle no other thread may make an ioctl on that vCPU
 *   (KVM_RUN included) or touch its kvm_run page: the call maps the page and works in it.
 */
#ifndef VCPU_RESET_H
#define VCPU_RESET_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What vcpu-reset learned about one vCPU: CPU model, identity, what the host's INIT gets right. */
struct vcpu_reset;

/* The in-kernel PIC, IOAPIC and PIT of a VM as captured before the guest first ran. */
struct vcpu_reset_devices;

/*
 * Learn vCPU `id` of the VM `vm_fd`, whose fd is `vcpu_fd`. The VMM has created the vCPU and
 * set its CPUID (KVM_SET_CPUID2). Costs 10 ioctls on the project's Intel host. Learning
 * writes the RESET values of the MSRs KVM may refuse a host write of (steal time, async-PF
 * interrupt, Hyper-V SINTs) and puts back any value that differed; best called before the
 * guest first runs. NULL on failure.
 */
struct vcpu_reset *vcpu_reset_new(int vm_fd, int vcpu_fd, uint64_t id);

/*
 * Power-on RESET: the VMM's next KVM_RUN of `vcpu_fd` starts in the exact RESET state.
 * Returns the vCPU syscalls made (3 to 5 after the guest ran, 1 to 3 for a vCPU that did not
 * run since its last RESET, 10 to 11 for the first call, which checks the host's INIT), or
 * -1. Before that KVM_RUN, reads through the VMM's fd may still show the old state:
 * vcpu_reset_settle() makes them exact.
 * After a failure the fd is unchanged in ownership and the next call writes every class.
 */
int vcpu_reset_reset(struct vcpu_reset *r, int vcpu_fd);

/* INIT: what INIT keeps is kept; an AP then waits for a startup IPI. Syscalls made, or -1. */
int vcpu_reset_init(struct vcpu_reset *r, int vcpu_fd);

/* Make reads through the VMM's fd show the state the next KVM_RUN starts from. */
int vcpu_reset_settle(struct vcpu_reset *r, int vcpu_fd);

/* Free a handle (NULL is ignored). */
void vcpu_reset_free(struct vcpu_reset *r);

/*
 * Turn off KVM's LINT0_REENABLED quirk on the VM (before vcpu_reset_new): KVM's own INIT then
 * leaves the BSP's LVT LINT0 masked as the SDM does, which saves each RESET of the BSP two
 * ioctls. `others`: the KVM_X86_QUIRK_* bits the VMM turns off anyway (some kernels replace a
 * VM's set of disabled quirks instead of adding to it). 1 when off, 0 when the host cannot,
 * -1 on failure.
 */
int vcpu_reset_disable_lint0_quirk(int vm_fd, uint64_t others);

/* Capture the VM's in-kernel PIC, IOAPIC and PIT, after creating them, before the first run. */
struct vcpu_reset_devices *vcpu_reset_devices_capture(int vm_fd);

/* Put them back at a reboot (4 VM ioctls with all three), once every vCPU is RESET; or -1. */
int vcpu_reset_devices_restore(const struct vcpu_reset_devices *d, int vm_fd);

/* Free a devices handle (NULL is ignored). */
void vcpu_reset_devices_free(struct vcpu_reset_devices *d);

/* The calling thread's last error message, valid until its next call; "" if none. */
const char *vcpu_reset_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* VCPU_RESET_H */
