//! Every piece of state as a named, enumerable field.
//!
//! A [`Field`] names one value of [`VcpuState`]: its dotted lower-case name (`cs.attributes`,
//! `msr.ia32_pat`, `lapic.lvt_lint0`), the spec class it belongs to, its width, and how to read
//! and write it generically as a `u128`. The RESET/INIT tables, the renderers, the register cache
//! and the conformance checks all walk [`Field::all`], so a field added here is seen everywhere.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

pub use crate::msr::{FIXED_MTRR_MSRS, Msr, SGX_LE_HASH0_INDEX, VMX_CAPABILITY_MSR_NAMES};
use crate::msr::{msr_mut, msr_ref};
pub use crate::parts::Seg;
use crate::state::{
    Activity, FIXED_MTRRS, GPRS, MCE_BANKS, SGX_LE_HASH_MSRS, VARIABLE_MTRRS, VMX_CAPABILITY_MSRS,
    VcpuState, tile_word,
};

/// General-purpose registers, in the architectural encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Gpr {
    /// All sixteen, in encoding order.
    pub const ALL: [Gpr; GPRS] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ][self as usize]
    }
}

/// The four parts of a segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum SegPart {
    Selector,
    Base,
    Limit,
    Attributes,
}

impl SegPart {
    /// All four.
    pub const ALL: [SegPart; 4] = [
        SegPart::Selector,
        SegPart::Base,
        SegPart::Limit,
        SegPart::Attributes,
    ];

    fn name(self) -> &'static str {
        ["selector", "base", "limit", "attributes"][self as usize]
    }
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum Dt {
    Gdtr,
    Idtr,
}

/// x87 environment registers (the data registers are [`Field::St`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum X87 {
    Fcw,
    Fsw,
    Ftw,
    Fop,
    Fip,
    Fdp,
    Fcs,
    Fds,
}

impl X87 {
    /// All eight.
    pub const ALL: [X87; 8] = [
        X87::Fcw,
        X87::Fsw,
        X87::Ftw,
        X87::Fop,
        X87::Fip,
        X87::Fdp,
        X87::Fcs,
        X87::Fds,
    ];

    fn name(self) -> &'static str {
        ["fcw", "fsw", "ftw", "fop", "fip", "fdp", "fcs", "fds"][self as usize]
    }
}

/// Parts of the nested-virtualization state (see [`crate::Nested`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NestedReg {
    /// The VMXON pointer; all-ones when not in VMX operation.
    VmxonPointer,
    /// The current-VMCS pointer; all-ones when there is no current VMCS.
    CurrentVmcs,
    /// The enlightened-VMCS (Hyper-V) pointer; all-ones when none is in use.
    EvmcsPointer,
    /// VMX non-root operation or SVM guest mode: a nested guest is running.
    GuestMode,
    /// SVM's global interrupt flag.
    Gif,
    /// SVM guest mode with the INIT intercept set in the guest's VMCB.
    InterceptInit,
}

impl NestedReg {
    /// All six, in table order.
    pub const ALL: [NestedReg; 6] = [
        NestedReg::VmxonPointer,
        NestedReg::CurrentVmcs,
        NestedReg::EvmcsPointer,
        NestedReg::GuestMode,
        NestedReg::Gif,
        NestedReg::InterceptInit,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            NestedReg::VmxonPointer => "vmxon_pointer",
            NestedReg::CurrentVmcs => "current_vmcs_pointer",
            NestedReg::EvmcsPointer => "evmcs_pointer",
            NestedReg::GuestMode => "guest_mode",
            NestedReg::Gif => "gif",
            NestedReg::InterceptInit => "intercept_init",
        }
    }

    /// Width in bits: 64 for the pointers, 1 for the flags.
    pub fn width(self) -> u32 {
        match self {
            NestedReg::VmxonPointer | NestedReg::CurrentVmcs | NestedReg::EvmcsPointer => 64,
            NestedReg::GuestMode | NestedReg::Gif | NestedReg::InterceptInit => 1,
        }
    }

    /// The value that means "no nested state here": all-ones for the pointers, GIF set, the
    /// other flags clear. It is the RESET value on both vendors.
    pub fn none(self) -> u128 {
        match self {
            NestedReg::VmxonPointer | NestedReg::CurrentVmcs | NestedReg::EvmcsPointer => {
                u64::MAX.into()
            }
            NestedReg::Gif => 1,
            NestedReg::GuestMode | NestedReg::InterceptInit => 0,
        }
    }
}

