//! The model's `home` (where each field lives) against the shared partition: every field's
//! home is storage of the class [`StateClass::of`] gives it, and no two fields share a home
//! except the FS/GS base MSRs, which are the FS/GS segment bases.

use std::collections::BTreeMap;

use vcpu_reset_spec::{Field, Msr, Seg, SegPart};

use super::storage::{Home, Location, home};
use crate::slots::{Reg, StateClass};

/// The classes a home can belong to. VMCS fields hold state of several classes.
fn classes_of(h: Home, field: Field) -> &'static [StateClass] {
    use StateClass::*;
    match h {
        Home::Vmcs(_) | Home::Store(Location::Vmcs(_)) => &[Regs, Sregs, Debug, Msrs],
        Home::AccessRights(_) | Home::Store(Location::Cr2 | Location::Cr8) => &[Sregs],
        Home::Store(Location::Gpr(_)) => &[Regs],
        Home::Store(Location::Dr(_) | Location::Dr6) => &[Debug],
        Home::Store(Location::Xsave(f)) => {
            assert_eq!(f, field, "the XSAVE store names its field");
            &[Fpu]
        }
        Home::Store(Location::Xcr0) => &[Xcrs],
        Home::Store(Location::Msr(i)) => {
            assert_eq!(
                Some(i),
                field.msr_index(),
                "{field}: MSR store by its index"
            );
            &[Msrs]
        }
        Home::Store(Location::Apic(_)) | Home::Icr => &[Lapic],
        Home::Activity => &[MpState],
        Home::Interruptibility(_) | Home::Store(Location::Event(_)) => &[Events],
        Home::Nested
        | Home::NestedPart(_)
        | Home::Store(
            Location::VmxonPointer
            | Location::CurrentVmcsPointer
            | Location::EvmcsPointer
            | Location::NestedFlag(_),
        ) => &[Nested],
    }
}

#[test]
fn every_home_is_storage_of_the_fields_class() {
    for f in Field::all() {
        let h = home(f);
        assert!(
            classes_of(h, f).contains(&StateClass::of(f)),
            "{f}: home {h:?}, class {}",
            StateClass::of(f)
        );
    }
}

#[test]
fn fields_share_a_home_only_as_fs_gs_base_aliases() {
    let mut seen: BTreeMap<String, Field> = BTreeMap::new();
    for f in Field::all() {
        let key = format!("{:?}", home(f));
        if let Some(prev) = seen.insert(key, f) {
            let alias = |m, s| {
                (prev, f) == (Field::Seg(s, SegPart::Base), Field::Msr(m))
                    && Reg::of(prev) == Reg::of(f)
            };
            assert!(
                alias(Msr::FsBase, Seg::Fs) || alias(Msr::GsBase, Seg::Gs),
                "{prev} and {f} share a home"
            );
        }
    }
}
