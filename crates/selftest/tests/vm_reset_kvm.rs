//! [`VmReset`] on the real `/dev/kvm`: a VMM's VM with an in-kernel irqchip and PIT, the
//! guest (and the VMM) dirtying the PIC masks, an IOAPIC redirection entry and the PIT's
//! channel 0, then one call that RESETs every vCPU and puts the devices back as created.
//!
//! Each test skips (printing why) where `/dev/kvm` cannot be used, unless
//! `VCPU_RESET_REQUIRE_KVM=1`.

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY, kvm_irqchip,
    kvm_pit_config,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vcpu_reset::VmReset;
use vcpu_reset::backend::kvm::KvmHost;
use vcpu_reset_selftest::host::kvm_for_tests;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const HIGH_BASE: u64 = 0xffff_0000;
const HIGH_SIZE: usize = 0x1_0000;
const LOW_SIZE: usize = 0x10_0000;

/// At the reset vector: `out 0x80, al; jmp 0xF000`.
const RESET_VECTOR: [u8; 5] = [0xe6, 0x80, 0xe9, 0x0b, 0xf0];
/// At 0xF000: PIC master IMR 0xAB, slave IMR 0xCD, PIT channel 0 in mode 2 with count 0x1234,
/// then `out 0x81, al; jmp $`.
const DIRTY: [u8; 24] = [
    0xb0, 0xab, 0xe6, 0x21, // mov al, 0xab; out 0x21, al
    0xb0, 0xcd, 0xe6, 0xa1, // mov al, 0xcd; out 0xa1, al
    0xb0, 0x34, 0xe6, 0x43, // mov al, 0x34; out 0x43, al (channel 0, lo/hi, mode 2)
    0xb0, 0x34, 0xe6, 0x40, // mov al, 0x34; out 0x40, al
    0xb0, 0x12, 0xe6, 0x40, // mov al, 0x12; out 0x40, al
    0xe6, 0x81, 0xeb, 0xfe, // out 0x81, al; jmp $
];
/// CR0 after RESET: Intel SDM Vol. 3A Table 10-1; AMD APM Vol. 2 Table 14-1.
const CR0_RESET: u64 = 0x6000_0010;

struct VmmVm {
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    signature: u32,
    _mem: GuestMemoryMmap,
    _kvm: Kvm,
}

fn vmm_vm(count: u32) -> VmmVm {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    vm.create_irq_chip().expect("create irqchip");
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .expect("create PIT");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_SIZE),
        (GuestAddress(HIGH_BASE), HIGH_SIZE),
    ])
    .expect("map guest memory");
    let top = mem
        .get_host_address(GuestAddress(HIGH_BASE))
        .expect("mapped");
    // SAFETY: both writes stay inside the 64 KiB mapping `mem` owns, unused by anything yet.
    unsafe {
        std::ptr::copy_nonoverlapping(DIRTY.as_ptr(), top.add(0xf000), DIRTY.len());
        std::ptr::copy_nonoverlapping(RESET_VECTOR.as_ptr(), top.add(0xfff0), RESET_VECTOR.len());
    }
    for (slot, (base, size)) in [(0u64, LOW_SIZE), (HIGH_BASE, HIGH_SIZE)]
        .into_iter()
        .enumerate()
    {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: base,
            memory_size: size as u64,
            userspace_addr: mem.get_host_address(GuestAddress(base)).expect("mapped") as u64,
        };
        // SAFETY: the region is memory `mem` maps, which VmmVm keeps past the VM.
        unsafe { vm.set_user_memory_region(region) }.expect("set memory region");
    }
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    let signature = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .expect("leaf 1")
        .eax;
    let vcpus = (0..count)
        .map(|id| {
            let vcpu = vm.create_vcpu(u64::from(id)).expect("create vCPU");
            let mut cpuid = supported.clone();
            for e in cpuid.as_mut_slice() {
                match e.function {
                    1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
                    0xb | 0x1f => e.edx = id,
                    _ => {}
                }
            }
            vcpu.set_cpuid2(&cpuid).expect("set CPUID");
            vcpu
        })
        .collect();
    VmmVm {
        vcpus,
        vm,
        signature,
        _mem: mem,
        _kvm: kvm,
    }
}

fn run_to_out(vcpu: &mut VcpuFd) -> u16 {
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, _) => return port,
            VcpuExit::Intr => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn chip(vm: &VmFd, chip_id: u32) -> kvm_irqchip {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).expect("KVM_GET_IRQCHIP");
    chip
}

fn imr(chip: &kvm_irqchip) -> u8 {
    // SAFETY: a PIC chip's state is the `pic` member; plain integers.
    unsafe { chip.chip.pic.imr }
}