/// The MSRs of a machine-check bank: IA32_MCi_CTL, _STATUS, _ADDR, _MISC (400H + 4i …) and
/// IA32_MCi_CTL2 (280H + i, SDM Vol. 3B, §16.3.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum McReg {
    Ctl,
    Status,
    Addr,
    Misc,
    Ctl2,
}

impl McReg {
    /// All five: the four of the 400H block in MSR-index order, then CTL2.
    pub const ALL: [McReg; 5] = [
        McReg::Ctl,
        McReg::Status,
        McReg::Addr,
        McReg::Misc,
        McReg::Ctl2,
    ];

    fn name(self) -> &'static str {
        ["ctl", "status", "addr", "misc", "ctl2"][self as usize]
    }
}

/// Generates [`LapicReg`], its name and offset lookups and the state accessors from one table of
/// rows `Variant = offset, "name", member;` (the member of [`crate::Lapic`] that holds it).
macro_rules! lapic_table {
    ($($variant:ident = $offset:literal, $name:literal, $member:ident;)*) => {
        /// Single local APIC registers (ISR, TMR and IRR have their own variants).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[allow(missing_docs)]
        pub enum LapicReg {
            $($variant,)*
        }

        impl LapicReg {
            /// All single registers.
            pub const ALL: [LapicReg; [$(stringify!($variant)),*].len()] =
                [$(LapicReg::$variant),*];

            /// Lower-case name.
            pub fn name(self) -> &'static str {
                match self {
                    $(LapicReg::$variant => $name,)*
                }
            }

            /// Offset of the register in the xAPIC MMIO page (Intel SDM Vol. 3A, Table 11-1).
            pub fn offset(self) -> u32 {
                match self {
                    $(LapicReg::$variant => $offset,)*
                }
            }
        }

        fn lapic_get(s: &VcpuState, r: LapicReg) -> u128 {
            match r {
                $(LapicReg::$variant => s.lapic.$member.into(),)*
            }
        }

        // The `as` casts truncate on purpose: `v` is masked to the field's width by the caller.
        #[allow(clippy::cast_possible_truncation)]
        fn lapic_set(s: &mut VcpuState, r: LapicReg, v: u128) {
            match r {
                $(LapicReg::$variant => s.lapic.$member = v as _,)*
            }
        }
    };
}

// Offsets: Intel SDM Vol. 3A, Table 11-1 "Local APIC Register Address Map".
lapic_table! {
    Id = 0x20, "id", id;
    Version = 0x30, "version", version;
    Tpr = 0x80, "tpr", tpr;
    Apr = 0x90, "apr", apr;
    Ppr = 0xa0, "ppr", ppr;
    Ldr = 0xd0, "ldr", ldr;
    Dfr = 0xe0, "dfr", dfr;
    Svr = 0xf0, "svr", svr;
    Esr = 0x280, "esr", esr;
    Icr = 0x300, "icr", icr;
    LvtTimer = 0x320, "lvt_timer", lvt_timer;
    LvtThermal = 0x330, "lvt_thermal", lvt_thermal;
    LvtPerf = 0x340, "lvt_perf", lvt_perf;
    LvtLint0 = 0x350, "lvt_lint0", lvt_lint0;
    LvtLint1 = 0x360, "lvt_lint1", lvt_lint1;
    LvtError = 0x370, "lvt_error", lvt_error;
    LvtCmci = 0x2f0, "lvt_cmci", lvt_cmci;
    TimerInitial = 0x380, "timer_initial", timer_initial;
    TimerCurrent = 0x390, "timer_current", timer_current;
    TimerDivide = 0x3e0, "timer_divide", timer_divide;
}

/// The 256-bit APIC vector bitmaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum LapicBitmap {
    Isr,
    Tmr,
    Irr,
}

impl LapicBitmap {
    /// All three.
    pub const ALL: [LapicBitmap; 3] = [LapicBitmap::Isr, LapicBitmap::Tmr, LapicBitmap::Irr];

    fn name(self) -> &'static str {
        ["isr", "tmr", "irr"][self as usize]
    }

    /// MMIO offset of the first 32-bit word; word `i` is at `offset + 0x10 * i`.
    pub fn offset(self) -> u32 {
        [0x100, 0x180, 0x200][self as usize]
    }
}

