//! Adoption on the real `/dev/kvm`: a VM and vCPUs created with kvm-ioctls alone (as a VMM
//! would), a CPUID whose signature differs from the host's and without x2APIC, state dirtied
//! through the raw fd, then [`KvmVcpu::adopt`], RESET or INIT + SIPI through the engine,
//! [`KvmVcpu::into_fd`], and every check made through the raw fd again; and the refusals.
//!
//! Each test skips (printing why) where `/dev/kvm` cannot be used, unless
//! `VCPU_RESET_REQUIRE_KVM=1`.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, Msrs, kvm_msr_entry,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vcpu_reset::backend::Backend;
use vcpu_reset::backend::kvm::{AdoptRefusal, KvmError, KvmHost, KvmVcpu};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::{DeviationKind, Vcpu};
use vcpu_reset::spec::{ARCH_CAP_TSX_CTRL, Applies, Field, MCG_CTL_P, McReg, Msr, Vendor};
use vcpu_reset_selftest::host::kvm_for_tests;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const LOW_SIZE: usize = 0x10_0000;
const HIGH_BASE: u64 = 0xffff_0000;
const HIGH_SIZE: usize = 0x1_0000;
/// `out 0x80, al; jmp $` at the reset vector.
const RESET_CODE: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfe];
/// The SIPI vector and its code: `mov al, 0xa5; out 0x82, al; jmp $`.
const SIPI_VECTOR: u8 = 0x10;
const SIPI_CODE: [u8; 6] = [0xb0, 0xa5, 0xe6, 0x82, 0xeb, 0xfe];

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_PAT: u32 = 0x277;
const MSR_IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_IA32_MTRR_PHYSBASE0: u32 = 0x200;
const MSR_IA32_MTRR_FIX64K_00000: u32 = 0x250;
const CPUID_1_ECX_X2APIC: u32 = 1 << 21;

/// A VMM's VM: its own `/dev/kvm` handle, memory and vCPUs. Fields drop in order.
struct VmmVm {
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    _mem: GuestMemoryMmap,
    _kvm: Kvm,
}

/// A signature that is not the host's: the Kaby Lake 0x000906EA on Intel, Zen 3's
/// 0x00A00F11 on AMD (with a second choice where the host is that CPU).
fn other_signature(vendor: Vendor, host_signature: u32) -> u32 {
    let candidates = match vendor {
        Vendor::Intel => [0x0009_06ea, 0x000a_0655],
        Vendor::Amd => [0x00a0_0f11, 0x0083_0f10],
    };
    candidates
        .into_iter()
        .find(|s| *s != host_signature)
        .unwrap_or(candidates[0])
}

fn host_vendor_and_signature(kvm: &Kvm) -> (Vendor, u32) {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    let leaf = |f: u32| {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == f && e.index == 0)
            .expect("leaf")
    };
    let l0 = leaf(0);
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    id[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
    (
        Vendor::from_cpuid_vendor(&id).expect("an Intel or AMD host"),
        leaf(1).eax,
    )
}

/// The VMM's CPUID for vCPU `id`: the host's supported CPUID with `signature`, the APIC ID and
/// x2APIC off.
fn vmm_cpuid(kvm: &Kvm, id: u32, signature: u32) -> CpuId {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.eax = signature;
                e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24);
                e.ecx &= !CPUID_1_ECX_X2APIC;
            }
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    cpuid
}

fn map(vm: &VmFd, mem: &GuestMemoryMmap, slot: u32, base: u64, size: usize) {
    let host_addr = mem
        .get_host_address(GuestAddress(base))
        .expect("guest memory is mapped");
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: base,
        memory_size: size as u64,
        userspace_addr: host_addr as u64,
    };
    // SAFETY: the region is a live mapping of `size` bytes owned by `mem`, which VmmVm keeps
    // until after the VM and its vCPUs are dropped.
    unsafe { vm.set_user_memory_region(region) }.expect("set memory region");
}

/// A VM made with kvm-ioctls alone: irqchip as asked, memory with code at the reset vector
/// and the SIPI vector page, and `count` vCPUs with the VMM's CPUID (`signature`, no x2APIC).
fn vmm_vm(irqchip: bool, count: u32, signature: u32) -> VmmVm {
    vmm_vm_with(irqchip, count, signature, LOW_SIZE, &RESET_CODE)
}

