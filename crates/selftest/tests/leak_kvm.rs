//! Nothing of the previous boot survives vcpu-reset's RESET, beyond the SDM tables too: a
//! real-mode firmware on KVM turns CPUID faulting on (MSR_MISC_FEATURES_ENABLES = 1), opts out
//! of host halt polling (MSR_KVM_POLL_CONTROL = 0) and enables kvmclock at a guest address
//! (MSR_KVM_SYSTEM_TIME_NEW), then reboots in place through 0xCF9: after the hard reset (RESET)
//! it must read 0, 1 and 0 (a fresh vCPU's values), after the soft reset (INIT) the first two as
//! it left them and kvmclock off (KVM's INIT turns it off).
//!
//! The guest-side leak probe of `check` (`check::leak_guest`) plants more (KVM's PV MSRs with
//! their areas, PAT, SYSENTER, x2APIC TPR, x87/SSE, …): nothing survives vcpu-reset's RESET and
//! the old kvmclock/steal-time areas keep their canaries; and a "reboot" that resets nothing is
//! caught, every plant kept and the steal-time canary overwritten.
//!
//! Skips (printing why) where `/dev/kvm` cannot be used, unless `VCPU_RESET_REQUIRE_KVM=1`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use vcpu_reset::spec::{Event, Field, Msr};
use vcpu_reset_selftest::check::leak_guest;
use vcpu_reset_selftest::host::kvm_for_tests;
use vcpu_reset_selftest::runner::{Firmware, RebootKind, Sink, Vm, VmConfig, reset_vector_image};

/// Offset of the firmware's code in its real-mode segment (the 4 KiB image sits at F000:F000).
const ORG: u64 = 0xf000;
const MISC_FEATURES_ENABLES: u32 = 0x140;
const KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
const KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// Where the firmware asks KVM to keep its kvmclock area (enable bit 0 set).
const KVMCLOCK_AREA: u32 = 0x8000 | 1;

/// Records `L`, the entry count, then the low 32 bits of POLL_CONTROL, MISC_FEATURES_ENABLES
/// and SYSTEM_TIME_NEW; plants other values in all three; reboots through 0xCF9 with 0x06
/// (hard: RESET) on the first entry and 0x04 (soft: INIT) on the second; exits on the third.
fn leaking_firmware() -> Result<Firmware, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    let mut emit32 = a.create_label();
    let mut start = a.create_label();
    let mut hard = a.create_label();
    let mut soft = a.create_label();
    let mut done = a.create_label();

    a.set_label(&mut start)?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7000)?;
    a.mov(al, b'L' as u32)?;
    a.out(0xe9, al)?;
    a.mov(al, byte_ptr(0x500))?;
    a.out(0xe9, al)?;
    for msr in [KVM_POLL_CONTROL, MISC_FEATURES_ENABLES, KVM_SYSTEM_TIME_NEW] {
        a.mov(ecx, msr)?;
        a.rdmsr()?;
        a.call(emit32)?;
    }
    for (msr, value) in [
        (KVM_POLL_CONTROL, 0),
        (MISC_FEATURES_ENABLES, 1),
        (KVM_SYSTEM_TIME_NEW, KVMCLOCK_AREA),
    ] {
        a.mov(ecx, msr)?;
        a.mov(eax, value)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
    }
    a.mov(bl, byte_ptr(0x500))?;
    a.inc(byte_ptr(0x500))?;
    a.cmp(bl, 0)?;
    a.je(hard)?;
    a.cmp(bl, 1)?;
    a.je(soft)?;
    a.jmp(done)?;

    for (label, value) in [(&mut hard, 6u32), (&mut soft, 4)] {
        a.set_label(label)?;
        a.mov(dx, 0xcf9)?;
        a.mov(al, value)?;
        a.out(dx, al)?;
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
        a.out(0xe9, al)?;
        a.shr(eax, 8)?;
    }
    a.ret()?;

    let body = a.assemble(ORG)?;
    // The 4 KiB image sits at F000:F000; the reset vector jumps to its start.
    let image = reset_vector_image(4096, 0, &body, (0xf000, ORG as u16)).expect("code fits");
    Ok(Firmware::from_bytes(image, "leak test firmware").expect("4 KiB image"))
}

/// One entry's record: (count, POLL_CONTROL, MISC_FEATURES_ENABLES, SYSTEM_TIME_NEW).
fn parse(out: &[u8]) -> Vec<(u8, u32, u32, u32)> {
    let d = |o: &[u8]| u32::from_le_bytes([o[0], o[1], o[2], o[3]]);
    out.chunks(14)
        .map(|r| {
            assert_eq!(r.len(), 14, "a whole record: {out:?}");
            assert_eq!(r[0], b'L', "record framing: {out:?}");
            (r[1], d(&r[2..]), d(&r[6..]), d(&r[10..]))
        })
        .collect()
}

