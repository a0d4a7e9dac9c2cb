/*
 * reboot_vmm.c: a small VMM on raw KVM ioctls that uses vcpu-reset's C API for the exact
 * RESET of its vCPU, at power-on and whenever the guest reboots: on 0x06 to port 0xCF9 (a hard
 * reset) and on a triple fault (KVM_EXIT_SHUTDOWN). It reboots in place: the VM, its memory
 * (RAM is kept) and the vCPU fd stay; the in-kernel PIC, IOAPIC and PIT are put back as they
 * were created.
 *
 *   cc -Wall -Wextra -Werror -I crates/capi/include crates/capi/examples/c/reboot_vmm.c \
 *      target/debug/libvcpu_reset.a -lpthread -ldl -lm -o reboot_vmm && ./reboot_vmm
 *
 * The guest is a few real-mode instructions the VMM writes below 4 GiB: from the reset vector
 * it counts its boots in RAM and reports the count on port 0x80, then clears CR0.CD/NW and
 * writes CR3 (state a RESET must put back) and asks for a hard reset through 0xCF9. At the
 * report of its second boot the VMM makes the next run end in a triple fault (where the host
 * has KVM_CAP_X86_TRIPLE_FAULT_EVENT: this project's hosts run real-mode code through KVM's
 * instruction emulator, which cannot triple-fault by itself). The third boot writes port 0xF4
 * and the VMM exits. At every report the VMM checks, through its own fd, that the boot began
 * in the RESET state: RDX = CPUID.01H:EAX, CR0 = 0x60000010, CR3 = 0, CS base 0xFFFF0000.
 *
 * Exit status 0 when every boot began exact; 1 otherwise; "skipped: no /dev/kvm" and 0 where
 * KVM cannot be opened.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vcpu_reset.h"

#define LOW_SIZE 0x100000UL
#define HIGH_BASE 0xffff0000UL
#define HIGH_SIZE 0x10000UL
#define TSS_ADDRESS 0xfffbd000UL
#define CR0_RESET 0x60000010ULL
#define MAX_EXITS 1000

/* At the reset vector (offset 0xFFF0 of the top 64 KiB): jmp 0xE000. */
static const uint8_t reset_vector[] = {0xe9, 0x0d, 0xe0};

/* At 0xE000; see the file's comment. */
static const uint8_t guest[] = {
    0x31, 0xc0,                         /* xor ax, ax */
    0x8e, 0xd8,                         /* mov ds, ax */
    0xfe, 0x06, 0x00, 0x05,             /* inc byte [0x500]: the boot count, in RAM */
    0xa0, 0x00, 0x05,                   /* mov al, [0x500] */
    0xe6, 0x80,                         /* out 0x80, al: report */
    0x3c, 0x03,                         /* cmp al, 3 */
    0x73, 0x1d,                         /* jae done */
    0x0f, 0x20, 0xc0,                   /* mov eax, cr0 */
    0x66, 0x25, 0xff, 0xff, 0xff, 0x9f, /* and eax, 0x9fffffff: clear CD, NW */
    0x0f, 0x22, 0xc0,                   /* mov cr0, eax */
    0x66, 0xb8, 0x00, 0x20, 0x00, 0x00, /* mov eax, 0x2000 */
    0x0f, 0x22, 0xd8,                   /* mov cr3, eax */
    0xba, 0xf9, 0x0c,                   /* mov dx, 0xcf9 */
    0xb0, 0x06,                         /* mov al, 6: hard reset */
    0xee,                               /* out dx, al */
    0xeb, 0xfe,                         /* jmp $ */
    0xb0, 0x00,                         /* done: mov al, 0 */
    0xe6, 0xf4,                         /* out 0xf4, al: exit */
    0xeb, 0xfe,                         /* jmp $ */
};

static int check(int ret, const char *what) {
    if (ret < 0) {
        fprintf(stderr, "%s: %s\n", what, strerror(errno));
        exit(1);
    }
    return ret;
}

static void *map(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap guest memory");
        exit(1);
    }
    return p;
}

static void add_region(int vm, uint32_t slot, uint64_t base, void *host, size_t size) {
    struct kvm_userspace_memory_region region = {
        .slot = slot,
        .guest_phys_addr = base,
        .memory_size = size,
        .userspace_addr = (uint64_t)(uintptr_t)host,
    };
    check(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");
}

/* Set the host's supported CPUID on the vCPU; returns CPUID.01H:EAX. */
static uint32_t set_cpuid(int kvm, int vcpu) {
    const int max = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + max * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid) {
        perror("calloc");
        exit(1);
    }
    cpuid->nent = max;
    check(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid), "KVM_GET_SUPPORTED_CPUID");
    uint32_t signature = 0;
    for (uint32_t i = 0; i < cpuid->nent; i++) {
        if (cpuid->entries[i].function == 1)
            signature = cpuid->entries[i].eax;
    }
    check(ioctl(vcpu, KVM_SET_CPUID2, cpuid), "KVM_SET_CPUID2");
    free(cpuid);
    return signature;
}

