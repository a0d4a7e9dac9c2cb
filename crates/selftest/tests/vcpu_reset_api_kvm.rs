//! The VMM API on the real `/dev/kvm`: [`VcpuReset`] beside a VMM's own vCPU fds, typed
//! (kvm-ioctls) and raw (plain `libc` ioctls on the fds, as a VMM on other bindings or in C
//! makes them).
//!
//! The VMM's guest, at the reset vector, reports with `out 0x80` and then dirties CR0.CD/NW,
//! CR3, IA32_PAT, the x87 control word and RDX before `out 0x81`. After each RESET the VMM's
//! next KVM_RUN must stop at `out 0x80` again with the RESET state, read through the VMM's own
//! fd. The syscall counts are bounded from what the engine learned about the host (whether its
//! INIT is exact, which classes it leaves wrong), never from the vendor.
//!
//! Each test skips (printing why) where `/dev/kvm` cannot be used, unless
//! `VCPU_RESET_REQUIRE_KVM=1`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vcpu_reset::backend::kvm::fail_nth_call;
use vcpu_reset::engine::{Deviation, DeviationKind, Outcome};
use vcpu_reset::{VcpuReset, VcpuResetError};
use vcpu_reset_selftest::host::kvm_for_tests;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const HIGH_BASE: u64 = 0xffff_0000;
const HIGH_SIZE: usize = 0x1_0000;
const LOW_SIZE: usize = 0x10_0000;

/// At the reset vector (offset 0xFFF0 of the top 64 KiB): `out 0x80, al; jmp 0xF000`.
const RESET_VECTOR: [u8; 5] = [0xe6, 0x80, 0xe9, 0x0b, 0xf0];
/// At 0xF000: dirty CR0.CD/NW, CR3, PAT, the x87 unit and RDX, then `out 0x81, al; jmp $`.
const DIRTY: [u8; 59] = [
    0x0f, 0x20, 0xc0, // mov eax, cr0
    0x66, 0x25, 0xff, 0xff, 0xff, 0x9f, // and eax, 0x9fffffff
    0x0f, 0x22, 0xc0, // mov cr0, eax
    0x66, 0xb8, 0x00, 0x10, 0x00, 0x00, // mov eax, 0x1000
    0x0f, 0x22, 0xd8, // mov cr3, eax
    0x66, 0xb9, 0x77, 0x02, 0x00, 0x00, // mov ecx, 0x277 (IA32_PAT)
    0x66, 0xb8, 0x04, 0x04, 0x04, 0x04, // mov eax, 0x04040404
    0x66, 0xba, 0x04, 0x04, 0x04, 0x04, // mov edx, 0x04040404
    0x0f, 0x30, // wrmsr
    0xdb, 0xe3, // fninit (FCW 0x037F)
    0x66, 0xba, 0x78, 0x56, 0x34, 0x12, // mov edx, 0x12345678
    0xe6, 0x81, // out 0x81, al
    0xeb, 0xfe, // jmp $
    0x90, 0x90, 0x90, 0x90, 0x90, 0x90, // padding
];

const MSR_IA32_PAT: u32 = 0x277;
/// IA32_PAT after RESET: Intel SDM Vol. 3A §13.12.4, Table 13-12; AMD APM Vol. 2 §7.8.2.
const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// CR0 after RESET: Intel SDM Vol. 3A Table 10-1; AMD APM Vol. 2 Table 14-1.
const CR0_RESET: u64 = 0x6000_0010;
/// The x87 control word after RESET: Intel SDM Vol. 3A Table 10-1 (power up), AMD APM Vol. 2
/// Table 14-1.
const FCW_RESET: u16 = 0x0040;

/// A VMM's VM: `/dev/kvm`, memory with the guest at the reset vector, an in-kernel irqchip,
/// and vCPUs with the host's supported CPUID. Fields drop in order.
struct VmmVm {
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    signature: u32,
    _mem: GuestMemoryMmap,
    _kvm: Kvm,
}

fn guest_memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_SIZE),
        (GuestAddress(HIGH_BASE), HIGH_SIZE),
    ])
    .expect("map guest memory");
    let top = mem
        .get_host_address(GuestAddress(HIGH_BASE))
        .expect("the top 64 KiB are mapped");
    // SAFETY: `top` is the start of the 64 KiB mapping `mem` owns; both writes stay inside it
    // (0xF000 + 59 and 0xFFF0 + 5 bytes) and nothing else uses the memory yet.
    unsafe {
        std::ptr::copy_nonoverlapping(DIRTY.as_ptr(), top.add(0xf000), DIRTY.len());
        std::ptr::copy_nonoverlapping(RESET_VECTOR.as_ptr(), top.add(0xfff0), RESET_VECTOR.len());
    }
    mem
}

/// The host's supported CPUID with vCPU `id`'s APIC ID.
fn vcpu_cpuid(kvm: &Kvm, id: u32) -> CpuId {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    cpuid
}

fn signature_of(cpuid: &CpuId) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .expect("CPUID leaf 1")
        .eax
}

fn vmm_vm(count: u32) -> VmmVm {
    vmm_vm_with(count, false)
}

