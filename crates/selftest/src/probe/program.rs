//! The real-mode probe program, assembled with iced-x86.
//!
//! The probe is meant to be the very first code a vCPU runs after RESET (reached through the
//! reset vector) or after INIT-SIPI (as the SIPI target). It records what it was entered with,
//! then prints every record (see [`super::record`]) on each configured I/O port and exits.
//!
//! # What it does, in order
//!
//! 1. Stores EAX, EBX, ECX, EDX, ESI, EDI, EBP, ESP and the selectors of CS, DS, ES, FS, GS, SS
//!    to the scratch area with plain `mov [disp16], reg` — these change nothing, and DS has base
//!    0 after both RESET and INIT, so low RAM is directly addressable.
//! 2. Loads SS:ESP = 0:`stack_top` and stores EFLAGS with `pushfd`/`pop`; sets DS = ES = 0.
//! 3. Saves the IVT entries of #UD (6), #NM (7) and #GP (13) and points them at its own
//!    handlers. A handler stores the exception's two-letter code in a `fault` word and resumes
//!    at the address in a `resume` word, which the probe sets before each guarded step.
//! 4. FNSTCW / FNSTSW to memory (guarded), before anything touches the x87 unit.
//! 5. CR0, CR2, CR3, CR4, DR0–DR3, DR6, DR7 (`mov r32, crN/drN`), SGDT, SIDT.
//! 6. RDMSR of EFER and of every MSR in [`ProbeOptions::msrs`], each guarded by the #GP
//!    handler: an MSR whose read faults records `!gp`, not a value.
//! 7. CPUID of every leaf in [`CPUID_LEAVES`] (guarded), recorded as `cpuid.<leaf>.<sub>.<reg>`,
//!    so that the log says what the VMM advertises.
//! 8. FXSAVE (guarded) after setting CR4.OSFXSR, then restores CR4.
//! 9. The local APIC: if IA32_APIC_BASE.EN is set, enters unreal mode (LGDT of a one-entry flat
//!    GDT, CR0.PE=1, load FS with the flat data selector, CR0.PE=0) and reads ID, version, TPR,
//!    APR, PPR, LDR, DFR, SVR, ESR, ICR (low and high), every LVT, the timer registers and
//!    ISR/TMR/IRR words 0–7 at the APIC_BASE address with 32-bit `mov eax, fs:[esi+ebx]`; then
//!    restores the FS selector and GDTR. Otherwise all APIC records are `!na`.
//! 10. Restores the three IVT entries.
//! 11. Prints the run (format version 2) on every port in [`ProbeOptions::out_ports`], one
//!     `out dx, al` per byte, keeping the record count and the CRC-32 as it goes (table-driven,
//!     the 1 KiB table in the code segment).
//! 12. Reboots once, if [`ProbeOptions::reboot`] asks, else 13. exits as [`ProbeOptions::exit`]
//!     says.
//!
//! # Memory layout
//!
//! Code and read-only data live together at [`ProbeOptions::origin`]: the code, the exception
//! handlers, a two-entry GDT (null, flat 4 GiB data at selector 8) and its pseudo-descriptor,
//! the MSR index table, the CPUID leaf table, the APIC offset table, the CRC-32 table, the
//! record table (key string, slot, length,
//! status word per record) and the strings. The scratch area at [`ProbeOptions::scratch`]
//! (segment 0, addressed with DS = 0) holds, from its base `S`:
//!
//! | offset | contents |
//! |---|---|
//! | `S+0x000` | FXSAVE image (512 bytes, 16-byte aligned) |
//! | `S+0x200` | EAX, EBX, ECX, EDX, ESI, EDI, EBP, ESP at entry |
//! | `S+0x220` | EFLAGS; `S+0x224` CS, DS, ES, FS, GS, SS selectors |
//! | `S+0x230` | CR0, CR2, CR3, CR4; `S+0x240` DR0–DR3, DR6, DR7 |
//! | `S+0x258` | SGDT image; `S+0x260` SIDT image |
//! | `S+0x268` | FCW, FSW, then the status words of the x87, FXSAVE and APIC steps |
//! | `S+0x272` | `fault`, `resume`, record count, CRC-32 (4 bytes), record count for the end line |
//! | `S+0x280` | saved IVT entries 6, 7, 13; `S+0x28C` the final CRC-32 for the end line |
//! | `S+0x290` | one 10-byte slot per MSR: value (8), status word (2) |
//! | then | one 18-byte slot per CPUID leaf: EAX, EBX, ECX, EDX, status word |
//! | then | one 4-byte slot per APIC read |
//! | then | 512 bytes of stack, ending at a 16-byte boundary ([`ProbeImage::scratch`]'s end) |
//!
//! A status word is 0 when the step worked, else two ASCII letters (`gp`, `ud`, `nm`, `na`)
//! that the printer turns into `!gp` etc.
//!
//! # What it leaves changed
//!
//! The scratch area and stack ([`ProbeImage::scratch`]), SS:ESP, DS, ES (0), the FS hidden
//! limit (4 GiB, unreal mode), EAX–EDI, EFLAGS arithmetic flags and IF (cleared).
//!
//! # Instruction set
//!
//! Chosen to run through KVM's instruction emulator, which handles all real-mode code on hosts
//! without unrestricted-guest support (e.g. `kvm_pvm`), where an instruction it lacks ends the
//! run with `KVM_EXIT_INTERNAL_ERROR` rather than a #UD the probe could catch: `mov` (incl.
//! to/from CR, DR and segment registers, and `moffs`), `movzx`, `add`, `and`, `or`, `cmp`,
//! `test`, `xor`, `inc`, `dec`, `shr`, `push`/`pop` (incl. `pop m32`), `pushfd`, `cpuid`,
//! `jcc`/`jmp`/`call`/`ret`, `iret`, `cli`, `hlt`, `out dx, al`, `rdmsr`, `lgdt` (also with
//! 0x66), `sgdt`, `sidt`, `fnstcw m16`, `fnstsw m16`, `fxsave`, and the 0x66/0x67 and segment
//! override prefixes.
//!
//! Measured on such a host (Linux 6.18, `kvm_pvm`): besides the above, `cpuid`, `rdtsc`,
//! `smsw`, `fninit`, `movdqu` to memory, `lodsb`, `loop`, `rep stosb`, `rep outsb` and a full
//! switch to 32-bit protected mode (far jumps into and out of a 32-bit code segment) work;
//! `fnstsw ax`, `fnstenv`, `fnsave`, `fnclex`, `fwait`, `fld1`, `stmxcsr`, `xsave`, `rdtscp`
//! and `xgetbv` are emulation failures. FXSAVE raises #UD (caught: `fxsave !ud`) unless the
//! guest CPUID has FXSR, because the emulator checks guest CPUID.
//!
//! # What it cannot see
//!
//! Bits 63:32 of the GPRs, CRs and DRs, R8–R15, RIP, CR8 (real mode); hidden segment bases,
//! limits and attributes, LDTR and TR (`sldt`/`str` #UD in real mode); XCR0, YMM/ZMM/opmask and
//! PKRU (`xgetbv`/`xsave` are not emulated on such hosts); XMM8–XMM15 (FXSAVE outside 64-bit
//! mode); PDPTRs, activity state and pending events.
//!
//! # Concurrency
//!
//! The probe briefly owns IVT entries 6, 7 and 13 and the GDTR: probes on several vCPUs of one
//! VM must not run at the same time, and each needs its own scratch area.

