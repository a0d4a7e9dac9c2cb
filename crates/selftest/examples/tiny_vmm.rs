//! A tiny VMM written directly on kvm-ioctls and vm-memory that uses vcpu-reset for one thing:
//! the exact power-on RESET of its vCPU, at power-on and whenever the guest reboots.
//!
//! ```sh
//! cargo run --example tiny_vmm
//! ```
//!
//! The VMM owns everything else: `/dev/kvm`, the VM with an in-kernel irqchip, guest memory
//! (1 MiB of low RAM and the 64 KiB firmware region below 4 GiB), the vCPU and its CPUID, and
//! the KVM_RUN loop with a debug console on port 0xE9, an exit port at 0xF4 and the reset
//! control register at 0xCF9. The firmware is vcpu-reset's probe image: it records what it
//! sees at the reset vector, dirties CR0.CD/NW, the x87 unit, PAT and SYSENTER_CS, and reboots
//! with 0x06 to port 0xCF9 (a hard reset); after that reboot it records again and ends through
//! port 0xF4. Beside its vCPU fd the VMM keeps a [`vcpu_reset::VcpuReset`]; on a triple fault
//! (KVM_EXIT_SHUTDOWN) and on the hard reset the run loop lends it the fd for one
//! `reset()` and carries on. Each RESET's syscalls are printed (`Outcome::calls`).
//!
//! The first boot ends in a triple fault before the firmware runs: the VMM raises it through
//! KVM (KVM_CAP_X86_TRIPLE_FAULT_EVENT, where the host has it), as if the guest had
//! triple-faulted. A guest cannot be relied on to do that here: this project's machines run
//! real-mode code through KVM's instruction emulator, which reads the IVT past an IDT limit of 0
//! and cannot deliver an exception in protected mode (both were tried).
//!
//! At the end the VMM judges the guest's records with vcpu-reset's conformance checker (both
//! runs against the RESET state of the CPU model its CPUID presents) and exits 0 only when
//! every field the guest could see was exact. Without `/dev/kvm` it says so and exits 0.
//! `TINY_VMM_TRACE=1` prints every exit. `tests/example_tiny_vmm.rs` runs it as a test.

use std::error::Error;
use std::process::ExitCode;

use kvm_bindings::{
    KVM_CAP_X86_TRIPLE_FAULT_EVENT, KVM_MAX_CPUID_ENTRIES, KVM_VCPUEVENT_VALID_TRIPLE_FAULT, Msrs,
    kvm_enable_cap, kvm_msr_entry, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vcpu_reset::VcpuReset;
use vcpu_reset::backend::kvm::{KvmHost, disable_lint0_quirk};
use vcpu_reset::spec::CpuModel;
use vcpu_reset_selftest::check::probe_log::LogOptions;
use vcpu_reset_selftest::check::{Report, Verdict};
use vcpu_reset_selftest::probe::{self, ProbeOptions, RebootVia};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const LOW_RAM: usize = 0x10_0000;
const FIRMWARE_BASE: u64 = 0xffff_0000;
const FIRMWARE_SIZE: usize = 0x1_0000;
/// The firmware's alias in low RAM, where real-mode code with CS = F000 finds it.
const FIRMWARE_ALIAS: u64 = 0xf_0000;
/// Where KVM on Intel may put its real-mode TSS (three pages, outside guest memory).
const TSS_ADDRESS: usize = 0xfffb_d000;
const MSR_IA32_TSC: u32 = 0x10;
const DEBUGCON: u16 = 0xe9;
const EXIT_PORT: u16 = 0xf4;
const RESET_CONTROL: u16 = 0xcf9;

/// What a run of the tiny VMM produced.
pub struct Outcome {
    /// The first boot was made to end in a triple fault (the host has
    /// KVM_CAP_X86_TRIPLE_FAULT_EVENT).
    pub triple_fault: bool,
    /// The host ignored the TSC write of the RESET (a host limit, not a deviation).
    pub tsc_writes_ignored: bool,
    /// KVM's LINT0_REENABLED quirk is off (the host offers KVM_CAP_DISABLE_QUIRKS2 with it).
    pub lint0_quirk_off: bool,
    /// The first RESET found the host's INIT exact for REGS, SREGS and EVENTS, so later ones
    /// leave it to the next KVM_RUN (`VcpuReset::host_init_lazy`).
    pub host_init_lazy: bool,
    /// The state classes the host's INIT leaves wrong (`VcpuReset::host_init_inexact`).
    pub host_init_inexact: u64,
    /// Everything the guest wrote to the debug console.
    pub log: Vec<u8>,
    /// What made the VMM reset the vCPU, in order.
    pub resets: Vec<&'static str>,
    /// The vCPU syscalls each of those RESETs made.
    pub calls: Vec<u64>,
    /// The byte the guest wrote to the exit port.
    pub exit_code: u8,
    /// The CPU model the vCPU's CPUID presents.
    pub model: CpuModel,
}

/// The firmware: vcpu-reset's probe image, which records, dirties, reboots with a hard reset
/// through 0xCF9, records again and exits.
fn firmware() -> Result<Vec<u8>, Box<dyn Error>> {
    let mut opts = ProbeOptions::reset_vector("tiny-vmm-cf9-hard");
    opts.reboot = Some(RebootVia::Cf9Hard);
    Ok(probe::firmware_image(&opts)?)
}

/// Make the vCPU's next KVM_RUN end in a triple fault (KVM_EXIT_SHUTDOWN), as if the guest
/// had triple-faulted, where the host offers KVM_CAP_X86_TRIPLE_FAULT_EVENT. Returns whether
/// it could.
fn raise_triple_fault(vm: &VmFd, vcpu: &VcpuFd) -> Result<bool, Box<dyn Error>> {
    if vm.check_extension_raw(u64::from(KVM_CAP_X86_TRIPLE_FAULT_EVENT)) <= 0 {
        return Ok(false);
    }
    vm.enable_cap(&kvm_enable_cap {
        cap: KVM_CAP_X86_TRIPLE_FAULT_EVENT,
        args: [1, 0, 0, 0],
        ..Default::default()
    })?;
    let mut events = vcpu.get_vcpu_events()?;
    events.flags = KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
    events.triple_fault.pending = 1;
    vcpu.set_vcpu_events(&events)?;
    Ok(true)
}

fn read_tsc(vcpu: &VcpuFd) -> Result<u64, Box<dyn Error>> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])?;
    vcpu.get_msrs(&mut msrs)?;
    Ok(msrs.as_slice()[0].data)
}