/// [`vmm_vm`], with KVM's LINT0_REENABLED quirk turned off where `quirk_off` and the host
/// allows it (KVM_CAP_DISABLE_QUIRKS2): the host's INIT then leaves the BSP's LVT LINT0 masked
/// as RESET does, and a RESET needs no KVM_SET_LAPIC.
fn vmm_vm_with(count: u32, quirk_off: bool) -> VmmVm {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    let quirk = kvm_bindings::KVM_X86_QUIRK_LINT0_REENABLED;
    let quirks = vm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_DISABLE_QUIRKS2));
    if quirk_off && u64::try_from(quirks).unwrap_or(0) & u64::from(quirk) != 0 {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_DISABLE_QUIRKS2,
            args: [u64::from(quirk), 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&cap).expect("disable LINT0_REENABLED");
    }
    vm.create_irq_chip().expect("create irqchip");
    let mem = guest_memory();
    for (slot, (base, size)) in [(0u64, LOW_SIZE), (HIGH_BASE, HIGH_SIZE)]
        .into_iter()
        .enumerate()
    {
        let host_addr = mem
            .get_host_address(GuestAddress(base))
            .expect("guest memory is mapped");
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: base,
            memory_size: size as u64,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping of `size` bytes owned by `mem`, which VmmVm
        // keeps until after the VM and its vCPUs are dropped.
        unsafe { vm.set_user_memory_region(region) }.expect("set memory region");
    }
    let mut vcpus = Vec::new();
    let mut signature = 0;
    for id in 0..count {
        let vcpu = vm.create_vcpu(u64::from(id)).expect("create vCPU");
        let cpuid = vcpu_cpuid(&kvm, id);
        signature = signature_of(&cpuid);
        vcpu.set_cpuid2(&cpuid).expect("set CPUID");
        vcpus.push(vcpu);
    }
    VmmVm {
        vcpus,
        vm,
        signature,
        _mem: mem,
        _kvm: kvm,
    }
}

/// Run `vcpu` to its next port output and return the port.
fn run_to_out(vcpu: &mut VcpuFd) -> u16 {
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, _) => return port,
            VcpuExit::Intr => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// What the guest's state at `out 0x80` must be, read through the VMM's own fd.
fn assert_reset_state(vcpu: &VcpuFd, signature: u32, after: &str) {
    let regs = vcpu.get_regs().expect("KVM_GET_REGS");
    let sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(
        regs.rip, 0xfff2,
        "{after}: the run starts at 0xFFF0 (RIP after OUT)"
    );
    assert_eq!(sregs.cs.base, 0xffff_0000, "{after}: CS base");
    assert_eq!(sregs.cs.selector, 0xf000, "{after}: CS selector");
    assert_eq!(
        regs.rdx,
        u64::from(signature),
        "{after}: RDX is CPUID.01H:EAX (SDM Vol. 3A Table 10-1 note 3)"
    );
    assert_eq!(sregs.cr0, CR0_RESET, "{after}: CR0");
    assert_eq!(sregs.cr3, 0, "{after}: CR3");
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_PAT,
        ..Default::default()
    }])
    .expect("one MSR");
    assert_eq!(vcpu.get_msrs(&mut msrs).expect("KVM_GET_MSRS"), 1);
    assert_eq!(msrs.as_slice()[0].data, PAT_RESET, "{after}: IA32_PAT");
    let fpu = vcpu.get_fpu().expect("KVM_GET_FPU");
    assert_eq!(fpu.fcw, FCW_RESET, "{after}: FCW");
}

/// Run the guest through its dirtying code: `out 0x80`, then `out 0x81` with CR0.CD/NW clear.
fn run_and_dirty(vcpu: &mut VcpuFd) {
    assert_eq!(
        run_to_out(vcpu),
        0x80,
        "the guest starts at the reset vector"
    );
    assert_eq!(run_to_out(vcpu), 0x81, "the guest dirtied its state");
    let sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    assert_ne!(sregs.cr0, CR0_RESET, "the guest cleared CR0.CD/NW");
    assert_eq!(sregs.cr3, 0x1000, "the guest wrote CR3");
}

fn mismatches(devs: &[Deviation]) -> Vec<&Deviation> {
    devs.iter()
        .filter(|d| d.kind != DeviationKind::NotHeld)
        .collect()
}

/// The most a RESET after a run may cost on this host: 4 vCPU syscalls (3 where the host's
/// INIT is exact and left to the VMM's next run), one more per class the host's INIT leaves
/// wrong, and one KVM_RUN with `immediate_exit` that completes the guest's last exit, a port
/// output (KVM may still have to skip the OUT at the next KVM_RUN).
fn after_run_bound(r: &VcpuReset) -> u64 {
    (if r.host_init_lazy() { 3 } else { 4 }) + inexact(r) + 1
}

/// The most a RESET of a vCPU untouched since its last RESET may cost: 2, one more per class
/// the host's INIT leaves wrong.
fn untouched_bound(r: &VcpuReset) -> u64 {
    2 + inexact(r)
}

