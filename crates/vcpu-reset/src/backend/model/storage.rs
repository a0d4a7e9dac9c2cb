//! Where the model keeps each piece of state, and the one mapping from spec [`Field`]s onto it.
//!
//! State lives either in the VMCS guest-state area ([`GuestStateArea`], reached only through
//! VMREAD/VMWRITE or the processor's own uncounted access) or in stores kept beside it, as KVM
//! keeps them beside its VMCS: the GPRs other than RSP, CR2, CR8, DR0–DR3, DR6, an
//! x87/SSE/XSAVE store, XCR0, an MSR store keyed by MSR index, a 1 KiB local-APIC register page
//! keyed by xAPIC offset, model event flags, and nested state (three pointers, three flags).
//! Every such place is a
//! [`Location`]; [`home`] says which location(s) hold a field.

use std::collections::BTreeMap;
use std::fmt;

use vcpu_reset_spec::{
    Dt, EventFlag, Field, Fpu, GPRS, Gpr, LapicReg, Msr, NestedReg, Seg, SegPart, VcpuState,
    Vectors, X87, tile_word,
};

use super::nested::NestedVmx;
use super::vmcs::{self, GUEST_FIELDS, GuestStateArea, VmcsError, Width};
use crate::backend::BackendError;

/// The byte the poisoned model fills every storage location with. 0xA5 (1010_0101b) is
/// non-zero, not all-ones, has both high and low bits set in every byte, and is no common
/// architectural value, so a value built from it stands out in any register dump.
pub const POISON_BYTE: u8 = 0xA5;

/// [`POISON_BYTE`] repeated over the low `bits` bits (all 128 bits for `bits >= 128`).
pub const fn poison_pattern(bits: u32) -> u128 {
    let all = u128::from_ne_bytes([POISON_BYTE; 16]);
    if bits >= 128 {
        all
    } else {
        all & ((1u128 << bits) - 1)
    }
}

/// Size of the local-APIC register page: the xAPIC registers sit at offsets 0x000–0x3F0 (SDM
/// Vol. 3A §11.4.1, Table 11-1), the page KVM_GET_LAPIC/KVM_SET_LAPIC move (`KVM_APIC_REG_SIZE`).
pub const APIC_PAGE_SIZE: usize = 0x400;

/// xAPIC offset of ICR bits 31:0 (SDM Vol. 3A, Table 11-1).
pub const APIC_ICR_LOW: u32 = 0x300;
/// xAPIC offset of ICR bits 63:32 (SDM Vol. 3A, Table 11-1).
pub const APIC_ICR_HIGH: u32 = 0x310;

/// One storage location of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Location {
    /// A VMCS guest-state field, by full-access encoding.
    Vmcs(u32),
    /// A general-purpose register other than RSP (RSP is GUEST_RSP in the VMCS).
    Gpr(Gpr),
    /// CR2.
    Cr2,
    /// CR8.
    Cr8,
    /// DR0–DR3.
    Dr(u8),
    /// DR6.
    Dr6,
    /// A slot of the x87/SSE/XSAVE store, named by the spec field it holds.
    Xsave(Field),
    /// XCR0.
    Xcr0,
    /// An MSR of the MSR store, by index.
    Msr(u32),
    /// A 32-bit register of the local-APIC page, by xAPIC offset.
    Apic(u32),
    /// A pending-event flag kept outside the VMCS (one byte, 0 or 1).
    Event(EventFlag),
    /// The nested VMXON pointer.
    VmxonPointer,
    /// The nested current-VMCS pointer.
    CurrentVmcsPointer,
    /// The nested enlightened-VMCS pointer.
    EvmcsPointer,
    /// A nested flag (guest mode, GIF, INIT intercept): one byte, 0 or 1.
    NestedFlag(NestedReg),
}