fn redirection(chip: &kvm_irqchip, pin: usize) -> u64 {
    // SAFETY: the IOAPIC chip's state is the `ioapic` member; each entry is a u64 union.
    unsafe { chip.chip.ioapic.redirtbl[pin].bits }
}

/// PIC masks, IOAPIC entry 2 and PIT channel 0 as the VM has them now.
#[derive(Debug, PartialEq, Eq)]
struct Devices {
    master_imr: u8,
    slave_imr: u8,
    ioapic_pin2: u64,
    pit_count: u32,
    pit_mode: u8,
}

fn devices(vm: &VmFd) -> Devices {
    let pit = vm.get_pit2().expect("KVM_GET_PIT2");
    Devices {
        master_imr: imr(&chip(vm, KVM_IRQCHIP_PIC_MASTER)),
        slave_imr: imr(&chip(vm, KVM_IRQCHIP_PIC_SLAVE)),
        ioapic_pin2: redirection(&chip(vm, KVM_IRQCHIP_IOAPIC), 2),
        pit_count: pit.channels[0].count,
        pit_mode: pit.channels[0].mode,
    }
}

/// The guest dirties the PIC masks and the PIT, the VMM an IOAPIC redirection entry.
fn dirty(vmm: &mut VmmVm) {
    let bsp = &mut vmm.vcpus[0];
    // From the reset vector (0x80) or just after it.
    let mut port = run_to_out(bsp);
    if port == 0x80 {
        port = run_to_out(bsp);
    }
    assert_eq!(port, 0x81, "the guest programmed the PIC and PIT");
    let mut ioapic = chip(&vmm.vm, KVM_IRQCHIP_IOAPIC);
    // SAFETY: the IOAPIC chip's state is the `ioapic` member.
    unsafe { ioapic.chip.ioapic.redirtbl[2].bits = 0x30 }; // vector 0x30, unmasked
    vmm.vm.set_irqchip(&ioapic).expect("KVM_SET_IRQCHIP");
    let now = devices(&vmm.vm);
    assert_eq!((now.master_imr, now.slave_imr), (0xab, 0xcd), "{now:?}");
    assert_eq!((now.pit_count, now.pit_mode), (0x1234, 2), "{now:?}");
    assert_eq!(now.ioapic_pin2, 0x30, "{now:?}");
}

/// After the reboot: devices as created, the BSP runnable at the reset vector, APs waiting.
fn assert_rebooted(vmm: &mut VmmVm, created: &Devices) {
    assert_eq!(&devices(&vmm.vm), created, "the devices as created");
    assert_eq!(
        redirection(&chip(&vmm.vm, KVM_IRQCHIP_IOAPIC), 2) & (1 << 16),
        1 << 16,
        "the IOAPIC entry is masked, as at creation"
    );
    for (i, v) in vmm.vcpus.iter().enumerate().skip(1) {
        let mp = v.get_mp_state().expect("KVM_GET_MP_STATE").mp_state;
        assert_eq!(mp, KVM_MP_STATE_INIT_RECEIVED, "AP {i} waits for SIPI");
    }
    let bsp = &mut vmm.vcpus[0];
    assert_eq!(
        bsp.get_mp_state().expect("KVM_GET_MP_STATE").mp_state,
        KVM_MP_STATE_RUNNABLE
    );
    assert_eq!(
        run_to_out(bsp),
        0x80,
        "the BSP restarts at the reset vector"
    );
    let regs = bsp.get_regs().expect("KVM_GET_REGS");
    let sregs = bsp.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(regs.rdx, u64::from(vmm.signature), "RDX");
    assert_eq!(sregs.cr0, CR0_RESET, "CR0");
    assert_eq!(sregs.cr3, 0, "CR3");
}

/// Reboot a VM of `vcpus` vCPUs twice, spreading the RESETs over up to `threads` threads.
fn reboots(host: &KvmHost, vcpus: u32, raw: bool, threads: usize) {
    let mut vmm = vmm_vm(vcpus);
    let created = devices(&vmm.vm);
    println!("created: {created:?}");
    let mut r = if raw {
        // SAFETY: the fds are owned by `vmm`, which outlives every use here.
        let (vm, fds) = unsafe { raw_fds(&vmm) };
        VmReset::from_raw_fds(host, vm, &fds).expect("learn the VM")
    } else {
        VmReset::new(host, &vmm.vm, &vmm.vcpus).expect("learn the VM")
    };
    r.set_threads(threads);
    // Power on through the same call, as a VMM would.
    let first = r.reset(&vmm.vm, &mut vmm.vcpus).expect("power-on RESET");
    println!("power-on: {} syscalls", first.calls());
    for round in 0..2 {
        dirty(&mut vmm);
        let out = if raw {
            // SAFETY: as above.
            let (vm, fds) = unsafe { raw_fds(&vmm) };
            // SAFETY: each fd is its index's vCPU, and no other thread uses them.
            unsafe { r.reset_raw(vm, &fds) }.expect("reboot")
        } else {
            r.reset(&vmm.vm, &mut vmm.vcpus).expect("reboot")
        };
        println!(
            "round {round}: {} syscalls ({} for the devices), per vCPU {:?}",
            out.calls(),
            out.device_calls,
            out.vcpus.iter().map(|s| s.calls()).collect::<Vec<_>>()
        );
        assert_eq!(out.device_calls, 4, "KVM_SET_IRQCHIP x3, KVM_SET_PIT2");
        assert_eq!(out.vcpus.len(), vcpus as usize);
        assert_rebooted(&mut vmm, &created);
    }
}