fn inexact(r: &VcpuReset) -> u64 {
    r.host_init_inexact().map_or(0, |c| c.iter().count() as u64)
}

#[test]
fn a_reset_through_the_vmms_own_fd_costs_what_the_engine_does() {
    let Some(host) = kvm_for_tests() else { return };
    for quirk_off in [true, false] {
        println!("LINT0_REENABLED quirk turned off: {quirk_off}");
        costs_on(&host, vmm_vm_with(2, quirk_off));
    }
}

fn costs_on(host: &vcpu_reset::backend::kvm::KvmHost, mut vmm: VmmVm) {
    let mut ap = vmm.vcpus.pop().expect("vCPU 1");
    let mut bsp = vmm.vcpus.pop().expect("vCPU 0");

    let mut r = VcpuReset::new(host, &vmm.vm, &bsp, 0).expect("learn vCPU 0");
    let learn = r.stats().calls();
    let first = r.reset(&mut bsp).expect("first RESET").calls;
    println!(
        "learning: {learn} vCPU syscalls; first RESET: {} ({first:?}); host INIT lazy: {}, inexact: {:?}",
        first.calls(),
        r.host_init_lazy(),
        r.host_init_inexact()
    );
    // 9 checks and reads, KVM_GET_STATS_FD where the host counts guest entries (10 on the
    // project's host), and room for one MSR the host's KVM refuses (a probe write or a read
    // made again without it).
    let learn_bound = 9 + u64::from(r.counts_entries()) + 1;
    assert!(
        learn <= learn_bound,
        "learning costs at most {learn_bound} syscalls, made {learn}"
    );
    assert!(
        first.calls() <= 24,
        "the first RESET (it checks the host's INIT) costs at most 24, made {}",
        first.calls()
    );
    assert_eq!(run_to_out(&mut bsp), 0x80);
    assert_reset_state(&bsp, vmm.signature, "the first RESET");
    assert_eq!(run_to_out(&mut bsp), 0x81);

    for round in 0..3 {
        let out = r.reset(&mut bsp).expect("RESET after a run");
        let bound = after_run_bound(&r);
        println!("RESET after a run: {} ({:?})", out.calls.calls(), out.calls);
        assert!(
            out.calls.calls() <= bound,
            "round {round}: a RESET after a run costs at most {bound}, made {} ({:?})",
            out.calls.calls(),
            out.calls
        );
        if r.host_init_lazy() && r.host_init_inexact().is_none_or(|c| c.iter().count() == 0) {
            assert_eq!(out.calls.runs, 1, "the OUT completed: {:?}", out.calls);
            assert!(
                out.calls.calls() <= 4,
                "an exact host INIT costs 3 and the completion: {:?}",
                out.calls
            );
        }
        run_and_dirty_after_reset(&mut bsp, vmm.signature, round);
    }

    // Untouched: RESET twice without running the vCPU in between.
    let _ = r.reset(&mut bsp).expect("RESET");
    let again = r.reset(&mut bsp).expect("RESET of an untouched vCPU");
    if r.counts_entries() {
        println!(
            "RESET untouched: {} ({:?})",
            again.calls.calls(),
            again.calls
        );
        let bound = untouched_bound(&r);
        assert!(
            again.calls.calls() <= bound,
            "an untouched vCPU costs at most {bound}, made {:?}",
            again.calls
        );
    }
    assert_eq!(run_to_out(&mut bsp), 0x80);
    assert_reset_state(&bsp, vmm.signature, "two RESETs in a row");

    // An AP the VMM created and never ran: first RESET, then untouched.
    let mut rap = VcpuReset::new(host, &vmm.vm, &ap, 1).expect("learn vCPU 1");
    assert!(!rap.identity().bsp);
    let first_ap = rap.reset(&mut ap).expect("first RESET of the AP").calls;
    let second_ap = rap.reset(&mut ap).expect("RESET of the waiting AP").calls;
    println!(
        "AP: first RESET {} ({first_ap:?}), untouched {} ({second_ap:?})",
        first_ap.calls(),
        second_ap.calls()
    );
    if rap.counts_entries() {
        let bound = untouched_bound(&rap);
        assert!(
            second_ap.calls() <= bound,
            "an untouched AP costs at most {bound}, made {second_ap:?}"
        );
    }
    let mp = ap.get_mp_state().expect("KVM_GET_MP_STATE");
    assert_eq!(
        mp.mp_state,
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED,
        "the AP waits for SIPI"
    );
    assert!(mismatches(&rap.verify(&mut ap).expect("verify AP")).is_empty());
}

fn run_and_dirty_after_reset(vcpu: &mut VcpuFd, signature: u32, round: usize) {
    assert_eq!(
        run_to_out(vcpu),
        0x80,
        "round {round}: the run starts at the reset vector"
    );
    assert_reset_state(vcpu, signature, &format!("RESET round {round}"));
    assert_eq!(run_to_out(vcpu), 0x81);
}