impl Location {
    /// Number of bits the location holds.
    pub fn width(&self) -> u32 {
        match self {
            Location::Vmcs(enc) => Width::of(*enc).bits(),
            Location::Xsave(f) => match f {
                Field::X87(X87::Fip | X87::Fdp) => 64,
                // The FOP slot is 16 bits as in the FXSAVE image; the field uses bits 10:0.
                Field::X87(_) => 16,
                Field::St(_) => 80,
                Field::Mxcsr | Field::Pkru => 32,
                Field::Opmask(_) => 64,
                other => other.width(),
            },
            Location::Apic(_) => 32,
            Location::Event(_) | Location::NestedFlag(_) => 8,
            Location::Gpr(_)
            | Location::Cr2
            | Location::Cr8
            | Location::Dr(_)
            | Location::Dr6
            | Location::Xcr0
            | Location::Msr(_)
            | Location::VmxonPointer
            | Location::CurrentVmcsPointer
            | Location::EvmcsPointer => 64,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Vmcs(enc) => write!(
                f,
                "vmcs {enc:#06x} {}",
                vmcs::field_name(*enc).unwrap_or("(unsupported)")
            ),
            Location::Gpr(g) => write!(f, "gpr {}", g.name()),
            Location::Cr2 => f.write_str("cr2"),
            Location::Cr8 => f.write_str("cr8"),
            Location::Dr(i) => write!(f, "dr{i}"),
            Location::Dr6 => f.write_str("dr6"),
            Location::Xsave(field) => write!(f, "xsave {field}"),
            Location::Xcr0 => f.write_str("xcr0"),
            Location::Msr(i) => match msr_field(*i) {
                Some(field) => write!(f, "msr {i:#x} {field}"),
                None => write!(f, "msr {i:#x}"),
            },
            Location::Apic(off) => match apic_register_name(*off) {
                Some(name) => write!(f, "apic {off:#05x} {name}"),
                None => write!(f, "apic {off:#05x}"),
            },
            Location::Event(e) => write!(f, "model {}", Field::Event(*e)),
            Location::VmxonPointer => f.write_str("nested vmxon pointer"),
            Location::CurrentVmcsPointer => f.write_str("nested current-VMCS pointer"),
            Location::EvmcsPointer => f.write_str("nested enlightened-VMCS pointer"),
            Location::NestedFlag(r) => write!(f, "nested {}", Field::NestedReg(*r)),
        }
    }
}

fn msr_field(index: u32) -> Option<Field> {
    Field::all()
        .into_iter()
        .find(|f| f.msr_index() == Some(index) && matches!(home(*f), Home::Store(_)))
}

fn apic_register_name(off: u32) -> Option<String> {
    if off == APIC_ICR_LOW {
        return Some("lapic.icr[31:0]".into());
    }
    if off == APIC_ICR_HIGH {
        return Some("lapic.icr[63:32]".into());
    }
    Field::all().into_iter().find_map(|f| match home(f) {
        Home::Store(Location::Apic(o)) if o == off => Some(f.name()),
        _ => None,
    })
}

/// Where a field lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Home {
    /// A VMCS field, value as is (zero-extended; truncated to the field on write).
    Vmcs(u32),
    /// A segment access-rights field: attributes in bits 15:0, unusable bit 16 = !P.
    AccessRights(u32),
    /// GUEST_ACTIVITY_STATE, which must hold an activity-state encoding.
    Activity,
    /// Bits of GUEST_INTERRUPTIBILITY_STATE; the flag is set when any of them is.
    Interruptibility(u64),
    /// A store location.
    Store(Location),
    /// The ICR: two APIC-page words.
    Icr,
    /// The nested state as a whole (`nested.state`).
    Nested,
    /// One part of the nested state.
    NestedPart(NestedReg),
}