/// [`vmm_vm`] with `low_size` bytes of low RAM and `reset_code` at the reset vector.
fn vmm_vm_with(
    irqchip: bool,
    count: u32,
    signature: u32,
    low_size: usize,
    reset_code: &[u8],
) -> VmmVm {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    if irqchip {
        vm.create_irq_chip().expect("create irqchip");
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), low_size),
        (GuestAddress(HIGH_BASE), HIGH_SIZE),
    ])
    .expect("map guest memory");
    map(&vm, &mem, 0, 0, low_size);
    map(&vm, &mem, 1, HIGH_BASE, HIGH_SIZE);
    mem.write_slice(reset_code, GuestAddress(0xffff_fff0))
        .expect("write reset vector");
    mem.write_slice(&SIPI_CODE, GuestAddress(u64::from(SIPI_VECTOR) << 12))
        .expect("write SIPI code");
    let vcpus = (0..count)
        .map(|id| {
            let fd = vm.create_vcpu(u64::from(id)).expect("create vCPU");
            fd.set_cpuid2(&vmm_cpuid(&kvm, id, signature))
                .expect("set CPUID");
            fd
        })
        .collect();
    VmmVm {
        vcpus,
        vm,
        _mem: mem,
        _kvm: kvm,
    }
}

fn cpuid_entries(fd: &VcpuFd) -> Vec<(u32, u32, u32, u32, u32, u32, u32)> {
    fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_CPUID2")
        .as_slice()
        .iter()
        .map(|e| (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx))
        .collect()
}

fn read_msr(fd: &VcpuFd, index: u32) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .expect("one MSR");
    assert_eq!(
        fd.get_msrs(&mut msrs).expect("KVM_GET_MSRS"),
        1,
        "{index:#x}"
    );
    msrs.as_slice()[0].data
}

fn write_msrs(fd: &VcpuFd, entries: &[(u32, u64)]) {
    let list: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|(index, data)| kvm_msr_entry {
            index: *index,
            data: *data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&list).expect("MSR list");
    assert_eq!(fd.set_msrs(&msrs).expect("KVM_SET_MSRS"), entries.len());
}

/// Run the BSP at the reset vector through the VMM's own KVM_RUN, then dirty CR0, CR3, RIP,
/// RDX, RAX, PAT, SYSENTER_CS, the MTRRs (default type, a variable and a fixed range), the x87
/// control word and the local APIC (TPR, SVR, LVT LINT0) through the raw fd.
fn run_and_dirty(fd: &mut VcpuFd) {
    match fd.run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x80, _) => {}
        other => panic!("the BSP should reach `out 0x80` first, got {other:?}"),
    }
    let mut regs = fd.get_regs().expect("KVM_GET_REGS");
    regs.rip = 0x1234;
    regs.rdx = 0xdead_beef;
    regs.rax = 0x5555;
    fd.set_regs(&regs).expect("KVM_SET_REGS");
    let mut sregs = fd.get_sregs().expect("KVM_GET_SREGS");
    sregs.cr0 = 0x10; // CD and NW clear
    sregs.cr3 = 0x5000;
    fd.set_sregs(&sregs).expect("KVM_SET_SREGS");
    write_msrs(
        fd,
        &[
            (MSR_IA32_PAT, 0x0606_0606_0606_0606),
            (MSR_IA32_SYSENTER_CS, 0x10),
            (MSR_IA32_MTRR_DEF_TYPE, 0xc06),
            (MSR_IA32_MTRR_PHYSBASE0, 0x8000_0006),
            (MSR_IA32_MTRR_FIX64K_00000, 0x0606_0606_0606_0606),
        ],
    );
    let mut fpu = fd.get_fpu().expect("KVM_GET_FPU");
    fpu.fcw = 0x037f;
    fpu.mxcsr = 0x1f80;
    fd.set_fpu(&fpu).expect("KVM_SET_FPU");
    let mut lapic = fd.get_lapic().expect("KVM_GET_LAPIC");
    let mut put = |offset: usize, value: u32| {
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    };
    put(0x80, 0x20); // TPR
    put(0xf0, 0x1ff); // SVR: enabled
    put(0x350, 0x700); // LVT LINT0: ExtINT, unmasked
    fd.set_lapic(&lapic).expect("KVM_SET_LAPIC");
}