use std::collections::HashMap;
use std::ops::Range;

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};
use thiserror::Error;

use super::record::{self, MARKER};
use vcpu_reset::spec::{Field, LapicBitmap, LapicReg};

/// IA32_EFER, always read.
pub const MSR_EFER: u32 = 0xc000_0080;
/// IA32_APIC_BASE, read to find the local APIC.
pub const MSR_APIC_BASE: u32 = 0x1b;

/// Where the probe's code lives, as the real-mode `segment:offset` of its first byte.
///
/// The probe's far references (IVT entries, `iret` targets) use this segment; its near code
/// works whichever base CS has, so the reset-vector case (CS base 0xFFFF0000 until the first far
/// transfer) works as long as the same bytes are also at `segment * 16 + offset`, as with the
/// usual firmware alias at 0xF0000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Real-mode segment.
    pub segment: u16,
    /// Offset of the first byte in the segment.
    pub offset: u16,
}

impl Origin {
    /// Linear address of the first byte.
    pub fn linear(&self) -> u32 {
        (u32::from(self.segment) << 4) + u32::from(self.offset)
    }
}

/// How the probe ends after printing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeEnd {
    /// `cli; hlt` in a loop. With an in-kernel irqchip KVM does not return HLT to userspace.
    Hlt,
    /// `out port, value` (e.g. QEMU's isa-debug-exit), then `cli; hlt` in a loop.
    Out {
        /// I/O port.
        port: u16,
        /// Byte written.
        value: u8,
    },
}

/// How a probe reboots itself after its first run (see [`ProbeOptions::reboot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootVia {
    /// 0x06 to port 0xCF9: hard reset (RESET).
    Cf9Hard,
    /// 0x04 to port 0xCF9: soft reset (INIT).
    Cf9Soft,
    /// Port 0x92 bit 0 from 0 to 1: fast reset (INIT).
    Port92,
    /// Keyboard-controller command 0xFE (INIT).
    Kbc,
}

impl RebootVia {
    /// All four.
    pub const ALL: [RebootVia; 4] = [
        RebootVia::Cf9Hard,
        RebootVia::Cf9Soft,
        RebootVia::Port92,
        RebootVia::Kbc,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            RebootVia::Cf9Hard => "cf9-hard",
            RebootVia::Cf9Soft => "cf9-soft",
            RebootVia::Port92 => "port92",
            RebootVia::Kbc => "kbc",
        }
    }
}

/// RAM byte counting the probe's boots when it reboots itself (below the scratch area, above
/// the IVT and BIOS data words the probe uses; RAM is kept across the reboot).
pub const BOOT_COUNTER: u16 = 0x4f0;

/// What the probe changes before it reboots itself: CR0.CD/NW cleared, the x87 unit
/// re-initialised (FCW 0x037F, all registers empty), IA32_PAT and IA32_SYSENTER_CS written.
/// INIT must keep all of these; RESET must reset all of them.
pub const REBOOT_DIRTY_PAT: u64 = 0x0006_0606_0006_0606;
/// IA32_SYSENTER_CS written before a self-reboot.
pub const REBOOT_DIRTY_SYSENTER_CS: u64 = 0x10;

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Where the code will be.
    pub origin: Origin,
    /// Base of the scratch area (segment 0, 16-byte aligned, at least 0x400); its size is
    /// [`ProbeImage::scratch`]'s length.
    pub scratch: u16,
    /// Ports every byte is written to, in this order.
    pub out_ports: Vec<u16>,
    /// How to end.
    pub exit: ProbeEnd,
    /// MSRs to read, besides EFER (which is always read first).
    pub msrs: Vec<u32>,
    /// Tag of the `begin` line (`[A-Za-z0-9._-]+`).
    pub tag: String,
    /// After the first run, dirty state (see [`REBOOT_DIRTY_PAT`]) and reboot through this
    /// mechanism, so that the second run shows the state after the reboot; the second run
    /// exits. `None`: exit after the first run.
    pub reboot: Option<RebootVia>,
}

impl ProbeOptions {
    /// A probe for the reset vector: code at F000:0000, scratch at 0x500, output on port 0xE9,
    /// exit through `out 0xf4, 0`, and every MSR the spec names ([`default_msrs`]).
    pub fn reset_vector(tag: &str) -> ProbeOptions {
        ProbeOptions {
            origin: Origin {
                segment: 0xf000,
                offset: 0,
            },
            scratch: 0x500,
            out_ports: vec![0xe9],
            exit: ProbeEnd::Out {
                port: 0xf4,
                value: 0,
            },
            msrs: default_msrs(),
            tag: tag.to_string(),
            reboot: None,
        }
    }
}

/// IA32_MCG_CAP (179H): which machine-check MSRs exist (Intel SDM Vol. 3B, §16.3.1.1).
pub const MSR_IA32_MCG_CAP: u32 = 0x179;
/// IA32_ARCH_CAPABILITIES (10AH): bit 7 says whether IA32_TSX_CTRL exists (SDM Vol. 4,
/// Table 2-2).
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;

/// Every MSR index the spec has a field for (EFER excluded: it is always read), then the
/// capability MSRs that say which of them exist ([`vcpu_reset_spec::CpuModel::applies`]).
pub fn default_msrs() -> Vec<u32> {
    Field::all()
        .iter()
        .filter_map(Field::msr_index)
        .filter(|&i| i != MSR_EFER)
        .chain([MSR_IA32_MCG_CAP, MSR_IA32_ARCH_CAPABILITIES])
        .collect()
}

/// Errors from building a probe.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// The assembler refused an instruction (a bug in the generator).
    #[error("assembler: {0}")]
    Asm(String),
    /// The tag is empty or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    /// No output port.
    #[error("no output port")]
    NoOutPort,
    /// The scratch area is unaligned, overlaps the IVT/BDA, or does not fit below 64 KiB.
    #[error(
        "scratch area {start:#x}..{end:#x} must be 16-byte aligned, at or above 0x400 and end by 0x10000"
    )]
    BadScratch {
        /// Start.
        start: u32,
        /// End.
        end: u32,
    },
    /// The code does not fit in its 64 KiB segment after `origin.offset`.
    #[error("probe of {len} bytes does not fit at offset {offset:#x} of its segment")]
    TooLarge {
        /// Code size.
        len: usize,
        /// Origin offset.
        offset: u16,
    },
    /// The code and the scratch area overlap.
    #[error("code at {code:#x?} overlaps scratch area at {scratch:#x?}")]
    Overlap {
        /// Linear range of the code.
        code: Range<u32>,
        /// Linear range of the scratch area.
        scratch: Range<u32>,
    },
    /// [`firmware_image`] needs the code in segment F000, clear of the reset vector.
    #[error(
        "firmware image needs origin F000:xxxx with the code below 0xFFF0, got {segment:04x}:{offset:04x}"
    )]
    NotFirmware {
        /// Segment.
        segment: u16,
        /// Offset.
        offset: u16,
    },
    /// Label addresses did not settle (a bug in the generator).
    #[error("code layout did not converge")]
    NoFixpoint,
}

impl From<IcedError> for ProbeError {
    fn from(e: IcedError) -> Self {
        ProbeError::Asm(e.to_string())
    }
}