/// Where `field` lives in the model.
pub(crate) fn home(field: Field) -> Home {
    use vmcs::*;
    match field {
        Field::Gpr(Gpr::Rsp) => Home::Vmcs(GUEST_RSP),
        Field::Gpr(g) => Home::Store(Location::Gpr(g)),
        Field::Rip => Home::Vmcs(GUEST_RIP),
        Field::Rflags => Home::Vmcs(GUEST_RFLAGS),
        Field::Seg(s, SegPart::Selector) => Home::Vmcs(selector(s)),
        Field::Seg(s, SegPart::Base) => Home::Vmcs(base(s)),
        Field::Seg(s, SegPart::Limit) => Home::Vmcs(limit(s)),
        Field::Seg(s, SegPart::Attributes) => Home::AccessRights(access_rights(s)),
        Field::Dt(Dt::Gdtr, false) => Home::Vmcs(GUEST_GDTR_BASE),
        Field::Dt(Dt::Gdtr, true) => Home::Vmcs(GUEST_GDTR_LIMIT),
        Field::Dt(Dt::Idtr, false) => Home::Vmcs(GUEST_IDTR_BASE),
        Field::Dt(Dt::Idtr, true) => Home::Vmcs(GUEST_IDTR_LIMIT),
        Field::Cr0 => Home::Vmcs(GUEST_CR0),
        Field::Cr2 => Home::Store(Location::Cr2),
        Field::Cr3 => Home::Vmcs(GUEST_CR3),
        Field::Cr4 => Home::Vmcs(GUEST_CR4),
        Field::Cr8 => Home::Store(Location::Cr8),
        Field::Efer => Home::Vmcs(GUEST_IA32_EFER),
        Field::Pdptr(i) => Home::Vmcs(pdpte(i)),
        Field::Dr(i) => Home::Store(Location::Dr(i)),
        Field::Dr6 => Home::Store(Location::Dr6),
        Field::Dr7 => Home::Vmcs(GUEST_DR7),
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
        | Field::Pkru => Home::Store(Location::Xsave(field)),
        Field::Xcr0 => Home::Store(Location::Xcr0),
        Field::Msr(Msr::Pat) => Home::Vmcs(GUEST_IA32_PAT),
        Field::Msr(Msr::DebugCtl) => Home::Vmcs(GUEST_IA32_DEBUGCTL),
        Field::Msr(Msr::PerfGlobalCtrl) => Home::Vmcs(GUEST_IA32_PERF_GLOBAL_CTRL),
        Field::Msr(Msr::SysenterCs) => Home::Vmcs(GUEST_IA32_SYSENTER_CS),
        Field::Msr(Msr::SysenterEsp) => Home::Vmcs(GUEST_IA32_SYSENTER_ESP),
        Field::Msr(Msr::SysenterEip) => Home::Vmcs(GUEST_IA32_SYSENTER_EIP),
        Field::Msr(Msr::Smbase) => Home::Vmcs(GUEST_SMBASE),
        // IA32_FS_BASE / IA32_GS_BASE are the hidden FS/GS bases (SDM Vol. 3A §3.4.4).
        Field::Msr(Msr::FsBase) => Home::Vmcs(base(Seg::Fs)),
        Field::Msr(Msr::GsBase) => Home::Vmcs(base(Seg::Gs)),
        Field::Msr(_)
        | Field::MtrrFixed(_)
        | Field::MtrrPhysBase(_)
        | Field::MtrrPhysMask(_)
        | Field::Mc(..)
        | Field::VmxCap(_)
        | Field::SgxLeHash(_) => match field.msr_index() {
            Some(i) => Home::Store(Location::Msr(i)),
            // Every MSR field has an index (spec `Field::msr_index`); keep the arm total.
            None => Home::Store(Location::Msr(u32::MAX)),
        },
        Field::Lapic(LapicReg::Icr) => Home::Icr,
        Field::Lapic(r) => Home::Store(Location::Apic(r.offset())),
        Field::LapicBitmap(b, i) => {
            Home::Store(Location::Apic(b.offset() + 0x10 * u32::from(i & 7)))
        }
        Field::Activity => Home::Activity,
        Field::Event(EventFlag::InterruptShadow) => {
            Home::Interruptibility(BLOCKING_BY_STI | BLOCKING_BY_MOV_SS)
        }
        Field::Event(EventFlag::NmiMasked) => Home::Interruptibility(BLOCKING_BY_NMI),
        Field::Event(e) => Home::Store(Location::Event(e)),
        Field::Nested => Home::Nested,
        Field::NestedReg(r) => Home::NestedPart(r),
    }
}

/// Bits of `field` the model can hold: the field's width, or less where its home is narrower
/// (IA32_SYSENTER_CS and SMBASE live in 32-bit VMCS fields).
pub(crate) fn held_width(field: Field) -> u32 {
    let w = match home(field) {
        Home::Vmcs(enc) => Width::of(enc).bits(),
        Home::AccessRights(_) => 16,
        Home::Activity => 2,
        Home::Interruptibility(_) | Home::Nested => 1,
        Home::NestedPart(r) => r.width(),
        Home::Store(loc) => loc.width(),
        Home::Icr => 64,
    };
    w.min(field.width())
}

/// The pending-event flags kept outside the VMCS, in store order.
const MODEL_EVENTS: [EventFlag; 5] = [
    EventFlag::NmiPending,
    EventFlag::ExceptionPending,
    EventFlag::InterruptPending,
    EventFlag::SmiPending,
    EventFlag::Smm,
];

fn event_slot(e: EventFlag) -> Option<usize> {
    MODEL_EVENTS.iter().position(|m| *m == e)
}

/// Slot of `g` in the GPR store, which has no RSP.
fn gpr_slot(g: Gpr) -> Option<usize> {
    let i = g as usize;
    match g {
        Gpr::Rsp => None,
        _ if i < Gpr::Rsp as usize => Some(i),
        _ => Some(i - 1),
    }
}

fn mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// Who is accessing the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The VMM: VMREAD/VMWRITE and store accesses, all counted.
    Vmm,
    /// The guest (through [`super::GuestView`]): the processor changing its own state, not
    /// counted.
    Guest,
}