/// Mismatches verify() reports (not-held fields are host limits, and allowed values are
/// allowed).
fn mismatches(vcpu: &mut Vcpu<KvmVcpu>) -> Vec<String> {
    vcpu.verify()
        .expect("verify")
        .into_iter()
        .filter(|d| d.kind == DeviationKind::Mismatch)
        .map(|d| {
            format!(
                "{}: expected {:#x}, got {:#x}",
                d.field.name(),
                d.expected,
                d.actual
            )
        })
        .collect()
}

fn host_and_vmm() -> Option<(KvmHost, Vendor, u32)> {
    let host = kvm_for_tests()?;
    let kvm = Kvm::new().expect("open /dev/kvm");
    let (vendor, host_signature) = host_vendor_and_signature(&kvm);
    Some((host, vendor, other_signature(vendor, host_signature)))
}

#[test]
fn an_adopted_bsp_is_reset_exactly_and_handed_back_clean() {
    let Some((host, vendor, signature)) = host_and_vmm() else {
        return;
    };
    let mut vm = vmm_vm(true, 1, signature);
    let mut fd = vm.vcpus.remove(0);
    let cpuid_before = cpuid_entries(&fd);
    run_and_dirty(&mut fd);
    assert_eq!(
        fd.get_kvm_run().kvm_valid_regs,
        0,
        "the VMM uses no sync regs"
    );

    let kv = KvmVcpu::adopt(&host, &vm.vm, fd, 0).expect("adopt the VMM's vCPU");
    assert_eq!(
        kv.cpuid_signature(),
        signature,
        "identity from KVM_GET_CPUID2"
    );
    assert_eq!(kv.vendor(), Some(vendor));
    let model = kv.cpu_model().expect("an Intel or AMD CPUID");
    assert_eq!(model.signature, signature);
    let identity = kv.vcpu_identity();
    assert!(identity.bsp, "vCPU 0 has IA32_APIC_BASE.BSP");
    assert_eq!(identity.apic_id, 0);
    let mut vcpu = Vcpu::new(VcpuCache::adopt(kv), model, identity);
    vcpu.reset().expect("RESET");
    let found = mismatches(&mut vcpu);
    assert!(found.is_empty(), "verify after RESET: {found:#?}");

    let kv = vcpu.into_cache().into_backend().expect("flush");
    assert!(
        kv.sync_regs(),
        "this host has sync regs, so stores were deferred"
    );
    assert!(kv.stats().sync_stores > 0, "{:?}", kv.stats());
    let mut fd = kv.into_fd();
    let run = fd.get_kvm_run();
    assert_eq!(run.kvm_valid_regs, 0, "kvm_valid_regs as the VMM had it");
    assert_eq!(run.kvm_dirty_regs, 0, "nothing left for KVM_RUN to apply");

    let regs = fd.get_regs().expect("KVM_GET_REGS");
    assert_eq!(regs.rip, 0xfff0);
    assert_eq!(regs.rdx, u64::from(signature), "RDX = the VMM's signature");
    assert_eq!(regs.rax, 0);
    let sregs = fd.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(sregs.cr0, 0x6000_0010);
    assert_eq!(sregs.cr3, 0);
    assert_eq!((sregs.cs.selector, sregs.cs.base), (0xf000, 0xffff_0000));
    assert_eq!(read_msr(&fd, MSR_IA32_PAT), 0x0007_0406_0007_0406);
    assert_eq!(read_msr(&fd, MSR_IA32_SYSENTER_CS), 0);
    assert_eq!(read_msr(&fd, MSR_IA32_MTRR_DEF_TYPE), 0);
    assert_eq!(read_msr(&fd, MSR_IA32_MTRR_PHYSBASE0), 0);
    assert_eq!(read_msr(&fd, MSR_IA32_MTRR_FIX64K_00000), 0);
    assert_eq!(fd.get_fpu().expect("KVM_GET_FPU").fcw, 0x0040);
    let lapic = fd.get_lapic().expect("KVM_GET_LAPIC");
    let reg =
        |offset: usize| u32::from_le_bytes(std::array::from_fn(|i| lapic.regs[offset + i] as u8));
    assert_eq!(reg(0x80), 0, "TPR");
    assert_eq!(reg(0xf0), 0xff, "SVR: software-disabled");
    assert_eq!(reg(0x350), 0x1_0000, "LVT LINT0 masked");
    assert_eq!(cpuid_entries(&fd), cpuid_before, "the CPUID is the VMM's");

    // The VMM's own run loop carries on from the reset vector.
    match fd.run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x80, _) => {}
        other => panic!("after RESET the BSP runs the reset vector, got {other:?}"),
    }
    assert_eq!(fd.get_regs().expect("KVM_GET_REGS").rip, 0xfff2);
}