#[test]
fn verify_after_a_reset_through_the_vmms_fd_finds_nothing() {
    let Some(host) = kvm_for_tests() else { return };
    let mut vmm = vmm_vm(1);
    let mut bsp = vmm.vcpus.pop().expect("vCPU 0");
    let mut r = VcpuReset::new(&host, &vmm.vm, &bsp, 0).expect("learn vCPU 0");
    r.reset(&mut bsp).expect("RESET");
    run_and_dirty(&mut bsp);
    r.reset(&mut bsp).expect("RESET");
    let devs = r.verify(&mut bsp).expect("verify");
    assert!(mismatches(&devs).is_empty(), "{devs:#?}");
    // Settled: a read through the VMM's own fd shows the RESET state before the run.
    let sregs = bsp.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(sregs.cr0, CR0_RESET);
    assert_eq!(sregs.cr3, 0);
    assert_eq!(bsp.get_regs().expect("KVM_GET_REGS").rip, 0xfff0);
    assert_eq!(run_to_out(&mut bsp), 0x80);
    assert_reset_state(&bsp, vmm.signature, "verify");
}

#[test]
fn settle_makes_reads_through_the_vmms_fd_show_the_reset_state() {
    let Some(host) = kvm_for_tests() else { return };
    let mut vmm = vmm_vm(1);
    let mut bsp = vmm.vcpus.pop().expect("vCPU 0");
    let mut r = VcpuReset::new(&host, &vmm.vm, &bsp, 0).expect("learn vCPU 0");
    r.reset(&mut bsp).expect("RESET");
    run_and_dirty(&mut bsp);
    r.reset(&mut bsp).expect("RESET");
    let settled = r.settle(&mut bsp).expect("settle");
    println!("settle: {} ({settled:?})", settled.calls());
    assert!(settled.calls() <= 4, "settle costs at most 4: {settled:?}");
    let regs = bsp.get_regs().expect("KVM_GET_REGS");
    let sregs = bsp.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(regs.rip, 0xfff0);
    assert_eq!(regs.rdx, u64::from(vmm.signature));
    assert_eq!(sregs.cr0, CR0_RESET);
    assert_eq!(sregs.cr3, 0);
    assert_eq!(bsp.get_fpu().expect("KVM_GET_FPU").fcw, FCW_RESET);
    assert_eq!(run_to_out(&mut bsp), 0x80);
    assert_reset_state(&bsp, vmm.signature, "settle");
}

#[test]
fn the_vmms_kvm_valid_regs_stay_and_show_the_reset_state() {
    let Some(host) = kvm_for_tests() else { return };
    let mut vmm = vmm_vm(1);
    let mut bsp = vmm.vcpus.pop().expect("vCPU 0");
    bsp.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
    bsp.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    let mut r = VcpuReset::new(&host, &vmm.vm, &bsp, 0).expect("learn vCPU 0");
    r.reset(&mut bsp).expect("RESET");
    run_and_dirty(&mut bsp);
    r.reset(&mut bsp).expect("RESET");
    let valid = bsp.get_kvm_run().kvm_valid_regs;
    assert_eq!(
        valid,
        u64::from(kvm_bindings::KVM_SYNC_X86_REGS | kvm_bindings::KVM_SYNC_X86_SREGS),
        "the VMM's kvm_valid_regs are left as it set them"
    );
    assert_eq!(run_to_out(&mut bsp), 0x80);
    let sync = bsp.sync_regs();
    assert_eq!(sync.regs.rdx, u64::from(vmm.signature));
    assert_eq!(sync.sregs.cr0, CR0_RESET);
    assert_eq!(sync.sregs.cr3, 0);
    assert_reset_state(&bsp, vmm.signature, "with the VMM's sync regs");
}

/// Make the `n`-th vCPU syscall of every RESET after a run fail, for every `n`: the error
/// names the call and its state class, the fd stays the VMM's, and the next RESET is exact.
#[test]
fn a_reset_survives_any_one_of_its_syscalls_failing() {
    let Some(host) = kvm_for_tests() else { return };
    // Both paths: KVM's INIT taken inside the RESET (the quirk on) and left to the next run.
    for quirk_off in [false, true] {
        println!("LINT0_REENABLED quirk turned off: {quirk_off}");
        faults_on(&host, vmm_vm_with(1, quirk_off));
    }
}

