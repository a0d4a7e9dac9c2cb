//! `kvm_sregs2` / `kvm_sregs` ↔ [`VcpuState`]: segments, GDTR/IDTR, CR0/2/3/4/8, EFER and the
//! PDPTRs ([`StateClass::Sregs`]), whole or by register-cache slot ([`Reg`] masks).
//!
//! A segment's attributes are its descriptor's access-rights bits (type, S, DPL, P, AVL, L,
//! D/B, G: SDM Vol. 3A §3.4.5, APM Vol. 2 §4.7); `kvm_segment` holds them unpacked, with
//! `unusable` for a null segment. PDPTRs exist only in PAE paging (CR0.PG, CR4.PAE, not
//! EFER.LMA: SDM Vol. 3A §4.4.1, APM Vol. 2 §5.2.1); only `kvm_sregs2` carries them.
//! IA32_APIC_BASE rides in both structures but belongs to the MSRs: [`sregs_from_state`] takes
//! the value to write there.

use kvm_bindings::{KVM_SREGS2_FLAGS_PDPTRS_VALID, kvm_dtable, kvm_segment, kvm_sregs, kvm_sregs2};
use vcpu_reset_spec::{DescriptorTable, Seg, Segment, VcpuState};

use crate::slots::{Reg, RegSet, StateClass};

const CR0_PG: u64 = 1 << 31;
const CR0_PE: u64 = 1;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;

/// Whether CR0, CR4 and EFER select PAE paging, the only mode with PDPTRs.
pub fn is_pae_paging(cr0: u64, cr4: u64, efer: u64) -> bool {
    cr0 & CR0_PG != 0 && cr4 & CR4_PAE != 0 && efer & EFER_LMA == 0
}

/// Whether a `kvm_sregs` store would make KVM force the BSP runnable ("older userspace won't
/// unhalt the vcpu on reset": CS at the reset vector, CR0.PE clear).
pub fn forces_bsp_runnable(s: &kvm_sregs) -> bool {
    s.cs.selector == 0xf000 && s.cs.base == 0xffff_0000 && s.cr0 & CR0_PE == 0
}

/// A `kvm_segment` as a [`Segment`] with VMX access rights. A segment KVM marks unusable is
/// reported not present.
pub fn segment_to_state(k: &kvm_segment) -> Segment {
    let bit = |v: u8, shift: u16| u16::from(v & 1) << shift;
    let present = k.present != 0 && k.unusable == 0;
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attributes: u16::from(k.type_ & 0xf)
            | bit(k.s, 4)
            | (u16::from(k.dpl & 3) << 5)
            | (u16::from(present) << 7)
            | bit(k.avl, 12)
            | bit(k.l, 13)
            | bit(k.db, 14)
            | bit(k.g, 15),
    }
}

/// A [`Segment`] as a `kvm_segment`; a segment that is not present is unusable.
pub fn segment_from_state(s: &Segment) -> kvm_segment {
    let a = s.attributes;
    let bit = |shift: u16| u8::from(a & (1 << shift) != 0);
    let present = bit(7);
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        present,
        dpl: ((a >> 5) & 3) as u8,
        db: bit(14),
        s: bit(4),
        l: bit(13),
        g: bit(15),
        avl: bit(12),
        unusable: 1 - present,
        padding: 0,
    }
}

fn dtable_to_state(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: d.base,
        limit: d.limit,
    }
}

fn dtable_from_state(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        padding: [0; 3],
    }
}

/// The eight segments of `kvm_sregs2`, in [`Seg`] order.
fn segments_mut(s: &mut kvm_sregs2) -> [&mut kvm_segment; 8] {
    [
        &mut s.es, &mut s.cs, &mut s.ss, &mut s.ds, &mut s.fs, &mut s.gs, &mut s.ldt, &mut s.tr,
    ]
}

fn segments(s: &kvm_sregs2) -> [&kvm_segment; 8] {
    [&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs, &s.ldt, &s.tr]
}

/// The segment `seg` of a legacy `kvm_sregs`.
fn legacy_segment(s: &kvm_sregs, seg: Seg) -> &kvm_segment {
    match seg {
        Seg::Es => &s.es,
        Seg::Cs => &s.cs,
        Seg::Ss => &s.ss,
        Seg::Ds => &s.ds,
        Seg::Fs => &s.fs,
        Seg::Gs => &s.gs,
        Seg::Ldtr => &s.ldt,
        Seg::Tr => &s.tr,
    }
}