/// KVM_X86_SETUP_MCE (Linux Documentation/virt/kvm/api.rst): set the vCPU's IA32_MCG_CAP.
mod mce {
    #![allow(missing_docs)]
    vmm_sys_util::ioctl_iow_nr!(KVM_X86_SETUP_MCE, kvm_bindings::KVMIO, 0x9c, u64);
}
use mce::KVM_X86_SETUP_MCE;

/// What a VMM configured with KVM_X86_SETUP_MCE reaches the adopted vCPU's CPU model, read with
/// the KVM_GET_MSRS adoption makes anyway, and decides which machine-check MSRs exist: 4 banks
/// and MCG_CTL_P only, so IA32_MCG_CTL exists, IA32_MCi_CTL2 (no MCG_CMCI_P), IA32_MCG_EXT_CTL
/// (no MCG_LMCE_P) and bank 4 do not. IA32_ARCH_CAPABILITIES is whatever KVM gives the vCPU.
#[test]
fn adoption_reads_the_capability_msrs_that_decide_which_msrs_exist() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let vm = vmm_vm(true, 1, signature);
    let fd = &vm.vcpus[0];
    let mcg_cap: u64 = 4 | MCG_CTL_P;
    // SAFETY: KVM_X86_SETUP_MCE is a vCPU ioctl on `fd`, which `vm` owns; it reads one u64
    // through the pointer, which `&mcg_cap` provides.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(fd, KVM_X86_SETUP_MCE(), &mcg_cap) };
    assert_eq!(ret, 0, "KVM_X86_SETUP_MCE");
    let arch_capabilities = read_msr(fd, 0x10a);
    let mut vm = vm;
    let fd = vm.vcpus.remove(0);

    let kv = KvmVcpu::adopt(&host, &vm.vm, fd, 0).expect("adopt the VMM's vCPU");
    let model = kv.cpu_model().expect("an Intel or AMD CPUID");

    assert_eq!(model.mcg_cap, Some(mcg_cap));
    assert_eq!(model.arch_capabilities, Some(arch_capabilities));
    assert_eq!(model.applies(Field::Msr(Msr::McgCtl)), Applies::Yes);
    for f in [
        Field::Msr(Msr::McgExtCtl),
        Field::Mc(0, McReg::Ctl2),
        Field::Mc(4, McReg::Status),
    ] {
        assert!(matches!(model.applies(f), Applies::No(_)), "{f}");
    }
    assert_eq!(model.applies(Field::Mc(3, McReg::Status)), Applies::Yes);
    let tsx = model.applies(Field::Msr(Msr::TsxCtrl));
    assert_eq!(
        tsx == Applies::Yes,
        arch_capabilities & ARCH_CAP_TSX_CTRL != 0,
        "{tsx:?}"
    );
}