/// An assembled probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeImage {
    /// The code, to be loaded at [`Origin::linear`].
    pub bytes: Vec<u8>,
    /// Where it goes.
    pub origin: Origin,
    /// Offset of the first instruction in `bytes`.
    pub entry_offset: usize,
    /// Linear range of RAM the probe writes (scratch data and its stack).
    pub scratch: Range<u32>,
}

impl ProbeImage {
    /// IP of the first instruction (`origin.offset + entry_offset`).
    pub fn entry_ip(&self) -> u16 {
        // `assemble_image` checked that the code fits in the segment.
        self.origin.offset.wrapping_add(self.entry_offset as u16)
    }
}

/// Assembles the probe; the entry is the first byte ([`ProbeImage::entry_offset`] is 0).
pub fn assemble(opts: &ProbeOptions) -> Result<Vec<u8>, ProbeError> {
    assemble_image(opts).map(|i| i.bytes)
}

/// Size of a firmware image from [`firmware_image`].
pub const FIRMWARE_SIZE: usize = 0x1_0000;

/// A 64 KiB firmware image for the region at 0xFFFF0000 (aliased at 0xF0000): the probe at
/// `opts.origin.offset` and a near `jmp` to it at the reset vector, offset 0xFFF0. Unused bytes
/// are 0xFF.
pub fn firmware_image(opts: &ProbeOptions) -> Result<Vec<u8>, ProbeError> {
    let img = assemble_image(opts)?;
    let start = usize::from(opts.origin.offset);
    let end = start + img.bytes.len();
    if opts.origin.segment != 0xf000 || end > 0xfff0 {
        return Err(ProbeError::NotFirmware {
            segment: opts.origin.segment,
            offset: opts.origin.offset,
        });
    }
    let mut rom = vec![0xffu8; FIRMWARE_SIZE];
    rom[start..end].copy_from_slice(&img.bytes);
    let rel = img.entry_ip().wrapping_sub(0xfff3);
    rom[0xfff0] = 0xe9;
    rom[0xfff1..0xfff3].copy_from_slice(&rel.to_le_bytes());
    Ok(rom)
}

/// Fixed part of the scratch area, after the 512-byte FXSAVE image.
#[derive(Clone, Debug)]
struct Layout {
    fx: u16,
    gpr: u16,
    eflags: u16,
    sel: u16,
    cr: u16,
    dr: u16,
    gdtr: u16,
    idtr: u16,
    fcw: u16,
    fsw: u16,
    st_x87: u16,
    st_fx: u16,
    st_lapic: u16,
    fault: u16,
    resume: u16,
    count: u16,
    crc: u16,
    end_count: u16,
    end_crc: u16,
    ivt_save: u16,
    msrs: u16,
    cpuid: u16,
    lapic: u16,
    stack_top: u16,
    end: u32,
}

const MSR_SLOT: u16 = 10;
const CPUID_SLOT: u16 = 18;

/// The CPUID leaves and subleaves the probe records, so that a log says what the VMM
/// advertises: vendor and highest leaf (0), signature and features (1), power management (6),
/// structured extended features (7.0), architectural performance monitoring (0AH), XSAVE
/// components (0DH.0, 0DH.1), highest extended leaf (80000000H), extended features (80000001H),
/// address sizes and extended feature IDs (80000008H), SVM features (8000000AH) and extended
/// performance monitoring (80000022H) (Intel SDM Vol. 2A, CPUID; AMD APM Vol. 3, Appendix E),
/// and the hypervisor's signature (40000000H) and, under KVM's, its paravirtual features
/// (40000001H) (Linux Documentation/virt/kvm/x86/cpuid.rst). A leaf above the highest one
/// CPUID reports returns other data; the judge ignores it.
pub const CPUID_LEAVES: [(u32, u32); 14] = [
    (0, 0),
    (1, 0),
    (6, 0),
    (7, 0),
    (0xa, 0),
    (0xd, 0),
    (0xd, 1),
    (0x8000_0000, 0),
    (0x8000_0001, 0),
    (0x8000_0008, 0),
    (0x8000_000a, 0),
    (0x8000_0022, 0),
    (0x4000_0000, 0),
    (0x4000_0001, 0),
];
const STACK_SIZE: u32 = 512;
const BLOB: u16 = 0x8000;

impl Layout {
    fn new(base: u16, n_msrs: usize, n_lapic: usize) -> Result<Layout, ProbeError> {
        let b = u32::from(base);
        let fixed = b + 0x200;
        let msrs = fixed + 0x90;
        let cpuid = msrs + n_msrs as u32 * u32::from(MSR_SLOT);
        let lapic = cpuid + CPUID_LEAVES.len() as u32 * u32::from(CPUID_SLOT);
        let stack_top = (lapic + 4 * n_lapic as u32 + STACK_SIZE + 15) & !15;
        if !base.is_multiple_of(16) || b < 0x400 || stack_top > 0x1_0000 {
            return Err(ProbeError::BadScratch {
                start: b,
                end: stack_top,
            });
        }
        // All addresses below fit in 16 bits: stack_top <= 0x10000 was checked, and
        // stack_top == 0x10000 is stored as SP 0 (wraps like a real-mode stack at the top).
        let f = |off: u32| (fixed + off) as u16;
        Ok(Layout {
            fx: base,
            gpr: f(0x00),
            eflags: f(0x20),
            sel: f(0x24),
            cr: f(0x30),
            dr: f(0x40),
            gdtr: f(0x58),
            idtr: f(0x60),
            fcw: f(0x68),
            fsw: f(0x6a),
            st_x87: f(0x6c),
            st_fx: f(0x6e),
            st_lapic: f(0x70),
            fault: f(0x72),
            resume: f(0x74),
            count: f(0x76),
            crc: f(0x78),
            end_count: f(0x7c),
            end_crc: f(0x8c),
            ivt_save: f(0x80),
            msrs: msrs as u16,
            cpuid: cpuid as u16,
            lapic: lapic as u16,
            stack_top: stack_top as u16,
            end: stack_top,
        })
    }
}

/// One line the probe prints from memory.
#[derive(Clone, Debug)]
struct Rec {
    key: String,
    slot: u16,
    /// Byte count, with [`BLOB`] for memory-order output.
    len: u16,
    /// Address of the status word (0: none).
    status: u16,
}

/// The local APIC reads: record key, MMIO offsets (one, or two for the 64-bit ICR).
fn lapic_reads() -> Vec<(String, Vec<u16>)> {
    let mut v = Vec::new();
    for r in LapicReg::ALL {
        // Offsets are below 0x400 (SDM Vol. 3A, Table 11-1).
        let off = r.offset() as u16;
        let offs = if r == LapicReg::Icr {
            vec![off, off + 0x10]
        } else {
            vec![off]
        };
        v.push((record::lapic_key(r), offs));
    }
    for b in LapicBitmap::ALL {
        for i in 0..8u8 {
            let off = b.offset() as u16 + 0x10 * u16::from(i);
            v.push((Field::LapicBitmap(b, i).name(), vec![off]));
        }
    }
    v
}

struct Plan {
    opts: ProbeOptions,
    l: Layout,
    msrs: Vec<u32>,
    lapic_offsets: Vec<u16>,
    recs: Vec<Rec>,
}

