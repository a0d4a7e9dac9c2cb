//! The register cache over a real KVM vCPU: what is written through the cache is what the guest
//! sees, what the guest changes is what the cache reads after the exit, the sync-regs and
//! ioctl paths agree, and an exit costs the ioctls claimed (1 with sync regs: the KVM_RUN).

use vcpu_reset::backend::kvm::{KvmHost, KvmVcpu, KvmVcpuOptions};
use vcpu_reset::backend::{Exit, IoDir};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::spec::{Gpr, Seg};
use vcpu_reset_selftest::host::kvm_for_tests;
use vcpu_reset_selftest::runner::{Firmware, GuestMemory};

/// At the reset vector: `l: out 0x10, al; inc ax; out 0x10, al; inc ax; jmp l`.
fn firmware() -> Firmware {
    let mut image = vec![0u8; 4096];
    image[0xff0..0xff8].copy_from_slice(&[0xe6, 0x10, 0x40, 0xe6, 0x10, 0x40, 0xeb, 0xf8]);
    Firmware::from_bytes(image, "out loop").unwrap()
}

fn out_byte(e: &Exit) -> u8 {
    match e {
        Exit::Io {
            dir: IoDir::Out,
            port: 0x10,
            data,
            ..
        } => data[0],
        other => panic!("expected OUT to port 0x10, got {other:?}"),
    }
}

/// One exit: the AL the guest wrote, and the RAX, RIP and CS selector the cache read before it.
type Step = (u8, u64, u64, u16);

/// The steps over a few exits, and the ioctls of each exit after the first.
fn trace(host: &KvmHost, sync_regs: bool) -> (Vec<Step>, Vec<u64>) {
    let fw = firmware();
    let mem = GuestMemory::new(1, &fw).unwrap();
    let vm = host.create_vm(true).unwrap();
    mem.register(&vm, true).unwrap();
    let v = KvmVcpu::with_options(host, &vm, 0, KvmVcpuOptions { sync_regs }).unwrap();
    assert_eq!(v.sync_regs(), sync_regs && host.caps().sync_regs & 7 == 7);
    let mut c = VcpuCache::adopt(v);
    c.set_gpr(Gpr::Rax, 0x41);
    let mut out = Vec::new();
    let mut costs = Vec::new();
    let first = c.run().unwrap();
    assert_eq!(
        out_byte(&first),
        0x41,
        "the guest sees RAX written through the cache"
    );
    for i in 0..6u64 {
        let before = c.backend_stats();
        let rax = c.gpr(Gpr::Rax).unwrap();
        let rip = c.rip().unwrap();
        let cs = c.segment(Seg::Cs).unwrap().selector;
        c.set_gpr(Gpr::Rax, rax + 0x10 * i);
        let e = c.run().unwrap();
        costs.push(c.backend_stats().since(&before).calls());
        out.push((out_byte(&e), rax, rip, cs));
    }
    (out, costs)
}

#[test]
fn cache_values_reach_the_guest_and_guest_changes_reach_the_cache() {
    let Some(host) = kvm_for_tests() else { return };
    let (t, _) = trace(&host, true);
    // Exit 1: after `out` at FFF0 with AL = 0x41 the guest is at FFF2; RAX as written.
    assert_eq!(t[0].1, 0x41);
    assert_eq!((t[0].2, t[0].3), (0xfff2, 0xf000));
    // The guest then ran `inc ax` on the value the cache wrote (0x41 + 0) and OUT it.
    assert_eq!(t[0].0, 0x42);
    for w in t.windows(2) {
        let (prev, next) = (w[0], w[1]);
        assert_eq!(
            next.1,
            u64::from(prev.0),
            "the cache reads what the guest left in RAX"
        );
    }
    assert_eq!(
        t[1].0 as u64,
        t[1].1 + 0x10 + 1,
        "written +0x10, then the guest's inc"
    );
}

#[test]
fn sync_regs_and_ioctl_paths_agree_and_cost_what_is_claimed() {
    let Some(host) = kvm_for_tests() else { return };
    let (with_sync, sync_costs) = trace(&host, true);
    let (with_ioctls, ioctl_costs) = trace(&host, false);
    assert_eq!(with_sync, with_ioctls);
    if host.caps().sync_regs & 7 == 7 {
        assert!(
            sync_costs.iter().all(|&c| c == 1),
            "one KVM_RUN per exit: {sync_costs:?}"
        );
    }
    // Without sync regs: KVM_GET_REGS, KVM_GET_SREGS, KVM_SET_REGS and KVM_RUN.
    assert!(ioctl_costs.iter().all(|&c| c == 4), "{ioctl_costs:?}");
}
