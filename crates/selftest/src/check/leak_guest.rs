//! The guest-side leak probe: what a real-mode guest can plant must not survive a reboot
//! through 0xCF9 where the spec says the RESET (or INIT) changes it, and KVM must stop writing
//! the areas of the previous boot's paravirtual MSRs.
//!
//! The firmware ([`firmware`], 64 KiB ending at the reset vector) runs twice. On its first entry it
//! plants, with WRMSR (a #GP skips the instruction, so a VMM without the MSR is fine), every MSR
//! of [`PLANTS`]: CPUID faulting (MSR_MISC_FEATURES_ENABLES), KVM's paravirtual MSRs with their
//! areas in guest RAM (kvmclock, steal time, PV EOI, async PF and its vector, halt polling off),
//! IA32_PAT, the SYSENTER MSRs, the default memory type, TSC_AUX, SPEC_CTRL, POWER_CTL, and the
//! local APIC in x2APIC mode with a TPR written through its MSR (808H); it loads x87/SSE state
//! with FXRSTOR (FCW, MXCSR, XMM0). Each is read back and reported (`P` records), then it
//! reboots through 0xCF9 (0x06: hard reset, a RESET; 0x04: soft reset, an INIT). On its second
//! entry it reads everything back (`R` records; the TPR after turning x2APIC mode on again),
//! writes a canary over the old kvmclock and steal-time areas, leaves to the VMM 2000 times
//! (port 0x80), and reports how many of each canary's dwords changed (`C` records): KVM updates
//! steal time at every entry after it was away, so an area left enabled loses its canary.
//!
//! Records are ASCII lines on port 0xE9: `K <ebx> <ecx> <edx>` (CPUID 40000000H, at each
//! entry: KVM's paravirtual MSRs are judged only under KVM's signature, as a VMM without them
//! may read 0 where real hardware raises #GP), `P <msr> <edx:eax> <fault>`, `R <msr> <edx:eax>
//! <fault>`, `X <fcw> <mxcsr> <xmm0 high:low>` after `P`/`R` phases (`XP`, `XR`), `C <area>
//! <changed dwords>`, then `E`, [`END_LINE`] and a write of 0 to port 0xF4. `check --vmm` boots
//! the same image on other VMMs (`peers::capture_leak`).
//!
//! No AVX state (nor AVX-512 or PKRU) is planted here: the VEX-encoded instructions that would
//! load it raise #UD in real-address mode (Intel SDM Vol. 2A, §2.4 "AVX and SSE Instruction
//! Exception Specification", e.g. the Type 1 class table: #UD for a VEX prefix in real and
//! virtual-8086 mode, where C4H/C5H decode as LES/LDS), and XRSTOR, which could load it from
//! memory, is not in KVM's instruction emulator (`arch/x86/kvm/emulate.c`, `group15`: of 0F AE's
//! memory forms only FXSAVE, FXRSTOR and CLFLUSH/CLFLUSHOPT), through which the project's hosts
//! run real-mode guests. The host-side scan ([`super::leak`]) plants every XSAVE component.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};

use std::time::Duration;

use vcpu_reset_spec::{
    self as spec, CpuModel, Event, Field, LapicReg, Rule, Transition, VcpuIdentity, Vendor,
};

use crate::runner::{Firmware, RebootKind, SharedBuffer, Sink, Vm, VmConfig, reset_vector_image};