/// Generates [`EventFlag`], its names and the state accessors from one table of rows
/// `Variant, "name";` (the member of [`crate::Events`] has the same name).
macro_rules! event_table {
    ($($variant:ident, $name:ident;)*) => {
        /// Pending-event flags.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[allow(missing_docs)]
        pub enum EventFlag {
            $($variant,)*
        }

        impl EventFlag {
            /// All flags.
            pub const ALL: [EventFlag; [$(stringify!($variant)),*].len()] =
                [$(EventFlag::$variant),*];

            fn name(self) -> &'static str {
                match self {
                    $(EventFlag::$variant => stringify!($name),)*
                }
            }
        }

        fn event_ref_const(s: &VcpuState, e: EventFlag) -> &bool {
            match e {
                $(EventFlag::$variant => &s.events.$name,)*
            }
        }

        fn event_mut(s: &mut VcpuState, e: EventFlag) -> &mut bool {
            match e {
                $(EventFlag::$variant => &mut s.events.$name,)*
            }
        }
    };
}

event_table! {
    NmiPending, nmi_pending;
    NmiMasked, nmi_masked;
    ExceptionPending, exception_pending;
    InterruptPending, interrupt_pending;
    SmiPending, smi_pending;
    Smm, smm;
    InterruptShadow, interrupt_shadow;
}

/// The spec class a field belongs to; one source file of the tables per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum Class {
    /// General-purpose registers, RIP, RFLAGS.
    Gprs,
    /// Segment and descriptor-table registers.
    Segments,
    /// Control registers, EFER, PDPTRs.
    Control,
    /// Debug registers.
    Debug,
    /// x87, SSE and XSAVE-managed state, XCR0.
    Fpu,
    /// Model-specific registers.
    Msrs,
    /// Local APIC.
    Lapic,
    /// Activity state, pending events, nested state.
    Activity,
}

impl Class {
    /// All classes, in table order.
    pub const ALL: [Class; 8] = [
        Class::Gprs,
        Class::Segments,
        Class::Control,
        Class::Debug,
        Class::Fpu,
        Class::Msrs,
        Class::Lapic,
        Class::Activity,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Class::Gprs => "gprs",
            Class::Segments => "segments",
            Class::Control => "control",
            Class::Debug => "debug",
            Class::Fpu => "fpu",
            Class::Msrs => "msrs",
            Class::Lapic => "lapic",
            Class::Activity => "activity",
        }
    }
}

/// One named value of [`VcpuState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// A general-purpose register.
    Gpr(Gpr),
    /// RIP.
    Rip,
    /// RFLAGS.
    Rflags,
    /// Part of a segment register.
    Seg(Seg, SegPart),
    /// GDTR/IDTR base (`false`) or limit (`true`).
    Dt(Dt, bool),
    /// CR0.
    Cr0,
    /// CR2.
    Cr2,
    /// CR3.
    Cr3,
    /// CR4.
    Cr4,
    /// CR8.
    Cr8,
    /// IA32_EFER.
    Efer,
    /// PDPTE0–3.
    Pdptr(u8),
    /// DR0–DR3.
    Dr(u8),
    /// DR6.
    Dr6,
    /// DR7.
    Dr7,
    /// An x87 environment register.
    X87(X87),
    /// ST0–ST7.
    St(u8),
    /// MXCSR.
    Mxcsr,
    /// XMM0–XMM15.
    Xmm(u8),
    /// Upper half of YMM0–YMM15.
    YmmHi(u8),
    /// Lane 0 or 1 of ZMM0–ZMM15 bits 511:256.
    ZmmHi256(u8, u8),
    /// Lane 0–3 of ZMM16–ZMM31 (register number 16–31).
    Hi16Zmm(u8, u8),
    /// Opmask k0–k7.
    Opmask(u8),
    /// Word 0–3 (16 bytes each) of XTILECFG, AMX's tile configuration (XSAVE component 17).
    TileCfg(u8),
    /// Word 0–63 (16 bytes each) of tile TMM0–TMM7 (XTILEDATA, XSAVE component 18).
    TileData(u8, u8),
    /// XCR0.
    Xcr0,
    /// PKRU.
    Pkru,
    /// A single MSR.
    Msr(Msr),
    /// Fixed-range MTRR `n` (see [`FIXED_MTRR_MSRS`]).
    MtrrFixed(u8),
    /// IA32_MTRR_PHYSBASEn.
    MtrrPhysBase(u8),
    /// IA32_MTRR_PHYSMASKn.
    MtrrPhysMask(u8),
    /// A machine-check bank register.
    Mc(u8, McReg),
    /// VMX capability MSR `n` (see [`VMX_CAPABILITY_MSR_NAMES`]).
    VmxCap(u8),
    /// IA32_SGXLEPUBKEYHASH0–3.
    SgxLeHash(u8),
    /// A single local APIC register.
    Lapic(LapicReg),
    /// Word 0–7 of ISR, TMR or IRR.
    LapicBitmap(LapicBitmap, u8),
    /// Activity state ([`Activity`] encoding).
    Activity,
    /// A pending-event flag.
    Event(EventFlag),
    /// Nested-virtualization state present (1: in VMX operation or SVM guest mode) or not (0).
    Nested,
    /// A part of the nested-virtualization state.
    NestedReg(NestedReg),
}

