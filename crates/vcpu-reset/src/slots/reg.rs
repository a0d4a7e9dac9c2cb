//! The cache's register list: which slot each spec field lives in, and which backend class
//! each slot is loaded and stored with.
//!
//! A slot is the unit of *available* and *dirty* tracking: single registers where KVM and VMX
//! let them be read and written one at a time (GPRs, RIP, RFLAGS, each segment, GDTR/IDTR, the
//! control and debug registers), and whole classes for state that only moves as a block (XSAVE,
//! XCRs, MSRs, local APIC, MP state, events, nested state).
//!
//! The slots are declared once, in the `slot_table!` invocation below: one row per kind of
//! slot, in bit order, with its class. The [`Reg`] enum, each slot's bit index, [`NR_REGS`],
//! [`Reg::class`], [`Reg::class_mask`] and [`Reg::all`] are generated from it. Adding a
//! register means adding a spec field and mapping it to a slot in [`Reg::of`] (and a row here
//! only if it needs a slot of its own).

use vcpu_reset_spec::{Dt, Field, Gpr, Msr, Seg};

use super::class::StateClass;

/// Generates [`Reg`] and its layout constants from one table. A row is
/// `Name => Class` for a single slot, or `Name(binding: Type; count; nth) => Class` for `count`
/// slots told apart by a payload, where `binding as u32 % count` is the payload's position and
/// `nth(i)` builds the `i`-th payload.
macro_rules! slot_table {
    ($(
        $(#[$meta:meta])*
        $name:ident $(($bind:ident: $ty:ty; $count:expr; $nth:expr))? => $class:ident;
    )*) => {
        /// One cache slot.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reg {
            $( $(#[$meta])* $name $(($ty))?, )*
        }

        /// The rows of the table, by position.
        #[derive(Clone, Copy)]
        #[repr(usize)]
        enum Row {
            $( $name, )*
        }

        /// Slots per row.
        const COUNTS: &[u32] = &[ $( slot_table!(@count $($count)?), )* ];

        /// Class per row.
        const CLASSES: &[StateClass] = &[ $( StateClass::$class, )* ];

        impl Reg {
            /// The slot's row in the table and its position within the row.
            const fn row(self) -> (usize, u32) {
                match self {
                    $( Reg::$name $(($bind))? =>
                        (Row::$name as usize, slot_table!(@sub $($bind, $count)?)), )*
                }
            }

            /// Every slot, by index.
            pub fn all() -> [Reg; NR_REGS] {
                let mut out = [Reg::Rip; NR_REGS];
                let mut n = 0;
                $( slot_table!(@each out, n, $name $(, $ty, $count, $nth)?); )*
                debug_assert_eq!(n, NR_REGS);
                out
            }
        }
    };
    (@count) => { 1 };
    (@count $count:expr) => { $count as u32 };
    (@sub) => { 0 };
    (@sub $bind:ident, $count:expr) => { ($bind as u32) % ($count as u32) };
    (@each $out:ident, $n:ident, $name:ident) => {
        $out[$n] = Reg::$name;
        $n += 1;
    };
    (@each $out:ident, $n:ident, $name:ident, $ty:ty, $count:expr, $nth:expr) => {
        let nth: fn(usize) -> $ty = $nth;
        for i in 0..($count as usize) {
            $out[$n] = Reg::$name(nth(i));
            $n += 1;
        }
    };
}

slot_table! {
    /// A general-purpose register.
    Gpr(g: Gpr; Gpr::ALL.len(); |i| Gpr::ALL[i]) => Regs;
    /// RIP.
    Rip => Regs;
    /// RFLAGS.
    Rflags => Regs;
    /// A whole segment register (selector and hidden part).
    Seg(s: Seg; Seg::ALL.len(); |i| Seg::ALL[i]) => Sregs;
    /// GDTR.
    Gdtr => Sregs;
    /// IDTR.
    Idtr => Sregs;
    /// CR0.
    Cr0 => Sregs;
    /// CR2.
    Cr2 => Sregs;
    /// CR3.
    Cr3 => Sregs;
    /// CR4.
    Cr4 => Sregs;
    /// CR8.
    Cr8 => Sregs;
    /// IA32_EFER.
    Efer => Sregs;
    /// The four PDPTEs.
    Pdptrs => Sregs;
    /// DR0–DR3.
    Dr(i: u8; 4; |i| i as u8) => Debug;
    /// DR6.
    Dr6 => Debug;
    /// DR7.
    Dr7 => Debug;
    /// x87/SSE/AVX/AVX-512 state and PKRU.
    Fpu => Fpu;
    /// XCR0.
    Xcrs => Xcrs;
    /// Every cached MSR.
    Msrs => Msrs;
    /// The local APIC.
    Lapic => Lapic;
    /// Activity (MP) state.
    MpState => MpState;
    /// Pending events.
    Events => Events;
    /// Nested-virtualization state.
    Nested => Nested;
}

/// Number of slots: the sum of the table's rows.
pub const NR_REGS: usize = {
    let mut n = 0;
    let mut r = 0;
    while r < COUNTS.len() {
        n += COUNTS[r] as usize;
        r += 1;
    }
    n
};

// Slot masks are `u64`.
const _: () = assert!(NR_REGS <= 64);

/// The first bit index of each row.
const BASES: [u32; COUNTS.len()] = {
    let mut out = [0; COUNTS.len()];
    let mut r = 1;
    while r < COUNTS.len() {
        out[r] = out[r - 1] + COUNTS[r - 1];
        r += 1;
    }
    out
};

/// The slots of each class (indexed by `StateClass as usize`), as bit masks.
const MASKS: [u64; StateClass::ALL.len()] = {
    let mut out = [0u64; StateClass::ALL.len()];
    let mut r = 0;
    while r < COUNTS.len() {
        let bits = ((1u64 << COUNTS[r]) - 1) << BASES[r];
        out[CLASSES[r] as usize] |= bits;
        r += 1;
    }
    out
};

/// A set of cache slots ([`Reg`]s): what a backend's single-slot load or store
/// ([`Backend::load_slots`](crate::backend::Backend::load_slots)) is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegSet(u64);

impl RegSet {
    /// No slot.
    pub const EMPTY: RegSet = RegSet(0);

    /// The one slot `reg`.
    pub const fn of(reg: Reg) -> RegSet {
        RegSet(reg.bit())
    }

    /// Every slot of `class`.
    pub const fn class(class: StateClass) -> RegSet {
        RegSet(Reg::class_mask(class))
    }

    /// The set whose slot bits ([`Reg::bit`]) are `bits`, as the cache tracks them.
    pub(crate) const fn from_bits(bits: u64) -> RegSet {
        RegSet(bits)
    }

    /// This set plus `reg`.
    #[must_use]
    pub const fn with(self, reg: Reg) -> RegSet {
        RegSet(self.0 | reg.bit())
    }

    /// Whether `reg` is in the set.
    pub const fn contains(self, reg: Reg) -> bool {
        self.0 & reg.bit() != 0
    }

    /// The slots in both sets.
    #[must_use]
    pub const fn intersection(self, other: RegSet) -> RegSet {
        RegSet(self.0 & other.0)
    }

    /// Whether the set holds no slot.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The slots' bit indices ([`Reg::index`]), lowest first: one step per slot in the set.
    pub fn indices(self) -> impl Iterator<Item = u32> {
        let mut mask = self.0;
        std::iter::from_fn(move || {
            (mask != 0).then(|| {
                let i = mask.trailing_zeros();
                mask &= mask - 1;
                i
            })
        })
    }
}

impl Reg {
    /// The slot's bit index (0..[`NR_REGS`]).
    pub const fn index(self) -> u32 {
        let (row, sub) = self.row();
        BASES[row] + sub
    }

    /// The slot's bit.
    pub const fn bit(self) -> u64 {
        1 << self.index()
    }

    /// The backend class the slot is loaded and stored with.
    pub const fn class(self) -> StateClass {
        CLASSES[self.row().0]
    }

    /// The slots of `class`, as a bit mask.
    pub const fn class_mask(class: StateClass) -> u64 {
        MASKS[class as usize]
    }

    /// The slot that holds `field`.
    pub fn of(field: Field) -> Reg {
        match field {
            Field::Gpr(g) => Reg::Gpr(g),
            Field::Rip => Reg::Rip,
            Field::Rflags => Reg::Rflags,
            Field::Seg(s, _) => Reg::Seg(s),
            Field::Dt(Dt::Gdtr, _) => Reg::Gdtr,
            Field::Dt(Dt::Idtr, _) => Reg::Idtr,
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
            | Field::TileCfg(_)
            | Field::TileData(..)
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
}

/// The partition of [`Field::all`] by slot, computed once from [`Reg::of`]: the fields of
/// each slot (by index), and the mask of slots that hold exactly one field.
struct Partition {
    fields: Vec<Vec<Field>>,
    single: u64,
}

fn partition() -> &'static Partition {
    static P: std::sync::OnceLock<Partition> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let mut fields = vec![Vec::new(); NR_REGS];
        for f in Field::all() {
            fields[Reg::of(f).index() as usize].push(f);
        }
        let single = Reg::all()
            .into_iter()
            .filter(|r| fields[r.index() as usize].len() == 1)
            .fold(0, |m, r| m | r.bit());
        Partition { fields, single }
    })
}

impl Reg {
    /// The spec fields this slot holds ([`Reg::of`] read backwards), in [`Field::all`] order.
    /// The FS and GS slots include IA32_FS_BASE and IA32_GS_BASE.
    pub fn fields(self) -> &'static [Field] {
        &partition().fields[self.index() as usize]
    }

    /// Whether the slot holds exactly one field, so that writing that field defines the whole
    /// slot (computed from [`Reg::fields`]).
    pub fn holds_one_field(self) -> bool {
        partition().single & self.bit() != 0
    }
}