fn faults_on(host: &vcpu_reset::backend::kvm::KvmHost, mut vmm: VmmVm) {
    let mut bsp = vmm.vcpus.pop().expect("vCPU 0");
    let mut r = VcpuReset::new(host, &vmm.vm, &bsp, 0).expect("learn vCPU 0");
    r.reset(&mut bsp).expect("RESET");
    for n in 1..=32 {
        run_and_dirty(&mut bsp);
        fail_nth_call(n);
        let result = r.reset(&mut bsp);
        let unfired = fail_nth_call(0);
        if unfired {
            result.expect("a RESET whose syscalls all succeeded");
            assert!(n > 1, "no syscall was made");
            println!("{} syscalls failed in turn, each survived", n - 1);
            let devs = r.verify(&mut bsp).expect("verify");
            assert!(mismatches(&devs).is_empty(), "{devs:#?}");
            return;
        }
        let err = result.expect_err("the n-th syscall failed");
        let msg = err.to_string();
        println!("call {n}: {msg}");
        match &err {
            VcpuResetError::Failed {
                call: Some(call),
                class,
                ..
            } => {
                assert!(msg.contains(&call.to_string()), "names the call: {msg}");
                assert_eq!(*class, call.class(), "names the class: {msg}");
                if let Some(class) = class {
                    assert!(msg.contains(&class.to_string()), "names the class: {msg}");
                }
            }
            other => panic!("call {n}: not a failed call: {other:?}"),
        }
        // The fd is the VMM's: the next RESET writes everything again and is exact.
        r.reset(&mut bsp).expect("the RESET after the failure");
        let devs = r.verify(&mut bsp).expect("verify");
        assert!(
            mismatches(&devs).is_empty(),
            "after failing call {n}: {devs:#?}"
        );
        assert_eq!(run_to_out(&mut bsp), 0x80);
        assert_reset_state(&bsp, vmm.signature, &format!("failing call {n}"));
        assert_eq!(run_to_out(&mut bsp), 0x81);
        r.reset(&mut bsp).expect("RESET");
    }
    panic!("a RESET made more than 32 syscalls");
}

// ---- a VMM on plain libc ioctls --------------------------------------------------------

mod raw {
    //! The UAPI request numbers (`include/uapi/linux/kvm.h`) a VMM without kvm-ioctls uses.
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const KVMIO: u32 = 0xAE;
    ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
    ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    ioctl_iowr_nr!(
        KVM_GET_SUPPORTED_CPUID,
        KVMIO,
        0x05,
        kvm_bindings::kvm_cpuid2
    );
    ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_bindings::kvm_userspace_memory_region
    );
    ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
    ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_bindings::kvm_cpuid2);
}

fn check(ret: i32, what: &str) -> i32 {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    ret
}

/// A VM and vCPU 0 made with plain `libc` ioctls, its `kvm_run` mapped by the VMM.
struct RawVm {
    run: *mut kvm_bindings::kvm_run,
    run_size: usize,
    vcpu: OwnedFd,
    vm: OwnedFd,
    signature: u32,
    _mem: GuestMemoryMmap,
    _kvm: OwnedFd,
}

impl Drop for RawVm {
    fn drop(&mut self) {
        // SAFETY: `run` is the mapping of `run_size` bytes made in `raw_vm`, unused hereafter.
        unsafe { libc::munmap(self.run.cast(), self.run_size) };
    }
}

fn raw_vm() -> RawVm {
    use vmm_sys_util::ioctl::{
        ioctl, ioctl_with_mut_ptr, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
    };
    let path = c"/dev/kvm";
    // SAFETY: a NUL-terminated path; the result is checked.
    let kvm = check(
        unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) },
        "open /dev/kvm",
    );
    // SAFETY: `kvm` was just opened and is owned here only.
    let kvm = unsafe { OwnedFd::from_raw_fd(kvm) };
    // SAFETY: KVM_CREATE_VM with machine type 0 touches no memory of ours.
    let vm = check(
        unsafe { ioctl_with_val(&kvm, raw::KVM_CREATE_VM(), 0) },
        "KVM_CREATE_VM",
    );
    // SAFETY: a new fd owned here only.
    let vm = unsafe { OwnedFd::from_raw_fd(vm) };
    // SAFETY: no argument.
    check(
        unsafe { ioctl(&vm, raw::KVM_CREATE_IRQCHIP()) },
        "KVM_CREATE_IRQCHIP",
    );
    let mem = guest_memory();
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
        // SAFETY: the region is memory `mem` maps, kept until after the VM is closed.
        check(
            unsafe { ioctl_with_ref(&vm, raw::KVM_SET_USER_MEMORY_REGION(), &region) },
            "KVM_SET_USER_MEMORY_REGION",
        );
    }
    // SAFETY: vCPU id 0; no memory touched.
    let vcpu = check(
        unsafe { ioctl_with_val(&vm, raw::KVM_CREATE_VCPU(), 0) },
        "KVM_CREATE_VCPU",
    );
    // SAFETY: a new fd owned here only.
    let vcpu = unsafe { OwnedFd::from_raw_fd(vcpu) };
    let mut cpuid = CpuId::new(KVM_MAX_CPUID_ENTRIES).expect("CPUID buffer");
    // SAFETY: the buffer holds `nent` entries after its header, as the ioctl expects.
    check(
        unsafe {
            ioctl_with_mut_ptr(
                &kvm,
                raw::KVM_GET_SUPPORTED_CPUID(),
                cpuid.as_mut_fam_struct_ptr(),
            )
        },
        "KVM_GET_SUPPORTED_CPUID",
    );
    let signature = signature_of(&cpuid);
    // SAFETY: as above; KVM reads `nent` entries.
    check(
        unsafe { ioctl_with_ptr(&vcpu, raw::KVM_SET_CPUID2(), cpuid.as_fam_struct_ptr()) },
        "KVM_SET_CPUID2",
    );
    // SAFETY: no argument.
    let run_size = check(
        unsafe { ioctl(&kvm, raw::KVM_GET_VCPU_MMAP_SIZE()) },
        "KVM_GET_VCPU_MMAP_SIZE",
    ) as usize;
    // SAFETY: a shared mapping of the vCPU's kvm_run page; checked below.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        )
    };
    assert_ne!(run, libc::MAP_FAILED, "mmap kvm_run");
    RawVm {
        run: run.cast(),
        run_size,
        vcpu,
        vm,
        signature,
        _mem: mem,
        _kvm: kvm,
    }
}