fn vmcs_error(e: VmcsError) -> BackendError {
    BackendError::Invalid {
        what: "VMCS access",
        why: e.to_string(),
    }
}

fn missing(loc: Location) -> BackendError {
    BackendError::Invalid {
        what: "model storage location",
        why: format!("{loc} does not exist in the model"),
    }
}

/// All of the model's guest state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Storage {
    pub(crate) vmcs: GuestStateArea,
    gprs: [u64; GPRS - 1],
    cr2: u64,
    cr8: u64,
    dr: [u64; 4],
    dr6: u64,
    fpu: Fpu,
    vectors: Vectors,
    pkru: u32,
    xcr0: u64,
    msrs: BTreeMap<u32, u64>,
    apic: [u8; APIC_PAGE_SIZE],
    events: [u8; MODEL_EVENTS.len()],
    pub(crate) nested: NestedVmx,
    store_reads: u64,
    store_writes: u64,
}

impl Storage {
    /// Everything zero (no nested state), like freshly zero-allocated KVM vCPU state.
    pub(crate) fn zeroed() -> Self {
        let msrs = Field::all()
            .into_iter()
            .filter_map(|f| match home(f) {
                Home::Store(Location::Msr(i)) => Some((i, 0)),
                _ => None,
            })
            .collect();
        Storage {
            vmcs: GuestStateArea::zeroed(),
            gprs: [0; GPRS - 1],
            cr2: 0,
            cr8: 0,
            dr: [0; 4],
            dr6: 0,
            fpu: Fpu::default(),
            vectors: Vectors::default(),
            pkru: 0,
            xcr0: 0,
            msrs,
            apic: [0; APIC_PAGE_SIZE],
            events: [0; MODEL_EVENTS.len()],
            nested: NestedVmx::new(),
            store_reads: 0,
            store_writes: 0,
        }
    }

    /// Every location, and every byte of the APIC page, filled with [`POISON_BYTE`].
    pub(crate) fn poisoned() -> Self {
        let mut s = Storage::zeroed();
        s.vmcs = GuestStateArea::filled(u64::from_ne_bytes([POISON_BYTE; 8]));
        s.apic = [POISON_BYTE; APIC_PAGE_SIZE];
        s.nested = NestedVmx::filled(u64::from_ne_bytes([POISON_BYTE; 8]));
        for loc in s.locations() {
            // Every listed location exists, so the write cannot miss.
            let _ = s.raw_set(loc, poison_pattern(loc.width()));
        }
        s
    }

    /// Store reads and store writes so far.
    pub(crate) fn store_counts(&self) -> (u64, u64) {
        (self.store_reads, self.store_writes)
    }

    /// Every storage location: each VMCS guest-state field, then each store location a field
    /// maps to, then the nested pointers.
    pub(crate) fn locations(&self) -> Vec<Location> {
        let mut v: Vec<Location> = GUEST_FIELDS
            .iter()
            .map(|f| Location::Vmcs(f.encoding))
            .collect();
        for f in Field::all() {
            match home(f) {
                Home::Store(loc) => v.push(loc),
                Home::Icr => {
                    v.push(Location::Apic(APIC_ICR_LOW));
                    v.push(Location::Apic(APIC_ICR_HIGH));
                }
                _ => {}
            }
        }
        v.extend([
            Location::VmxonPointer,
            Location::CurrentVmcsPointer,
            Location::EvmcsPointer,
            Location::NestedFlag(NestedReg::GuestMode),
            Location::NestedFlag(NestedReg::Gif),
            Location::NestedFlag(NestedReg::InterceptInit),
        ]);
        v
    }

    /// The locations still holding the poison pattern for their width.
    pub(crate) fn poisoned_locations(&self) -> Vec<Location> {
        self.locations()
            .into_iter()
            .filter(|loc| self.raw_get(*loc) == Some(poison_pattern(loc.width())))
            .collect()
    }

