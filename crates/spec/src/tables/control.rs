//! Control registers, EFER and the PAE PDPTRs.

use super::common::unreachable_row;
use super::common::{RowExt, mk, table_citation};
use crate::field::Field;
use crate::rule::{Citation, Derivation, Event, Row, Rule, Source, Vendor};

const CR0_RESET_NOTE: &str = "CD (bit 30) and NW (bit 29) set: caches disabled; ET (bit 4) set; \
    real mode, paging off. KVM's quirk CD_NW_CLEARED runs the guest with CD/NW clear in hardware \
    but reports 0x60000010.";

const CR0_INIT_NOTE: &str = "INIT keeps CD and NW (SDM Table 10-1 note 2: \"The CD and NW flags \
    are unchanged, bit 4 is set to 1, all other bits are cleared\"; APM Table 14-1 says the \
    same; confirmed on bare metal by KVM commit 4c72ab5aa6e0). Some SDM editions list 60000010H \
    in the INIT column; the footnote governs. QEMU (TCG) and Bochs set 60000010H on INIT: a \
    deviation.";

const EFER_NOTE_INTEL: &str = "Table 10-1 has no EFER row (it falls under \"all other MSRs\": \
    undefined at RESET, unchanged by INIT). vcpu-reset uses 0 for both: with CR0.PG = 0 after \
    INIT, LMA cannot stay set; AMD's table lists 0 for both events; KVM, QEMU, Bochs and \
    VirtualBox all clear EFER on RESET and INIT.";

pub(crate) fn row(f: Field, v: Vendor, e: Event) -> Row {
    let table = table_citation(v);
    match f {
        Field::Cr0 => match e {
            Event::Reset => mk(f, Rule::Value(0x6000_0010), table).note(CR0_RESET_NOTE),
            Event::Init => mk(f, Rule::Derived(Derivation::Cr0Init), table).note(CR0_INIT_NOTE),
        },
        Field::Cr2 | Field::Cr3 | Field::Cr4 => {
            let r = mk(f, Rule::Value(0), table);
            if f == Field::Cr3 && e == Event::Init {
                r.note("INIT must zero CR3: KVM kept a stale CR3 across RESET/INIT until commit 03a6e84069d1 (v5.15).")
            } else {
                r
            }
        }
        Field::Cr8 => match v {
            Vendor::Intel => mk(
                f,
                Rule::Value(0),
                Citation {
                    source: Source::SdmVol3A,
                    locator: "§2.5 \"Control Registers\" (CR8 = TPR[7:4]) and §11.4.7.1 (TPR = 0 after RESET and INIT)",
                },
            ),
            Vendor::Amd => mk(f, Rule::Value(0), table),
        },
        Field::Efer => match v {
            Vendor::Intel => mk(f, Rule::Value(0), table).note(EFER_NOTE_INTEL),
            Vendor::Amd => mk(f, Rule::Value(0), table)
                .note("Listed as 0 after both RESET and INIT; INIT thereby also clears EFER.SVME (bit 12): SVM is off after either, and an INIT taken in guest mode leaves it (see nested.guest_mode)."),
        },
        Field::Pdptr(_) => mk(
            f,
            Rule::Undefined {
                vmm: 0,
                reason: "PDPTRs are loaded from CR3 only when PAE paging is enabled; with CR0.PG = 0 they are unused, and 0 is what KVM holds",
            },
            Citation {
                source: Source::SdmVol3A,
                locator: "§4.4.1 \"PDPTE Registers\"",
            },
        ),
        _ => unreachable_row(f, v),
    }
}