fn seg_index(s: Seg) -> usize {
    s as usize
}

impl Field {
    /// Every field, in table order (grouped by [`Class`]).
    pub fn all() -> Vec<Field> {
        let mut v = Vec::with_capacity(400);
        v.extend(Gpr::ALL.map(Field::Gpr));
        v.push(Field::Rip);
        v.push(Field::Rflags);
        for s in [
            Seg::Cs,
            Seg::Ds,
            Seg::Es,
            Seg::Fs,
            Seg::Gs,
            Seg::Ss,
            Seg::Ldtr,
            Seg::Tr,
        ] {
            v.extend(SegPart::ALL.map(|p| Field::Seg(s, p)));
        }
        for d in [Dt::Gdtr, Dt::Idtr] {
            v.push(Field::Dt(d, false));
            v.push(Field::Dt(d, true));
        }
        v.extend([
            Field::Cr0,
            Field::Cr2,
            Field::Cr3,
            Field::Cr4,
            Field::Cr8,
            Field::Efer,
        ]);
        v.extend((0..4).map(Field::Pdptr));
        v.extend((0..4).map(Field::Dr));
        v.push(Field::Dr6);
        v.push(Field::Dr7);
        v.extend(X87::ALL.map(Field::X87));
        v.extend((0..8).map(Field::St));
        v.push(Field::Mxcsr);
        v.extend((0..16).map(Field::Xmm));
        v.extend((0..16).map(Field::YmmHi));
        for r in 0..16 {
            v.extend((0..2).map(|l| Field::ZmmHi256(r, l)));
        }
        for r in 16..32 {
            v.extend((0..4).map(|l| Field::Hi16Zmm(r, l)));
        }
        v.extend((0..8).map(Field::Opmask));
        v.extend((0..4).map(Field::TileCfg));
        for t in 0..8 {
            v.extend((0..64).map(|w| Field::TileData(t, w)));
        }
        v.push(Field::Xcr0);
        v.push(Field::Pkru);
        v.extend(Msr::ALL.map(Field::Msr));
        v.extend((0..FIXED_MTRRS as u8).map(Field::MtrrFixed));
        for n in 0..VARIABLE_MTRRS as u8 {
            v.push(Field::MtrrPhysBase(n));
            v.push(Field::MtrrPhysMask(n));
        }
        for b in 0..MCE_BANKS as u8 {
            v.extend(McReg::ALL.map(|r| Field::Mc(b, r)));
        }
        v.extend((0..VMX_CAPABILITY_MSRS as u8).map(Field::VmxCap));
        v.extend((0..SGX_LE_HASH_MSRS as u8).map(Field::SgxLeHash));
        v.extend(LapicReg::ALL.map(Field::Lapic));
        for bm in LapicBitmap::ALL {
            v.extend((0..8).map(|i| Field::LapicBitmap(bm, i)));
        }
        v.push(Field::Activity);
        v.extend(EventFlag::ALL.map(Field::Event));
        v.push(Field::Nested);
        v.extend(NestedReg::ALL.map(Field::NestedReg));
        v
    }