fn map(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    slot: u32,
    base: u64,
    size: usize,
) -> Result<(), Box<dyn Error>> {
    let host_addr = mem.get_host_address(GuestAddress(base))?;
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: base,
        memory_size: size as u64,
        userspace_addr: host_addr as u64,
    };
    // SAFETY: the region is a live mapping of `size` bytes owned by `mem`, which `run` keeps
    // alive until after the VM and its vCPU are gone.
    unsafe { vm.set_user_memory_region(region) }?;
    Ok(())
}

/// What the run loop does after an exit.
enum Next {
    Go,
    Reset(&'static str),
    Exit(u8),
}

/// Boot the firmware and run it to its exit port, resetting the vCPU with vcpu-reset at
/// power-on, on a triple fault and on a hard reset through 0xCF9.
pub fn run(host: &KvmHost) -> Result<Outcome, Box<dyn Error>> {
    // The VMM's own KVM objects and memory.
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(TSS_ADDRESS)?;
    vm.create_irq_chip()?;
    // KVM's LINT0_REENABLED quirk off (this VMM turns no other quirk off): KVM's own INIT then
    // leaves the BSP's LVT LINT0 masked as the SDM does, which saves each RESET two ioctls.
    let lint0_quirk_off = disable_lint0_quirk(&vm, 0)?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_RAM),
        (GuestAddress(FIRMWARE_BASE), FIRMWARE_SIZE),
    ])?;
    map(&vm, &mem, 0, 0, LOW_RAM)?;
    map(&vm, &mem, 1, FIRMWARE_BASE, FIRMWARE_SIZE)?;
    let image = firmware()?;
    mem.write_slice(&image, GuestAddress(FIRMWARE_BASE))?;
    mem.write_slice(&image, GuestAddress(FIRMWARE_ALIAS))?;

    let mut vcpu: VcpuFd = vm.create_vcpu(0)?;
    vcpu.set_cpuid2(&kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?)?;
    // What vcpu-reset knows of the vCPU, kept beside its fd (which stays the VMM's).
    let mut reset = VcpuReset::new(host, &vm, &vcpu, 0)?;
    // Power-on: KVM's creation state is not the architectural RESET state (EDX, x87, LINT0).
    let mut calls = vec![reset.reset(&mut vcpu)?.calls.calls()];
    // What the first RESET learned of the host's INIT: whether it is left to the next KVM_RUN
    // and how many state classes it leaves wrong (each one more ioctl per RESET).
    let host_init_lazy = reset.host_init_lazy();
    let host_init_inexact = reset
        .host_init_inexact()
        .map_or(0, |c| c.iter().count() as u64);
    // The VMM is about to change the vCPU through its own fd before running it (the triple
    // fault below): settle first, so that nothing the RESET left for the next KVM_RUN (REGS,
    // SREGS, EVENTS in `kvm_run`, KVM's INIT) lands over the VMM's own store.
    reset.settle(&mut vcpu)?;
    // RESET sets the TSC to 0 (vcpu-reset writes 1, see its engine docs); a host that ignores
    // TSC writes shows a counter far from that, and the guest will see the same.
    let tsc_writes_ignored = read_tsc(&vcpu)? > 1 << 40;
    // The first boot ends in a triple fault before the firmware runs (see the module docs).
    let triple_fault = raise_triple_fault(&vm, &vcpu)?;

    let mut log = Vec::new();
    let mut resets = vec!["power-on"];
    let trace = std::env::var_os("TINY_VMM_TRACE").is_some();
    let exit_code = loop {
        let exit = vcpu.run();
        if trace {
            eprintln!("exit: {exit:?}");
        }
        let next = match exit {
            Ok(VcpuExit::IoOut(DEBUGCON, data)) => {
                log.extend_from_slice(data);
                Next::Go
            }
            Ok(VcpuExit::IoOut(EXIT_PORT, data)) => Next::Exit(data.first().copied().unwrap_or(0)),
            // SYS_RST | RST_CPU: a hard reset, i.e. RESET of every processor.
            Ok(VcpuExit::IoOut(RESET_CONTROL, [0x06])) => Next::Reset("0xCF9 hard reset"),
            Ok(VcpuExit::IoOut(..)) => Next::Go,
            Ok(VcpuExit::IoIn(_, data)) => {
                data.fill(0xff);
                Next::Go
            }
            // A triple fault: the platform resets the processor (QEMU does the same).
            Ok(VcpuExit::Shutdown) => Next::Reset("triple fault"),
            Ok(other) => return Err(format!("unexpected exit {other:?}").into()),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Go,
            Err(e) => return Err(e.into()),
        };
        match next {
            Next::Go => {}
            Next::Exit(code) => break code,
            Next::Reset(why) => {
                if resets.len() > 8 {
                    return Err("the guest keeps resetting".into());
                }
                resets.push(why);
                // The whole of vcpu-reset in this VMM: lend the fd for the RESET. (A VMM with
                // in-kernel devices would put them back too: `vcpu_reset::VmReset`.)
                calls.push(reset.reset(&mut vcpu)?.calls.calls());
            }
        }
    };

    // The CPU model the vCPU's CPUID presents, for judging the guest's records.
    let model = *reset.cpu_model();
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(Outcome {
        triple_fault,
        tsc_writes_ignored,
        lint0_quirk_off,
        host_init_lazy,
        host_init_inexact,
        log,
        resets,
        calls,
        exit_code,
        model,
    })
}