impl Plan {
    fn new(opts: &ProbeOptions) -> Result<Plan, ProbeError> {
        if !record::valid_tag(&opts.tag) {
            return Err(ProbeError::InvalidTag(opts.tag.clone()));
        }
        if opts.out_ports.is_empty() {
            return Err(ProbeError::NoOutPort);
        }
        let mut msrs = vec![MSR_EFER];
        for &m in &opts.msrs {
            if !msrs.contains(&m) {
                msrs.push(m);
            }
        }
        let lapic = lapic_reads();
        let lapic_offsets: Vec<u16> = lapic.iter().flat_map(|(_, o)| o.clone()).collect();
        let l = Layout::new(opts.scratch, msrs.len(), lapic_offsets.len())?;

        let mut recs = Vec::new();
        let mut rec = |key: &str, slot: u16, len: u16, status: u16| {
            recs.push(Rec {
                key: key.to_string(),
                slot,
                len,
                status,
            })
        };
        for (i, k) in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"]
            .iter()
            .enumerate()
        {
            rec(k, l.gpr + 4 * i as u16, 4, 0);
        }
        rec("rflags", l.eflags, 4, 0);
        for (i, s) in ["cs", "ds", "es", "fs", "gs", "ss"].iter().enumerate() {
            rec(&format!("{s}.selector"), l.sel + 2 * i as u16, 2, 0);
        }
        for (i, k) in ["cr0", "cr2", "cr3", "cr4"].iter().enumerate() {
            rec(k, l.cr + 4 * i as u16, 4, 0);
        }
        for (i, k) in ["dr0", "dr1", "dr2", "dr3", "dr6", "dr7"]
            .iter()
            .enumerate()
        {
            rec(k, l.dr + 4 * i as u16, 4, 0);
        }
        rec("gdtr.limit", l.gdtr, 2, 0);
        rec("gdtr.base", l.gdtr + 2, 4, 0);
        rec("idtr.limit", l.idtr, 2, 0);
        rec("idtr.base", l.idtr + 2, 4, 0);
        rec("x87.fcw", l.fcw, 2, l.st_x87);
        rec("x87.fsw", l.fsw, 2, l.st_x87);
        for (i, &m) in msrs.iter().enumerate() {
            let slot = l.msrs + MSR_SLOT * i as u16;
            rec(&record::msr_key(m), slot, 8, slot + 8);
        }
        for (i, &(leaf, sub)) in CPUID_LEAVES.iter().enumerate() {
            let slot = l.cpuid + CPUID_SLOT * i as u16;
            for reg in 0..4 {
                rec(
                    &record::cpuid_key(leaf, sub, reg),
                    slot + 4 * reg as u16,
                    4,
                    slot + 16,
                );
            }
        }
        let mut slot = l.lapic;
        for (key, offs) in &lapic {
            let len = 4 * offs.len() as u16;
            rec(key, slot, len, l.st_lapic);
            slot += len;
        }
        rec("fxsave", l.fx, BLOB | 512, l.st_fx);
        Ok(Plan {
            opts: opts.clone(),
            l,
            msrs,
            lapic_offsets,
            recs,
        })
    }
}

/// Assembles the probe.
pub fn assemble_image(opts: &ProbeOptions) -> Result<ProbeImage, ProbeError> {
    let plan = Plan::new(opts)?;
    let ip = u64::from(opts.origin.offset);
    let mut addrs: HashMap<String, u16> = HashMap::new();
    for _ in 0..8 {
        let (mut a, named) = emit(&plan, &addrs)?;
        let res = a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        let mut new = HashMap::new();
        for (name, label) in &named {
            let at = res.label_ip(label)?;
            new.insert(name.clone(), (at & 0xffff) as u16);
        }
        if new == addrs {
            let bytes = res.inner.code_buffer;
            if ip as usize + bytes.len() > 0x1_0000 {
                return Err(ProbeError::TooLarge {
                    len: bytes.len(),
                    offset: opts.origin.offset,
                });
            }
            let code = opts.origin.linear()..opts.origin.linear() + bytes.len() as u32;
            let scratch = u32::from(opts.scratch)..plan.l.end;
            if code.start < scratch.end && scratch.start < code.end {
                return Err(ProbeError::Overlap { code, scratch });
            }
            return Ok(ProbeImage {
                bytes,
                origin: opts.origin,
                entry_offset: 0,
                scratch,
            });
        }
        addrs = new;
    }
    Err(ProbeError::NoFixpoint)
}

/// The code generator: a [`CodeAssembler`] plus named labels whose addresses are used as
/// immediates (resolved by iterating to a fixpoint in [`assemble_image`]).
struct Gen<'a> {
    a: CodeAssembler,
    named: Vec<(String, CodeLabel)>,
    addrs: &'a HashMap<String, u16>,
}

impl Gen<'_> {
    /// A label whose address the code uses as a number.
    fn named(&mut self, name: &str) -> CodeLabel {
        let l = self.a.create_label();
        self.named.push((name.to_string(), l));
        l
    }

    /// The address of a named label from the previous pass (0 in the first).
    fn addr(&self, name: &str) -> u16 {
        self.addrs.get(name).copied().unwrap_or(0)
    }

    fn set(&mut self, name: &str) -> Result<(), ProbeError> {
        let mut l = self
            .named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| *l)
            .ok_or_else(|| ProbeError::Asm(format!("unknown label {name}")))?;
        self.a.set_label(&mut l)?;
        // Keep the stored copy in sync with the one that was set.
        for (n, stored) in &mut self.named {
            if n == name {
                *stored = l;
            }
        }
        Ok(())
    }

    /// Starts a guarded step: clears `fault` and sets `resume` to the named label.
    fn guard(&mut self, l: &Layout, resume: &str) -> Result<(), ProbeError> {
        self.a.mov(word_ptr(l.fault), 0u32)?;
        let at = self.addr(resume);
        Ok(self.a.mov(word_ptr(l.resume), u32::from(at))?)
    }
}

fn code(s: &[u8; 2]) -> u32 {
    u32::from(u16::from_le_bytes(*s))
}

/// `o32 lgdt [disp16]` with an optional CS override: loads a 32-bit base in real mode.
fn lgdt32(a: &mut CodeAssembler, disp: u16, cs_override: bool) -> Result<(), IcedError> {
    let mut b = Vec::new();
    if cs_override {
        b.push(0x2e);
    }
    b.extend_from_slice(&[0x66, 0x0f, 0x01, 0x16]);
    b.extend_from_slice(&disp.to_le_bytes());
    a.db(&b)
}

/// Labels of the probe's subroutines, shared by the steps that call them.
#[derive(Clone, Copy)]
struct Subs {
    /// AL to every port, fed into the CRC-32; keeps all registers.
    putc: CodeLabel,
    /// The NUL-terminated string at CS:SI; advances SI.
    puts: CodeLabel,
    /// AL as two hex digits; keeps AX.
    hexbyte: CodeLabel,
    /// AX as four hex digits.
    hexword: CodeLabel,
}

/// Every label whose address the code uses as a number.
const NAMED: [&str; 18] = [
    "h_ud",
    "h_nm",
    "h_gp",
    "x87_done",
    "msr_after",
    "cpuid_after",
    "fx_done",
    "lapic_done",
    "gdt",
    "gdt_ptr",
    "msr_table",
    "cpuid_table",
    "lapic_table",
    "crc_table",
    "rec_table",
    "s_begin",
    "s_marker",
    "s_end",
];

