//! The cache's register list: which slot each spec field lives in, and which backend class
//! each slot is loaded and stored with.
//!
//! A slot is the unit of *available* and *dirty* tracking: single registers where KVM and VMX
//! let them be read and written one at a time (GPRs, RIP, RFLAGS, each segment, GDTR/IDTR, the
//! control and debug registers), and whole classes for state that only moves as a block (XSAVE,
//! XCRs, MSRs, local APIC, MP state, events, nested state). Adding a register means adding a
//! spec field and mapping it to a slot in [`Reg::of`].

use vcpu_reset_spec::{Field, Gpr, Msr, Seg};

use crate::backend::StateClass;

/// One cache slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    /// A general-purpose register.
    Gpr(Gpr),
    /// RIP.
    Rip,
    /// RFLAGS.
    Rflags,
    /// A whole segment register (selector and hidden part).
    Seg(Seg),
    /// GDTR.
    Gdtr,
    /// IDTR.
    Idtr,
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
    /// The four PDPTEs.
    Pdptrs,
    /// DR0–DR3.
    Dr(u8),
    /// DR6.
    Dr6,
    /// DR7.
    Dr7,
    /// x87/SSE/AVX/AVX-512 state and PKRU.
    Fpu,
    /// XCR0.
    Xcrs,
    /// Every cached MSR.
    Msrs,
    /// The local APIC.
    Lapic,
    /// Activity (MP) state.
    MpState,
    /// Pending events.
    Events,
    /// Nested-virtualization state.
    Nested,
}

/// Number of slots.
pub const NR_REGS: usize = 48;

impl Reg {
    /// The slot's bit index (0..[`NR_REGS`]).
    pub const fn index(self) -> u32 {
        match self {
            Reg::Gpr(g) => g as u32,
            Reg::Rip => 16,
            Reg::Rflags => 17,
            Reg::Seg(s) => 18 + s as u32,
            Reg::Gdtr => 26,
            Reg::Idtr => 27,
            Reg::Cr0 => 28,
            Reg::Cr2 => 29,
            Reg::Cr3 => 30,
            Reg::Cr4 => 31,
            Reg::Cr8 => 32,
            Reg::Efer => 33,
            Reg::Pdptrs => 34,
            Reg::Dr(i) => 35 + (i as u32 & 3),
            Reg::Dr6 => 39,
            Reg::Dr7 => 40,
            Reg::Fpu => 41,
            Reg::Xcrs => 42,
            Reg::Msrs => 43,
            Reg::Lapic => 44,
            Reg::MpState => 45,
            Reg::Events => 46,
            Reg::Nested => 47,
        }
    }

    /// The slot's bit.
    pub const fn bit(self) -> u64 {
        1 << self.index()
    }

    /// The backend class the slot is loaded and stored with.
    pub const fn class(self) -> StateClass {
        match self {
            Reg::Gpr(_) | Reg::Rip | Reg::Rflags => StateClass::Regs,
            Reg::Seg(_)
            | Reg::Gdtr
            | Reg::Idtr
            | Reg::Cr0
            | Reg::Cr2
            | Reg::Cr3
            | Reg::Cr4
            | Reg::Cr8
            | Reg::Efer
            | Reg::Pdptrs => StateClass::Sregs,
            Reg::Dr(_) | Reg::Dr6 | Reg::Dr7 => StateClass::Debug,
            Reg::Fpu => StateClass::Fpu,
            Reg::Xcrs => StateClass::Xcrs,
            Reg::Msrs => StateClass::Msrs,
            Reg::Lapic => StateClass::Lapic,
            Reg::MpState => StateClass::MpState,
            Reg::Events => StateClass::Events,
            Reg::Nested => StateClass::Nested,
        }
    }

    /// The slot that holds `field`.
    pub fn of(field: Field) -> Reg {
        match field {
            Field::Gpr(g) => Reg::Gpr(g),
            Field::Rip => Reg::Rip,
            Field::Rflags => Reg::Rflags,
            Field::Seg(s, _) => Reg::Seg(s),
            Field::Dt(vcpu_reset_spec::Dt::Gdtr, _) => Reg::Gdtr,
            Field::Dt(vcpu_reset_spec::Dt::Idtr, _) => Reg::Idtr,
            Field::Cr0 => Reg::Cr0,
            Field::Cr2 => Reg::Cr2,
            Field::Cr3 => Reg::Cr3,
            Field::Cr4 => Reg::Cr4,
            Field::Cr8 => Reg::Cr8,
            Field::Efer => Reg::Efer,
            Field::Pdptr(_) => Reg::Pdptrs,
            Field::Dr(i) => Reg::Dr(i),
            Field::Dr6 => Reg::Dr6,
            Field::Dr7 => Reg::Dr7,
            Field::X87(_)
            | Field::St(_)
            | Field::Mxcsr
            | Field::Xmm(_)
            | Field::YmmHi(_)
            | Field::ZmmHi256(..)
            | Field::Hi16Zmm(..)
            | Field::Opmask(_)
            | Field::Pkru => Reg::Fpu,
            Field::Xcr0 => Reg::Xcrs,
            // The FS/GS base MSRs are the hidden bases of FS and GS.
            Field::Msr(Msr::FsBase) => Reg::Seg(Seg::Fs),
            Field::Msr(Msr::GsBase) => Reg::Seg(Seg::Gs),
            Field::Msr(_)
            | Field::MtrrFixed(_)
            | Field::MtrrPhysBase(_)
            | Field::MtrrPhysMask(_)
            | Field::Mc(..)
            | Field::VmxCap(_)
            | Field::SgxLeHash(_) => Reg::Msrs,
            Field::Lapic(_) | Field::LapicBitmap(..) => Reg::Lapic,
            Field::Activity => Reg::MpState,
            Field::Event(_) => Reg::Events,
            Field::Nested | Field::NestedReg(_) => Reg::Nested,
        }
    }

