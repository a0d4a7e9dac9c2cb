//! Runs the real-mode conformance probe in a KVM guest from the real power-on state and checks
//! what the guest itself saw against what this host's KVM is known to give at vCPU creation.
//!
//! Skips (with `skipped: no /dev/kvm (<reason>)` on stderr) when /dev/kvm cannot be opened,
//! unless `VCPU_RESET_REQUIRE_KVM=1`.

mod harness {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
    use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

    /// Guest RAM at 0 (minus the 0xF0000 ROM alias).
    pub const RAM_SIZE: usize = 2 << 20;
    /// Size of the firmware region, mapped at 0xF0000 and at 0xFFFF0000.
    pub const ROM_SIZE: usize = 64 << 10;
    const ROM_LOW: u64 = 0xf_0000;
    const ROM_HIGH: u64 = 0xffff_0000;
    /// Signal used to kick a vCPU thread out of KVM_RUN.
    const KICK: libc::c_int = libc::SIGUSR2;

    /// An anonymous private mapping, unmapped on drop.
    pub struct Anon {
        ptr: *mut u8,
        len: usize,
    }

    impl Anon {
        pub fn new(len: usize) -> std::io::Result<Anon> {
            // SAFETY: a fresh anonymous mapping at an address the kernel picks; no existing
            // memory is affected, and the result is checked against MAP_FAILED.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Anon {
                ptr: ptr.cast(),
                len,
            })
        }

        pub fn as_mut_slice(&mut self) -> &mut [u8] {
            // SAFETY: `ptr` maps `len` bytes owned by `self`, exclusively borrowed here; the guest
            // writes them only during KVM_RUN, which needs `&mut Guest`, so never meanwhile.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
        }

        fn host_addr(&self) -> u64 {
            self.ptr as u64
        }
    }

    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`. The VM that maps it into a
            // guest is dropped before it (field order of `Guest`).
            unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            }
        }
    }

    /// How a run ended.
    #[derive(Debug, PartialEq, Eq)]
    pub enum End {
        /// An OUT to the exit port, with the value written.
        ExitPort(u32),
        /// KVM_EXIT_INTERNAL_ERROR (e.g. an emulation failure) at CS:IP.
        InternalError { suberror: u32, cs: u16, rip: u64 },
        /// Something else: shutdown, HLT without irqchip, timeout, too many exits.
        Other(String),
    }

    /// The result of one run.
    #[derive(Debug)]
    pub struct Run {
        /// Bytes written with OUT, with their port, in order.
        pub out: Vec<(u16, u8)>,
        /// How it ended.
        pub end: End,
    }

    impl Run {
        /// The bytes written to `port`.
        pub fn port_bytes(&self, port: u16) -> Vec<u8> {
            self.out
                .iter()
                .filter(|(p, _)| *p == port)
                .map(|(_, b)| *b)
                .collect()
        }
    }

    /// One VM with the in-kernel irqchip, one vCPU, RAM at 0 and a ROM aliased at 0xF0000
    /// and 0xFFFF0000.
    pub struct Guest {
        // Field order matters: the vCPU and VM are dropped before the memory they map.
        pub vcpu: VcpuFd,
        _vm: VmFd,
        pub ram: Anon,
        _rom: Anon,
    }

    /// Opens /dev/kvm; `None` (after saying why on stderr) when it cannot be opened and
    /// `VCPU_RESET_REQUIRE_KVM` is not `1`.
    pub fn kvm_or_skip() -> Option<Kvm> {
        match Kvm::new() {
            Ok(k) => Some(k),
            Err(e) => {
                if std::env::var("VCPU_RESET_REQUIRE_KVM").as_deref() == Ok("1") {
                    panic!("VCPU_RESET_REQUIRE_KVM=1 but /dev/kvm cannot be opened: {e}");
                }
                eprintln!("skipped: no /dev/kvm ({e})");
                None
            }
        }
    }

    extern "C" fn on_kick(_: libc::c_int) {}

    fn install_kick_handler() {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a signal this
        // test binary uses for nothing else; without SA_RESTART, so a blocked KVM_RUN returns
        // EINTR. The zeroed sigaction is a valid value (empty mask, no flags).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(KICK, &sa, std::ptr::null_mut());
        }
    }

    impl Guest {
        /// A VM whose 64 KiB ROM holds `rom`. With `cpuid`, the vCPU gets the host-supported
        /// CPUID (as a VMM gives it) after creation; KVM set RDX at creation, before that.
        pub fn new(kvm: &Kvm, rom_image: &[u8], cpuid: bool) -> Guest {
            assert_eq!(rom_image.len(), ROM_SIZE, "ROM image size");
            let vm = kvm.create_vm().expect("KVM_CREATE_VM");
            let ram = Anon::new(RAM_SIZE).expect("mmap RAM");
            let mut rom = Anon::new(ROM_SIZE).expect("mmap ROM");
            rom.as_mut_slice().copy_from_slice(rom_image);
            let regions = [
                (ram.host_addr(), 0u64, ROM_LOW),
                (rom.host_addr(), ROM_LOW, ROM_SIZE as u64),
                (
                    ram.host_addr() + 0x10_0000,
                    0x10_0000,
                    RAM_SIZE as u64 - 0x10_0000,
                ),
                (rom.host_addr(), ROM_HIGH, ROM_SIZE as u64),
            ];
            for (slot, (host, guest, size)) in regions.into_iter().enumerate() {
                let region = kvm_userspace_memory_region {
                    slot: slot as u32,
                    flags: 0,
                    guest_phys_addr: guest,
                    memory_size: size,
                    userspace_addr: host,
                };
                // SAFETY: the host range lies inside a live mapping (`ram` or `rom`) owned by
                // the returned `Guest`, which drops the VM first; guest ranges do not overlap.
                unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
            }
            vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
            let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
            if cpuid {
                let c = kvm
                    .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                    .expect("KVM_GET_SUPPORTED_CPUID");
                vcpu.set_cpuid2(&c).expect("KVM_SET_CPUID2");
            }
            Guest {
                vcpu,
                _vm: vm,
                ram,
                _rom: rom,
            }
        }

        /// Copies `bytes` into RAM at `addr`.
        pub fn write_ram(&mut self, addr: usize, bytes: &[u8]) {
            self.ram.as_mut_slice()[addr..addr + bytes.len()].copy_from_slice(bytes);
        }

        /// Runs until an OUT to `exit_port`, an error, `timeout`, or `max_exits` exits. OUT
        /// bytes to other ports are collected, IN reads all-ones, MMIO to nothing reads
        /// all-ones and ignores writes.
        pub fn run(&mut self, exit_port: u16, max_exits: usize, timeout: Duration) -> Run {
            install_kick_handler();
            let done = Arc::new(AtomicBool::new(false));
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            let watchdog = {
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let start = Instant::now();
                    while !done.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                        if start.elapsed() >= timeout && !done.load(Ordering::Acquire) {
                            // SAFETY: `me` is the test thread, alive until it has set `done`
                            // and joined this thread; the signal has a no-op handler.
                            unsafe { libc::pthread_kill(me, KICK) };
                        }
                    }
                })
            };
            let deadline = Instant::now() + timeout;
            let run = self.run_loop(exit_port, max_exits, deadline);
            done.store(true, Ordering::Release);
            watchdog.join().expect("watchdog thread");
            run
        }

        fn run_loop(&mut self, exit_port: u16, max_exits: usize, deadline: Instant) -> Run {
            let mut out = Vec::new();
            let end = |out, end| Run { out, end };
            for _ in 0..max_exits {
                let exit = match self.vcpu.run() {
                    Ok(e) => e,
                    Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                        if Instant::now() >= deadline {
                            return end(out, End::Other("timeout".into()));
                        }
                        continue;
                    }
                    Err(e) => return end(out, End::Other(format!("KVM_RUN: {e}"))),
                };
                match exit {
                    VcpuExit::IoOut(port, data) if port == exit_port => {
                        let mut v = [0u8; 4];
                        let n = data.len().min(4);
                        v[..n].copy_from_slice(&data[..n]);
                        return end(out, End::ExitPort(u32::from_le_bytes(v)));
                    }
                    VcpuExit::IoOut(port, data) => out.extend(data.iter().map(|b| (port, *b))),
                    VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data) => data.fill(0xff),
                    VcpuExit::MmioWrite(..) => {}
                    VcpuExit::InternalError => {
                        let suberror = {
                            let run = self.vcpu.get_kvm_run();
                            // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
                            // is the active member of the exit union.
                            unsafe { run.__bindgen_anon_1.internal.suberror }
                        };
                        let regs = self.vcpu.get_regs().expect("KVM_GET_REGS");
                        let sregs = self.vcpu.get_sregs().expect("KVM_GET_SREGS");
                        return end(
                            out,
                            End::InternalError {
                                suberror,
                                cs: sregs.cs.selector,
                                rip: regs.rip,
                            },
                        );
                    }
                    other => return end(out, End::Other(format!("{other:?}"))),
                }
            }
            end(out, End::Other(format!("more than {max_exits} exits")))
        }
    }
}

use std::time::Duration;

use harness::{End, Guest};
use vcpu_reset::spec::{Field, LapicReg, Msr, X87};
use vcpu_reset_selftest::probe::{
    self, Fault, Origin, ProbeEnd, ProbeOptions, ProbeRun, Seen, Value, record,
};

const EXIT_PORT: u16 = 0xf4;
const ABSENT_MSR: u32 = 0xdead;

fn options(tag: &str) -> ProbeOptions {
    let mut o = ProbeOptions::reset_vector(tag);
    o.out_ports = vec![0xe9, 0x3f8];
    o.exit = ProbeEnd::Out {
        port: EXIT_PORT,
        value: 0x31,
    };
    o.msrs.push(ABSENT_MSR);
    o
}

/// Runs `guest` to the probe's exit; panics with the output so far on anything else.
fn run_to_exit(g: &mut Guest, opts: &ProbeOptions) -> ProbeRun {
    let run = g.run(EXIT_PORT, 100_000, Duration::from_secs(30));
    let log = run.port_bytes(0xe9);
    let text = String::from_utf8_lossy(&log);
    match &run.end {
        End::ExitPort(0x31) => {}
        End::InternalError { suberror, cs, rip } => {
            let off = usize::try_from(*rip)
                .unwrap_or(0)
                .wrapping_sub(usize::from(opts.origin.offset));
            let bytes = probe::assemble(opts)
                .ok()
                .and_then(|b| b.get(off..off + 8).map(<[u8]>::to_vec));
            panic!(
                "KVM internal error {suberror} (emulation failure?) at {cs:04x}:{rip:04x}, \
                 probe bytes {bytes:02x?}; output so far:\n{text}"
            );
        }
        other => panic!("probe did not exit: {other:?}; output:\n{text}"),
    }
    assert_eq!(
        run.port_bytes(0x3f8),
        log,
        "both ports carry the same bytes"
    );
    let mut runs = probe::parse(&log).unwrap_or_else(|e| panic!("{e}; log:\n{text}"));
    assert_eq!(runs.len(), 1, "log:\n{text}");
    runs.remove(0)
}

fn num(r: &ProbeRun, key: &str) -> u128 {
    r.number(key)
        .unwrap_or_else(|| panic!("{key}: {:?}", r.get(key)))
}

/// What KVM gives a vCPU at creation, as the guest sees it.
fn assert_kvm_power_on_state(r: &ProbeRun) {
    assert_eq!(num(r, "rax"), 0, "no BIST result");
    assert_eq!(num(r, "rdx"), 0x600, "KVM's RDX before CPUID is set");
    for k in ["rbx", "rcx", "rsi", "rdi", "rbp", "rsp"] {
        assert_eq!(num(r, k), 0, "{k}");
    }
    assert_eq!(num(r, "rflags"), 0x2);
    assert_eq!(num(r, "cs.selector"), 0xf000);
    for s in ["ds", "es", "fs", "gs", "ss"] {
        assert_eq!(num(r, &format!("{s}.selector")), 0, "{s}");
    }
    assert_eq!(num(r, "cr0"), 0x6000_0010);
    assert_eq!(num(r, "cr2"), 0);
    assert_eq!(num(r, "cr3"), 0);
    assert_eq!(num(r, "cr4"), 0);
    assert_eq!(num(r, "efer"), 0);
    for d in ["dr0", "dr1", "dr2", "dr3"] {
        assert_eq!(num(r, d), 0, "{d}");
    }
    assert_eq!(num(r, "dr6"), 0xffff_0ff0);
    assert_eq!(num(r, "dr7"), 0x400);
    assert_eq!(num(r, "gdtr.limit"), 0xffff);
    assert_eq!(num(r, "gdtr.base"), 0);
    assert_eq!(num(r, "idtr.limit"), 0xffff);
    assert_eq!(num(r, "idtr.base"), 0);
    assert_eq!(num(r, "msr.ia32_pat"), 0x0007_0406_0007_0406);
    assert_eq!(num(r, "msr.ia32_apic_base"), 0xfee0_0900, "enabled, BSP");
    // KVM's x87 deviation: the FINIT state, not FCW 0040H.
    assert_eq!(num(r, "x87.fcw"), 0x037f);
    assert_eq!(num(r, "x87.fsw"), 0);
    assert_eq!(r.get("msr.0xdead"), Some(&Value::Fault(Fault::Gp)));
}

#[test]
fn probe_sees_kvm_power_on_state() {
    let Some(kvm) = harness::kvm_or_skip() else {
        return;
    };
    let opts = options("kvm-reset");
    let rom = probe::firmware_image(&opts).expect("probe assembles");
    let mut g = Guest::new(&kvm, &rom, true);
    let r = run_to_exit(&mut g, &opts);
    assert_eq!(r.tag, "kvm-reset");
    assert_kvm_power_on_state(&r);
    // The local APIC of vCPU 0, read through unreal mode.
    assert_eq!(num(&r, "lapic.id"), 0);
    assert_eq!(
        num(&r, "lapic.svr"),
        0xff,
        "software-disabled, spurious vector FF"
    );
    assert_eq!(
        num(&r, "lapic.lvt_lint0"),
        0x700,
        "KVM's BSP LINT0 = ExtINT quirk"
    );
    assert_eq!(num(&r, "lapic.lvt_lint1"), 0x1_0000);
    assert_eq!(num(&r, "lapic.lvt_timer"), 0x1_0000);
    assert_eq!(num(&r, "lapic.lvt_error"), 0x1_0000);
    assert_eq!(num(&r, "lapic.dfr"), 0xffff_ffff);
    assert_eq!(num(&r, "lapic.tpr"), 0);
    assert_eq!(num(&r, "lapic.icr"), 0);
    assert_eq!(num(&r, "lapic.timer_initial"), 0);
    assert_eq!(num(&r, "lapic.version") & 0xff, 0x14, "KVM's APIC version");
    for i in 0..8 {
        for b in ["isr", "tmr", "irr"] {
            assert_eq!(num(&r, &format!("lapic.{b}{i}")), 0, "{b}{i}");
        }
    }
    // Widths say what the probe could see: 32 bits of RAX in real mode, 64 of an MSR.
    assert_eq!(r.get("rax").and_then(Value::bits), Some(32));
    assert_eq!(r.get("msr.ia32_pat").and_then(Value::bits), Some(64));
    assert_eq!(r.get("lapic.icr").and_then(Value::bits), Some(64));
    // FXSAVE (with CR4.OSFXSR set by the probe): KVM's guest FPU is the XSAVE init state.
    let fx = r
        .fxsave()
        .expect("fxsave recorded")
        .expect("fxsave decodes");
    assert_eq!(fx.fcw, 0x037f);
    assert_eq!(fx.fsw, 0);
    assert_eq!(fx.ftw_abridged, 0);
    assert_eq!(fx.ftw(), 0xffff, "all empty");
    assert_eq!(fx.mxcsr, 0x1f80);
    assert_eq!((fx.fip, fx.fdp, fx.fop), (0, 0, 0));
    assert_eq!(fx.st, [0; 8]);
    assert_eq!(fx.xmm, [0; 16]);
}

#[test]
fn probe_records_map_onto_spec_fields() {
    let Some(kvm) = harness::kvm_or_skip() else {
        return;
    };
    let opts = options("fields");
    let rom = probe::firmware_image(&opts).expect("probe assembles");
    let mut g = Guest::new(&kvm, &rom, true);
    let f = run_to_exit(&mut g, &opts).fields().expect("fields");
    let v = |value: u128, mask: u128| Seen::Value { value, mask };
    assert_eq!(f[&Field::Cr0], v(0x6000_0010, 0xffff_ffff));
    assert_eq!(f[&Field::Efer], v(0, u128::from(u64::MAX)));
    assert_eq!(
        f[&Field::Msr(Msr::Pat)],
        v(0x0007_0406_0007_0406, u128::from(u64::MAX))
    );
    assert_eq!(f[&Field::Lapic(LapicReg::Svr)], v(0xff, 0xffff_ffff));
    assert_eq!(f[&Field::X87(X87::Fcw)], v(0x037f, 0xffff));
    // From the FXSAVE image: the full tag word rebuilt as FNSTENV would give it.
    assert_eq!(f[&Field::X87(X87::Ftw)], v(0xffff, 0xffff));
    assert_eq!(f[&Field::Mxcsr], v(0x1f80, 0xffff_ffff));
    assert_eq!(f[&Field::Xmm(7)], v(0, u128::MAX));
    assert!(
        !f.contains_key(&Field::Xmm(8)),
        "not visible outside 64-bit mode"
    );
    assert!(!f.contains_key(&Field::Rip), "not recorded");
    // Every MSR the spec names was either read or faulted; the capability MSRs, which have no
    // spec row, are recorded by index.
    for i in probe::default_msrs() {
        let Some(field) = record::field_for_msr(i) else {
            assert!(
                [probe::MSR_IA32_MCG_CAP, probe::MSR_IA32_ARCH_CAPABILITIES].contains(&i),
                "{i:#x} has no spec row"
            );
            continue;
        };
        assert!(
            matches!(f.get(&field), Some(Seen::Value { .. } | Seen::Fault(_))),
            "{field}: {:?}",
            f.get(&field)
        );
    }
}

/// Without guest CPUID KVM's emulator refuses FXSAVE with #UD (no FXSR): the probe's #UD
/// handler catches it and everything else is still recorded.
#[test]
fn probe_catches_ud_from_fxsave_without_cpuid() {
    let Some(kvm) = harness::kvm_or_skip() else {
        return;
    };
    let opts = options("no-cpuid");
    let rom = probe::firmware_image(&opts).expect("probe assembles");
    let mut g = Guest::new(&kvm, &rom, false);
    let r = run_to_exit(&mut g, &opts);
    assert_kvm_power_on_state(&r);
    assert_eq!(r.get("fxsave"), Some(&Value::Fault(Fault::Ud)));
    assert_eq!(num(&r, "lapic.svr"), 0xff);
    let f = r.fields().expect("fields");
    assert_eq!(f[&Field::Mxcsr], Seen::Fault(Fault::Ud));
    // FNSTCW still gave FCW.
    assert_eq!(
        f[&Field::X87(X87::Fcw)],
        Seen::Value {
            value: 0x037f,
            mask: 0xffff
        }
    );
}

/// With IA32_APIC_BASE.EN clear there is no local APIC to read: every APIC record is `!na`.
#[test]
fn probe_reports_disabled_apic_as_not_available() {
    let Some(kvm) = harness::kvm_or_skip() else {
        return;
    };
    let opts = options("apic-off");
    let rom = probe::firmware_image(&opts).expect("probe assembles");
    let mut g = Guest::new(&kvm, &rom, true);
    let msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: 0x1b,
        data: 0xfee0_0100,
        ..Default::default()
    }])
    .expect("MSR list");
    assert_eq!(g.vcpu.set_msrs(&msrs).expect("KVM_SET_MSRS"), 1);
    let r = run_to_exit(&mut g, &opts);
    assert_eq!(num(&r, "msr.ia32_apic_base"), 0xfee0_0100);
    for reg in LapicReg::ALL {
        assert_eq!(
            r.get(&record::lapic_key(reg)),
            Some(&Value::NotAvailable),
            "{reg:?}"
        );
    }
    assert_eq!(r.get("lapic.irr7"), Some(&Value::NotAvailable));
    assert_eq!(num(&r, "cr0"), 0x6000_0010);
}

/// The probe at a SIPI-style origin in RAM (0200:0000, above its scratch area), entered by a far jump from the reset
/// vector: its far references (IVT entries, GDT base) follow the origin.
#[test]
fn probe_runs_from_a_ram_origin() {
    let Some(kvm) = harness::kvm_or_skip() else {
        return;
    };
    let mut opts = options("ram-origin");
    opts.origin = Origin {
        segment: 0x0200,
        offset: 0,
    };
    opts.out_ports = vec![0xe9, 0x3f8];
    let code = probe::assemble(&opts).expect("probe assembles");
    // ROM: only `jmp far 0200:0000` at the reset vector.
    let mut rom = vec![0xffu8; probe::program::FIRMWARE_SIZE];
    rom[0xfff0..0xfff5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0x02]);
    let mut g = Guest::new(&kvm, &rom, true);
    g.write_ram(0x2000, &code);
    let r = run_to_exit(&mut g, &opts);
    assert_eq!(
        num(&r, "cs.selector"),
        0x0200,
        "entered through the far jump"
    );
    assert_eq!(num(&r, "rdx"), 0x600);
    assert_eq!(num(&r, "lapic.svr"), 0xff);
    assert_eq!(r.get("msr.0xdead"), Some(&Value::Fault(Fault::Gp)));
    assert_eq!(
        r.get("fxsave").and_then(Value::blob).map(|b| b.len()),
        Some(512)
    );
}

/// The harness itself: a guest that never exits is stopped by the watchdog.
#[test]
fn harness_stops_a_hung_guest() {
    let Some(kvm) = harness::kvm_or_skip() else {
        return;
    };
    let mut rom = vec![0xffu8; probe::program::FIRMWARE_SIZE];
    rom[0xfff0..0xfff2].copy_from_slice(&[0xeb, 0xfe]); // jmp $
    let mut g = Guest::new(&kvm, &rom, true);
    let start = std::time::Instant::now();
    let run = g.run(EXIT_PORT, usize::MAX, Duration::from_millis(300));
    assert_eq!(run.end, End::Other("timeout".into()));
    assert!(run.out.is_empty());
    assert!(start.elapsed() < Duration::from_secs(10));
}