/// The whole program, one step per function in the order the module documentation gives.
fn emit(
    plan: &Plan,
    addrs: &HashMap<String, u16>,
) -> Result<(CodeAssembler, Vec<(String, CodeLabel)>), ProbeError> {
    let mut g = Gen {
        a: CodeAssembler::new(16)?,
        named: Vec::new(),
        addrs,
    };
    for n in NAMED {
        g.named(n);
    }
    for i in 0..plan.recs.len() {
        g.named(&format!("key{i}"));
    }
    let s = Subs {
        putc: g.a.create_label(),
        puts: g.a.create_label(),
        hexbyte: g.a.create_label(),
        hexword: g.a.create_label(),
    };
    emit_entry(&mut g, plan)?;
    emit_x87_and_control(&mut g, &plan.l)?;
    emit_msrs(&mut g, plan)?;
    emit_cpuid(&mut g, plan)?;
    emit_fxsave(&mut g, &plan.l)?;
    emit_lapic(&mut g, plan)?;
    // 9. The IVT as it was.
    for (i, v) in [6u16, 7, 13].into_iter().enumerate() {
        g.a.mov(eax, dword_ptr(plan.l.ivt_save + 4 * i as u16))?;
        g.a.mov(dword_ptr(4 * v), eax)?;
    }
    emit_print(&mut g, plan, s)?;
    emit_reboot_and_exit(&mut g, &plan.opts)?;
    emit_subroutines(&mut g, plan, s)?;
    emit_data(&mut g, plan)?;
    Ok((g.a, g.named))
}

/// Steps 1–3: what the vCPU was entered with, a stack, EFLAGS, the exception handlers.
fn emit_entry(g: &mut Gen<'_>, plan: &Plan) -> Result<(), ProbeError> {
    let l = &plan.l;
    let seg = u32::from(plan.opts.origin.segment);
    // 1. Before anything changes it.
    let gprs = [eax, ebx, ecx, edx, esi, edi, ebp, esp];
    for (i, r) in gprs.into_iter().enumerate() {
        g.a.mov(dword_ptr(l.gpr + 4 * i as u16), r)?;
    }
    for (i, s) in [cs, ds, es, fs, gs, ss].into_iter().enumerate() {
        g.a.mov(word_ptr(l.sel + 2 * i as u16), s)?;
    }
    // 2. A stack, then EFLAGS. `mov` changes no flags.
    g.a.mov(ax, 0u32)?;
    g.a.mov(ss, ax)?;
    g.a.mov(esp, u32::from(l.stack_top))?;
    g.a.pushfd()?;
    g.a.pop(dword_ptr(l.eflags))?;
    g.a.mov(ds, ax)?;
    g.a.mov(es, ax)?;
    g.a.cli()?;
    // 3. Exception handlers.
    for (i, v) in [6u16, 7, 13].into_iter().enumerate() {
        g.a.mov(eax, dword_ptr(4 * v))?;
        g.a.mov(dword_ptr(l.ivt_save + 4 * i as u16), eax)?;
    }
    for (v, h) in [(6u16, "h_ud"), (7, "h_nm"), (13, "h_gp")] {
        let at = u32::from(g.addr(h));
        g.a.mov(dword_ptr(4 * v), (seg << 16) | at)?;
    }
    Ok(())
}

/// Steps 4–5: x87 control and status words (guarded), control and debug registers, GDTR, IDTR.
fn emit_x87_and_control(g: &mut Gen<'_>, l: &Layout) -> Result<(), ProbeError> {
    g.guard(l, "x87_done")?;
    g.a.fnstcw(word_ptr(l.fcw))?;
    g.a.fnstsw(word_ptr(l.fsw))?;
    g.set("x87_done")?;
    g.a.mov(ax, word_ptr(l.fault))?;
    g.a.mov(word_ptr(l.st_x87), ax)?;
    for (i, c) in [cr0, cr2, cr3, cr4].into_iter().enumerate() {
        g.a.mov(eax, c)?;
        g.a.mov(dword_ptr(l.cr + 4 * i as u16), eax)?;
    }
    for (i, d) in [dr0, dr1, dr2, dr3, dr6, dr7].into_iter().enumerate() {
        g.a.mov(eax, d)?;
        g.a.mov(dword_ptr(l.dr + 4 * i as u16), eax)?;
    }
    g.a.sgdt(ptr(l.gdtr))?;
    g.a.sidt(ptr(l.idtr))?;
    Ok(())
}

/// Step 6: RDMSR of every MSR, ECX from the table in the code segment, a 10-byte slot each;
/// a #GP is caught and recorded in the slot's status word.
fn emit_msrs(g: &mut Gen<'_>, plan: &Plan) -> Result<(), ProbeError> {
    let l = &plan.l;
    let mut msr_loop = g.a.create_label();
    g.a.mov(si, u32::from(g.addr("msr_table")))?;
    g.a.mov(di, u32::from(l.msrs))?;
    let at = u32::from(g.addr("msr_after"));
    g.a.mov(word_ptr(l.resume), at)?;
    g.a.set_label(&mut msr_loop)?;
    g.a.mov(ecx, dword_ptr(si).cs())?;
    g.a.mov(word_ptr(l.fault), 0u32)?;
    g.a.rdmsr()?;
    g.set("msr_after")?;
    g.a.mov(dword_ptr(di), eax)?;
    g.a.mov(dword_ptr(di + 4), edx)?;
    g.a.mov(ax, word_ptr(l.fault))?;
    g.a.mov(word_ptr(di + 8), ax)?;
    g.a.add(si, 4)?;
    g.a.add(di, i32::from(MSR_SLOT))?;
    g.a.cmp(
        si,
        u32::from(g.addr("msr_table")) + 4 * plan.msrs.len() as u32,
    )?;
    g.a.jb(msr_loop)?;
    Ok(())
}

/// Step 7: CPUID of every leaf in [`CPUID_LEAVES`] (leaf and subleaf from the table in the
/// code segment), an 18-byte slot each: EAX, EBX, ECX, EDX, status word.
fn emit_cpuid(g: &mut Gen<'_>, plan: &Plan) -> Result<(), ProbeError> {
    let l = &plan.l;
    let mut cpuid_loop = g.a.create_label();
    g.a.mov(si, u32::from(g.addr("cpuid_table")))?;
    g.a.mov(di, u32::from(l.cpuid))?;
    let at = u32::from(g.addr("cpuid_after"));
    g.a.mov(word_ptr(l.resume), at)?;
    g.a.set_label(&mut cpuid_loop)?;
    g.a.mov(eax, dword_ptr(si).cs())?;
    g.a.mov(ecx, dword_ptr(si + 4).cs())?;
    g.a.mov(word_ptr(l.fault), 0u32)?;
    g.a.cpuid()?;
    g.set("cpuid_after")?;
    g.a.mov(dword_ptr(di), eax)?;
    g.a.mov(dword_ptr(di + 4), ebx)?;
    g.a.mov(dword_ptr(di + 8), ecx)?;
    g.a.mov(dword_ptr(di + 12), edx)?;
    g.a.mov(ax, word_ptr(l.fault))?;
    g.a.mov(word_ptr(di + 16), ax)?;
    g.a.add(si, 8)?;
    g.a.add(di, i32::from(CPUID_SLOT))?;
    g.a.cmp(
        si,
        u32::from(g.addr("cpuid_table")) + 8 * CPUID_LEAVES.len() as u32,
    )?;
    g.a.jb(cpuid_loop)?;
    Ok(())
}

