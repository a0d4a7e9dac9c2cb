//! The runner on real KVM: a firmware that reboots itself through every mechanism and records,
//! at each entry, what the guest sees: EDX (the processor signature), CR0 (CD/NW), port 0x92
//! bit 0 (set only across a soft reset) and the x87 control word. Between entries it clears
//! CR0.CD/NW and runs FNINIT, so a RESET shows CR0 = 0x60000010 and FCW = 0x0040 and an INIT
//! shows CR0 = 0x00000010 and FCW = 0x037F (both kept).
//!
//! Also: bad input (firmware files, vCPU counts) and a hanging guest give clear errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use vcpu_reset_selftest::host::kvm_for_tests;
use vcpu_reset_selftest::runner::{
    Firmware, RebootKind, RebootReason, RunError, Sink, Vm, VmConfig, reset_vector_image,
};

#[derive(Clone, Copy, Debug)]
enum Mechanism {
    Cf9Hard,
    Cf9Soft,
    Port92,
    Kbc,
}

/// Offset of the firmware's code in its 64 KiB real-mode segment (CS = F000 after the first
/// jump; the 4 KiB image sits at F000:F000).
const ORG: u64 = 0xf000;

fn emit_byte(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.out(0xe9, al)
}

/// A 4 KiB firmware that reboots through `seq` in order and then exits with 0.
fn reboot_firmware(seq: &[Mechanism]) -> Result<Firmware, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    let mut emit32 = a.create_label();
    let mut start = a.create_label();
    let mut targets: Vec<CodeLabel> = seq.iter().map(|_| a.create_label()).collect();
    let mut done = a.create_label();

    a.set_label(&mut start)?;
    a.mov(ebp, edx)?; // EDX as the processor left it, before anything else
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7000)?;
    a.fnstcw(word_ptr(0x600))?;
    // Record: 'R', entry count, EDX, CR0, port 0x92, FCW.
    a.mov(al, b'R' as u32)?;
    emit_byte(&mut a)?;
    a.mov(al, byte_ptr(0x500))?;
    emit_byte(&mut a)?;
    a.mov(eax, ebp)?;
    a.call(emit32)?;
    a.mov(eax, cr0)?;
    a.call(emit32)?;
    a.in_(al, 0x92)?;
    emit_byte(&mut a)?;
    a.movzx(eax, word_ptr(0x600))?;
    a.call(emit32)?;
    // Dirty what RESET and INIT treat differently: CR0.CD/NW cleared, x87 to FINIT state.
    a.mov(eax, cr0)?;
    a.and(eax, 0x9fff_ffffu32 as i32)?;
    a.mov(cr0, eax)?;
    a.fninit()?;
    // Next mechanism.
    a.mov(bl, byte_ptr(0x500))?;
    a.inc(byte_ptr(0x500))?;
    for (i, t) in targets.iter().enumerate() {
        a.cmp(bl, i as u32)?;
        a.je(*t)?;
    }
    a.jmp(done)?;

    for (m, t) in seq.iter().zip(targets.iter_mut()) {
        a.set_label(t)?;
        match m {
            Mechanism::Cf9Hard | Mechanism::Cf9Soft => {
                a.mov(dx, 0xcf9)?;
                a.mov(
                    al,
                    if matches!(m, Mechanism::Cf9Hard) {
                        6
                    } else {
                        4
                    },
                )?;
                a.out(dx, al)?;
            }
            Mechanism::Port92 => {
                a.in_(al, 0x92)?;
                a.and(al, 0xfe)?;
                a.out(0x92, al)?;
                a.or(al, 1)?;
                a.out(0x92, al)?;
            }
            Mechanism::Kbc => {
                a.mov(al, 0xfe)?;
                a.out(0x64, al)?;
            }
        }
        let mut spin = a.create_label();
        a.set_label(&mut spin)?;
        a.jmp(spin)?;
    }

    a.set_label(&mut done)?;
    a.xor(eax, eax)?;
    a.out(0xf4, al)?;
    a.hlt()?;

    a.set_label(&mut emit32)?;
    for _ in 0..4 {
        emit_byte(&mut a)?;
        a.shr(eax, 8)?;
    }
    a.ret()?;

    let body = a.assemble(ORG)?;
    // The 4 KiB image sits at F000:F000; the reset vector jumps to its start.
    let image = reset_vector_image(4096, 0, &body, (0xf000, ORG as u16)).expect("code fits");
    Ok(Firmware::from_bytes(image, "reboot test firmware").expect("4 KiB image"))
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    count: u8,
    edx: u32,
    cr0: u32,
    port92: u8,
    fcw: u16,
}

fn parse(out: &[u8]) -> Vec<Entry> {
    let mut v = Vec::new();
    let mut i = 0;
    while i + 15 <= out.len() {
        assert_eq!(out[i], b'R', "record framing at byte {i} of {out:?}");
        let d = |o: usize| u32::from_le_bytes([out[o], out[o + 1], out[o + 2], out[o + 3]]);
        v.push(Entry {
            count: out[i + 1],
            edx: d(i + 2),
            cr0: d(i + 6),
            port92: out[i + 10],
            fcw: d(i + 11) as u16,
        });
        i += 15;
    }
    assert_eq!(i, out.len(), "trailing bytes");
    v
}

fn config(buf: &Arc<Mutex<Vec<u8>>>, vcpus: u32) -> VmConfig {
    VmConfig {
        vcpus,
        memory_mib: 2,
        max_reboots: 10,
        timeout: Duration::from_secs(60),
        sink: Sink::Buffer(buf.clone()),
        ..VmConfig::default()
    }
}