/// Offset of the firmware's code in its real-mode segment: the 64 KiB image (the size QEMU's
/// `-bios` takes) spans F000:0000–FFFF, its code at the start.
const ORG: u64 = 0;
/// The image's size.
pub const IMAGE_SIZE: usize = 64 << 10;
/// RAM byte counting the firmware's entries (RAM survives the reboot).
const COUNT: u32 = 0x500;
/// RAM byte the #GP handler sets.
const FAULT: u32 = 0x501;
/// The FXSAVE image (512 bytes, 16-byte aligned).
const FXAREA: u32 = 0x600;
/// Where the firmware puts the kvmclock area (32 bytes).
pub const KVMCLOCK_AREA: u32 = 0x9000;
/// Where the firmware puts the steal-time area (64 bytes, 64-byte aligned).
pub const STEAL_AREA: u32 = 0x9100;
const PV_EOI_AREA: u32 = 0x9200;
const ASYNC_PF_AREA: u32 = 0x9300;
/// The firmware's last line, in the probe's end-of-run form (`check --vmm` counts these).
pub const END_LINE: &[u8] = b"#VR2 end leak\n";
/// Exits to the VMM between writing the canaries and checking them.
const EXITS: u32 = 2000;
/// The x87 control word, MXCSR and XMM0 the firmware loads.
pub const PLANT_FCW: u16 = 0x027b;
/// MXCSR with rounding toward -inf (bits 14:13 = 01).
pub const PLANT_MXCSR: u32 = 0x3f80;
/// XMM0's planted low 64 bits (the high 64 are its complement).
pub const PLANT_XMM0: u64 = 0x5a5a_1234_c0de_f00d;
/// IA32_APIC_BASE with x2APIC mode on (EXTD, EN, BSP).
const X2APIC_BASE: u32 = 0xfee0_0d00;
const X2APIC_TPR: u32 = 0x808;
const APIC_BASE: u32 = 0x1b;

/// The MSRs the firmware plants, with the value (a KVM paravirtual area's enable bit set).
pub const PLANTS: [(u32, u64); 15] = [
    (0x140, 1),
    (0x4b56_4d05, 0),
    (0x4b56_4d01, KVMCLOCK_AREA as u64 | 1),
    (0x4b56_4d03, STEAL_AREA as u64 | 1),
    (0x4b56_4d04, PV_EOI_AREA as u64 | 1),
    // Vector 0x20 first: KVM takes ASYNC_PF_EN with delivery as an interrupt only then.
    (0x4b56_4d06, 0x20),
    (0x4b56_4d02, ASYNC_PF_AREA as u64 | 0b1001),
    (0x277, 0x0006_0606_0006_0606),
    (0x174, 0x10),
    (0x175, 0x7000),
    (0x176, 0xf000),
    (0x2ff, 0xc06),
    (0xc000_0103, 0x1234),
    (0x48, 1),
    (0x1fc, 2),
];

fn hex_digit(a: &mut CodeAssembler) -> Result<(), IcedError> {
    // AL = a nibble: print '0'-'9', 'a'-'f'.
    let mut letter = a.create_label();
    let mut out = a.create_label();
    a.cmp(al, 10)?;
    a.jae(letter)?;
    a.add(al, b'0' as u32)?;
    a.jmp(out)?;
    a.set_label(&mut letter)?;
    a.add(al, (b'a' - 10) as u32)?;
    a.set_label(&mut out)?;
    a.out(0xe9, al)
}

/// The firmware; `reboot` is what it writes to 0xCF9 after planting (6: RESET, 4: INIT). With
/// 0 it writes nothing and jumps back to its start instead, a "reboot" that resets nothing:
/// the judge must then find every plant kept.
///
/// # Errors
/// The assembler's, which only a bug here causes, as text.
pub fn firmware(reboot: u8) -> Result<Firmware, String> {
    let err = |e: IcedError| format!("assemble the guest leak firmware: {e}");
    // Real-mode code cannot take a label's address with LEA: assemble once to learn where the
    // #GP handler and the table land, then again with those addresses as immediates (a
    // 16-bit immediate has one size, so nothing moves).
    let (_, gp, table) = assemble(reboot, 0, 0).map_err(err)?;
    let (body, ..) = assemble(reboot, gp, table).map_err(err)?;
    let image = reset_vector_image(IMAGE_SIZE, 0, &body, (0xf000, ORG as u16))
        .ok_or("the guest leak firmware does not fit in its image")?;
    Firmware::from_bytes(image, "guest leak firmware").map_err(|e| e.to_string())
}