/// Step 8: FXSAVE with CR4.OSFXSR set (CR4 was recorded above), then CR4 back.
fn emit_fxsave(g: &mut Gen<'_>, l: &Layout) -> Result<(), ProbeError> {
    g.guard(l, "fx_done")?;
    g.a.mov(eax, cr4)?;
    g.a.or(ax, 0x200)?;
    g.a.mov(cr4, eax)?;
    g.a.fxsave(ptr(l.fx))?;
    g.set("fx_done")?;
    g.a.mov(ax, word_ptr(l.fault))?;
    g.a.mov(word_ptr(l.st_fx), ax)?;
    g.a.mov(eax, dword_ptr(l.cr + 12))?;
    g.a.mov(cr4, eax)?;
    Ok(())
}

/// Step 9: the local APIC through unreal mode, if IA32_APIC_BASE.EN is set.
fn emit_lapic(g: &mut Gen<'_>, plan: &Plan) -> Result<(), ProbeError> {
    let l = &plan.l;
    g.a.mov(word_ptr(l.st_lapic), code(b"na"))?;
    g.guard(l, "lapic_done")?;
    g.a.mov(ecx, MSR_APIC_BASE)?;
    g.a.rdmsr()?;
    let mut lapic_skip = g.a.create_label();
    g.a.test(ah, 0x08)?; // IA32_APIC_BASE.EN, bit 11
    g.a.jz(lapic_skip)?;
    g.a.and(ax, 0xf000u32 as i32)?;
    g.a.mov(esi, eax)?;
    let gdt_ptr = g.addr("gdt_ptr");
    lgdt32(&mut g.a, gdt_ptr, true)?;
    g.a.mov(eax, cr0)?;
    g.a.or(al, 1)?;
    g.a.mov(cr0, eax)?;
    g.a.mov(bx, 8u32)?;
    g.a.mov(fs, bx)?;
    g.a.and(al, 0xfe_u32 as i32)?;
    g.a.mov(cr0, eax)?;
    let mut lapic_loop = g.a.create_label();
    g.a.mov(bp, u32::from(g.addr("lapic_table")))?;
    g.a.mov(di, u32::from(l.lapic))?;
    g.a.set_label(&mut lapic_loop)?;
    g.a.movzx(ebx, word_ptr(bp).cs())?;
    g.a.mov(eax, dword_ptr(esi + ebx).fs())?;
    g.a.mov(dword_ptr(di), eax)?;
    g.a.add(bp, 2)?;
    g.a.add(di, 4)?;
    g.a.cmp(
        bp,
        u32::from(g.addr("lapic_table")) + 2 * plan.lapic_offsets.len() as u32,
    )?;
    g.a.jb(lapic_loop)?;
    g.a.mov(word_ptr(l.st_lapic), 0u32)?;
    g.set("lapic_done")?;
    g.a.mov(ax, word_ptr(l.fault))?;
    g.a.test(ax, ax)?;
    g.a.jz(lapic_skip)?;
    g.a.mov(word_ptr(l.st_lapic), ax)?;
    g.a.set_label(&mut lapic_skip)?;
    g.a.mov(fs, word_ptr(l.sel + 6))?;
    lgdt32(&mut g.a, l.gdtr, false)?;
    Ok(())
}

/// Step 11: a newline to end any partial line of other output (not in the CRC), the begin
/// line, the records, the end line with the count and the CRC-32 of everything before it.
fn emit_print(g: &mut Gen<'_>, plan: &Plan, s: Subs) -> Result<(), ProbeError> {
    let l = &plan.l;
    g.a.mov(al, u32::from(b'\n'))?;
    g.a.call(s.putc)?;
    g.a.mov(word_ptr(l.count), 0u32)?;
    g.a.mov(dword_ptr(l.crc), 0xffff_ffffu32)?;
    g.a.mov(si, u32::from(g.addr("s_begin")))?;
    g.a.call(s.puts)?;
    let mut rec_loop = g.a.create_label();
    let mut rec_done = g.a.create_label();
    let mut val = g.a.create_label();
    let mut blob = g.a.create_label();
    let mut num_loop = g.a.create_label();
    let mut blob_loop = g.a.create_label();
    let mut eol = g.a.create_label();
    g.a.mov(si, u32::from(g.addr("rec_table")))?;
    g.a.set_label(&mut rec_loop)?;
    g.a.cmp(
        si,
        u32::from(g.addr("rec_table")) + 8 * plan.recs.len() as u32,
    )?;
    g.a.jae(rec_done)?;
    g.a.push(si)?;
    g.a.mov(si, u32::from(g.addr("s_marker")))?;
    g.a.call(s.puts)?;
    g.a.pop(si)?;
    g.a.push(si)?;
    g.a.mov(si, word_ptr(si).cs())?;
    g.a.call(s.puts)?;
    g.a.pop(si)?;
    g.a.mov(al, u32::from(b' '))?;
    g.a.call(s.putc)?;
    g.a.mov(bx, word_ptr(si + 6).cs())?;
    g.a.test(bx, bx)?;
    g.a.jz(val)?;
    g.a.mov(cx, word_ptr(bx))?;
    g.a.test(cx, cx)?;
    g.a.jz(val)?;
    g.a.mov(al, u32::from(b'!'))?;
    g.a.call(s.putc)?;
    g.a.mov(al, cl)?;
    g.a.call(s.putc)?;
    g.a.mov(al, ch)?;
    g.a.call(s.putc)?;
    g.a.jmp(eol)?;
    g.a.set_label(&mut val)?;
    g.a.mov(bx, word_ptr(si + 2).cs())?;
    g.a.mov(cx, word_ptr(si + 4).cs())?;
    g.a.test(ch, 0x80)?;
    g.a.jnz(blob)?;
    // A number: most significant byte (highest address) first.
    g.a.add(bx, cx)?;
    g.a.set_label(&mut num_loop)?;
    g.a.dec(bx)?;
    g.a.mov(al, byte_ptr(bx))?;
    g.a.call(s.hexbyte)?;
    g.a.dec(cx)?;
    g.a.jnz(num_loop)?;
    g.a.jmp(eol)?;
    // A blob: memory order.
    g.a.set_label(&mut blob)?;
    g.a.and(ch, 0x7f)?;
    g.a.set_label(&mut blob_loop)?;
    g.a.mov(al, byte_ptr(bx))?;
    g.a.call(s.hexbyte)?;
    g.a.inc(bx)?;
    g.a.dec(cx)?;
    g.a.jnz(blob_loop)?;
    g.a.set_label(&mut eol)?;
    g.a.mov(al, u32::from(b'\n'))?;
    g.a.call(s.putc)?;
    g.a.inc(word_ptr(l.count))?;
    g.a.add(si, 8)?;
    g.a.jmp(rec_loop)?;
    g.a.set_label(&mut rec_done)?;
    g.a.mov(ax, word_ptr(l.count))?;
    g.a.mov(word_ptr(l.end_count), ax)?;
    // The CRC's final XOR.
    g.a.mov(eax, dword_ptr(l.crc))?;
    g.a.xor(eax, -1i32)?;
    g.a.mov(dword_ptr(l.end_crc), eax)?;
    g.a.mov(si, u32::from(g.addr("s_end")))?;
    g.a.call(s.puts)?;
    g.a.mov(ax, word_ptr(l.end_count))?;
    g.a.call(s.hexword)?;
    g.a.mov(al, u32::from(b' '))?;
    g.a.call(s.putc)?;
    g.a.mov(ax, word_ptr(l.end_crc + 2))?;
    g.a.call(s.hexword)?;
    g.a.mov(ax, word_ptr(l.end_crc))?;
    g.a.call(s.hexword)?;
    g.a.mov(al, u32::from(b'\n'))?;
    g.a.call(s.putc)?;
    Ok(())
}