/// Copy the cache slots in `slots` (segments, GDTR, IDTR, CR0/2/3/4/8, EFER) from a legacy
/// `kvm_sregs`, as [`sregs_to_state`] would. The PDPTRs are not in `kvm_sregs`: their bit, and
/// bits of other classes, are ignored. One step per slot asked for.
#[inline]
pub fn sregs_slots_to_state(s: &kvm_sregs, slots: RegSet, state: &mut VcpuState) {
    for index in slots
        .intersection(RegSet::class(StateClass::Sregs))
        .indices()
    {
        match index.checked_sub(Reg::Seg(Seg::Es).index()) {
            Some(i) if (i as usize) < Seg::ALL.len() => {
                let seg = Seg::ALL[i as usize];
                state.segments[seg as usize] = segment_to_state(legacy_segment(s, seg));
                continue;
            }
            _ => {}
        }
        match index {
            i if i == Reg::Gdtr.index() => state.gdtr = dtable_to_state(&s.gdt),
            i if i == Reg::Idtr.index() => state.idtr = dtable_to_state(&s.idt),
            i if i == Reg::Cr0.index() => state.cr0 = s.cr0,
            i if i == Reg::Cr2.index() => state.cr2 = s.cr2,
            i if i == Reg::Cr3.index() => state.cr3 = s.cr3,
            i if i == Reg::Cr4.index() => state.cr4 = s.cr4,
            i if i == Reg::Cr8.index() => state.cr8 = s.cr8,
            i if i == Reg::Efer.index() => state.efer = s.efer,
            _ => {}
        }
    }
}

/// Copy `kvm_sregs2` into the state; the PDPTRs only `with_pdptrs`.
pub fn sregs_to_state(s: &kvm_sregs2, state: &mut VcpuState, with_pdptrs: bool) {
    for (seg, k) in Seg::ALL.iter().zip(segments(s)) {
        state.segments[*seg as usize] = segment_to_state(k);
    }
    state.gdtr = dtable_to_state(&s.gdt);
    state.idtr = dtable_to_state(&s.idt);
    state.cr0 = s.cr0;
    state.cr2 = s.cr2;
    state.cr3 = s.cr3;
    state.cr4 = s.cr4;
    state.cr8 = s.cr8;
    state.efer = s.efer;
    if with_pdptrs {
        state.pdptrs = s.pdptrs;
    }
}

/// The `kvm_sregs2` for the state, with `apic_base`; the PDPTRs flagged valid when asked.
pub fn sregs_from_state(state: &VcpuState, apic_base: u64, pdptrs: bool) -> kvm_sregs2 {
    let mut s = kvm_sregs2::default();
    for (seg, k) in Seg::ALL.iter().zip(segments_mut(&mut s)) {
        *k = segment_from_state(&state.segments[*seg as usize]);
    }
    s.gdt = dtable_from_state(&state.gdtr);
    s.idt = dtable_from_state(&state.idtr);
    s.cr0 = state.cr0;
    s.cr2 = state.cr2;
    s.cr3 = state.cr3;
    s.cr4 = state.cr4;
    s.cr8 = state.cr8;
    s.efer = state.efer;
    s.apic_base = apic_base;
    if pdptrs {
        s.flags = u64::from(KVM_SREGS2_FLAGS_PDPTRS_VALID);
        s.pdptrs = state.pdptrs;
    }
    s
}

/// `$out` built from `$src`'s fields that `kvm_sregs` and `kvm_sregs2` share (written once
/// for both directions), plus the target's own fields.
macro_rules! shared_sregs_fields {
    ($src:expr, $out:ident { $($own:tt)* }) => {
        $out {
            cs: $src.cs,
            ds: $src.ds,
            es: $src.es,
            fs: $src.fs,
            gs: $src.gs,
            ss: $src.ss,
            tr: $src.tr,
            ldt: $src.ldt,
            gdt: $src.gdt,
            idt: $src.idt,
            cr0: $src.cr0,
            cr2: $src.cr2,
            cr3: $src.cr3,
            cr4: $src.cr4,
            cr8: $src.cr8,
            efer: $src.efer,
            apic_base: $src.apic_base,
            $($own)*
        }
    };
}

/// `kvm_sregs2` as `kvm_sregs`, with an empty interrupt bitmap.
pub fn to_legacy(s: &kvm_sregs2) -> kvm_sregs {
    shared_sregs_fields!(
        s,
        kvm_sregs {
            interrupt_bitmap: [0; 4]
        }
    )
}