    /// The value at `loc`, uncounted; `None` if the location does not exist (or is an absent
    /// nested pointer).
    pub(crate) fn raw_get(&self, loc: Location) -> Option<u128> {
        match loc {
            Location::Vmcs(enc) => self.vmcs.peek(enc).ok().map(u128::from),
            Location::Gpr(g) => gpr_slot(g).map(|i| u128::from(self.gprs[i])),
            Location::Cr2 => Some(self.cr2.into()),
            Location::Cr8 => Some(self.cr8.into()),
            Location::Dr(i) => self.dr.get(usize::from(i)).map(|v| u128::from(*v)),
            Location::Dr6 => Some(self.dr6.into()),
            Location::Xsave(f) => self.xsave_get(f),
            Location::Xcr0 => Some(self.xcr0.into()),
            Location::Msr(i) => self.msrs.get(&i).map(|v| u128::from(*v)),
            Location::Apic(off) => {
                let o = usize::try_from(off).ok()?;
                let bytes = self.apic.get(o..o.checked_add(4)?)?;
                let word: [u8; 4] = bytes.try_into().ok()?;
                Some(u32::from_le_bytes(word).into())
            }
            Location::Event(e) => event_slot(e).map(|i| u128::from(self.events[i])),
            Location::VmxonPointer => self.nested.vmxon_pointer().map(u128::from),
            Location::CurrentVmcsPointer => Some(self.nested.current_vmcs_pointer().into()),
            Location::EvmcsPointer => self.nested.evmcs_pointer().map(u128::from),
            Location::NestedFlag(r) => Some(self.nested.part(r).into()),
        }
    }

    /// Write `value`, truncated to the location's width, uncounted. `Err` if the location
    /// does not exist.
    // The `as` casts truncate on purpose: `v` is masked to the location's width first.
    #[allow(clippy::cast_possible_truncation)]
    pub(crate) fn raw_set(&mut self, loc: Location, value: u128) -> Result<(), BackendError> {
        let v = value & mask(loc.width());
        let ok = match loc {
            Location::Vmcs(enc) => self.vmcs.poke(enc, v as u64).is_ok(),
            Location::Gpr(g) => match gpr_slot(g) {
                Some(i) => {
                    self.gprs[i] = v as u64;
                    true
                }
                None => false,
            },
            Location::Cr2 => {
                self.cr2 = v as u64;
                true
            }
            Location::Cr8 => {
                self.cr8 = v as u64;
                true
            }
            Location::Dr(i) => match self.dr.get_mut(usize::from(i)) {
                Some(d) => {
                    *d = v as u64;
                    true
                }
                None => false,
            },
            Location::Dr6 => {
                self.dr6 = v as u64;
                true
            }
            Location::Xsave(f) => self.xsave_set(f, v),
            Location::Xcr0 => {
                self.xcr0 = v as u64;
                true
            }
            Location::Msr(i) => match self.msrs.get_mut(&i) {
                Some(m) => {
                    *m = v as u64;
                    true
                }
                None => false,
            },
            Location::Apic(off) => {
                let slot = usize::try_from(off)
                    .ok()
                    .and_then(|o| Some(o..o.checked_add(4)?))
                    .and_then(|r| self.apic.get_mut(r));
                match slot {
                    Some(bytes) => {
                        bytes.copy_from_slice(&(v as u32).to_le_bytes());
                        true
                    }
                    None => false,
                }
            }
            Location::Event(e) => match event_slot(e) {
                Some(i) => {
                    self.events[i] = v as u8;
                    true
                }
                None => false,
            },
            Location::VmxonPointer => {
                self.nested.set_vmxon_raw(Some(v as u64));
                true
            }
            Location::CurrentVmcsPointer => {
                self.nested.set_current_raw(v as u64);
                true
            }
            Location::EvmcsPointer => {
                self.nested.set_evmcs_raw(Some(v as u64));
                true
            }
            Location::NestedFlag(r) => {
                self.nested.set_flag_raw(r, v as u8);
                true
            }
        };
        if ok { Ok(()) } else { Err(missing(loc)) }
    }

    fn xsave_get(&self, f: Field) -> Option<u128> {
        let (p, v) = (&self.fpu, &self.vectors);
        let i = |n: u8| usize::from(n);
        Some(match f {
            Field::X87(x) => match x {
                X87::Fcw => p.fcw.into(),
                X87::Fsw => p.fsw.into(),
                X87::Ftw => p.ftw.into(),
                X87::Fop => p.fop.into(),
                X87::Fip => p.fip.into(),
                X87::Fdp => p.fdp.into(),
                X87::Fcs => p.fcs.into(),
                X87::Fds => p.fds.into(),
            },
            Field::St(n) => *p.st.get(i(n))?,
            Field::Mxcsr => p.mxcsr.into(),
            Field::Xmm(n) => *v.xmm.get(i(n))?,
            Field::YmmHi(n) => *v.ymm_hi.get(i(n))?,
            Field::ZmmHi256(r, l) => *v.zmm_hi256.get(i(r))?.get(i(l))?,
            Field::Hi16Zmm(r, l) => *v.hi16_zmm.get(i(r).checked_sub(16)?)?.get(i(l))?,
            Field::TileCfg(n) => *v.xtilecfg.get(i(n))?,
            Field::TileData(t, w) if t < 8 && w < 64 => {
                let (h, n) = tile_word(t, w);
                *v.xtiledata.get(h)?.get(n)?
            }
            Field::Opmask(n) => (*v.opmask.get(i(n))?).into(),
            Field::Pkru => self.pkru.into(),
            _ => return None,
        })
    }