    /// The field with this dotted name, if any.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::all().into_iter().find(|f| f.name() == name)
    }

    /// Dotted lower-case name, e.g. `cs.attributes`, `msr.ia32_pat`, `lapic.lvt_lint0`.
    pub fn name(&self) -> String {
        match *self {
            Field::Gpr(g) => g.name().to_string(),
            Field::Rip => "rip".into(),
            Field::Rflags => "rflags".into(),
            Field::Seg(s, p) => format!("{}.{}", s.name(), p.name()),
            Field::Dt(d, limit) => format!(
                "{}.{}",
                if d == Dt::Gdtr { "gdtr" } else { "idtr" },
                if limit { "limit" } else { "base" }
            ),
            Field::Cr0 => "cr0".into(),
            Field::Cr2 => "cr2".into(),
            Field::Cr3 => "cr3".into(),
            Field::Cr4 => "cr4".into(),
            Field::Cr8 => "cr8".into(),
            Field::Efer => "efer".into(),
            Field::Pdptr(i) => format!("pdptr{i}"),
            Field::Dr(i) => format!("dr{i}"),
            Field::Dr6 => "dr6".into(),
            Field::Dr7 => "dr7".into(),
            Field::X87(x) => format!("x87.{}", x.name()),
            Field::St(i) => format!("x87.st{i}"),
            Field::Mxcsr => "mxcsr".into(),
            Field::Xmm(i) => format!("xmm{i}"),
            Field::YmmHi(i) => format!("ymm{i}.hi"),
            Field::ZmmHi256(r, l) => format!("zmm{r}.hi256.{l}"),
            Field::Hi16Zmm(r, l) => format!("zmm{r}.{l}"),
            Field::Opmask(i) => format!("k{i}"),
            Field::TileCfg(i) => format!("xtilecfg.{i}"),
            Field::TileData(t, w) => format!("tmm{t}.{w}"),
            Field::Xcr0 => "xcr0".into(),
            Field::Pkru => "pkru".into(),
            Field::Msr(m) => format!("msr.{}", m.name()),
            Field::MtrrFixed(i) => format!("msr.{}", FIXED_MTRR_MSRS[i as usize].0),
            Field::MtrrPhysBase(i) => format!("msr.ia32_mtrr_physbase{i}"),
            Field::MtrrPhysMask(i) => format!("msr.ia32_mtrr_physmask{i}"),
            Field::Mc(b, r) => format!("msr.ia32_mc{b}_{}", r.name()),
            Field::VmxCap(i) => format!("msr.{}", VMX_CAPABILITY_MSR_NAMES[i as usize].0),
            Field::SgxLeHash(i) => format!("msr.ia32_sgxlepubkeyhash{i}"),
            Field::Lapic(r) => format!("lapic.{}", r.name()),
            Field::LapicBitmap(b, i) => format!("lapic.{}{i}", b.name()),
            Field::Activity => "activity.state".into(),
            Field::Event(e) => format!("events.{}", e.name()),
            Field::Nested => "nested.state".into(),
            Field::NestedReg(r) => format!("nested.{}", r.name()),
        }
    }

    /// The spec class this field belongs to.
    pub fn class(&self) -> Class {
        match self {
            Field::Gpr(_) | Field::Rip | Field::Rflags => Class::Gprs,
            Field::Seg(..) | Field::Dt(..) => Class::Segments,
            Field::Cr0
            | Field::Cr2
            | Field::Cr3
            | Field::Cr4
            | Field::Cr8
            | Field::Efer
            | Field::Pdptr(_) => Class::Control,
            Field::Dr(_) | Field::Dr6 | Field::Dr7 => Class::Debug,
            Field::X87(_)
            | Field::St(_)
            | Field::Mxcsr
            | Field::Xmm(_)
            | Field::YmmHi(_)
            | Field::ZmmHi256(..)
            | Field::Hi16Zmm(..)
            | Field::Opmask(_)
            | Field::TileCfg(_)
            | Field::TileData(..)
            | Field::Xcr0
            | Field::Pkru => Class::Fpu,
            Field::Msr(_)
            | Field::MtrrFixed(_)
            | Field::MtrrPhysBase(_)
            | Field::MtrrPhysMask(_)
            | Field::Mc(..)
            | Field::VmxCap(_)
            | Field::SgxLeHash(_) => Class::Msrs,
            Field::Lapic(_) | Field::LapicBitmap(..) => Class::Lapic,
            Field::Activity | Field::Event(_) | Field::Nested | Field::NestedReg(_) => {
                Class::Activity
            }
        }
    }

    /// The MSR index through which this field is read with RDMSR, if it is an MSR.
    pub fn msr_index(&self) -> Option<u32> {
        match *self {
            Field::Efer => Some(0xc000_0080),
            Field::Msr(m) => Some(m.index()),
            Field::MtrrFixed(i) => Some(FIXED_MTRR_MSRS[i as usize].1),
            Field::MtrrPhysBase(i) => Some(0x200 + 2 * u32::from(i)),
            Field::MtrrPhysMask(i) => Some(0x201 + 2 * u32::from(i)),
            Field::Mc(b, McReg::Ctl2) => Some(0x280 + u32::from(b)),
            Field::Mc(b, r) => Some(0x400 + 4 * u32::from(b) + r as u32),
            Field::VmxCap(i) => Some(VMX_CAPABILITY_MSR_NAMES[i as usize].1),
            Field::SgxLeHash(i) => Some(SGX_LE_HASH0_INDEX + u32::from(i)),
            _ => None,
        }
    }

    /// Width of the field in bits.
    pub fn width(&self) -> u32 {
        match self {
            Field::Seg(_, SegPart::Selector) | Field::Seg(_, SegPart::Attributes) => 16,
            Field::Seg(_, SegPart::Limit) => 32,
            Field::Dt(_, true) => 16,
            Field::X87(X87::Fip) | Field::X87(X87::Fdp) => 64,
            Field::X87(X87::Fop) => 11,
            Field::X87(_) => 16,
            Field::St(_) => 80,
            Field::Mxcsr | Field::Pkru => 32,
            Field::Xmm(_)
            | Field::YmmHi(_)
            | Field::ZmmHi256(..)
            | Field::Hi16Zmm(..)
            | Field::TileCfg(_)
            | Field::TileData(..) => 128,
            Field::Lapic(LapicReg::Icr) => 64,
            Field::Lapic(_) | Field::LapicBitmap(..) => 32,
            // Encodings 0-3 are VMX's activity states (SDM Vol. 3C, §25.4.2); 4 is
            // `Activity::Uninitialized`, a host's state outside them, which must survive a read.
            Field::Activity => 3,
            Field::Event(_) | Field::Nested => 1,
            Field::NestedReg(r) => r.width(),
            _ => 64,
        }
    }

    /// The mask of bits the field can hold.
    pub fn mask(&self) -> u128 {
        let w = self.width();
        if w >= 128 {
            u128::MAX
        } else {
            (1u128 << w) - 1
        }
    }

    /// Read this field of `s`.
    pub fn get(&self, s: &VcpuState) -> u128 {
        let v: u128 = match *self {
            Field::Gpr(g) => s.gprs[g as usize].into(),
            Field::Rip => s.rip.into(),
            Field::Rflags => s.rflags.into(),
            Field::Seg(sg, p) => {
                let seg = &s.segments[seg_index(sg)];
                match p {
                    SegPart::Selector => seg.selector.into(),
                    SegPart::Base => seg.base.into(),
                    SegPart::Limit => seg.limit.into(),
                    SegPart::Attributes => seg.attributes.into(),
                }
            }
            Field::Dt(d, limit) => {
                let t = if d == Dt::Gdtr { &s.gdtr } else { &s.idtr };
                if limit { t.limit.into() } else { t.base.into() }
            }
            Field::Cr0 => s.cr0.into(),
            Field::Cr2 => s.cr2.into(),
            Field::Cr3 => s.cr3.into(),
            Field::Cr4 => s.cr4.into(),
            Field::Cr8 => s.cr8.into(),
            Field::Efer => s.efer.into(),
            Field::Pdptr(i) => s.pdptrs[i as usize].into(),
            Field::Dr(i) => s.dr[i as usize].into(),
            Field::Dr6 => s.dr6.into(),
            Field::Dr7 => s.dr7.into(),
            Field::X87(x) => match x {
                X87::Fcw => s.fpu.fcw.into(),
                X87::Fsw => s.fpu.fsw.into(),
                X87::Ftw => s.fpu.ftw.into(),
                X87::Fop => s.fpu.fop.into(),
                X87::Fip => s.fpu.fip.into(),
                X87::Fdp => s.fpu.fdp.into(),
                X87::Fcs => s.fpu.fcs.into(),
                X87::Fds => s.fpu.fds.into(),
            },
            Field::St(i) => s.fpu.st[i as usize],
            Field::Mxcsr => s.fpu.mxcsr.into(),
            Field::Xmm(i) => s.vectors.xmm[i as usize],
            Field::YmmHi(i) => s.vectors.ymm_hi[i as usize],
            Field::ZmmHi256(r, l) => s.vectors.zmm_hi256[r as usize][l as usize],
            Field::Hi16Zmm(r, l) => s.vectors.hi16_zmm[r as usize - 16][l as usize],
            Field::TileCfg(i) => s.vectors.xtilecfg[i as usize],
            Field::TileData(t, w) => {
                let (h, i) = tile_word(t, w);
                s.vectors.xtiledata[h][i]
            }
            Field::Opmask(i) => s.vectors.opmask[i as usize].into(),
            Field::Xcr0 => s.xcr0.into(),
            Field::Pkru => s.pkru.into(),
            Field::Msr(m) => msr_ref(&s.msrs, &s.segments, m).into(),
            Field::MtrrFixed(i) => s.msrs.mtrr_fixed[i as usize].into(),
            Field::MtrrPhysBase(i) => s.msrs.mtrr_phys_base[i as usize].into(),
            Field::MtrrPhysMask(i) => s.msrs.mtrr_phys_mask[i as usize].into(),
            Field::Mc(b, r) => {
                let bank = &s.msrs.mc_banks[b as usize];
                match r {
                    McReg::Ctl => bank.ctl,
                    McReg::Status => bank.status,
                    McReg::Addr => bank.addr,
                    McReg::Misc => bank.misc,
                    McReg::Ctl2 => bank.ctl2,
                }
                .into()
            }
            Field::Lapic(r) => lapic_get(s, r),
            Field::LapicBitmap(b, i) => {
                let words = match b {
                    LapicBitmap::Isr => &s.lapic.isr,
                    LapicBitmap::Tmr => &s.lapic.tmr,
                    LapicBitmap::Irr => &s.lapic.irr,
                };
                words[i as usize].into()
            }
            Field::Activity => (s.activity as u8).into(),
            Field::Event(e) => u128::from(*event_ref_const(s, e)),
            Field::VmxCap(i) => s.msrs.vmx_capabilities[i as usize].into(),
            Field::SgxLeHash(i) => s.msrs.sgx_le_pubkey_hash[i as usize].into(),
            Field::Nested => s.nested.present.into(),
            Field::NestedReg(r) => nested_get(s, r),
        };
        v & self.mask()
    }

    /// Write this field of `s`; bits beyond the field's width are dropped.
    ///
    /// An activity-state value that is not a valid encoding leaves the state unchanged.
    // The `as` casts below truncate on purpose: `v` is masked to the field's width first.
    #[allow(clippy::cast_possible_truncation)]
    pub fn set(&self, s: &mut VcpuState, v: u128) {
        let v = v & self.mask();
        match *self {
            Field::Gpr(g) => s.gprs[g as usize] = v as u64,
            Field::Rip => s.rip = v as u64,
            Field::Rflags => s.rflags = v as u64,
            Field::Seg(sg, p) => {
                let seg = &mut s.segments[seg_index(sg)];
                match p {
                    SegPart::Selector => seg.selector = v as u16,
                    SegPart::Base => seg.base = v as u64,
                    SegPart::Limit => seg.limit = v as u32,
                    SegPart::Attributes => seg.attributes = v as u16,
                }
            }
            Field::Dt(d, limit) => {
                let t = if d == Dt::Gdtr {
                    &mut s.gdtr
                } else {
                    &mut s.idtr
                };
                if limit {
                    t.limit = v as u16;
                } else {
                    t.base = v as u64;
                }
            }
            Field::Cr0 => s.cr0 = v as u64,
            Field::Cr2 => s.cr2 = v as u64,
            Field::Cr3 => s.cr3 = v as u64,
            Field::Cr4 => s.cr4 = v as u64,
            Field::Cr8 => s.cr8 = v as u64,
            Field::Efer => s.efer = v as u64,
            Field::Pdptr(i) => s.pdptrs[i as usize] = v as u64,
            Field::Dr(i) => s.dr[i as usize] = v as u64,
            Field::Dr6 => s.dr6 = v as u64,
            Field::Dr7 => s.dr7 = v as u64,
            Field::X87(x) => match x {
                X87::Fcw => s.fpu.fcw = v as u16,
                X87::Fsw => s.fpu.fsw = v as u16,
                X87::Ftw => s.fpu.ftw = v as u16,
                X87::Fop => s.fpu.fop = v as u16,
                X87::Fip => s.fpu.fip = v as u64,
                X87::Fdp => s.fpu.fdp = v as u64,
                X87::Fcs => s.fpu.fcs = v as u16,
                X87::Fds => s.fpu.fds = v as u16,
            },
            Field::St(i) => s.fpu.st[i as usize] = v,
            Field::Mxcsr => s.fpu.mxcsr = v as u32,
            Field::Xmm(i) => s.vectors.xmm[i as usize] = v,
            Field::YmmHi(i) => s.vectors.ymm_hi[i as usize] = v,
            Field::ZmmHi256(r, l) => s.vectors.zmm_hi256[r as usize][l as usize] = v,
            Field::Hi16Zmm(r, l) => s.vectors.hi16_zmm[r as usize - 16][l as usize] = v,
            Field::TileCfg(i) => s.vectors.xtilecfg[i as usize] = v,
            Field::TileData(t, w) => {
                let (h, i) = tile_word(t, w);
                s.vectors.xtiledata[h][i] = v;
            }
            Field::Opmask(i) => s.vectors.opmask[i as usize] = v as u64,
            Field::Xcr0 => s.xcr0 = v as u64,
            Field::Pkru => s.pkru = v as u32,
            Field::Msr(m) => *msr_mut(&mut s.msrs, &mut s.segments, m) = v as u64,
            Field::MtrrFixed(i) => s.msrs.mtrr_fixed[i as usize] = v as u64,
            Field::MtrrPhysBase(i) => s.msrs.mtrr_phys_base[i as usize] = v as u64,
            Field::MtrrPhysMask(i) => s.msrs.mtrr_phys_mask[i as usize] = v as u64,
            Field::Mc(b, r) => {
                let bank = &mut s.msrs.mc_banks[b as usize];
                let slot = match r {
                    McReg::Ctl => &mut bank.ctl,
                    McReg::Status => &mut bank.status,
                    McReg::Addr => &mut bank.addr,
                    McReg::Misc => &mut bank.misc,
                    McReg::Ctl2 => &mut bank.ctl2,
                };
                *slot = v as u64;
            }
            Field::Lapic(r) => lapic_set(s, r, v),
            Field::LapicBitmap(b, i) => {
                let words = match b {
                    LapicBitmap::Isr => &mut s.lapic.isr,
                    LapicBitmap::Tmr => &mut s.lapic.tmr,
                    LapicBitmap::Irr => &mut s.lapic.irr,
                };
                words[i as usize] = v as u32;
            }
            Field::Activity => {
                if let Some(a) = Activity::from_code(v) {
                    s.activity = a;
                }
            }
            Field::Event(e) => *event_mut(s, e) = v != 0,
            Field::VmxCap(i) => s.msrs.vmx_capabilities[i as usize] = v as u64,
            Field::SgxLeHash(i) => s.msrs.sgx_le_pubkey_hash[i as usize] = v as u64,
            Field::Nested => s.nested.present = v != 0,
            Field::NestedReg(r) => nested_set(s, r, v),
        }
    }
}

impl core::fmt::Display for Field {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.name())
    }
}

fn nested_get(s: &VcpuState, r: NestedReg) -> u128 {
    let n = &s.nested;
    match r {
        NestedReg::VmxonPointer => n.vmxon_pointer.into(),
        NestedReg::CurrentVmcs => n.current_vmcs_pointer.into(),
        NestedReg::EvmcsPointer => n.evmcs_pointer.into(),
        NestedReg::GuestMode => n.guest_mode.into(),
        NestedReg::Gif => n.gif.into(),
        NestedReg::InterceptInit => n.intercept_init.into(),
    }
}

#[allow(clippy::cast_possible_truncation)] // masked to the field width by the caller
fn nested_set(s: &mut VcpuState, r: NestedReg, v: u128) {
    let n = &mut s.nested;
    match r {
        NestedReg::VmxonPointer => n.vmxon_pointer = v as u64,
        NestedReg::CurrentVmcs => n.current_vmcs_pointer = v as u64,
        NestedReg::EvmcsPointer => n.evmcs_pointer = v as u64,
        NestedReg::GuestMode => n.guest_mode = v != 0,
        NestedReg::Gif => n.gif = v != 0,
        NestedReg::InterceptInit => n.intercept_init = v != 0,
    }
}