#[test]
fn an_adopted_ap_starts_with_init_and_sipi_and_runs_in_the_vmm() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let mut vm = vmm_vm(true, 2, signature);
    let fd = vm.vcpus.remove(1);
    let kv = KvmVcpu::adopt(&host, &vm.vm, fd, 1).expect("adopt the AP");
    let identity = kv.vcpu_identity();
    assert!(!identity.bsp, "vCPU 1 is an AP");
    assert_eq!(identity.apic_id, 1);
    let model = kv.cpu_model().expect("an Intel or AMD CPUID");
    let mut vcpu = Vcpu::new(VcpuCache::adopt(kv), model, identity);
    vcpu.init().expect("INIT");
    assert!(
        vcpu.sipi(SIPI_VECTOR).expect("SIPI"),
        "a waiting AP takes the SIPI"
    );
    let found = mismatches(&mut vcpu);
    assert!(found.is_empty(), "verify after INIT + SIPI: {found:#?}");

    let mut fd = vcpu.into_cache().into_backend().expect("flush").into_fd();
    assert_eq!(fd.get_kvm_run().kvm_valid_regs, 0);
    assert_eq!(fd.get_kvm_run().kvm_dirty_regs, 0);
    assert_eq!(
        fd.get_mp_state().expect("KVM_GET_MP_STATE").mp_state,
        KVM_MP_STATE_RUNNABLE
    );
    let sregs = fd.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(
        (sregs.cs.selector, sregs.cs.base),
        (u16::from(SIPI_VECTOR) << 8, u64::from(SIPI_VECTOR) << 12)
    );
    let mut exit = fd.run();
    // With the in-kernel irqchip a starting AP's KVM_RUN can return EAGAIN first.
    for _ in 0..3 {
        match exit {
            Err(ref e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => exit = fd.run(),
            _ => break,
        }
    }
    match exit.expect("KVM_RUN") {
        VcpuExit::IoOut(0x82, data) => assert_eq!(data, [0xa5]),
        other => panic!("the AP should run the SIPI vector's code, got {other:?}"),
    }
}

#[test]
fn an_ap_adopted_after_running_is_reset_to_wait_for_sipi() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let mut vm = vmm_vm(true, 2, signature);
    let fd = vm.vcpus.remove(1);
    // First start the AP as vcpu-reset would, so that it has run in the VMM.
    let kv = KvmVcpu::adopt(&host, &vm.vm, fd, 1).expect("adopt the AP");
    let model = kv.cpu_model().expect("model");
    let identity = kv.vcpu_identity();
    let mut vcpu = Vcpu::new(VcpuCache::adopt(kv), model, identity);
    vcpu.init().expect("INIT");
    vcpu.sipi(SIPI_VECTOR).expect("SIPI");
    let mut fd = vcpu.into_cache().into_backend().expect("flush").into_fd();
    loop {
        match fd.run() {
            Ok(VcpuExit::IoOut(0x82, _)) => break,
            Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {}
            other => panic!("the AP should run the SIPI code, got {other:?}"),
        }
    }

    let kv = KvmVcpu::adopt(&host, &vm.vm, fd, 1).expect("adopt the running AP");
    let mut vcpu = Vcpu::new(VcpuCache::adopt(kv), model, identity);
    vcpu.reset().expect("RESET");
    let found = mismatches(&mut vcpu);
    assert!(found.is_empty(), "verify after RESET: {found:#?}");
    let fd = vcpu.into_cache().into_backend().expect("flush").into_fd();
    assert_eq!(
        fd.get_mp_state().expect("KVM_GET_MP_STATE").mp_state,
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED,
        "an AP waits for SIPI after RESET"
    );
    assert_eq!(
        fd.get_regs().expect("KVM_GET_REGS").rdx,
        u64::from(signature)
    );
}

fn refusal(e: &KvmError) -> &AdoptRefusal {
    e.refusal().expect("an adoption refusal")
}