#[test]
fn firmware_reboots_through_every_mechanism_and_sees_reset_or_init_state() {
    let Some(host) = kvm_for_tests() else { return };
    let seq = [
        Mechanism::Cf9Hard,
        Mechanism::Cf9Soft,
        Mechanism::Port92,
        Mechanism::Kbc,
        Mechanism::Cf9Hard,
    ];
    let fw = reboot_firmware(&seq).unwrap();
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut vm = Vm::with_host(host, &fw, config(&buf, 2)).unwrap();
    let signature = vm.model().signature;
    let out = vm.run().unwrap();
    assert_eq!(out.exit_value, 0);
    let reasons: Vec<RebootReason> = out.reboots.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        vec![
            RebootReason::Cf9Hard,
            RebootReason::Cf9Soft,
            RebootReason::Port92,
            RebootReason::Kbc,
            RebootReason::Cf9Hard
        ]
    );
    let entries = parse(&buf.lock().unwrap());
    assert_eq!(entries.len(), 6, "{entries:?}");
    // Power-on: vcpu-reset's RESET.
    assert_eq!(
        entries[0],
        Entry {
            count: 0,
            edx: signature,
            cr0: 0x6000_0010,
            port92: 0,
            fcw: 0x0040
        }
    );
    for (i, e) in entries.iter().enumerate().skip(1) {
        assert_eq!(e.count as usize, i);
        assert_eq!(
            e.edx, signature,
            "EDX is the signature after every reboot (entry {i})"
        );
        match out.reboots[i - 1].kind {
            RebootKind::Reset => {
                assert_eq!(e.cr0, 0x6000_0010, "RESET sets CD/NW (entry {i})");
                assert_eq!(
                    e.fcw, 0x0040,
                    "RESET gives the x87 power-up FCW (entry {i})"
                );
                assert_eq!(
                    e.port92 & 1,
                    0,
                    "hard reset clears port 0x92 bit 0 (entry {i})"
                );
            }
            RebootKind::Init => {
                assert_eq!(e.cr0, 0x0000_0010, "INIT keeps CD/NW clear (entry {i})");
                assert_eq!(e.fcw, 0x037f, "INIT keeps the x87 state (entry {i})");
            }
        }
    }
    assert_eq!(
        entries[3].port92 & 1,
        1,
        "port 0x92 bit 0 survives the soft reset it caused"
    );
    for r in &out.reboots {
        assert!(r.calls_per_vcpu > 0.0 && r.calls_per_vcpu <= 12.0, "{r:?}");
    }
}

/// A guest cannot triple-fault promptly on this host: real and unpaged protected mode run in
/// KVM's instruction emulator, which keeps running through a real-mode IVT whatever its limit
/// (no fault after 60 s) and fails with an emulation error delivering a protected-mode exception
/// through an empty IDT. So KVM raises the triple fault itself (KVM_CAP_X86_TRIPLE_FAULT_EVENT) and the runner
/// must take the KVM_EXIT_SHUTDOWN that follows as a RESET.
#[test]
fn triple_fault_is_a_reset() {
    let Some(host) = kvm_for_tests() else { return };
    // One boot that records and then spins: the host raises the triple fault.
    let fw = reboot_firmware(&[]).unwrap();
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut vm = Vm::with_host(host, &fw, config(&buf, 1)).unwrap();
    vm.inject_triple_fault(0).unwrap();
    let out = vm.run().unwrap();
    assert_eq!(out.reboots.len(), 1);
    assert_eq!(out.reboots[0].reason, RebootReason::TripleFault);
    assert_eq!(out.reboots[0].kind, RebootKind::Reset);
    // The shutdown came before the first instruction; the firmware then ran once, from RESET.
    let entries = parse(&buf.lock().unwrap());
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].cr0, 0x6000_0010);
    assert_eq!(entries[0].fcw, 0x0040);
}

#[test]
fn a_hanging_guest_ends_with_a_timeout() {
    let Some(host) = kvm_for_tests() else { return };
    let mut image = vec![0u8; 4096];
    image[0xff0..0xff2].copy_from_slice(&[0xeb, 0xfe]); // jmp $
    let fw = Firmware::from_bytes(image, "hang").unwrap();
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = config(&buf, 2);
    cfg.timeout = Duration::from_millis(300);
    let mut vm = Vm::with_host(host, &fw, cfg).unwrap();
    let start = std::time::Instant::now();
    let err = vm.run().unwrap_err();
    assert!(matches!(err, RunError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "stopped promptly");
}

#[test]
fn reboot_limit_is_enforced() {
    let Some(host) = kvm_for_tests() else { return };
    let fw =
        reboot_firmware(&[Mechanism::Cf9Hard, Mechanism::Cf9Hard, Mechanism::Cf9Hard]).unwrap();
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = config(&buf, 1);
    cfg.max_reboots = 2;
    let mut vm = Vm::with_host(host, &fw, cfg).unwrap();
    let err = vm.run().unwrap_err();
    assert!(
        matches!(err, RunError::RebootLimit { n: 3, max: 2, .. }),
        "{err}"
    );
}

#[test]
fn bad_vcpu_counts_are_clear_errors() {
    let Some(host) = kvm_for_tests() else { return };
    let fw = reboot_firmware(&[]).unwrap();
    let buf = Arc::new(Mutex::new(Vec::new()));
    let err = Vm::with_host(host, &fw, config(&buf, 0)).err().unwrap();
    assert!(err.to_string().contains("0 vCPUs asked for"), "{err}");
    let Some(host) = kvm_for_tests() else { return };
    let err = Vm::with_host(host, &fw, config(&buf, 100_000))
        .err()
        .unwrap();
    assert!(
        matches!(err, RunError::VcpuCount { asked: 100_000, .. }),
        "{err}"
    );
}