    /// Every slot, by index.
    pub fn all() -> [Reg; NR_REGS] {
        let mut out = [Reg::Rip; NR_REGS];
        for g in Gpr::ALL {
            out[Reg::Gpr(g).index() as usize] = Reg::Gpr(g);
        }
        for s in Seg::ALL {
            out[Reg::Seg(s).index() as usize] = Reg::Seg(s);
        }
        for i in 0..4 {
            out[Reg::Dr(i).index() as usize] = Reg::Dr(i);
        }
        for r in [
            Reg::Rip,
            Reg::Rflags,
            Reg::Gdtr,
            Reg::Idtr,
            Reg::Cr0,
            Reg::Cr2,
            Reg::Cr3,
            Reg::Cr4,
            Reg::Cr8,
            Reg::Efer,
            Reg::Pdptrs,
            Reg::Dr6,
            Reg::Dr7,
            Reg::Fpu,
            Reg::Xcrs,
            Reg::Msrs,
            Reg::Lapic,
            Reg::MpState,
            Reg::Events,
            Reg::Nested,
        ] {
            out[r.index() as usize] = r;
        }
        out
    }

    /// The slots of `class`, as a bit mask (the slot indices of a class are contiguous).
    pub const fn class_mask(class: StateClass) -> u64 {
        const fn range(lo: u32, hi: u32) -> u64 {
            ((1u64 << (hi + 1)) - 1) & !((1u64 << lo) - 1)
        }
        match class {
            StateClass::Regs => range(0, 17),
            StateClass::Sregs => range(18, 34),
            StateClass::Debug => range(35, 40),
            StateClass::Fpu => range(41, 41),
            StateClass::Xcrs => range(42, 42),
            StateClass::Msrs => range(43, 43),
            StateClass::Lapic => range(44, 44),
            StateClass::MpState => range(45, 45),
            StateClass::Events => range(46, 46),
            StateClass::Nested => range(47, 47),
        }
    }
}

/// The spec fields a load or store of `class` moves, in [`Field::all`] order. IA32_FS_BASE and
/// IA32_GS_BASE are left out: they are the FS and GS bases, moved as `fs.base` and `gs.base`.
pub fn fields_of(class: StateClass) -> &'static [Field] {
    static TABLE: std::sync::OnceLock<Vec<Vec<Field>>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = vec![Vec::new(); StateClass::ALL.len()];
        for f in Field::all() {
            if !matches!(f, Field::Msr(Msr::FsBase | Msr::GsBase)) {
                t[Reg::of(f).class() as usize].push(f);
            }
        }
        t
    });
    &table[class as usize]
}

impl std::fmt::Display for Reg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reg::Gpr(g) => f.write_str(g.name()),
            Reg::Seg(s) => f.write_str(s.name()),
            Reg::Dr(i) => write!(f, "dr{i}"),
            other => {
                let s = format!("{other:?}");
                f.write_str(&s.to_lowercase())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_unique_and_dense() {
        let all = Reg::all();
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index() as usize, i, "{r:?}");
        }
    }

    #[test]
    fn every_field_maps_to_a_slot_of_a_consistent_class() {
        for f in Field::all() {
            let r = Reg::of(f);
            assert!((r.index() as usize) < NR_REGS);
            let _ = r.class();
        }
        assert_eq!(Reg::of(Field::Msr(Msr::FsBase)), Reg::Seg(Seg::Fs));
        assert_eq!(Reg::of(Field::Msr(Msr::ApicBase)), Reg::Msrs);
    }

    #[test]
    fn class_masks_match_slot_classes() {
        for c in StateClass::ALL {
            let computed = Reg::all()
                .into_iter()
                .filter(|r| r.class() == c)
                .fold(0u64, |m, r| m | r.bit());
            assert_eq!(Reg::class_mask(c), computed, "{c}");
        }
    }

    #[test]
    fn class_masks_partition_the_slots() {
        let mut union = 0u64;
        for c in StateClass::ALL {
            let m = Reg::class_mask(c);
            assert_eq!(union & m, 0, "{c} overlaps");
            union |= m;
        }
        assert_eq!(union, (1u64 << NR_REGS) - 1);
    }
}
