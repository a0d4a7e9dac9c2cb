//! The guest-state area of a VMCS, addressed by the SDM's field encodings.
//!
//! Every component of a VMCS is named by a 32-bit encoding (Intel SDM Vol. 3C §25.11.2
//! "VMREAD, VMWRITE, and Encodings of VMCS Fields"; §24.11.2 before the 2023 editions):
//! bit 0 is the access type (0 full, 1 high), bits 9:1 the index, bits 11:10 the type
//! (2 = guest state) and bits 14:13 the width (0 = 16-bit, 1 = 64-bit, 2 = 32-bit,
//! 3 = natural width). The guest-state fields this model holds are those of SDM Vol. 3D,
//! Appendix B: B.1.2 (Table B-2, 16-bit), B.2.3 (64-bit), B.3.3 (Table B-10, 32-bit) and
//! B.4.3 (Table B-14, natural width). The model is a 64-bit processor: natural width is 64 bits.
//!
//! [`GuestStateArea::vmread`] and [`GuestStateArea::vmwrite`] behave as the instructions do:
//! they count themselves, zero-extend on read and truncate on write to the field's width, give
//! bits 63:32 of a 64-bit field through its high-access encoding (`encoding | 1`), and fail with
//! VM-instruction error 12, "VMREAD/VMWRITE from/to unsupported VMCS component" (SDM Vol. 3C
//! §31.4, Table 31-1; §30.4, Table 30-1 before 2023), for any encoding this area does not hold.

use vcpu_reset_spec::Seg;

/// VM-instruction error number for "VMREAD/VMWRITE from/to unsupported VMCS component"
/// (SDM Vol. 3C §31.4, Table 31-1).
pub const VM_ERROR_UNSUPPORTED_COMPONENT: u32 = 12;

/// Guest ES selector (SDM Vol. 3D, Appendix B.1.2, Table B-2). CS..TR follow at +2 each.
pub const GUEST_ES_SELECTOR: u32 = 0x0800;
/// Guest TR selector (SDM Vol. 3D, Appendix B.1.2, Table B-2).
pub const GUEST_TR_SELECTOR: u32 = 0x080e;

/// VMCS link pointer (SDM Vol. 3D, Appendix B.2.3). All-ones unless VMCS shadowing is used
/// (SDM Vol. 3C §25.4.2).
pub const VMCS_LINK_POINTER: u32 = 0x2800;
/// Guest IA32_DEBUGCTL (SDM Vol. 3D, Appendix B.2.3).
pub const GUEST_IA32_DEBUGCTL: u32 = 0x2802;
/// Guest IA32_PAT (SDM Vol. 3D, Appendix B.2.3).
pub const GUEST_IA32_PAT: u32 = 0x2804;
/// Guest IA32_EFER (SDM Vol. 3D, Appendix B.2.3).
pub const GUEST_IA32_EFER: u32 = 0x2806;
/// Guest IA32_PERF_GLOBAL_CTRL (SDM Vol. 3D, Appendix B.2.3).
pub const GUEST_IA32_PERF_GLOBAL_CTRL: u32 = 0x2808;
/// Guest PDPTE0 (SDM Vol. 3D, Appendix B.2.3). PDPTE1–3 follow at +2 each.
pub const GUEST_PDPTE0: u32 = 0x280a;

/// Guest ES limit (SDM Vol. 3D, Appendix B.3.3, Table B-10). CS..TR follow at +2 each.
pub const GUEST_ES_LIMIT: u32 = 0x4800;
/// Guest GDTR limit (SDM Vol. 3D, Appendix B.3.3, Table B-10).
pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
/// Guest IDTR limit (SDM Vol. 3D, Appendix B.3.3, Table B-10).
pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
/// Guest ES access rights (SDM Vol. 3D, Appendix B.3.3, Table B-10). CS..TR follow at +2 each.
pub const GUEST_ES_ACCESS_RIGHTS: u32 = 0x4814;
/// Guest interruptibility state (SDM Vol. 3D, Appendix B.3.3, Table B-10; format in SDM
/// Vol. 3C §25.4.2, Table 25-3).
pub const GUEST_INTERRUPTIBILITY_STATE: u32 = 0x4824;
/// Guest activity state (SDM Vol. 3D, Appendix B.3.3, Table B-10; values in SDM Vol. 3C
/// §25.4.2: 0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI).
pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;
/// Guest SMBASE (SDM Vol. 3D, Appendix B.3.3, Table B-10).
pub const GUEST_SMBASE: u32 = 0x4828;
/// Guest IA32_SYSENTER_CS (SDM Vol. 3D, Appendix B.3.3, Table B-10). 32 bits wide: VM exits
/// save, and VMWRITE keeps, bits 31:0 of the MSR only.
pub const GUEST_IA32_SYSENTER_CS: u32 = 0x482a;