/// `kvm_sregs` as `kvm_sregs2`, without PDPTRs.
pub fn from_legacy(s: &kvm_sregs) -> kvm_sregs2 {
    shared_sregs_fields!(
        s,
        kvm_sregs2 {
            flags: 0,
            pdptrs: [0; 4]
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rights_round_trip() {
        // 64-bit code: type 0xb, S, DPL 0, P, L, G.
        let seg = Segment {
            selector: 0x10,
            base: 0,
            limit: 0xffff_ffff,
            attributes: 0xa09b,
        };
        let k = segment_from_state(&seg);
        assert_eq!(
            (
                k.type_, k.s, k.dpl, k.present, k.l, k.db, k.g, k.avl, k.unusable
            ),
            (0xb, 1, 0, 1, 1, 0, 1, 0, 0)
        );
        assert_eq!(segment_to_state(&k), seg);
        // DPL 3 data, D/B, AVL.
        let seg = Segment {
            attributes: 0x50f3,
            ..seg
        };
        assert_eq!(segment_to_state(&segment_from_state(&seg)), seg);
    }

    #[test]
    fn absent_segments_are_unusable() {
        let seg = Segment {
            attributes: 0x0002,
            ..Segment::default()
        };
        let k = segment_from_state(&seg);
        assert_eq!((k.present, k.unusable), (0, 1));
        let k = kvm_segment {
            present: 1,
            unusable: 1,
            type_: 3,
            s: 1,
            ..Default::default()
        };
        assert_eq!(segment_to_state(&k).attributes, 0x13);
    }

    #[test]
    fn segment_slot_bits_are_in_seg_order() {
        for (i, seg) in Seg::ALL.into_iter().enumerate() {
            assert_eq!(seg as usize, i);
            assert_eq!(Reg::Seg(seg).index(), Reg::Seg(Seg::Es).index() + i as u32);
        }
    }

    #[test]
    fn slot_copies_match_the_whole_class_copy() {
        let mut s = kvm_sregs::default();
        for (i, seg) in [
            &mut s.es, &mut s.cs, &mut s.ss, &mut s.ds, &mut s.fs, &mut s.gs, &mut s.ldt, &mut s.tr,
        ]
        .into_iter()
        .enumerate()
        {
            *seg = segment_from_state(&Segment {
                selector: 8 * i as u16,
                base: 0x1000 * i as u64,
                limit: 0xffff,
                attributes: 0x93,
            });
        }
        s.gdt.base = 0x500;
        s.idt.limit = 0x3ff;
        (s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer) = (0x11, 2, 3, 0x20, 5, 0x500);
        let mut whole = VcpuState::default();
        sregs_to_state(&from_legacy(&s), &mut whole, false);

        let mut only_cs = VcpuState::default();
        sregs_slots_to_state(&s, RegSet::of(Reg::Seg(Seg::Cs)), &mut only_cs);
        let mut want = VcpuState::default();
        want.segments[Seg::Cs as usize] = whole.segments[Seg::Cs as usize];
        assert_eq!(only_cs, want);
        assert_eq!(only_cs.segments[Seg::Cs as usize].selector, 8);

        let mut all = VcpuState::default();
        sregs_slots_to_state(&s, RegSet::class(StateClass::Sregs), &mut all);
        assert_eq!(all, whole);
    }

    #[test]
    fn pdptrs_only_in_pae_paging() {
        assert!(is_pae_paging(0x8000_0011, 0x20, 0));
        assert!(!is_pae_paging(0x8000_0011, 0x20, 0x500));
        assert!(!is_pae_paging(0x11, 0x20, 0));
        let mut state = VcpuState {
            cr0: 0x8000_0011,
            cr4: 0x20,
            pdptrs: [1, 2, 3, 4],
            ..VcpuState::default()
        };
        let s = sregs_from_state(&state, 0xfee0_0900, true);
        assert_eq!(s.flags, u64::from(KVM_SREGS2_FLAGS_PDPTRS_VALID));
        assert_eq!((s.pdptrs, s.apic_base), ([1, 2, 3, 4], 0xfee0_0900));
        state.pdptrs = [0; 4];
        sregs_to_state(&s, &mut state, true);
        assert_eq!(state.pdptrs, [1, 2, 3, 4]);
        assert_eq!(from_legacy(&to_legacy(&s)).cr0, s.cr0);
    }
}