/// Judge both probe runs in the log against the RESET state of `model`.
pub fn judge(outcome: &Outcome) -> Report {
    let opts = LogOptions {
        vendor: Some(outcome.model.vendor),
        signature: Some(outcome.model.signature),
    };
    vcpu_reset_selftest::check::probe_log::judge_log(&outcome.log, &opts)
}

/// The judged fields that are not exact (anything but pass, spec-allows and host-limit; the
/// TSC counts as a host limit where the host ignores TSC writes).
pub fn inexact(outcome: &Outcome, report: &Report) -> Vec<String> {
    report
        .results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Fail | Verdict::Finding))
        .filter(|r| !(outcome.tsc_writes_ignored && r.field == "msr.ia32_tsc"))
        .map(|r| {
            format!(
                "{} {}: expected {}, got {}",
                r.scenario,
                r.field,
                r.expected,
                r.actual.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

#[allow(dead_code)] // tests include this file as a module and call `run`
fn main() -> ExitCode {
    let host = match KvmHost::open() {
        Ok(host) => host,
        Err(e) => {
            println!("skipped: no /dev/kvm ({e})");
            return ExitCode::SUCCESS;
        }
    };
    let outcome = match run(&host) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("tiny_vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = judge(&outcome);
    let summary = report.summary();
    let resets: Vec<String> = outcome
        .resets
        .iter()
        .zip(&outcome.calls)
        .map(|(why, calls)| format!("{why} ({calls} vCPU syscalls)"))
        .collect();
    println!("resets: {}", resets.join(", "));
    println!("guest exit code: {}", outcome.exit_code);
    if outcome.tsc_writes_ignored {
        println!("this host ignores TSC writes: IA32_TSC is a host limit");
    }
    // A TSC the host would not let the VMM set is judged a finding; here it is a host limit.
    let tsc = if outcome.tsc_writes_ignored {
        report
            .results
            .iter()
            .filter(|r| r.field == "msr.ia32_tsc" && r.verdict == Verdict::Finding)
            .count()
    } else {
        0
    };
    println!(
        "probe runs judged against RESET: {} pass, {} spec-allows, {} host-limit, {} finding, {} fail",
        summary.pass,
        summary.spec_allows,
        summary.host_limit + tsc,
        summary.finding - tsc,
        summary.fail
    );
    let bad = inexact(&outcome, &report);
    for line in &bad {
        println!("  {line}");
    }
    if bad.is_empty() && summary.pass > 0 && summary.scenarios_not_run == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