/// Steps 12–13: reboot once, if asked (count boots in RAM, dirty, pull the reset line), then
/// exit.
fn emit_reboot_and_exit(g: &mut Gen<'_>, opts: &ProbeOptions) -> Result<(), ProbeError> {
    if let Some(via) = opts.reboot {
        let mut second = g.a.create_label();
        g.a.cmp(byte_ptr(u32::from(BOOT_COUNTER)), 0u32)?;
        g.a.jne(second)?;
        g.a.mov(byte_ptr(u32::from(BOOT_COUNTER)), 1u32)?;
        g.a.mov(eax, cr0)?;
        g.a.and(eax, 0x9fff_ffffu32 as i32)?;
        g.a.mov(cr0, eax)?;
        g.a.fninit()?;
        for (msr, v) in [
            (0x277u32, REBOOT_DIRTY_PAT),
            (0x174, REBOOT_DIRTY_SYSENTER_CS),
        ] {
            g.a.mov(ecx, msr)?;
            g.a.mov(eax, (v & 0xffff_ffff) as u32)?;
            g.a.mov(edx, (v >> 32) as u32)?;
            g.a.wrmsr()?;
        }
        match via {
            RebootVia::Cf9Hard | RebootVia::Cf9Soft => {
                g.a.mov(dx, 0xcf9u32)?;
                g.a.mov(al, if via == RebootVia::Cf9Hard { 6u32 } else { 4 })?;
                g.a.out(dx, al)?;
            }
            RebootVia::Port92 => {
                g.a.in_(al, 0x92)?;
                g.a.and(al, 0xfeu32)?;
                g.a.out(0x92, al)?;
                g.a.or(al, 1u32)?;
                g.a.out(0x92, al)?;
            }
            RebootVia::Kbc => {
                g.a.mov(al, 0xfeu32)?;
                g.a.out(0x64, al)?;
            }
        }
        let mut wait = g.a.create_label();
        g.a.set_label(&mut wait)?;
        g.a.jmp(wait)?;
        g.a.set_label(&mut second)?;
    }
    if let ProbeEnd::Out { port, value } = opts.exit {
        g.a.mov(dx, u32::from(port))?;
        g.a.mov(al, u32::from(value))?;
        g.a.out(dx, al)?;
    }
    let mut park = g.a.create_label();
    g.a.cli()?;
    g.a.set_label(&mut park)?;
    g.a.hlt()?;
    g.a.jmp(park)?;
    Ok(())
}

/// The subroutines and the exception handlers.
fn emit_subroutines(g: &mut Gen<'_>, plan: &Plan, s: Subs) -> Result<(), ProbeError> {
    let l = &plan.l;
    let Subs {
        mut putc,
        mut puts,
        mut hexbyte,
        mut hexword,
    } = s;
    // putc: the CRC-32 step, crc = table[(crc ^ AL) & 0xff] ^ (crc >> 8) with the table in the
    // code segment (32-bit addressing), then AL to every port.
    let crc_table = i32::from(g.addr("crc_table"));
    g.a.set_label(&mut putc)?;
    g.a.push(eax)?;
    g.a.push(ebx)?;
    g.a.movzx(ebx, al)?;
    g.a.xor(bl, byte_ptr(l.crc))?;
    g.a.mov(eax, dword_ptr(l.crc))?;
    g.a.shr(eax, 8)?;
    g.a.xor(eax, dword_ptr(ebx * 4 + crc_table).cs())?;
    g.a.mov(dword_ptr(l.crc), eax)?;
    g.a.pop(ebx)?;
    g.a.pop(eax)?;
    g.a.push(dx)?;
    for &p in &plan.opts.out_ports {
        g.a.mov(dx, u32::from(p))?;
        g.a.out(dx, al)?;
    }
    g.a.pop(dx)?;
    g.a.ret()?;
    // puts: the NUL-terminated string at CS:SI; advances SI.
    let mut puts_ret = g.a.create_label();
    g.a.set_label(&mut puts)?;
    g.a.mov(al, byte_ptr(si).cs())?;
    g.a.inc(si)?;
    g.a.test(al, al)?;
    g.a.jz(puts_ret)?;
    g.a.call(putc)?;
    g.a.jmp(puts)?;
    g.a.set_label(&mut puts_ret)?;
    g.a.ret()?;
    // hexword: AX as four hex digits.
    g.a.set_label(&mut hexword)?;
    g.a.push(ax)?;
    g.a.mov(al, ah)?;
    g.a.call(hexbyte)?;
    g.a.pop(ax)?;
    // hexbyte: AL as two hex digits (falls through from hexword); keeps AX.
    let mut nibble = g.a.create_label();
    let mut digit = g.a.create_label();
    g.a.set_label(&mut hexbyte)?;
    g.a.push(ax)?;
    g.a.shr(al, 4)?;
    g.a.call(nibble)?;
    g.a.pop(ax)?;
    g.a.push(ax)?;
    g.a.call(nibble)?;
    g.a.pop(ax)?;
    g.a.ret()?;
    g.a.set_label(&mut nibble)?;
    g.a.and(al, 0x0f)?;
    g.a.add(al, i32::from(b'0'))?;
    g.a.cmp(al, i32::from(b'9'))?;
    g.a.jbe(digit)?;
    g.a.add(al, i32::from(b'a' - b'9' - 1))?;
    g.a.set_label(&mut digit)?;
    g.a.jmp(putc)?;

    // Exception handlers: record the code, resume at `resume`.
    let mut h_common = g.a.create_label();
    for (name, c) in [("h_ud", b"ud"), ("h_nm", b"nm"), ("h_gp", b"gp")] {
        g.set(name)?;
        g.a.mov(word_ptr(l.fault), code(c))?;
        g.a.jmp(h_common)?;
    }
    g.a.set_label(&mut h_common)?;
    g.a.push(bp)?;
    g.a.mov(bp, sp)?;
    g.a.push(ax)?;
    g.a.mov(ax, word_ptr(l.resume))?;
    g.a.mov(word_ptr(bp + 2), ax)?;
    g.a.pop(ax)?;
    g.a.pop(bp)?;
    g.a.iret()?;
    Ok(())
}