impl RawVm {
    /// KVM_RUN to the next port output; its port.
    fn run_to_out(&self) -> u16 {
        loop {
            // SAFETY: no argument; KVM writes only the kvm_run page.
            let ret = unsafe { vmm_sys_util::ioctl::ioctl(&self.vcpu, raw::KVM_RUN()) };
            if ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            check(ret, "KVM_RUN");
            // SAFETY: the mapping is live; KVM_RUN has returned.
            let run = unsafe { &*self.run };
            assert_eq!(run.exit_reason, kvm_bindings::KVM_EXIT_IO, "an I/O exit");
            // SAFETY: the exit reason says `io` is the active member.
            let io = unsafe { run.__bindgen_anon_1.io };
            assert_eq!(io.direction, kvm_bindings::KVM_EXIT_IO_OUT as u8);
            return io.port;
        }
    }

    fn regs(&self) -> (kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs) {
        let mut regs = kvm_bindings::kvm_regs::default();
        let mut sregs = kvm_bindings::kvm_sregs::default();
        // SAFETY: KVM writes one `kvm_regs`/`kvm_sregs` into the buffers given.
        unsafe {
            check(
                vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.vcpu, raw::KVM_GET_REGS(), &mut regs),
                "KVM_GET_REGS",
            );
            check(
                vmm_sys_util::ioctl::ioctl_with_mut_ref(
                    &self.vcpu,
                    raw::KVM_GET_SREGS(),
                    &mut sregs,
                ),
                "KVM_GET_SREGS",
            );
        }
        (regs, sregs)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.vcpu.as_fd()
    }
}

/// [`VcpuReset::reset_raw`] for the tests' VMMs, which lend the vCPU `r` was created for and
/// use it on one thread.
fn reset_raw(r: &mut VcpuReset, fd: BorrowedFd<'_>) -> Result<Outcome, VcpuResetError> {
    // SAFETY: the callers pass the KVM vCPU fd of `r`'s vCPU, which no other thread uses.
    unsafe { r.reset_raw(fd) }
}

/// [`VcpuReset::verify_raw`], as [`reset_raw`].
fn verify_raw(r: &mut VcpuReset, fd: BorrowedFd<'_>) -> Result<Vec<Deviation>, VcpuResetError> {
    // SAFETY: as in `reset_raw`.
    unsafe { r.verify_raw(fd) }
}

#[test]
fn a_vmm_on_plain_libc_ioctls_resets_through_raw_fds() {
    let Some(host) = kvm_for_tests() else { return };
    let vmm = raw_vm();
    let mut r = VcpuReset::from_raw_fds(&host, vmm.vm.as_fd(), vmm.fd(), 0).expect("learn vCPU 0");
    let first = reset_raw(&mut r, vmm.fd()).expect("first RESET").calls;
    println!("raw: first RESET {} ({first:?})", first.calls());
    for round in 0..3 {
        assert_eq!(
            vmm.run_to_out(),
            0x80,
            "round {round}: starts at the reset vector"
        );
        let (regs, sregs) = vmm.regs();
        assert_eq!(regs.rip, 0xfff2, "round {round}");
        assert_eq!(regs.rdx, u64::from(vmm.signature), "round {round}: RDX");
        assert_eq!(sregs.cr0, CR0_RESET, "round {round}: CR0");
        assert_eq!(sregs.cr3, 0, "round {round}: CR3");
        assert_eq!(vmm.run_to_out(), 0x81);
        let (_, sregs) = vmm.regs();
        assert_eq!(sregs.cr3, 0x1000, "the guest dirtied CR3");
        let out = reset_raw(&mut r, vmm.fd())
            .expect("RESET after a run")
            .calls;
        let bound = after_run_bound(&r);
        println!("raw: RESET after a run {} ({out:?})", out.calls());
        assert!(
            out.calls() <= bound,
            "a raw RESET after a run costs at most {bound}: {out:?}"
        );
    }
    let devs = verify_raw(&mut r, vmm.fd()).expect("verify");
    assert!(mismatches(&devs).is_empty(), "{devs:#?}");
    let untouched = reset_raw(&mut r, vmm.fd()).expect("RESET").calls;
    let again = reset_raw(&mut r, vmm.fd()).expect("RESET untouched").calls;
    println!(
        "raw: RESET untouched {} ({again:?}), before {untouched:?}",
        again.calls()
    );
    if r.counts_entries() {
        let bound = untouched_bound(&r);
        assert!(
            again.calls() <= bound,
            "an untouched vCPU costs at most {bound}: {again:?}"
        );
    }
    assert_eq!(vmm.run_to_out(), 0x80);
    let (regs, sregs) = vmm.regs();
    assert_eq!(regs.rdx, u64::from(vmm.signature));
    assert_eq!(sregs.cr0, CR0_RESET);
}