impl StateClass {
    /// The class that loads and stores `field`: the class of the register-cache slot that
    /// holds it ([`Reg::of`]), so there is one list to extend. IA32_FS_BASE and IA32_GS_BASE
    /// are the FS and GS bases and move with [`StateClass::Sregs`].
    pub fn of(field: Field) -> StateClass {
        Reg::of(field).class()
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
    fn layout_is_the_one_the_cache_has_always_used() {
        // The bit indices are visible through `load_slots`/`store_slots` masks; keep them.
        assert_eq!(NR_REGS, 48);
        assert_eq!(Reg::Gpr(Gpr::Rax).index(), 0);
        assert_eq!(Reg::Rip.index(), 16);
        assert_eq!(Reg::Seg(Seg::ALL[0]).index(), 18);
        assert_eq!(Reg::Gdtr.index(), 26);
        assert_eq!(Reg::Pdptrs.index(), 34);
        assert_eq!(Reg::Dr(0).index(), 35);
        assert_eq!(Reg::Dr7.index(), 40);
        assert_eq!(Reg::Nested.index(), 47);
    }

    #[test]
    fn every_field_maps_to_a_slot_of_a_consistent_class() {
        for f in Field::all() {
            let r = Reg::of(f);
            assert!((r.index() as usize) < NR_REGS);
            assert_eq!(StateClass::of(f), r.class(), "{f}");
        }
        assert_eq!(Reg::of(Field::Msr(Msr::FsBase)), Reg::Seg(Seg::Fs));
        assert_eq!(Reg::of(Field::Msr(Msr::ApicBase)), Reg::Msrs);
    }

    #[test]
    fn every_slot_holds_a_field_and_the_partition_covers_the_spec() {
        let mut n = 0;
        for r in Reg::all() {
            assert!(!r.fields().is_empty(), "{r} holds no spec field");
            for f in r.fields() {
                assert_eq!(Reg::of(*f), r);
            }
            n += r.fields().len();
        }
        assert_eq!(n, Field::all().len());
        // fields_of is the same partition by class, FS/GS base MSRs aside.
        let by_class: usize = StateClass::ALL.iter().map(|c| fields_of(*c).len()).sum();
        assert_eq!(by_class + 2, Field::all().len());
    }

    #[test]
    fn single_field_slots_follow_from_the_partition() {
        let single: Vec<Reg> = Reg::all()
            .into_iter()
            .filter(|r| r.holds_one_field())
            .collect();
        for r in Reg::all() {
            assert_eq!(r.holds_one_field(), r.fields().len() == 1, "{r}");
        }
        assert!(single.contains(&Reg::Rip) && single.contains(&Reg::Xcrs));
        // A segment (four parts, plus the base MSR for FS/GS), the MSRs and the nested state
        // (nested.state and its parts) are written part by part.
        for r in [
            Reg::Seg(Seg::Cs),
            Reg::Seg(Seg::Fs),
            Reg::Msrs,
            Reg::Nested,
            Reg::Fpu,
        ] {
            assert!(!r.holds_one_field(), "{r}");
        }
    }

    #[test]
    fn slots_refine_the_spec_classes() {
        // Every slot's fields are of one spec class (Field::class), the FS/GS base MSRs aside,
        // which are MSRs to the spec and the hidden FS/GS bases to a backend.
        for r in Reg::all() {
            let classes: std::collections::BTreeSet<_> = r
                .fields()
                .iter()
                .filter(|f| !matches!(f, Field::Msr(Msr::FsBase | Msr::GsBase)))
                .map(|f| f.class())
                .collect();
            assert_eq!(classes.len(), 1, "{r}: {classes:?}");
        }
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