/// The read-only data after the code.
fn emit_data(g: &mut Gen<'_>, plan: &Plan) -> Result<(), ProbeError> {
    let opts = &plan.opts;
    let seg = u32::from(opts.origin.segment);
    // GDT: null descriptor and a flat 4 GiB read/write data segment at selector 8.
    g.set("gdt")?;
    g.a.db(&0u64.to_le_bytes())?;
    g.a.db(&0x00cf_9300_0000_ffffu64.to_le_bytes())?;
    g.set("gdt_ptr")?;
    let gdt_linear = (seg << 4) + u32::from(g.addr("gdt"));
    let mut p = 15u16.to_le_bytes().to_vec();
    p.extend_from_slice(&gdt_linear.to_le_bytes());
    g.a.db(&p)?;
    g.set("msr_table")?;
    let msr_bytes: Vec<u8> = plan.msrs.iter().flat_map(|m| m.to_le_bytes()).collect();
    g.a.db(&msr_bytes)?;
    g.set("cpuid_table")?;
    let cpuid_bytes: Vec<u8> = CPUID_LEAVES
        .iter()
        .flat_map(|&(leaf, sub)| leaf.to_le_bytes().into_iter().chain(sub.to_le_bytes()))
        .collect();
    g.a.db(&cpuid_bytes)?;
    g.set("lapic_table")?;
    let lapic_bytes: Vec<u8> = plan
        .lapic_offsets
        .iter()
        .flat_map(|o| o.to_le_bytes())
        .collect();
    g.a.db(&lapic_bytes)?;
    g.set("crc_table")?;
    let crc_bytes: Vec<u8> = record::CRC32_TABLE
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    g.a.db(&crc_bytes)?;
    // Record table: key string, slot, length (bit 15: blob), status word (0: none).
    g.set("rec_table")?;
    let mut table = Vec::with_capacity(8 * plan.recs.len());
    for (i, r) in plan.recs.iter().enumerate() {
        for w in [g.addr(&format!("key{i}")), r.slot, r.len, r.status] {
            table.extend_from_slice(&w.to_le_bytes());
        }
    }
    g.a.db(&table)?;
    g.set("s_marker")?;
    g.a.db(format!("{MARKER}\0").as_bytes())?;
    g.set("s_begin")?;
    g.a.db(format!("{MARKER}begin {}\n\0", opts.tag).as_bytes())?;
    g.set("s_end")?;
    g.a.db(format!("{MARKER}end \0").as_bytes())?;
    for (i, r) in plan.recs.iter().enumerate() {
        g.set(&format!("key{i}"))?;
        g.a.db(format!("{}\0", r.key).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter, Mnemonic};

    fn opts() -> ProbeOptions {
        ProbeOptions::reset_vector("t")
    }

    #[test]
    fn assembles_and_starts_with_the_register_saves() {
        let img = assemble_image(&opts()).expect("assembles");
        assert_eq!(img.entry_offset, 0);
        assert_eq!(img.entry_ip(), 0);
        assert_eq!(img.scratch.start, 0x500);
        assert!(img.scratch.end <= 0x1_0000);
        let mut d = Decoder::with_ip(16, &img.bytes, 0, DecoderOptions::NONE);
        let mut f = IntelFormatter::new();
        let mut first = Vec::new();
        for _ in 0..14 {
            let ins = d.decode();
            let mut s = String::new();
            f.format(&ins, &mut s);
            first.push(s);
        }
        // EAX..ESP, then the six selectors, to the fixed slots after the FXSAVE area.
        let gpr = 0x500 + 0x200;
        for (i, r) in ["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"]
            .iter()
            .enumerate()
        {
            assert_eq!(first[i], format!("mov [{:X}h],{r}", gpr + 4 * i));
        }
        for (i, r) in ["cs", "ds", "es", "fs", "gs", "ss"].iter().enumerate() {
            assert_eq!(first[8 + i], format!("mov [{:X}h],{r}", gpr + 0x24 + 2 * i));
        }
    }

    /// Every instruction the probe uses, decoded; none of those the emulator lacks.
    #[test]
    fn uses_only_the_emulator_friendly_set() {
        let img = assemble_image(&opts()).expect("assembles");
        // Decode the code part only: up to the GDT (first 8 zero bytes after the handlers' iret).
        let mut d = Decoder::with_ip(16, &img.bytes, 0, DecoderOptions::NONE);
        let mut seen = std::collections::BTreeSet::new();
        while d.can_decode() {
            let ins = d.decode();
            seen.insert(ins.mnemonic());
            if ins.mnemonic() == Mnemonic::Iret {
                break;
            }
        }
        for bad in [
            Mnemonic::Fnsave,
            Mnemonic::Fnstenv,
            Mnemonic::Xgetbv,
            Mnemonic::Fsave,
            Mnemonic::Fstenv,
        ] {
            assert!(!seen.contains(&bad), "{bad:?} used");
        }
        for want in [
            Mnemonic::Rdmsr,
            Mnemonic::Fxsave,
            Mnemonic::Fnstcw,
            Mnemonic::Fnstsw,
            Mnemonic::Pushfd,
            Mnemonic::Lgdt,
            Mnemonic::Sgdt,
            Mnemonic::Sidt,
            Mnemonic::Out,
        ] {
            assert!(seen.contains(&want), "{want:?} missing");
        }
    }

    #[test]
    fn options_are_checked() {
        let mut o = opts();
        o.tag = "bad tag".into();
        assert_eq!(assemble(&o), Err(ProbeError::InvalidTag("bad tag".into())));
        let mut o = opts();
        o.out_ports.clear();
        assert_eq!(assemble(&o), Err(ProbeError::NoOutPort));
        let mut o = opts();
        o.scratch = 0x508;
        assert!(matches!(assemble(&o), Err(ProbeError::BadScratch { .. })));
        let mut o = opts();
        o.scratch = 0x300;
        assert!(matches!(assemble(&o), Err(ProbeError::BadScratch { .. })));
        let mut o = opts();
        o.scratch = 0xff00;
        assert!(matches!(assemble(&o), Err(ProbeError::BadScratch { .. })));
        // SIPI-style origin in low RAM on top of the scratch area.
        let mut o = opts();
        o.origin = Origin {
            segment: 0x0050,
            offset: 0,
        };
        assert!(matches!(assemble(&o), Err(ProbeError::Overlap { .. })));
        let mut o = opts();
        o.origin = Origin {
            segment: 0x1000,
            offset: 0xff00,
        };
        assert!(matches!(assemble(&o), Err(ProbeError::TooLarge { .. })));
        let mut o = opts();
        o.origin.segment = 0x0800;
        assert!(matches!(
            firmware_image(&o),
            Err(ProbeError::NotFirmware { .. })
        ));
    }

    #[test]
    fn firmware_image_jumps_to_the_probe() {
        let mut o = opts();
        o.origin.offset = 0x8000;
        let rom = firmware_image(&o).expect("builds");
        assert_eq!(rom.len(), FIRMWARE_SIZE);
        assert_eq!(rom[0xfff0], 0xe9);
        let rel = u16::from_le_bytes([rom[0xfff1], rom[0xfff2]]);
        assert_eq!(0xfff3u16.wrapping_add(rel), 0x8000);
        let img = assemble(&o).expect("assembles");
        assert_eq!(&rom[0x8000..0x8000 + img.len()], &img[..]);
    }

    #[test]
    fn sipi_origin_is_position_dependent_only_in_far_references() {
        let mut o = opts();
        // Above the scratch area, which the spec's MSR list has grown past 0x1000.
        o.origin = Origin {
            segment: 0x0200,
            offset: 0,
        };
        let a = assemble(&o).expect("assembles");
        let mut o2 = o.clone();
        o2.origin.segment = 0x0300;
        let b = assemble(&o2).expect("assembles");
        assert_eq!(a.len(), b.len());
        assert_ne!(a, b, "IVT entries and GDT base follow the segment");
    }

    #[test]
    fn default_msrs_cover_the_spec() {
        let m = default_msrs();
        assert!(m.contains(&0x277));
        assert!(m.contains(&0x1b));
        assert!(m.contains(&0x200));
        assert!(!m.contains(&MSR_EFER));
    }
}