/// Guest CR0 (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_CR0: u32 = 0x6800;
/// Guest CR3 (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_CR3: u32 = 0x6802;
/// Guest CR4 (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_CR4: u32 = 0x6804;
/// Guest ES base (SDM Vol. 3D, Appendix B.4.3, Table B-14). CS..TR follow at +2 each.
pub const GUEST_ES_BASE: u32 = 0x6806;
/// Guest GDTR base (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_GDTR_BASE: u32 = 0x6816;
/// Guest IDTR base (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_IDTR_BASE: u32 = 0x6818;
/// Guest DR7 (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_DR7: u32 = 0x681a;
/// Guest RSP (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_RSP: u32 = 0x681c;
/// Guest RIP (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_RIP: u32 = 0x681e;
/// Guest RFLAGS (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_RFLAGS: u32 = 0x6820;
/// Guest pending debug exceptions (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_PENDING_DEBUG_EXCEPTIONS: u32 = 0x6822;
/// Guest IA32_SYSENTER_ESP (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_IA32_SYSENTER_ESP: u32 = 0x6824;
/// Guest IA32_SYSENTER_EIP (SDM Vol. 3D, Appendix B.4.3, Table B-14).
pub const GUEST_IA32_SYSENTER_EIP: u32 = 0x6826;

/// Access-rights bit 16, "segment unusable" (SDM Vol. 3C §25.4.1, Table 25-2).
pub const AR_UNUSABLE: u64 = 1 << 16;
/// Access-rights bit 7, "segment present" (SDM Vol. 3C §25.4.1, Table 25-2).
pub const AR_PRESENT: u64 = 1 << 7;
/// Interruptibility-state bit 0, blocking by STI (SDM Vol. 3C §25.4.2, Table 25-3).
pub const BLOCKING_BY_STI: u64 = 1 << 0;
/// Interruptibility-state bit 1, blocking by MOV SS (SDM Vol. 3C §25.4.2, Table 25-3).
pub const BLOCKING_BY_MOV_SS: u64 = 1 << 1;
/// Interruptibility-state bit 3, blocking by NMI (SDM Vol. 3C §25.4.2, Table 25-3).
pub const BLOCKING_BY_NMI: u64 = 1 << 3;

/// The encoding of `seg`'s guest selector field (SDM Vol. 3D, Appendix B.1.2).
pub const fn selector(seg: Seg) -> u32 {
    GUEST_ES_SELECTOR + 2 * seg as u32
}

/// The encoding of `seg`'s guest limit field (SDM Vol. 3D, Appendix B.3.3).
pub const fn limit(seg: Seg) -> u32 {
    GUEST_ES_LIMIT + 2 * seg as u32
}

/// The encoding of `seg`'s guest access-rights field (SDM Vol. 3D, Appendix B.3.3).
pub const fn access_rights(seg: Seg) -> u32 {
    GUEST_ES_ACCESS_RIGHTS + 2 * seg as u32
}

/// The encoding of `seg`'s guest base field (SDM Vol. 3D, Appendix B.4.3).
pub const fn base(seg: Seg) -> u32 {
    GUEST_ES_BASE + 2 * seg as u32
}

/// The encoding of guest PDPTE`i` (`i` in 0..4; SDM Vol. 3D, Appendix B.2.3).
pub const fn pdpte(i: u8) -> u32 {
    GUEST_PDPTE0 + 2 * (i as u32 & 3)
}