#[test]
fn a_vcpu_of_another_vm_is_refused_and_its_fd_given_back() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let mut owner = vmm_vm(true, 1, signature);
    let empty = vmm_vm(true, 0, signature);
    let fd = owner.vcpus.remove(0);
    let e = KvmVcpu::adopt(&host, &empty.vm, fd, 0).expect_err("not this VM's vCPU");
    assert!(matches!(refusal(&e), AdoptRefusal::OtherVm { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("the VM has no vCPU at all"), "{text}");
    assert!(
        text.contains("pass the VmFd the vCPU was created from"),
        "{text}"
    );
    let fd = e.into_fd().expect("the fd comes back");
    fd.get_regs().expect("the VMM's vCPU still answers");

    // A vCPU without a local APIC cannot belong to a VM with an in-kernel irqchip.
    let mut plain = vmm_vm(false, 1, signature);
    let other = vmm_vm(true, 1, signature);
    let fd = plain.vcpus.remove(0);
    let e = KvmVcpu::adopt(&host, &other.vm, fd, 0).expect_err("not this VM's vCPU");
    assert!(matches!(refusal(&e), AdoptRefusal::OtherVm { .. }), "{e:?}");
    assert!(e.to_string().contains("local APIC"), "{e}");

    // And the fd given back adopts fine with its own VM.
    let fd = e.into_fd().expect("the fd comes back");
    let kv = KvmVcpu::adopt(&host, &plain.vm, fd, 0).expect("its own VM");
    assert!(!kv.has_irqchip());
}

#[test]
fn a_vcpu_without_cpuid_is_refused_with_what_to_do() {
    let Some(host) = kvm_for_tests() else {
        return;
    };
    let vm = host.create_vm(true).expect("VM");
    let fd = vm.create_vcpu(0).expect("vCPU without CPUID");
    let e = KvmVcpu::adopt(&host, &vm, fd, 0).expect_err("no CPUID");
    assert!(matches!(refusal(&e), AdoptRefusal::NoCpuid), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with("cannot adopt vCPU 0: the vCPU has no CPUID"),
        "{text}"
    );
    assert!(text.contains("KVM_SET_CPUID2"), "{text}");
    assert!(e.into_fd().is_some());
}

#[test]
fn an_id_that_does_not_match_is_refused() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let mut vm = vmm_vm(true, 2, signature);
    let fd = vm.vcpus.remove(1);
    let e = KvmVcpu::adopt(&host, &vm.vm, fd, 0).expect_err("vCPU 1 is not vCPU 0");
    assert!(
        matches!(
            refusal(&e),
            AdoptRefusal::IdMismatch {
                given: 0,
                actual: 1
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("the fd is vCPU 1, not 0"), "{e}");
    let fd = e.into_fd().expect("the fd comes back");
    KvmVcpu::adopt(&host, &vm.vm, fd, 1).expect("with the right id");
}

#[test]
fn reset_vcpu_takes_one_call_and_a_counted_number_of_ioctls() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let mut vm = vmm_vm(true, 1, signature);
    let mut fd = vm.vcpus.remove(0);
    run_and_dirty(&mut fd);
    // Right after an exit (the OUT at the reset vector), as when a guest asks for a reboot.
    let (fd, after_exit) =
        vcpu_reset::reset_vcpu_counted(&host, &vm.vm, fd, 0).expect("reset_vcpu");
    // Again, with nothing in between.
    let (mut fd, again) = vcpu_reset::reset_vcpu_counted(&host, &vm.vm, fd, 0).expect("again");
    println!(
        "reset_vcpu ioctls after an exit: {after_exit:?} (total {}); with nothing pending: {again:?} (total {})",
        after_exit.calls(),
        again.calls()
    );
    assert_eq!(fd.get_regs().expect("regs").rdx, u64::from(signature));
    assert_eq!(fd.get_sregs().expect("sregs").cr0, 0x6000_0010);
    assert_eq!(fd.get_kvm_run().kvm_valid_regs, 0);
    // Adoption: 7 reads and the MSR probe (one KVM_GET_MSRS, plus one per refused MSR); after
    // an exit also one KVM_RUN with immediate_exit that completes it. RESET: one
    // KVM_GET_MP_STATE and one store per class (REGS, SREGS, XSAVE, XCRS, DEBUGREGS, MSRS,
    // LAPIC, VCPU_EVENTS, NESTED_STATE where held).
    let nested = u64::from(host.caps().nested_state > 0);
    for (stats, runs) in [(after_exit, 1), (again, 0)] {
        assert_eq!(stats.runs, runs, "{stats:?}");
        assert_eq!(stats.loads, 1, "{stats:?}");
        assert_eq!(stats.stores, 8 + nested, "{stats:?}");
        assert!((8..=10).contains(&stats.other), "adoption: {stats:?}");
    }
    match fd.run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x80, _) => {}
        other => panic!("after reset_vcpu the BSP runs the reset vector, got {other:?}"),
    }

    // The fd of a refused reset comes back.
    let e = vcpu_reset::reset_vcpu(&host, &vm.vm, fd, 3).expect_err("wrong id");
    assert!(e.to_string().contains("not 3"), "{e}");
    assert!(e.into_fd().is_some());
}