/// The code for `reboot`, with the #GP handler and the plant table at `gp_ip` and `table_ip`;
/// also where they landed.
fn assemble(reboot: u8, gp_ip: u16, table_ip: u16) -> Result<(Vec<u8>, u16, u16), IcedError> {
    let mut a = CodeAssembler::new(16)?;
    let mut hex32 = a.create_label();
    let mut space = a.create_label();
    let mut newline = a.create_label();
    let mut gp = a.create_label();
    let mut plants = a.create_label();
    let mut report_msr = a.create_label();
    let mut report_fx = a.create_label();
    let mut second = a.create_label();
    let mut done = a.create_label();
    let mut start = a.create_label();

    a.set_label(&mut start)?;
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7000)?;
    // #GP (vector 13) to the handler, which skips the 2-byte RDMSR/WRMSR.
    a.mov(ax, u32::from(gp_ip))?;
    a.mov(word_ptr(13 * 4), ax)?;
    a.mov(word_ptr(13 * 4 + 2), 0xf000)?;
    // CR4.OSFXSR, so FXSAVE/FXRSTOR move MXCSR and the XMM registers.
    a.mov(eax, cr4)?;
    a.or(eax, 0x200)?;
    a.mov(cr4, eax)?;
    // The hypervisor's signature (CPUID 40000000H): KVM's paravirtual MSRs count only under
    // KVM's, since other VMMs may read 0 from an MSR they lack instead of raising #GP.
    a.mov(eax, 0x4000_0000)?;
    a.xor(ecx, ecx)?;
    a.cpuid()?;
    a.push(edx)?;
    a.push(ecx)?;
    a.mov(al, b'K' as u32)?;
    a.out(0xe9, al)?;
    a.call(space)?;
    a.mov(eax, ebx)?;
    a.call(hex32)?;
    a.call(space)?;
    a.pop(eax)?;
    a.call(hex32)?;
    a.call(space)?;
    a.pop(eax)?;
    a.call(hex32)?;
    a.call(newline)?;
    a.cmp(byte_ptr(COUNT), 0)?;
    a.jne(second)?;

    // First entry: plant every MSR of the table, reporting each read back.
    a.mov(si, u32::from(table_ip))?;
    for _ in PLANTS {
        a.mov(ecx, dword_ptr(si).cs())?;
        a.mov(eax, dword_ptr(si + 4).cs())?;
        a.mov(edx, dword_ptr(si + 8).cs())?;
        a.mov(byte_ptr(FAULT), 0)?;
        a.wrmsr()?;
        a.mov(bl, b'P' as u32)?;
        a.call(report_msr)?;
        a.add(si, 12)?;
    }
    // x2APIC mode, and a TPR through its MSR.
    a.mov(ecx, APIC_BASE)?;
    a.mov(eax, X2APIC_BASE)?;
    a.xor(edx, edx)?;
    a.mov(byte_ptr(FAULT), 0)?;
    a.wrmsr()?;
    a.mov(bl, b'P' as u32)?;
    a.call(report_msr)?;
    a.mov(ecx, X2APIC_TPR)?;
    a.mov(eax, 0x20)?;
    a.xor(edx, edx)?;
    a.mov(byte_ptr(FAULT), 0)?;
    a.wrmsr()?;
    a.mov(bl, b'P' as u32)?;
    a.call(report_msr)?;
    // x87/SSE: take the current image, change FCW, MXCSR and XMM0, load it.
    a.fxsave(ptr(FXAREA))?;
    a.mov(word_ptr(FXAREA), u32::from(PLANT_FCW))?;
    a.mov(dword_ptr(FXAREA + 24), PLANT_MXCSR)?;
    a.mov(dword_ptr(FXAREA + 160), PLANT_XMM0 as u32)?;
    a.mov(dword_ptr(FXAREA + 164), (PLANT_XMM0 >> 32) as u32)?;
    a.mov(dword_ptr(FXAREA + 168), !PLANT_XMM0 as u32)?;
    a.mov(dword_ptr(FXAREA + 172), (!PLANT_XMM0 >> 32) as u32)?;
    a.fxrstor(ptr(FXAREA))?;
    a.mov(bl, b'P' as u32)?;
    a.call(report_fx)?;
    a.inc(byte_ptr(COUNT))?;
    if reboot == 0 {
        a.jmp(start)?;
    } else {
        a.mov(dx, 0xcf9)?;
        a.mov(al, u32::from(reboot))?;
        a.out(dx, al)?;
        let mut spin = a.create_label();
        a.set_label(&mut spin)?;
        a.jmp(spin)?;
    }

    // Second entry: read everything back.
    a.set_label(&mut second)?;
    a.mov(si, u32::from(table_ip))?;
    for _ in PLANTS {
        a.mov(ecx, dword_ptr(si).cs())?;
        a.mov(byte_ptr(FAULT), 0)?;
        a.mov(bl, b'R' as u32)?;
        a.call(report_msr)?;
        a.add(si, 12)?;
    }
    a.mov(ecx, APIC_BASE)?;
    a.mov(byte_ptr(FAULT), 0)?;
    a.mov(bl, b'R' as u32)?;
    a.call(report_msr)?;
    // The TPR, in x2APIC mode again.
    a.mov(ecx, APIC_BASE)?;
    a.mov(eax, X2APIC_BASE)?;
    a.xor(edx, edx)?;
    a.mov(byte_ptr(FAULT), 0)?;
    a.wrmsr()?;
    a.mov(ecx, X2APIC_TPR)?;
    a.mov(byte_ptr(FAULT), 0)?;
    a.mov(bl, b'R' as u32)?;
    a.call(report_msr)?;
    a.fxsave(ptr(FXAREA))?;
    a.mov(bl, b'R' as u32)?;
    a.call(report_fx)?;
    // Canaries over the old kvmclock (8 dwords) and steal-time (16 dwords) areas.
    for (area, dwords) in [(KVMCLOCK_AREA, 8u32), (STEAL_AREA, 16)] {
        for i in 0..dwords {
            a.mov(dword_ptr(area + 4 * i), 0xc0de_0000 | i)?;
        }
    }
    a.mov(ecx, EXITS)?;
    let mut exits = a.create_label();
    a.set_label(&mut exits)?;
    a.out(0x80, al)?;
    a.dec(ecx)?;
    a.jnz(exits)?;
    for (area, dwords) in [(KVMCLOCK_AREA, 8u32), (STEAL_AREA, 16)] {
        a.xor(ebx, ebx)?;
        for i in 0..dwords {
            let mut same = a.create_label();
            a.cmp(dword_ptr(area + 4 * i), 0xc0de_0000 | i)?;
            a.je(same)?;
            a.inc(ebx)?;
            a.set_label(&mut same)?;
        }
        a.mov(al, b'C' as u32)?;
        a.out(0xe9, al)?;
        a.call(space)?;
        a.mov(eax, area)?;
        a.call(hex32)?;
        a.call(space)?;
        a.mov(eax, ebx)?;
        a.call(hex32)?;
        a.call(newline)?;
    }
    a.jmp(done)?;

    // Report MSR ECX (after BL's letter): RDMSR it, print "<BL> ecx edx:eax fault".
    a.set_label(&mut report_msr)?;
    a.mov(byte_ptr(FAULT), 0)?;
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.rdmsr()?;
    a.push(eax)?;
    a.mov(al, bl)?;
    a.out(0xe9, al)?;
    a.call(space)?;
    a.mov(eax, ecx)?;
    a.call(hex32)?;
    a.call(space)?;
    a.mov(eax, edx)?;
    a.call(hex32)?;
    a.pop(eax)?;
    a.call(hex32)?;
    a.call(space)?;
    a.mov(al, byte_ptr(FAULT))?;
    a.add(al, b'0' as u32)?;
    a.out(0xe9, al)?;
    a.call(newline)?;
    a.ret()?;

    // Report the FXSAVE image: "X<BL> fcw mxcsr xmm0(high:low)".
    a.set_label(&mut report_fx)?;
    a.mov(al, b'X' as u32)?;
    a.out(0xe9, al)?;
    a.mov(al, bl)?;
    a.out(0xe9, al)?;
    a.call(space)?;
    a.movzx(eax, word_ptr(FXAREA))?;
    a.call(hex32)?;
    a.call(space)?;
    a.mov(eax, dword_ptr(FXAREA + 24))?;
    a.call(hex32)?;
    a.call(space)?;
    for off in [172u32, 168, 164, 160] {
        a.mov(eax, dword_ptr(FXAREA + off))?;
        a.call(hex32)?;
    }
    a.call(newline)?;
    a.ret()?;

    // Print EAX as 8 hex digits (EAX, CL kept by a push).
    a.set_label(&mut hex32)?;
    a.push(ecx)?;
    a.push(eax)?;
    a.mov(cx, 8)?;
    let mut digit = a.create_label();
    a.set_label(&mut digit)?;
    a.rol(eax, 4)?;
    a.push(eax)?;
    a.and(al, 0xf)?;
    hex_digit(&mut a)?;
    a.pop(eax)?;
    a.dec(cx)?;
    a.jnz(digit)?;
    a.pop(eax)?;
    a.pop(ecx)?;
    a.ret()?;

    a.set_label(&mut space)?;
    a.mov(al, b' ' as u32)?;
    a.out(0xe9, al)?;
    a.ret()?;

    a.set_label(&mut newline)?;
    a.mov(al, b'\n' as u32)?;
    a.out(0xe9, al)?;
    a.ret()?;

    // #GP: note it and skip the 2-byte RDMSR/WRMSR that raised it.
    a.set_label(&mut gp)?;
    a.push(bp)?;
    a.mov(bp, sp)?;
    a.add(word_ptr(bp + 2).ss(), 2)?;
    a.mov(byte_ptr(FAULT), 1)?;
    a.pop(bp)?;
    a.iret()?;

    a.set_label(&mut done)?;
    a.mov(al, b'E' as u32)?;
    a.out(0xe9, al)?;
    a.call(newline)?;
    // The end-of-run line `check --vmm` waits for (a VMM without an exit port is then ended).
    for &b in END_LINE {
        a.mov(al, u32::from(b))?;
        a.out(0xe9, al)?;
    }
    a.xor(eax, eax)?;
    a.out(0xf4, al)?;
    a.hlt()?;

    a.set_label(&mut plants)?;
    let mut table = Vec::new();
    for (msr, value) in PLANTS {
        table.extend_from_slice(&msr.to_le_bytes());
        table.extend_from_slice(&value.to_le_bytes());
    }
    a.db(&table)?;

    let done = a.assemble_options(ORG, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let ip = |l: &CodeLabel| done.label_ip(l).map(|ip| ip as u16);
    Ok((done.inner.code_buffer.clone(), ip(&gp)?, ip(&plants)?))
}

