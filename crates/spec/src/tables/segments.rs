//! Segment registers and descriptor tables.
//!
//! Attributes are in the VMX access-rights layout (type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13,
//! D/B 14, G 15). After RESET and INIT every segment is present, DPL 0, 16-bit (D/B 0), byte
//! granular (G 0), not long (L 0), AVL 0; only the type and S bits differ between the
//! registers and between the vendors.

use super::common::unreachable_row;
use super::common::{RowExt, mk, table_citation};
use crate::field::{Dt, Field, Seg, SegPart};
use crate::rule::{Alternative, Citation, Event, Row, Rule, Source, Vendor};

/// AMD APM Vol. 2, the segment-attribute table.
const APM_ATTRIBUTES: Citation = Citation {
    source: Source::ApmVol2,
    locator: "§14.1.3, Table 14-2 \"Initial State of Segment-Register Attributes\"",
};

const CS_ATTR_INTEL_NOTE: &str = "The SDM gives CS the attributes \"Present, R/W, Accessed\", \
    literally type 3 (0x93, a data segment, as Bochs uses). vcpu-reset uses 0x9B (execute/read, \
    accessed code segment): the hidden CS of a processor fetching code is a code segment; KVM \
    (VMX), QEMU and VirtualBox all use 0x9B, and VM entry accepts type 3 for CS only with \
    unrestricted guest. 0x93 is reported as spec-allows.";

const CS_ATTR_AMD_NOTE: &str = "APM Table 14-2: code segment, type 1010b (execute/read, not \
    accessed), S=1, P=1 => 0x9A, as KVM (SVM) gives (init_vmcb: SVM_SELECTOR_READ_MASK | P | S | \
    CODE). 0x9B, the same with the accessed bit set, as QEMU gives on every vendor and some KVM \
    backends (kvm_pvm) give at their INIT, is reported as spec-allows: the accessed bit of a \
    hidden descriptor has no effect on execution (a processor sets it on every descriptor load; \
    it matters only in the descriptor table in memory, APM Vol. 2 §4.7.2), so no guest can tell \
    the two apart. The engine takes a host INIT that gives 0x9B as exact for the lazy RESET path.";

const DATA_ATTR_AMD_NOTE: &str = "APM Table 14-2: data segment, type 0010b (read/write, not \
    accessed) => 0x92. KVM on SVM reports DS/ES/FS/GS with the accessed bit set (0x93); that \
    is reported as spec-allows.";

const TR_INTEL_NOTE: &str = "The SDM says only \"Present, R/W\" for TR, which is not a valid \
    system-segment type. vcpu-reset uses 0x8B (busy 32-bit TSS): VM entry requires TR type 3 or \
    11, and KVM (VMX), QEMU, Bochs and VirtualBox all use 0x8B. AMD's 0x83 (busy 16-bit TSS) is \
    reported as spec-allows.";

const TR_AMD_NOTE: &str = "APM Table 14-2: busy 16-bit TSS, type 0011b => 0x83, as KVM (SVM) \
    gives. Intel's 0x8B is reported as spec-allows.";

/// RESET and INIT give the same values (SDM Table 10-1 and APM Table 14-1 list one value).
pub(crate) fn row(f: Field, v: Vendor, _e: Event) -> Row {
    let table = table_citation(v);
    match f {
        Field::Seg(s, part) => segment_row(f, s, part, v, table),
        Field::Dt(_, false) => mk(f, Rule::Value(0), table),
        Field::Dt(d, true) => {
            let r = mk(f, Rule::Value(0xffff), table);
            if d == Dt::Gdtr && v == Vendor::Intel {
                r.note("SDM Vol. 3A §2.4.1: \"On power up or reset of the processor, the base address is set to the default value of 0 and the limit is set to 0FFFFH.\"")
            } else {
                r
            }
        }
        _ => unreachable_row(f, v),
    }
}

fn segment_row(f: Field, s: Seg, part: SegPart, v: Vendor, table: Citation) -> Row {
    match (s, part) {
        (Seg::Cs, SegPart::Selector) => mk(f, Rule::Value(0xf000), table),
        (Seg::Cs, SegPart::Base) => mk(f, Rule::Value(0xffff_0000), table).note(
            "The base reverts to selector << 4 at the first far jump or CS load (SDM §10.1.4).",
        ),
        (_, SegPart::Selector) | (_, SegPart::Base) => mk(f, Rule::Value(0), table),
        (_, SegPart::Limit) => mk(f, Rule::Value(0xffff), table),
        (Seg::Cs, SegPart::Attributes) => match v {
            Vendor::Intel => mk(f, Rule::Value(0x9b), table)
                .note(CS_ATTR_INTEL_NOTE)
                .also(&[Alternative::Value(0x93)]),
            Vendor::Amd => mk(f, Rule::Value(0x9a), APM_ATTRIBUTES)
                .note(CS_ATTR_AMD_NOTE)
                .also(&[Alternative::Value(0x9b)]),
        },
        (Seg::Ldtr, SegPart::Attributes) => match v {
            Vendor::Intel => mk(f, Rule::Value(0x82), table).note(
                "\"Present, R/W\": system segment type 2 (LDT) => 0x82, as every implementation uses.",
            ),
            Vendor::Amd => mk(f, Rule::Value(0x82), APM_ATTRIBUTES),
        },
        (Seg::Tr, SegPart::Attributes) => match v {
            Vendor::Intel => mk(f, Rule::Value(0x8b), table)
                .note(TR_INTEL_NOTE)
                .also(&[Alternative::Value(0x83)]),
            Vendor::Amd => mk(f, Rule::Value(0x83), APM_ATTRIBUTES)
                .note(TR_AMD_NOTE)
                .also(&[Alternative::Value(0x8b)]),
        },
        (_, SegPart::Attributes) => match v {
            Vendor::Intel => mk(f, Rule::Value(0x93), table).note(
                "\"Present, R/W, Accessed\": data segment type 3, S=1, P=1 => 0x93.",
            ),
            Vendor::Amd => mk(f, Rule::Value(0x92), APM_ATTRIBUTES)
                .note(DATA_ATTR_AMD_NOTE)
                .also(&[Alternative::Value(0x93)]),
        },
    }
}