    // `v` is already masked to the slot's width by `raw_set`.
    #[allow(clippy::cast_possible_truncation)]
    fn xsave_set(&mut self, f: Field, v: u128) -> bool {
        let (p, vec) = (&mut self.fpu, &mut self.vectors);
        let i = |n: u8| usize::from(n);
        let slot: Option<&mut u128> = match f {
            Field::X87(x) => {
                match x {
                    X87::Fcw => p.fcw = v as u16,
                    X87::Fsw => p.fsw = v as u16,
                    X87::Ftw => p.ftw = v as u16,
                    X87::Fop => p.fop = v as u16,
                    X87::Fip => p.fip = v as u64,
                    X87::Fdp => p.fdp = v as u64,
                    X87::Fcs => p.fcs = v as u16,
                    X87::Fds => p.fds = v as u16,
                }
                return true;
            }
            Field::Mxcsr => {
                p.mxcsr = v as u32;
                return true;
            }
            Field::Pkru => {
                self.pkru = v as u32;
                return true;
            }
            Field::Opmask(n) => match vec.opmask.get_mut(i(n)) {
                Some(k) => {
                    *k = v as u64;
                    return true;
                }
                None => return false,
            },
            Field::St(n) => p.st.get_mut(i(n)),
            Field::Xmm(n) => vec.xmm.get_mut(i(n)),
            Field::YmmHi(n) => vec.ymm_hi.get_mut(i(n)),
            Field::ZmmHi256(r, l) => vec.zmm_hi256.get_mut(i(r)).and_then(|z| z.get_mut(i(l))),
            Field::Hi16Zmm(r, l) => i(r)
                .checked_sub(16)
                .and_then(|r| vec.hi16_zmm.get_mut(r))
                .and_then(|z| z.get_mut(i(l))),
            Field::TileCfg(n) => vec.xtilecfg.get_mut(i(n)),
            Field::TileData(t, w) if t < 8 && w < 64 => {
                let (h, n) = tile_word(t, w);
                vec.xtiledata.get_mut(h).and_then(|d| d.get_mut(n))
            }
            _ => None,
        };
        match slot {
            Some(s) => {
                *s = v;
                true
            }
            None => false,
        }
    }

    fn vmcs_read(&mut self, enc: u32, via: Via) -> Result<u64, BackendError> {
        match via {
            Via::Vmm => self.vmcs.vmread(enc),
            Via::Guest => self.vmcs.peek(enc),
        }
        .map_err(vmcs_error)
    }

    fn vmcs_write(&mut self, enc: u32, value: u64, via: Via) -> Result<(), BackendError> {
        match via {
            Via::Vmm => self.vmcs.vmwrite(enc, value),
            Via::Guest => self.vmcs.poke(enc, value),
        }
        .map_err(vmcs_error)
    }

    fn store_read(&mut self, loc: Location, via: Via) -> Result<u128, BackendError> {
        if via == Via::Vmm {
            self.store_reads += 1;
        }
        self.raw_get(loc).ok_or_else(|| missing(loc))
    }

    fn store_write(&mut self, loc: Location, value: u128, via: Via) -> Result<(), BackendError> {
        if via == Via::Vmm {
            self.store_writes += 1;
        }
        self.raw_set(loc, value)
    }

    /// `nested.state`: in VMX operation or guest mode.
    fn nested_present(&mut self, via: Via) -> bool {
        if via == Via::Vmm {
            // The VMXON pointer and the guest-mode flag.
            self.store_reads += 2;
        }
        self.nested.in_operation()
    }

    fn nested_part(&mut self, part: NestedReg, via: Via) -> Result<u128, BackendError> {
        if via == Via::Vmm {
            self.store_reads += 1;
        }
        let v = self.nested.part(part);
        if part.width() == 1 && v > 1 {
            return Err(BackendError::Invalid {
                what: "nested flag",
                why: format!(
                    "{} holds {v:#x}, not 0 or 1: it was never written — store the nested_state class first",
                    Location::NestedFlag(part)
                ),
            });
        }
        Ok(v.into())
    }