/* Whether the boot began in the RESET state, read through the VMM's own fd. */
static int boot_was_exact(int vcpu, uint32_t signature, int boot) {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    check(ioctl(vcpu, KVM_GET_REGS, &regs), "KVM_GET_REGS");
    check(ioctl(vcpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
    int exact = regs.rdx == signature && sregs.cr0 == CR0_RESET && sregs.cr3 == 0 &&
                sregs.cs.base == HIGH_BASE && sregs.cs.selector == 0xf000;
    printf("boot %d: RDX %#llx, CR0 %#llx, CR3 %#llx, CS %#x base %#llx: %s\n", boot,
           (unsigned long long)regs.rdx, (unsigned long long)sregs.cr0,
           (unsigned long long)sregs.cr3, sregs.cs.selector, (unsigned long long)sregs.cs.base,
           exact ? "exact" : "NOT the RESET state");
    return exact;
}

/* Make the next KVM_RUN end in a triple fault, as if the guest had triple-faulted. */
static void raise_triple_fault(int vcpu) {
    struct kvm_vcpu_events events;
    check(ioctl(vcpu, KVM_GET_VCPU_EVENTS, &events), "KVM_GET_VCPU_EVENTS");
    events.flags = KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
    events.triple_fault.pending = 1;
    check(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &events), "KVM_SET_VCPU_EVENTS");
}

/* The reboot: the vCPU's exact RESET, then the PIC, IOAPIC and PIT as created. */
static int reboot(struct vcpu_reset *r, struct vcpu_reset_devices *devices, int vm, int vcpu,
                  const char *why) {
    int calls = vcpu_reset_reset(r, vcpu);
    if (calls < 0) {
        fprintf(stderr, "RESET failed: %s\n", vcpu_reset_last_error());
        return -1;
    }
    int device_calls = vcpu_reset_devices_restore(devices, vm);
    if (device_calls < 0) {
        fprintf(stderr, "restoring the devices failed: %s\n", vcpu_reset_last_error());
        return -1;
    }
    printf("reboot (%s): RESET in %d vCPU syscalls, devices in %d\n", why, calls, device_calls);
    return 0;
}

int main(void) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        printf("skipped: no /dev/kvm (%s)\n", strerror(errno));
        return 0;
    }
    int vm = check(ioctl(kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
    check(ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDRESS), "KVM_SET_TSS_ADDR");
    check(ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    check(ioctl(vm, KVM_CREATE_PIT2, &pit), "KVM_CREATE_PIT2");
    int triple_fault = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_X86_TRIPLE_FAULT_EVENT) > 0;
    if (triple_fault) {
        struct kvm_enable_cap cap = {.cap = KVM_CAP_X86_TRIPLE_FAULT_EVENT, .args = {1}};
        check(ioctl(vm, KVM_ENABLE_CAP, &cap), "KVM_ENABLE_CAP(TRIPLE_FAULT_EVENT)");
    }

    uint8_t *low = map(LOW_SIZE), *high = map(HIGH_SIZE);
    memcpy(high + 0xe000, guest, sizeof(guest));
    memcpy(high + 0xfff0, reset_vector, sizeof(reset_vector));
    add_region(vm, 0, 0, low, LOW_SIZE);
    add_region(vm, 1, HIGH_BASE, high, HIGH_SIZE);

    int vcpu = check(ioctl(vm, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
    uint32_t signature = set_cpuid(kvm, vcpu);
    int run_size = check(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) {
        perror("mmap kvm_run");
        return 1;
    }

    /* vcpu-reset: the devices as created, and what it learns of the vCPU. */
    int quirk_off = vcpu_reset_disable_lint0_quirk(vm, 0);
    if (quirk_off < 0) {
        fprintf(stderr, "vcpu-reset: %s\n", vcpu_reset_last_error());
        return 1;
    }
    printf("KVM's LINT0_REENABLED quirk: %s\n", quirk_off ? "off" : "on (the host keeps it)");
    struct vcpu_reset_devices *devices = vcpu_reset_devices_capture(vm);
    struct vcpu_reset *r = devices ? vcpu_reset_new(vm, vcpu, 0) : NULL;
    if (!r) {
        fprintf(stderr, "vcpu-reset: %s\n", vcpu_reset_last_error());
        return 1;
    }
    /* A handle belongs to its vCPU: another vCPU's fd is refused and nothing changes. */
    int other = check(ioctl(vm, KVM_CREATE_VCPU, 1), "KVM_CREATE_VCPU(1)");
    if (vcpu_reset_reset(r, other) != -1) {
        fprintf(stderr, "vCPU 1's fd was taken for vCPU 0's handle\n");
        return 1;
    }
    printf("another vCPU's fd refused: %s\n", vcpu_reset_last_error());
    close(other);

    int calls = vcpu_reset_reset(r, vcpu);
    if (calls < 0) {
        fprintf(stderr, "power-on RESET failed: %s\n", vcpu_reset_last_error());
        return 1;
    }
    printf("power-on RESET: %d vCPU syscalls\n", calls);

    int failures = 0, reboots = 0;
    for (int exits = 0; exits < MAX_EXITS; exits++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fprintf(stderr, "KVM_RUN: %s\n", strerror(errno));
            return 1;
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t value = *((uint8_t *)run + run->io.data_offset);
            if (run->io.direction != KVM_EXIT_IO_OUT)
                break;
            if (run->io.port == 0x80) {
                failures += !boot_was_exact(vcpu, signature, value);
                if (value == 2 && triple_fault)
                    raise_triple_fault(vcpu);
            } else if (run->io.port == 0xcf9 && (value & 0x04)) {
                if (reboot(r, devices, vm, vcpu, "0xCF9") < 0)
                    return 1;
                reboots++;
            } else if (run->io.port == 0xf4) {
                printf("the guest exited after %d reboots (triple fault %s); %d boots not exact\n",
                       reboots, triple_fault ? "raised" : "not raisable on this host",
                       failures);
                vcpu_reset_free(r);
                vcpu_reset_devices_free(devices);
                return failures ? 1 : 0;
            }
            break;
        }
        case KVM_EXIT_SHUTDOWN:
            if (reboot(r, devices, vm, vcpu, "triple fault") < 0)
                return 1;
            reboots++;
            break;
        default:
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
    }
    fprintf(stderr, "no exit after %d exits\n", MAX_EXITS);
    return 1;
}