/// Width of a VMCS field, from bits 14:13 of its encoding (SDM Vol. 3C §25.11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 0: 16-bit.
    Bits16,
    /// 1: 64-bit (with a high-access encoding, `encoding | 1`, for bits 63:32).
    Bits64,
    /// 2: 32-bit.
    Bits32,
    /// 3: natural width, 64 bits on this model (a processor supporting Intel 64).
    Natural,
}

impl Width {
    /// The width named by bits 14:13 of `encoding`.
    pub const fn of(encoding: u32) -> Width {
        match (encoding >> 13) & 3 {
            0 => Width::Bits16,
            1 => Width::Bits64,
            2 => Width::Bits32,
            _ => Width::Natural,
        }
    }

    /// Number of bits the field holds.
    pub const fn bits(self) -> u32 {
        match self {
            Width::Bits16 => 16,
            Width::Bits32 => 32,
            Width::Bits64 | Width::Natural => 64,
        }
    }

    /// Mask of the bits the field holds.
    pub const fn mask(self) -> u64 {
        match self {
            Width::Bits16 => 0xffff,
            Width::Bits32 => 0xffff_ffff,
            Width::Bits64 | Width::Natural => u64::MAX,
        }
    }
}

/// One guest-state field: its full-access encoding and its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    /// Full-access encoding.
    pub encoding: u32,
    /// Name, after the SDM's field name in Appendix B.
    pub name: &'static str,
}

const fn fi(encoding: u32, name: &'static str) -> FieldInfo {
    FieldInfo { encoding, name }
}

/// Every guest-state field this area holds, sorted by encoding (SDM Vol. 3D, Appendix B.1.2,
/// B.2.3, B.3.3, B.4.3).
pub const GUEST_FIELDS: [FieldInfo; 59] = [
    fi(0x0800, "GUEST_ES_SELECTOR"),
    fi(0x0802, "GUEST_CS_SELECTOR"),
    fi(0x0804, "GUEST_SS_SELECTOR"),
    fi(0x0806, "GUEST_DS_SELECTOR"),
    fi(0x0808, "GUEST_FS_SELECTOR"),
    fi(0x080a, "GUEST_GS_SELECTOR"),
    fi(0x080c, "GUEST_LDTR_SELECTOR"),
    fi(0x080e, "GUEST_TR_SELECTOR"),
    fi(0x2800, "VMCS_LINK_POINTER"),
    fi(0x2802, "GUEST_IA32_DEBUGCTL"),
    fi(0x2804, "GUEST_IA32_PAT"),
    fi(0x2806, "GUEST_IA32_EFER"),
    fi(0x2808, "GUEST_IA32_PERF_GLOBAL_CTRL"),
    fi(0x280a, "GUEST_PDPTE0"),
    fi(0x280c, "GUEST_PDPTE1"),
    fi(0x280e, "GUEST_PDPTE2"),
    fi(0x2810, "GUEST_PDPTE3"),
    fi(0x4800, "GUEST_ES_LIMIT"),
    fi(0x4802, "GUEST_CS_LIMIT"),
    fi(0x4804, "GUEST_SS_LIMIT"),
    fi(0x4806, "GUEST_DS_LIMIT"),
    fi(0x4808, "GUEST_FS_LIMIT"),
    fi(0x480a, "GUEST_GS_LIMIT"),
    fi(0x480c, "GUEST_LDTR_LIMIT"),
    fi(0x480e, "GUEST_TR_LIMIT"),
    fi(0x4810, "GUEST_GDTR_LIMIT"),
    fi(0x4812, "GUEST_IDTR_LIMIT"),
    fi(0x4814, "GUEST_ES_ACCESS_RIGHTS"),
    fi(0x4816, "GUEST_CS_ACCESS_RIGHTS"),
    fi(0x4818, "GUEST_SS_ACCESS_RIGHTS"),
    fi(0x481a, "GUEST_DS_ACCESS_RIGHTS"),
    fi(0x481c, "GUEST_FS_ACCESS_RIGHTS"),
    fi(0x481e, "GUEST_GS_ACCESS_RIGHTS"),
    fi(0x4820, "GUEST_LDTR_ACCESS_RIGHTS"),
    fi(0x4822, "GUEST_TR_ACCESS_RIGHTS"),
    fi(0x4824, "GUEST_INTERRUPTIBILITY_STATE"),
    fi(0x4826, "GUEST_ACTIVITY_STATE"),
    fi(0x4828, "GUEST_SMBASE"),
    fi(0x482a, "GUEST_IA32_SYSENTER_CS"),
    fi(0x6800, "GUEST_CR0"),
    fi(0x6802, "GUEST_CR3"),
    fi(0x6804, "GUEST_CR4"),
    fi(0x6806, "GUEST_ES_BASE"),
    fi(0x6808, "GUEST_CS_BASE"),
    fi(0x680a, "GUEST_SS_BASE"),
    fi(0x680c, "GUEST_DS_BASE"),
    fi(0x680e, "GUEST_FS_BASE"),
    fi(0x6810, "GUEST_GS_BASE"),
    fi(0x6812, "GUEST_LDTR_BASE"),
    fi(0x6814, "GUEST_TR_BASE"),
    fi(0x6816, "GUEST_GDTR_BASE"),
    fi(0x6818, "GUEST_IDTR_BASE"),
    fi(0x681a, "GUEST_DR7"),
    fi(0x681c, "GUEST_RSP"),
    fi(0x681e, "GUEST_RIP"),
    fi(0x6820, "GUEST_RFLAGS"),
    fi(0x6822, "GUEST_PENDING_DEBUG_EXCEPTIONS"),
    fi(0x6824, "GUEST_IA32_SYSENTER_ESP"),
    fi(0x6826, "GUEST_IA32_SYSENTER_EIP"),
];