/// # Safety
/// The fds returned must not outlive `vmm`.
unsafe fn raw_fds(vmm: &VmmVm) -> (BorrowedFd<'static>, Vec<BorrowedFd<'static>>) {
    // SAFETY: as the caller vouches.
    unsafe {
        (
            BorrowedFd::borrow_raw(vmm.vm.as_raw_fd()),
            vmm.vcpus
                .iter()
                .map(|v| BorrowedFd::borrow_raw(v.as_raw_fd()))
                .collect(),
        )
    }
}

#[test]
fn a_reboot_puts_the_pic_ioapic_and_pit_back_and_resets_every_vcpu() {
    let Some(host) = kvm_for_tests() else { return };
    reboots(&host, 2, false, 1);
}

#[test]
fn a_reboot_through_raw_fds_does_the_same() {
    let Some(host) = kvm_for_tests() else { return };
    reboots(&host, 2, true, 1);
}

#[test]
fn many_vcpus_are_reset_over_several_threads() {
    let Some(host) = kvm_for_tests() else { return };
    // 16 vCPUs: two groups of 8 where the VMM asks for two threads or more.
    reboots(&host, 16, false, 2);
}

#[test]
fn a_reboot_given_another_number_of_vcpus_is_refused() {
    let Some(host) = kvm_for_tests() else { return };
    let mut vmm = vmm_vm(2);
    let mut r = VmReset::new(&host, &vmm.vm, &vmm.vcpus).expect("learn the VM");
    let e = r
        .reset(&vmm.vm, &mut vmm.vcpus[..1])
        .expect_err("one vCPU short");
    println!("{e}");
    assert!(e.to_string().contains("pass all the VM's vCPU fds"), "{e}");
}

#[test]
fn a_reboot_given_the_vcpus_in_another_order_is_refused_and_changes_nothing() {
    let Some(host) = kvm_for_tests() else { return };
    let mut vmm = vmm_vm(2);
    let created = devices(&vmm.vm);
    let mut r = VmReset::new(&host, &vmm.vm, &vmm.vcpus).expect("learn the VM");
    r.reset(&vmm.vm, &mut vmm.vcpus).expect("power-on RESET");
    dirty(&mut vmm);
    let dirtied = devices(&vmm.vm);
    let bsp_regs = vmm.vcpus[0].get_regs().expect("KVM_GET_REGS");
    let ap_mp = vmm.vcpus[1].get_mp_state().expect("KVM_GET_MP_STATE");

    vmm.vcpus.swap(0, 1);
    let e = r
        .reset(&vmm.vm, &mut vmm.vcpus)
        .expect_err("vCPU 1's fd where vCPU 0's belongs");
    println!("{e}");
    let source = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        matches!(
            e,
            vcpu_reset::VmResetError::Vcpu {
                index: 0,
                source: vcpu_reset::VcpuResetError::NotThisVcpu { vcpu: Some(1), .. }
            }
        ),
        "{e:?}"
    );
    assert!(
        source.is_some_and(|s| s.contains("pass that vCPU's fd")),
        "the error says what to do"
    );
    // SAFETY: the fds are owned by `vmm`, which outlives every use here.
    let (vm, fds) = unsafe { raw_fds(&vmm) };
    // SAFETY: the fds are the VM's vCPUs (in the wrong order, which the call refuses), used
    // by no other thread.
    let e = unsafe { r.reset_raw(vm, &fds) }.expect_err("raw, in another order");
    assert!(
        matches!(e, vcpu_reset::VmResetError::Vcpu { index: 0, .. }),
        "{e:?}"
    );
    vmm.vcpus.swap(0, 1);

    assert_eq!(devices(&vmm.vm), dirtied, "the devices were not restored");
    assert_eq!(vmm.vcpus[0].get_regs().expect("KVM_GET_REGS"), bsp_regs);
    assert_eq!(
        vmm.vcpus[1]
            .get_mp_state()
            .expect("KVM_GET_MP_STATE")
            .mp_state,
        ap_mp.mp_state
    );
    // In the right order it reboots as ever.
    r.reset(&vmm.vm, &mut vmm.vcpus).expect("reboot");
    assert_rebooted(&mut vmm, &created);
}