#[test]
fn a_fd_that_is_not_a_vcpus_is_refused_with_what_to_do() {
    let Some(host) = kvm_for_tests() else { return };
    let vmm = vmm_vm(1);
    // SAFETY: the VM's fd lives in `vmm` for this whole test.
    let vm = unsafe { BorrowedFd::borrow_raw(vmm.vm.as_raw_fd()) };
    let err = VcpuReset::from_raw_fds(&host, vm, vm, 0).expect_err("a VM fd is not a vCPU's");
    println!("{err}");
    assert!(
        matches!(err, VcpuResetError::Refused { id: 0, .. }),
        "{err:?}"
    );
}

// ---- a VMM on an older kvm-ioctls ------------------------------------------------------

#[test]
fn a_vmm_on_kvm_ioctls_0_24_resets_through_raw_fds() {
    use kvm_ioctls_old::{Kvm as OldKvm, VcpuExit as OldExit};
    let Some(host) = kvm_for_tests() else { return };
    let kvm = OldKvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    vm.create_irq_chip().expect("create irqchip");
    let mem = guest_memory();
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
        // SAFETY: the region is memory `mem` maps, which outlives the VM.
        unsafe { vm.set_user_memory_region(region) }.expect("set memory region");
    }
    let mut vcpu = vm.create_vcpu(0).expect("create vCPU");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    let signature = signature_of(&cpuid);
    vcpu.set_cpuid2(&cpuid).expect("set CPUID");
    // SAFETY: both fds are owned by `vm` and `vcpu`, which live for the whole test.
    let (vm_fd, vcpu_fd) = unsafe {
        (
            BorrowedFd::borrow_raw(vm.as_raw_fd()),
            BorrowedFd::borrow_raw(vcpu.as_raw_fd()),
        )
    };
    let mut r = VcpuReset::from_raw_fds(&host, vm_fd, vcpu_fd, 0).expect("learn vCPU 0");
    reset_raw(&mut r, vcpu_fd).expect("first RESET");
    let run_to_out = |vcpu: &mut kvm_ioctls_old::VcpuFd| loop {
        match vcpu.run().expect("KVM_RUN") {
            OldExit::IoOut(port, _) => return port,
            OldExit::Intr => {}
            other => panic!("unexpected exit {other:?}"),
        }
    };
    for round in 0..2 {
        assert_eq!(run_to_out(&mut vcpu), 0x80, "round {round}");
        let regs = vcpu.get_regs().expect("KVM_GET_REGS");
        let sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
        assert_eq!(regs.rip, 0xfff2, "round {round}: RIP");
        assert_eq!(regs.rdx, u64::from(signature), "round {round}: RDX");
        assert_eq!(sregs.cr0, CR0_RESET, "round {round}: CR0");
        assert_eq!(sregs.cr3, 0, "round {round}: CR3");
        assert_eq!(vcpu.get_fpu().expect("KVM_GET_FPU").fcw, FCW_RESET);
        assert_eq!(run_to_out(&mut vcpu), 0x81);
        // SAFETY: as above.
        let fd = unsafe { BorrowedFd::borrow_raw(vcpu.as_raw_fd()) };
        let out = reset_raw(&mut r, fd).expect("RESET after a run").calls;
        let bound = after_run_bound(&r);
        assert!(out.calls() <= bound, "at most {bound}: {out:?}");
    }
    // SAFETY: as above.
    let fd = unsafe { BorrowedFd::borrow_raw(vcpu.as_raw_fd()) };
    let devs = verify_raw(&mut r, fd).expect("verify");
    assert!(mismatches(&devs).is_empty(), "{devs:#?}");
    drop(vcpu);
    drop(vm);
    drop(mem);
}

#[test]
fn an_init_through_the_vmms_fd_keeps_what_init_keeps() {
    let Some(host) = kvm_for_tests() else { return };
    let mut vmm = vmm_vm(1);
    let mut bsp = vmm.vcpus.pop().expect("vCPU 0");
    let mut r = VcpuReset::new(&host, &vmm.vm, &bsp, 0).expect("learn vCPU 0");
    r.reset(&mut bsp).expect("RESET");
    run_and_dirty(&mut bsp);
    let out = r.init(&mut bsp).expect("INIT");
    println!("INIT after a run: {} ({:?})", out.calls.calls(), out.calls);
    assert_eq!(
        run_to_out(&mut bsp),
        0x80,
        "the BSP restarts at the reset vector"
    );
    let regs = bsp.get_regs().expect("KVM_GET_REGS");
    let sregs = bsp.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(regs.rdx, u64::from(vmm.signature), "RDX");
    // INIT keeps CR0.CD/NW (SDM Vol. 3A Table 10-1 note 2), which the guest cleared.
    assert_eq!(sregs.cr0, CR0_RESET & !0x6000_0000, "CR0");
    assert_eq!(sregs.cr3, 0, "CR3");
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_PAT,
        ..Default::default()
    }])
    .expect("one MSR");
    bsp.get_msrs(&mut msrs).expect("KVM_GET_MSRS");
    assert_eq!(
        msrs.as_slice()[0].data,
        0x0404_0404_0404_0404,
        "INIT keeps IA32_PAT"
    );
}