/// One thing the guest planted and what it read after the reboot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPlant {
    /// The spec field.
    pub field: Field,
    /// The value planted (and read back before the reboot).
    pub planted: u128,
    /// What the guest read after the reboot (`None`: the read faulted).
    pub after: Option<u128>,
    /// What the event must leave (`None`: the spec says the event keeps it).
    pub expected: Option<u128>,
}

impl GuestPlant {
    /// The planted value survived though the event changes the field.
    pub fn survived(&self) -> bool {
        self.after == Some(self.planted) && self.expected.is_some_and(|e| e != self.planted)
    }
}

/// What the guest-side leak probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLeak {
    /// The vendor of the vCPU (whose spec rows apply).
    pub vendor: Vendor,
    /// Everything the guest planted that took (read back before the reboot as planted).
    pub planted: Vec<GuestPlant>,
    /// (area, dwords of its canary changed after the exits): the old kvmclock and steal-time
    /// areas.
    pub canaries: Vec<(u32, u32)>,
}

impl GuestLeak {
    /// The plants that survived where the event changes them.
    pub fn survivors(&self) -> Vec<&GuestPlant> {
        self.planted.iter().filter(|p| p.survived()).collect()
    }

    /// The areas the host still wrote after the reboot.
    pub fn clobbered(&self) -> Vec<(u32, u32)> {
        self.canaries
            .iter()
            .copied()
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

fn hex(word: &str) -> Result<u128, String> {
    u128::from_str_radix(word, 16)
        .map_err(|e| format!("bad hex {word:?} in the guest's output: {e}"))
}

/// The spec field an MSR index the firmware uses stands for.
fn field_of(msr: u32) -> Option<Field> {
    if msr == X2APIC_TPR {
        return Some(Field::Lapic(LapicReg::Tpr));
    }
    Field::all()
        .into_iter()
        .find(|f| f.msr_index() == Some(msr))
}

/// Judge the firmware's output `out` for a vCPU of `model` (the bootstrap processor) that went
/// through `event`.
///
/// # Errors
/// The output does not decode or ends before the firmware's last record.
pub fn judge(out: &[u8], model: &CpuModel, event: Event) -> Result<GuestLeak, String> {
    let text = String::from_utf8_lossy(out);
    let bsp = VcpuIdentity::new(0);
    let reset = spec::expected_state(model, bsp, Transition::Reset);
    let expected = |f: Field| match event {
        Event::Reset => Some(f.get(&reset)),
        Event::Init => match spec::row(f, model.vendor, Event::Init).rule {
            Rule::Value(v) => Some(v),
            _ => None,
        },
    };
    let intended = |msr: u32| -> Option<u64> {
        match msr {
            APIC_BASE => Some(X2APIC_BASE.into()),
            X2APIC_TPR => Some(0x20),
            _ => PLANTS.iter().find(|(m, _)| *m == msr).map(|&(_, v)| v),
        }
    };
    let mut before: Vec<(Field, u128)> = Vec::new();
    let mut after: std::collections::BTreeMap<Field, Option<u128>> = Default::default();
    let mut leak = GuestLeak {
        vendor: model.vendor,
        planted: Vec::new(),
        canaries: Vec::new(),
    };
    let mut ended = false;
    let mut kvm = false;
    let fx_fields = ["x87.fcw", "mxcsr", "xmm0"].map(Field::from_name);
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            [kind @ ("P" | "R"), msr, value, fault] => {
                let msr = u32::try_from(hex(msr)?).map_err(|e| e.to_string())?;
                let Some(field) = field_of(msr) else { continue };
                let value = (*fault == "0").then_some(hex(value)?);
                if *kind == "P" {
                    if value.is_some() && value == intended(msr).map(u128::from) {
                        before.retain(|(f, _)| *f != field);
                        before.push((field, value.unwrap_or(0)));
                    }
                } else {
                    after.insert(field, value);
                }
            }
            [kind @ ("XP" | "XR"), fcw, csr, vector] => {
                let values = [hex(fcw)?, hex(csr)?, hex(vector)?];
                let planted = [
                    u128::from(PLANT_FCW),
                    u128::from(PLANT_MXCSR),
                    (u128::from(!PLANT_XMM0) << 64) | u128::from(PLANT_XMM0),
                ];
                for ((f, v), p) in fx_fields.iter().zip(values).zip(planted) {
                    let Some(f) = *f else { continue };
                    if *kind == "XP" {
                        if v == p {
                            before.push((f, v));
                        }
                    } else {
                        after.insert(f, Some(v));
                    }
                }
            }
            ["K", b, c, d] => {
                let mut id = Vec::new();
                for r in [b, c, d] {
                    let v = u32::try_from(hex(r)?).map_err(|e| e.to_string())?;
                    id.extend_from_slice(&v.to_le_bytes());
                }
                kvm = id == b"KVMKVMKVM\0\0\0";
            }
            ["C", area, changed] => {
                let area = u32::try_from(hex(area)?).map_err(|e| e.to_string())?;
                let changed = u32::try_from(hex(changed)?).map_err(|e| e.to_string())?;
                leak.canaries.push((area, changed));
            }
            ["E"] => ended = true,
            _ => {}
        }
    }
    if !ended {
        return Err(format!(
            "the guest leak firmware did not finish (its output: {:?})",
            text.chars().take(400).collect::<String>()
        ));
    }
    for (field, planted) in before {
        let pv = field
            .msr_index()
            .is_some_and(|i| (0x4b56_4d00..=0x4b56_4dff).contains(&i));
        if pv && !kvm {
            continue;
        }
        leak.planted.push(GuestPlant {
            field,
            planted,
            after: after.get(&field).copied().flatten(),
            expected: expected(field),
        });
    }
    Ok(leak)
}