#[test]
fn a_guests_cpuid_faulting_poll_control_and_kvmclock_do_not_survive_reset() {
    let Some(host) = kvm_for_tests() else { return };
    // The engine resets what the host lets a VMM write; every x86 KVM lists these (Linux's
    // emulated MSRs). Where one is missing the RESET cannot reach it: say so, and expect it
    // kept.
    let listed = |msr: u32| host.supported_msrs().contains(&msr);
    let (poll_listed, misc_listed, clock_listed) = (
        listed(KVM_POLL_CONTROL),
        listed(MISC_FEATURES_ENABLES),
        listed(KVM_SYSTEM_TIME_NEW),
    );
    for (msr, yes) in [
        (KVM_POLL_CONTROL, poll_listed),
        (MISC_FEATURES_ENABLES, misc_listed),
        (KVM_SYSTEM_TIME_NEW, clock_listed),
    ] {
        if !yes {
            eprintln!("this host does not list MSR {msr:#x}: a RESET cannot reach it here");
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let config = VmConfig {
        vcpus: 1,
        memory_mib: 2,
        max_reboots: 4,
        timeout: Duration::from_secs(60),
        sink: Sink::Buffer(buf.clone()),
        ..VmConfig::default()
    };
    let firmware = leaking_firmware().expect("firmware");
    let mut vm = Vm::with_host(host, &firmware, config).expect("VM");
    let outcome = vm.run().expect("run");
    assert_eq!(outcome.exit_value, 0);
    let kinds: Vec<RebootKind> = outcome.reboots.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [RebootKind::Reset, RebootKind::Init],
        "{:?}",
        outcome.reboots
    );
    let entries = parse(&buf.lock().expect("output"));
    let after_reset = (
        1,
        if poll_listed { 1 } else { 0 },
        if misc_listed { 0 } else { 1 },
        if clock_listed { 0 } else { KVMCLOCK_AREA },
    );
    assert_eq!(
        entries,
        [
            // Power-on: KVM's creation state.
            (0, 1, 0, 0),
            // After vcpu-reset's RESET: a fresh vCPU again, though the guest left 0, 1 and an
            // enabled kvmclock area.
            after_reset,
            // After its INIT: MSRs kept, kvmclock off (KVM's INIT turns it off).
            (2, 0, 1, if clock_listed { 0 } else { KVMCLOCK_AREA }),
        ]
    );
}

/// The guest-side leak probe (`check::leak_guest`) after vcpu-reset's RESET: every MSR the
/// guest planted reads its RESET value, x87/SSE state too, and KVM no longer writes the old
/// kvmclock and steal-time areas (their canaries are intact after 2000 exits).
#[test]
fn nothing_a_guest_plants_survives_reset_and_the_old_pv_areas_stay_untouched() {
    let Some(_host) = kvm_for_tests() else { return };
    let found = leak_guest::run_on_kvm(Event::Reset).expect("guest leak probe");
    eprintln!("{found:#x?}");
    let planted: Vec<Field> = found.planted.iter().map(|p| p.field).collect();
    for f in [
        Field::Msr(Msr::KvmPollControl),
        Field::Msr(Msr::MiscFeaturesEnables),
        Field::Msr(Msr::KvmSystemTime),
        Field::Msr(Msr::Pat),
    ] {
        assert!(planted.contains(&f), "{f} planted: {planted:?}");
    }
    assert!(found.planted.len() >= 10, "{} planted", found.planted.len());
    assert_eq!(found.survivors(), Vec::<&leak_guest::GuestPlant>::new());
    let poll = found
        .planted
        .iter()
        .find(|p| p.field == Field::Msr(Msr::KvmPollControl))
        .expect("poll control");
    assert_eq!(poll.after, Some(1), "POLL_CONTROL is 1 after RESET");
    let misc = found
        .planted
        .iter()
        .find(|p| p.field == Field::Msr(Msr::MiscFeaturesEnables))
        .expect("0x140");
    assert_eq!(misc.after, Some(0), "CPUID faulting off after RESET");
    assert_eq!(found.canaries.len(), 2);
    assert_eq!(found.clobbered(), [], "the host wrote an old PV area");
}

/// The probe finds what survives: with a "reboot" that resets nothing (the firmware jumps back
/// to its start), every plant is kept and KVM goes on writing the steal-time area.
#[test]
fn the_guest_probe_finds_every_plant_kept_and_the_steal_time_area_written_without_a_reset() {
    let Some(host) = kvm_for_tests() else { return };
    let buf = Arc::new(Mutex::new(Vec::new()));
    let config = VmConfig {
        vcpus: 1,
        memory_mib: 2,
        max_reboots: 0,
        timeout: Duration::from_secs(60),
        sink: Sink::Buffer(buf.clone()),
        ..VmConfig::default()
    };
    let firmware = leak_guest::firmware(0).expect("firmware");
    let mut vm = Vm::with_host(host, &firmware, config).expect("VM");
    let model = *vm.model();
    let outcome = vm.run().expect("run");
    assert_eq!(outcome.exit_value, 0);
    let out = buf.lock().expect("output").clone();
    let found = leak_guest::judge(&out, &model, Event::Reset).expect("judged");
    let survivors: Vec<Field> = found.survivors().iter().map(|p| p.field).collect();
    let planted: Vec<Field> = found.planted.iter().map(|p| p.field).collect();
    eprintln!(
        "planted {planted:?}; kept {survivors:?}; canaries {:?}",
        found.canaries
    );
    // Everything the guest planted is still there (the TPR reads 0x20 again once x2APIC mode is
    // on, which it still is).
    assert_eq!(survivors, planted);
    // Steal time stays enabled: KVM updates it after the vCPU was away, at the exits.
    let steal = Field::Msr(Msr::KvmStealTime);
    if planted.contains(&steal) {
        assert!(
            found
                .clobbered()
                .iter()
                .any(|&(area, _)| area == leak_guest::STEAL_AREA),
            "{:?}",
            found.canaries
        );
    }
}
