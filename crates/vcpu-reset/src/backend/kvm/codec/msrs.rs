//! KVM_GET/SET_MSRS lists ↔ [`VcpuState`]: the MSRs of
//! [`StateClass::Msrs`](crate::slots::StateClass::Msrs).
//!
//! Every MSR [`Field`] with an index (SDM Vol. 4 Table 2-2; APM Vol. 2 Appendix A) travels in a
//! `kvm_msr_entry` list, except IA32_EFER and the FS/GS bases, which `kvm_sregs` carries.
//! KVM takes fewer than `MAX_IO_MSRS` (256) entries per call (`msr_io()` in
//! `arch/x86/kvm/x86.c`), so longer lists go in chunks of [`MSRS_PER_CALL`].

use kvm_bindings::{Msrs, kvm_msr_entry};
use vcpu_reset_spec::{Class, Field, Msr, VcpuState};

use crate::backend::BackendError;

/// The MSR fields this class moves: those with an MSR index, except EFER and FS/GS base.
pub fn msr_fields() -> impl Iterator<Item = (Field, u32)> {
    Field::all().into_iter().filter_map(|f| {
        if f.class() != Class::Msrs || matches!(f, Field::Msr(Msr::FsBase | Msr::GsBase)) {
            return None;
        }
        f.msr_index().map(|index| (f, index))
    })
}

/// A KVM_GET/SET_MSRS list for `fields` ((field, MSR index) pairs, e.g. from [`msr_fields`]),
/// each entry's data `data(field)` (0 for a list to read).
pub fn msr_entries<'a>(
    fields: impl Iterator<Item = &'a (Field, u32)>,
    data: impl Fn(Field) -> u64,
) -> Vec<kvm_msr_entry> {
    fields
        .map(|(f, index)| kvm_msr_entry {
            index: *index,
            data: data(*f),
            ..Default::default()
        })
        .collect()
}

/// The most MSRs one KVM_GET/SET_MSRS takes: KVM refuses a list of `MAX_IO_MSRS` (256) or more
/// with E2BIG (`msr_io()` in `arch/x86/kvm/x86.c`), so longer lists go in chunks, as Firecracker
/// does.
pub const MSRS_PER_CALL: usize = 255;

/// `chunk` as the `Msrs` list KVM_GET/SET_MSRS take (at most [`MSRS_PER_CALL`] entries).
pub fn msr_list(chunk: &[kvm_msr_entry]) -> Result<Msrs, BackendError> {
    Msrs::from_entries(chunk).map_err(|e| BackendError::Invalid {
        what: "MSR list",
        why: format!("{} MSRs do not fit KVM_GET/SET_MSRS: {e}", chunk.len()),
    })
}

/// Copy the `entries` KVM_GET_MSRS read for `fields` (pairwise, as [`msr_entries`] built them)
/// into `state`.
pub fn msr_entries_to_state(
    entries: &[kvm_msr_entry],
    fields: &[(Field, u32)],
    state: &mut VcpuState,
) {
    for (entry, (field, _)) in entries.iter().zip(fields) {
        field.set(state, u128::from(entry.data));
    }
}

#[allow(clippy::cast_possible_truncation)] // MSR fields are 64 bits wide
/// The 64-bit value of MSR field `f` in `state`.
pub fn msr_value(state: &VcpuState, f: Field) -> u64 {
    f.get(state) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSR_IA32_APIC_BASE: u32 = 0x1b;

    #[test]
    fn sregs_msrs_are_left_out() {
        let indices: Vec<u32> = msr_fields().map(|(_, i)| i).collect();
        assert_eq!(indices[0], MSR_IA32_APIC_BASE);
        for absent in [0xc000_0080, 0xc000_0100, 0xc000_0101] {
            assert!(!indices.contains(&absent), "{absent:#x}");
        }
        for present in [0x277, 0xfe, 0x2ff, 0x250, 0x20f, 0x174, 0xc000_0102, 0x400] {
            assert!(indices.contains(&present), "{present:#x}");
        }
    }

    #[test]
    fn a_state_round_trips_through_an_msr_list() {
        let fields: Vec<(Field, u32)> = msr_fields().collect();
        let mut state = VcpuState::default();
        for (i, (f, _)) in fields.iter().enumerate() {
            f.set(&mut state, f.mask() & (0x1000 + i as u128));
        }
        let list = msr_entries(fields.iter(), |f| msr_value(&state, f));
        assert_eq!(list.len(), fields.len());
        let pat = list.iter().find(|e| e.index == 0x277).map(|e| e.data);
        assert_eq!(pat, Some(msr_value(&state, Field::Msr(Msr::Pat))));
        let mut back = VcpuState::default();
        msr_entries_to_state(&list, &fields, &mut back);
        for (f, _) in &fields {
            assert_eq!(f.get(&back), f.get(&state), "{f}");
        }
    }

    #[test]
    fn a_chunk_fits_one_call_and_more_does_not() {
        let e = kvm_msr_entry::default();
        assert!(msr_list(&vec![e; MSRS_PER_CALL]).is_ok());
        assert!(msr_list(&vec![e; 300]).is_err());
        assert_eq!(vec![e; 300].chunks(MSRS_PER_CALL).count(), 2);
    }
}