#[test]
fn the_vmms_sync_regs_are_kept_and_its_pending_stores_applied_first() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let mut vm = vmm_vm(true, 1, signature);
    let mut fd = vm.vcpus.remove(0);
    let regs_bit = u64::from(kvm_bindings::KVM_SYNC_X86_REGS);
    fd.get_kvm_run().kvm_valid_regs = regs_bit;
    match fd.run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x80, _) => {}
        other => panic!("{other:?}"),
    }
    // A store the VMM leaves for its next KVM_RUN.
    fd.sync_regs_mut().regs.rbx = 0x1234_5678;
    fd.get_kvm_run().kvm_dirty_regs = regs_bit;

    let kv = KvmVcpu::adopt(&host, &vm.vm, fd, 0).expect("adopt");
    assert_eq!(
        kv.stats().stores,
        1,
        "the VMM's pending REGS store, by ioctl"
    );
    assert_eq!(kv.fd().get_regs().expect("regs").rbx, 0x1234_5678);
    let model = kv.cpu_model().expect("model");
    let identity = kv.vcpu_identity();
    let mut vcpu = Vcpu::new(VcpuCache::adopt(kv), model, identity);
    vcpu.reset().expect("RESET");
    let mut fd = vcpu.into_cache().into_backend().expect("flush").into_fd();
    assert_eq!(
        fd.get_kvm_run().kvm_valid_regs,
        regs_bit,
        "the VMM's own bits"
    );
    assert_eq!(fd.get_kvm_run().kvm_dirty_regs, 0);
    let mirror = fd.sync_regs_mut().regs;
    assert_eq!(
        (mirror.rip, mirror.rbx, mirror.rdx),
        (0xfff0, 0, u64::from(signature)),
        "the VMM's kvm_run copy shows the RESET state"
    );
}

/// At the reset vector: `mov ax, 0x9000; mov ds, ax; mov al, [0]` (0x90000 is not RAM here, so
/// an MMIO read), then `out 0x80, al; jmp $`.
const MMIO_CODE: [u8; 12] = [
    0xb8, 0x00, 0x90, 0x8e, 0xd8, 0xa0, 0x00, 0x00, 0xe6, 0x80, 0xeb, 0xfe,
];
const MMIO_ADDRESS: u64 = 0x9_0000;

/// KVM finishes an MMIO read (or emulated port I/O) at the start of the next KVM_RUN, by
/// completing the instruction that exited: done after the RESET, that would write the
/// instruction's result and next RIP over the RESET state. Adoption completes it first.
#[test]
fn a_vcpu_adopted_in_the_middle_of_an_mmio_read_is_reset_all_the_same() {
    let Some((host, _, signature)) = host_and_vmm() else {
        return;
    };
    let mut vm = vmm_vm_with(true, 1, signature, MMIO_ADDRESS as usize, &MMIO_CODE);
    let mut fd = vm.vcpus.remove(0);
    let run_to_mmio = |fd: &mut VcpuFd| match fd.run().expect("KVM_RUN") {
        VcpuExit::MmioRead(addr, data) => {
            assert_eq!(addr, MMIO_ADDRESS);
            data.fill(0x42);
        }
        other => panic!("the BSP should read MMIO at {MMIO_ADDRESS:#x} first, got {other:?}"),
    };
    run_to_mmio(&mut fd);

    // The VMM decides to reset while the read is still to be completed.
    let mut fd = vcpu_reset::reset_vcpu(&host, &vm.vm, fd, 0).expect("reset_vcpu");
    let regs = fd.get_regs().expect("KVM_GET_REGS");
    assert_eq!((regs.rip, regs.rax), (0xfff0, 0));
    // From the reset vector again: the same MMIO read, not the OUT after the old one.
    run_to_mmio(&mut fd);
    match fd.run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x80, data) => assert_eq!(data, [0x42]),
        other => panic!("then the OUT, got {other:?}"),
    }
}