    /// Read `field` (not yet masked to its width; `Field::set` masks).
    pub(crate) fn read_field(&mut self, field: Field, via: Via) -> Result<u128, BackendError> {
        match home(field) {
            Home::Vmcs(enc) => Ok(self.vmcs_read(enc, via)?.into()),
            Home::AccessRights(enc) => Ok((self.vmcs_read(enc, via)? & 0xffff).into()),
            Home::Activity => {
                let v = self.vmcs_read(vmcs::GUEST_ACTIVITY_STATE, via)?;
                if v <= 3 {
                    Ok(v.into())
                } else {
                    Err(BackendError::Invalid {
                        what: "activity state",
                        why: format!(
                            "GUEST_ACTIVITY_STATE holds {v:#x}, which is no activity state (0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI; SDM Vol. 3C §25.4.2): it was never written — store the mp_state class first"
                        ),
                    })
                }
            }
            Home::Interruptibility(bits) => {
                let v = self.vmcs_read(vmcs::GUEST_INTERRUPTIBILITY_STATE, via)?;
                Ok(u128::from(v & bits != 0))
            }
            Home::Store(loc @ Location::Event(_)) => {
                let v = self.store_read(loc, via)?;
                if v <= 1 {
                    Ok(v)
                } else {
                    Err(BackendError::Invalid {
                        what: "pending-event flag",
                        why: format!(
                            "{loc} holds {v:#x}, not 0 or 1: it was never written — store the vcpu_events class first"
                        ),
                    })
                }
            }
            Home::Store(loc) => self.store_read(loc, via),
            Home::Icr => {
                let lo = self.store_read(Location::Apic(APIC_ICR_LOW), via)?;
                let hi = self.store_read(Location::Apic(APIC_ICR_HIGH), via)?;
                Ok(lo | hi << 32)
            }
            Home::Nested => Ok(self.nested_present(via).into()),
            Home::NestedPart(r) => self.nested_part(r, via),
        }
    }

    /// Write `value` (masked to the field's width here) to `field`.
    #[allow(clippy::cast_possible_truncation)] // masked to at most 64 bits where cast
    pub(crate) fn write_field(
        &mut self,
        field: Field,
        value: u128,
        via: Via,
    ) -> Result<(), BackendError> {
        let v = value & field.mask();
        match home(field) {
            Home::Vmcs(enc) => self.vmcs_write(enc, v as u64, via),
            Home::AccessRights(enc) => {
                let ar = v as u64 & 0xffff;
                // A segment that is not present is unusable (SDM Vol. 3C §25.4.1, Table 25-2:
                // bit 16; KVM's vmx_segment_access_rights() does the same).
                let ar = if ar & vmcs::AR_PRESENT == 0 {
                    ar | vmcs::AR_UNUSABLE
                } else {
                    ar
                };
                self.vmcs_write(enc, ar, via)
            }
            // The VMCS holds the four VMX activity states (SDM Vol. 3C §25.4.2); the field's
            // fifth encoding, a host's never-started AP, is not one to store (as on KVM).
            Home::Activity if v > 3 => Err(BackendError::Invalid {
                what: "activity state",
                why: format!(
                    "{v:#x} is no VMX activity state (0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI; SDM Vol. 3C §25.4.2): an AP a host never started (4) is not a state to store; store wait-for-SIPI (3) for an AP"
                ),
            }),
            Home::Activity => self.vmcs_write(vmcs::GUEST_ACTIVITY_STATE, v as u64, via),
            Home::Interruptibility(bits) => {
                let enc = vmcs::GUEST_INTERRUPTIBILITY_STATE;
                let cur = self.vmcs_read(enc, via)?;
                let new = if v == 0 {
                    cur & !bits
                } else if cur & bits != 0 {
                    // Already blocked (by STI or by MOV SS for the shadow): keep which.
                    cur
                } else {
                    // The spec's interrupt shadow does not say STI or MOV SS: use STI.
                    cur | (bits & bits.wrapping_neg())
                };
                self.vmcs_write(enc, new, via)
            }
            Home::Store(loc) => self.store_write(loc, v, via),
            Home::Icr => {
                self.store_write(Location::Apic(APIC_ICR_LOW), v & 0xffff_ffff, via)?;
                self.store_write(Location::Apic(APIC_ICR_HIGH), v >> 32, via)
            }
            Home::Nested => {
                if v == 0 {
                    if via == Via::Vmm {
                        // Three pointers and three flags.
                        self.store_writes += 6;
                    }
                    self.nested.drop_all();
                    // Without VMCS shadowing the link pointer must be all-ones (SDM Vol. 3C
                    // §25.4.2; KVM's init_vmcs() writes INVALID_GPA).
                    self.vmcs_write(vmcs::VMCS_LINK_POINTER, u64::MAX, via)
                } else if self.nested_present(via) {
                    Ok(())
                } else {
                    Err(BackendError::Invalid {
                        what: "nested state",
                        why: "nested.state = 1 on a vCPU without nested state: nested state cannot be created from a bit; enter VMX operation (vmxon) instead".into(),
                    })
                }
            }
            Home::NestedPart(r) => {
                if via == Via::Vmm {
                    self.store_writes += 1;
                }
                self.nested
                    .store_part(r, v as u64)
                    .map_err(|e| BackendError::Invalid {
                        what: "nested state",
                        why: e.to_string(),
                    })
            }
        }
    }