/// The name of the field with full-access encoding `encoding`, if this area holds it.
pub fn field_name(encoding: u32) -> Option<&'static str> {
    GUEST_FIELDS
        .binary_search_by_key(&encoding, |f| f.encoding)
        .ok()
        .map(|i| GUEST_FIELDS[i].name)
}

/// Errors from VMREAD and VMWRITE on the guest-state area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VmcsError {
    /// The encoding names no component this area holds (VM-instruction error 12).
    #[error(
        "VMREAD/VMWRITE of unsupported VMCS component {encoding:#06x} (VM-instruction error 12, SDM Vol. 3C Table 31-1): this model holds only the guest-state fields of SDM Vol. 3D Appendix B listed in GUEST_FIELDS"
    )]
    UnsupportedComponent {
        /// The encoding.
        encoding: u32,
    },
}

impl VmcsError {
    /// The VM-instruction error number the instruction would report.
    pub fn vm_instruction_error(&self) -> u32 {
        match self {
            VmcsError::UnsupportedComponent { .. } => VM_ERROR_UNSUPPORTED_COMPONENT,
        }
    }
}

/// Where an encoding points: the field's slot, its width, and whether it is a high access.
#[derive(Clone, Copy, Debug)]
struct Target {
    slot: usize,
    width: Width,
    high: bool,
}

fn decode(encoding: u32) -> Result<Target, VmcsError> {
    let high = encoding & 1 == 1;
    let full = encoding & !1;
    let width = Width::of(full);
    let unsupported = VmcsError::UnsupportedComponent { encoding };
    // Only 64-bit fields have a high-access encoding (SDM Vol. 3C §25.11.2).
    if high && width != Width::Bits64 {
        return Err(unsupported);
    }
    let slot = GUEST_FIELDS
        .binary_search_by_key(&full, |f| f.encoding)
        .map_err(|_| unsupported)?;
    Ok(Target { slot, width, high })
}

/// A VMCS guest-state area: the values of [`GUEST_FIELDS`], and VMREAD/VMWRITE counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStateArea {
    values: [u64; GUEST_FIELDS.len()],
    vmreads: u64,
    vmwrites: u64,
}

impl Default for GuestStateArea {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl GuestStateArea {
    /// Every field zero, as in a zero-allocated VMCS region (which KVM's is: "zero allocating the
    /// VMCS is functionally equivalent to writing '0' to all fields via VMWRITE").
    pub fn zeroed() -> Self {
        GuestStateArea {
            values: [0; GUEST_FIELDS.len()],
            vmreads: 0,
            vmwrites: 0,
        }
    }