/// Boot the firmware on KVM under the selftest's runner (vcpu-reset's RESET for a hard reset
/// through 0xCF9, its INIT for a soft one) and judge it.
///
/// # Errors
/// What failed, as text: the VM, the run, a reboot other than the one asked for, or the output.
pub fn run_on_kvm(event: Event) -> Result<GuestLeak, String> {
    let (value, kind) = match event {
        Event::Reset => (6, RebootKind::Reset),
        Event::Init => (4, RebootKind::Init),
    };
    let fw = firmware(value)?;
    let buf = SharedBuffer::default();
    let config = VmConfig {
        vcpus: 1,
        memory_mib: 2,
        max_reboots: 2,
        timeout: Duration::from_secs(60),
        sink: Sink::Buffer(buf.clone()),
        ..VmConfig::default()
    };
    let host = crate::host::open().map_err(|e| e.to_string())?;
    let mut vm = Vm::with_host(host, &fw, config).map_err(|e| e.to_string())?;
    let model = *vm.model();
    let outcome = vm.run().map_err(|e| e.to_string())?;
    let kinds: Vec<RebootKind> = outcome.reboots.iter().map(|r| r.kind).collect();
    if kinds != [kind] {
        return Err(format!(
            "the firmware's reboot was taken as {kinds:?}, not {kind:?}"
        ));
    }
    let out = buf
        .lock()
        .map_err(|_| "the output buffer's lock was poisoned")?
        .clone();
    judge(&out, &model, event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vcpu_reset_spec::Msr;

    const KVM: &str = "K 4b4d564b 564b4d56 0000004d\n";
    const TCG: &str = "K 00000000 00000000 00000000\n";

    fn log(sig: &str, body: &str) -> Vec<u8> {
        format!("{sig}{body}{sig}E\n").into_bytes()
    }

    #[test]
    fn a_plant_read_back_after_the_reset_is_a_survivor_and_a_reset_one_is_not() {
        let model = CpuModel::generic(Vendor::Intel);
        let body = "P 00000140 0000000000000001 0\nP 00000277 0006060600060606 0\n\
                    R 00000140 0000000000000001 0\nR 00000277 0007040600070406 0\n\
                    C 00009000 00000000\nC 00009100 00000003\n";
        let found = judge(&log(TCG, body), &model, Event::Reset).expect("judged");
        assert_eq!(found.planted.len(), 2);
        let kept: Vec<Field> = found.survivors().iter().map(|p| p.field).collect();
        assert_eq!(kept, [Field::Msr(Msr::MiscFeaturesEnables)]);
        assert_eq!(found.clobbered(), [(STEAL_AREA, 3)]);
        // INIT keeps MSRs: the same read-back is no survivor there.
        let init = judge(&log(TCG, body), &model, Event::Init).expect("judged");
        assert!(init.survivors().is_empty());
    }

    #[test]
    fn kvms_paravirtual_msrs_count_only_under_its_signature() {
        let model = CpuModel::generic(Vendor::Amd);
        // A VMM without the MSR that reads 0 and ignores the write "takes" a planted 0.
        let body = "P 4b564d05 0000000000000000 0\nR 4b564d05 0000000000000000 0\n";
        let tcg = judge(&log(TCG, body), &model, Event::Reset).expect("judged");
        assert!(tcg.planted.is_empty());
        let kvm = judge(&log(KVM, body), &model, Event::Reset).expect("judged");
        let kept: Vec<Field> = kvm.survivors().iter().map(|p| p.field).collect();
        assert_eq!(kept, [Field::Msr(Msr::KvmPollControl)]);
    }

    #[test]
    fn a_faulted_or_different_read_back_is_not_a_plant_and_a_cut_log_is_an_error() {
        let model = CpuModel::generic(Vendor::Intel);
        let body = "P 00000048 0000000000000000 1\nP 00000174 0000000000000011 0\n";
        let found = judge(&log(TCG, body), &model, Event::Reset).expect("judged");
        assert!(found.planted.is_empty());
        assert!(
            judge(
                b"K 0 0 0\nP 00000140 0000000000000001 0\n",
                &model,
                Event::Reset
            )
            .is_err()
        );
    }

    #[test]
    fn the_firmware_assembles_into_an_image_ending_at_the_reset_vector() {
        for reboot in [0, 4, 6] {
            let fw = firmware(reboot).expect("firmware");
            let bytes = fw.bytes();
            assert_eq!(bytes.len(), IMAGE_SIZE);
            assert_eq!(bytes[IMAGE_SIZE - 16], 0xea, "a far jump at FFFF0H");
        }
    }
}