    /// Store the pending-event fields of `state` as the vcpu_events class does: the whole
    /// interruptibility state in one VMWRITE (bit 0 for the interrupt shadow, bit 3 for NMI
    /// blocking, every other bit 0), no pending debug exceptions (the spec has no field for
    /// them, and an event store leaves none pending), and the model's event flags.
    pub(crate) fn store_events(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let e = &state.events;
        let mut intr = 0;
        if e.interrupt_shadow {
            intr |= vmcs::BLOCKING_BY_STI;
        }
        if e.nmi_masked {
            intr |= vmcs::BLOCKING_BY_NMI;
        }
        self.vmcs_write(vmcs::GUEST_INTERRUPTIBILITY_STATE, intr, Via::Vmm)?;
        self.vmcs_write(vmcs::GUEST_PENDING_DEBUG_EXCEPTIONS, 0, Via::Vmm)?;
        for flag in MODEL_EVENTS {
            let f = Field::Event(flag);
            self.write_field(f, f.get(state), Via::Vmm)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_pattern_per_width() {
        assert_eq!(poison_pattern(8), 0xa5);
        assert_eq!(poison_pattern(11), 0x5a5);
        assert_eq!(poison_pattern(32), 0xa5a5_a5a5);
        assert_eq!(poison_pattern(80), 0xa5a5_a5a5_a5a5_a5a5_a5a5);
        assert_eq!(poison_pattern(128), u128::from_ne_bytes([0xa5; 16]));
    }

    #[test]
    fn gpr_store_skips_rsp() {
        assert_eq!(gpr_slot(Gpr::Rax), Some(0));
        assert_eq!(gpr_slot(Gpr::Rbx), Some(3));
        assert_eq!(gpr_slot(Gpr::Rsp), None);
        assert_eq!(gpr_slot(Gpr::Rbp), Some(4));
        assert_eq!(gpr_slot(Gpr::R15), Some(14));
    }

    #[test]
    fn locations_are_distinct_and_exist() {
        let s = Storage::zeroed();
        let locs = s.locations();
        let mut sorted = locs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), locs.len(), "no location listed twice");
        for loc in &locs {
            let expected = match loc {
                Location::VmxonPointer | Location::EvmcsPointer => None,
                Location::CurrentVmcsPointer => Some(u128::from(u64::MAX)),
                Location::NestedFlag(NestedReg::Gif) => Some(1),
                _ => Some(0),
            };
            assert_eq!(s.raw_get(*loc), expected, "{loc}");
        }
    }

    #[test]
    fn msr_store_holds_exactly_the_msrs_outside_the_vmcs() {
        let s = Storage::zeroed();
        let keys: Vec<u32> = s.msrs.keys().copied().collect();
        // Every MSR the spec lists, but those with a VMCS guest-state field (SDM Vol. 3C
        // §25.4.1): EFER, PAT, DEBUGCTL, PERF_GLOBAL_CTRL, SYSENTER_CS/ESP/EIP, SMBASE and the
        // FS/GS bases.
        let in_vmcs = [
            0xc000_0080,
            0x277,
            0x1d9,
            0x38f,
            0x174,
            0x175,
            0x176,
            0x9e,
            0xc000_0100,
            0xc000_0101,
        ];
        let outside: std::collections::BTreeSet<u32> = Field::all()
            .iter()
            .filter_map(Field::msr_index)
            .filter(|i| !in_vmcs.contains(i))
            .collect();
        assert_eq!(
            keys.iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            outside
        );
        assert!(keys.contains(&0x480)); // IA32_VMX_BASIC
        assert!(keys.contains(&0x8f)); // IA32_SGXLEPUBKEYHASH3
        assert!(keys.contains(&0xc001_0117)); // VM_HSAVE_PA
        assert!(keys.contains(&0x1b)); // IA32_APIC_BASE
        assert!(!keys.contains(&0x277)); // IA32_PAT is GUEST_IA32_PAT
        assert!(!keys.contains(&0xc000_0080)); // IA32_EFER is GUEST_IA32_EFER
        assert!(!keys.contains(&0xc000_0100)); // IA32_FS_BASE is GUEST_FS_BASE
    }
}