// ---- a handle belongs to one vCPU ------------------------------------------------------

/// What a wrong fd could have changed on vCPU `v`: its registers and MP state.
fn snapshot(v: &VcpuFd) -> (kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs, u32) {
    (
        v.get_regs().expect("KVM_GET_REGS"),
        v.get_sregs().expect("KVM_GET_SREGS"),
        v.get_mp_state().expect("KVM_GET_MP_STATE").mp_state,
    )
}

fn assert_not_this_vcpu(err: &VcpuResetError, op: &str, other: &str) {
    println!("{err}");
    match err {
        VcpuResetError::NotThisVcpu {
            op: o,
            id: 0,
            found,
            ..
        } => {
            assert_eq!(*o, op, "{err}");
            assert_eq!(found, other, "{err}");
        }
        _ => panic!("expected NotThisVcpu, got {err:?}"),
    }
    assert!(
        err.to_string().contains("pass that vCPU's fd"),
        "the error says what to do: {err}"
    );
}

#[test]
fn a_handle_lent_another_vcpus_fd_refuses_it_and_changes_nothing() {
    let Some(host) = kvm_for_tests() else { return };
    let mut vmm = vmm_vm(2);
    let mut ap = vmm.vcpus.pop().expect("vCPU 1");
    let mut bsp = vmm.vcpus.pop().expect("vCPU 0");
    let mut r = VcpuReset::new(&host, &vmm.vm, &bsp, 0).expect("learn vCPU 0");
    r.reset(&mut bsp).expect("first RESET");
    assert_eq!(run_to_out(&mut bsp), 0x80);
    r.reset(&mut bsp).expect("RESET after a run");
    // vCPU 0 is now untouched since its last RESET; vCPU 1 never ran.
    let ap_before = snapshot(&ap);
    let calls_before = r.stats().calls();

    let err = r.reset(&mut ap).expect_err("vCPU 1's fd, typed");
    assert_not_this_vcpu(&err, "RESET", "vCPU 1");
    assert_eq!(err.id(), 0);
    let err = r.init(&mut ap).expect_err("vCPU 1's fd, INIT");
    assert_not_this_vcpu(&err, "INIT", "vCPU 1");
    assert!(r.verify(&mut ap).is_err() && r.settle(&mut ap).is_err());
    // SAFETY: `ap` owns the fd for this whole test.
    let ap_fd = unsafe { BorrowedFd::borrow_raw(ap.as_raw_fd()) };
    // SAFETY: the fd is vCPU 1's, which no other thread uses; the call is to refuse it.
    let err = unsafe { r.reset_raw(ap_fd) }.expect_err("vCPU 1's fd, raw");
    assert_not_this_vcpu(&err, "RESET", "vCPU 1");
    // A file that is no vCPU's: refused before its mapping could fault (SIGBUS).
    let file = tempfile_of(16);
    // SAFETY: as above; the call is to refuse the fd.
    let err = unsafe { r.reset_raw(file.as_fd()) }.expect_err("a regular file");
    println!("{err}");
    assert!(
        matches!(err, VcpuResetError::NotThisVcpu { vcpu: None, .. }),
        "{err:?}"
    );
    // The VM's fd, raw and at INIT.
    // SAFETY: `vmm` owns the fd for this whole test.
    let vm_fd = unsafe { BorrowedFd::borrow_raw(vmm.vm.as_raw_fd()) };
    // SAFETY: as above.
    let err = unsafe { r.init_raw(vm_fd) }.expect_err("the VM's fd");
    assert!(
        matches!(err, VcpuResetError::NotThisVcpu { ref found, .. } if found.contains("kvm-vm")),
        "{err:?}"
    );

    assert_eq!(snapshot(&ap), ap_before, "vCPU 1 unchanged");
    assert_eq!(r.stats().calls(), calls_before, "no ioctl was made");
    // Nothing the handle knew was dropped: vCPU 0 is still taken as untouched.
    let again = r.reset(&mut bsp).expect("RESET of vCPU 0").calls;
    if r.counts_entries() {
        let bound = untouched_bound(&r);
        assert!(
            again.calls() <= bound,
            "still untouched, at most {bound}: {again:?}"
        );
    }
    assert_eq!(run_to_out(&mut bsp), 0x80);
    assert_reset_state(&bsp, vmm.signature, "the RESET after the refusals");
    assert!(r.identity().bsp, "still vCPU 0's identity");
}

/// An unlinked regular file of `pages` pages (a stand-in for a VMM's wrong fd).
fn tempfile_of(pages: usize) -> std::fs::File {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("vcpu-reset-not-a-vcpu-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create a temporary file");
    std::fs::remove_file(&path).expect("unlink it");
    f.set_len((pages * 4096) as u64).expect("size it");
    f
}