    /// Every field holding `value`, truncated to the field's width.
    pub fn filled(value: u64) -> Self {
        let mut values = [0; GUEST_FIELDS.len()];
        for (v, f) in values.iter_mut().zip(GUEST_FIELDS.iter()) {
            *v = value & Width::of(f.encoding).mask();
        }
        GuestStateArea {
            values,
            vmreads: 0,
            vmwrites: 0,
        }
    }

    /// VMREAD: the field named by `encoding`, zero-extended to 64 bits; for a high-access
    /// encoding, bits 63:32 of the field in bits 31:0. Counted, also when it fails.
    ///
    /// SDM Vol. 3C, VMREAD ("If the VMCS field is shorter than the effective operand size, the
    /// high bits of the destination operand are cleared").
    pub fn vmread(&mut self, encoding: u32) -> Result<u64, VmcsError> {
        self.vmreads += 1;
        self.peek(encoding)
    }

    /// VMWRITE: set the field named by `encoding` to `value` truncated to the field's width;
    /// for a high-access encoding, bits 63:32 of the field take bits 31:0 of `value` and bits
    /// 31:0 are kept. Counted, also when it fails.
    ///
    /// SDM Vol. 3C, VMWRITE ("If the VMCS field specified by the secondary source operand is
    /// shorter than this effective operand size, the high bits of the primary source operand are
    /// ignored").
    pub fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError> {
        self.vmwrites += 1;
        self.poke(encoding, value)
    }

    /// VMREADs and VMWRITEs executed so far, in that order.
    pub fn counts(&self) -> (u64, u64) {
        (self.vmreads, self.vmwrites)
    }

    /// Read like VMREAD without counting: the processor's own access to its guest state while
    /// the guest runs, or an inspection that is not a VMM's VMREAD.
    pub fn peek(&self, encoding: u32) -> Result<u64, VmcsError> {
        let t = decode(encoding)?;
        let v = self.values[t.slot];
        Ok(if t.high { v >> 32 } else { v & t.width.mask() })
    }

    /// Write like VMWRITE without counting (see [`GuestStateArea::peek`]).
    pub fn poke(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError> {
        let t = decode(encoding)?;
        let slot = &mut self.values[t.slot];
        *slot = if t.high {
            (*slot & 0xffff_ffff) | (value << 32)
        } else {
            value & t.width.mask()
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_even_and_guest_typed() {
        for w in GUEST_FIELDS.windows(2) {
            assert!(
                w[0].encoding < w[1].encoding,
                "{:?} before {:?}",
                w[0],
                w[1]
            );
        }
        for f in GUEST_FIELDS {
            assert_eq!(f.encoding & 1, 0, "{} has a full-access encoding", f.name);
            // Bits 11:10 = 2: guest-state area (SDM Vol. 3C §25.11.2).
            assert_eq!(
                (f.encoding >> 10) & 3,
                2,
                "{} is a guest-state field",
                f.name
            );
        }
    }

    #[test]
    fn named_encodings_match_the_helpers() {
        assert_eq!(selector(Seg::Tr), GUEST_TR_SELECTOR);
        assert_eq!(limit(Seg::Tr), 0x480e);
        assert_eq!(access_rights(Seg::Tr), 0x4822);
        assert_eq!(base(Seg::Fs), 0x680e);
        assert_eq!(base(Seg::Tr), 0x6814);
        assert_eq!(pdpte(3), 0x2810);
        assert_eq!(field_name(GUEST_RIP), Some("GUEST_RIP"));
        assert_eq!(field_name(0x6828), None);
    }

    #[test]
    fn widths_come_from_bits_14_13() {
        assert_eq!(Width::of(GUEST_ES_SELECTOR), Width::Bits16);
        assert_eq!(Width::of(GUEST_IA32_EFER), Width::Bits64);
        assert_eq!(Width::of(GUEST_ACTIVITY_STATE), Width::Bits32);
        assert_eq!(Width::of(GUEST_CR0), Width::Natural);
        assert_eq!(Width::Natural.bits(), 64);
    }
}
