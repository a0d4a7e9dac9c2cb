//! x87, MXCSR, the XSAVE-managed vector state, XCR0 and PKRU.
//!
//! RESET puts the x87 unit in its *power-up* state, which is not the FINIT/FNINIT state: FCW is
//! 0040H (single precision, all exceptions unmasked), not 037FH, and every register is tagged
//! "zero" (FTW 5555H), not "empty" (FFFFH). INIT leaves all of this state alone.

use super::common::unreachable_row;
use super::common::{RowExt, mk, table_citation};
use crate::field::{Field, X87};
use crate::rule::{Citation, Event, Row, Rule, Source, Vendor};

const FCW_NOTE: &str = "Power-up value 0040H (SDM Table 10-1; APM Table 14-1 and Table 14-3), \
    not the FINIT value 037FH. KVM creates vCPUs in the FINIT state (FCW 037FH, FTW empty), as \
    QEMU and VirtualBox do: a deviation, reported as a finding. vcpu-reset writes 0040H.";

const FTW_NOTE: &str = "5555H: all eight registers tagged \"zero\" (they hold +0.0). FXSAVE \
    reports this as the abridged tag FFH. FINIT would give FFFFH (all empty).";

const INIT_KEEPS_NOTE: &str = "INIT leaves the x87, MMX, SSE and AVX state unchanged (SDM §10.1: \
    \"during an INIT, the internal caches, MSRs, MTRRs, and x87 FPU state are left unchanged\"; \
    APM §14.2.3). KVM keeps it, except MPX and CET components, which it zeroes.";

const WIDE_NOTE: &str = "Not rows of Table 10-1; they follow the XMM rows: 0 after RESET, \
    unchanged by INIT (the XSAVE component is in its initial configuration after RESET).";

const AMX_NOTE: &str = "XSAVE components 17 (XTILECFG) and 18 (XTILEDATA): exist where \
    CPUID.(EAX=0DH,ECX=0):EAX[17] and [18] are set (Intel only; KVM holds them where the VMM asked \
    for them, ARCH_REQ_XCOMP_GUEST_PERM, and KVM_GET_XSAVE2's image has room). Their initial \
    configuration is all zero: palette 0 is the INIT state of both, with the tiles zeroed \
    (SDM Vol. 2A, LDTILECFG).";

const AMX_INIT_NOTE: &str = "INIT leaves XSAVE-managed state unchanged, as it does x87, SSE and \
    AVX (SDM Vol. 3A §10.1; the AMX components are not rows of Table 10-1 and nothing in the SDM \
    names them as changed by INIT). KVM's INIT (kvm_vcpu_reset) clears only the MPX and CET \
    components and keeps the tiles.";

fn amx_citation() -> Citation {
    Citation {
        source: Source::SdmVol1,
        locator: "§13.6 \"Processor Tracking of XSAVE-Managed State\" (a component in its initial configuration) and Vol. 3A §10.1 (XSAVE state components are in their initial configuration after RESET); Vol. 2A, LDTILECFG (palette 0: TILECFG and TILEDATA in their INIT state, tiles zeroed)",
    }
}

fn xsave_citation() -> Citation {
    Citation {
        source: Source::SdmVol3A,
        locator: "§2.6 \"Extended Control Registers (Including XCR0)\" (\"After reset, all bits (except bit 0) in XCR0 are cleared to zero; XCR0[0] is set to 1\")",
    }
}

fn reset_row(f: Field, v: Vendor) -> Option<Row> {
    let table = table_citation(v);
    Some(match f {
        Field::X87(X87::Fcw) => mk(f, Rule::Value(0x0040), table).note(FCW_NOTE),
        Field::X87(X87::Ftw) => mk(f, Rule::Value(0x5555), table).note(FTW_NOTE),
        Field::X87(_) | Field::St(_) => mk(f, Rule::Value(0), table),
        Field::Mxcsr => mk(f, Rule::Value(0x1f80), table)
            .note("All SIMD exceptions masked, round to nearest. KVM_GET_FPU reports 0 for a fresh KVM vCPU while KVM_GET_XSAVE reports 1F80H with the SSE component in its initial configuration."),
        Field::Xmm(_) => mk(f, Rule::Value(0), table),
        Field::YmmHi(_) | Field::ZmmHi256(..) | Field::Hi16Zmm(..) | Field::Opmask(_) => {
            mk(f, Rule::Value(0), table).note(WIDE_NOTE)
        }
        Field::TileCfg(_) | Field::TileData(..) => mk(f, Rule::Value(0), amx_citation()).note(AMX_NOTE),
        Field::Xcr0 => match v {
            Vendor::Intel => mk(f, Rule::Value(1), xsave_citation())
                .note("Only x87 state (bit 0, always 1) is enabled after RESET."),
            Vendor::Amd => mk(f, Rule::Value(1), table),
        },
        Field::Pkru => match v {
            Vendor::Intel => mk(
                f,
                Rule::Value(0),
                Citation {
                    source: Source::SdmVol1,
                    locator: "§13.5.7 \"PKRU State\" (initial configuration 0) and SDM Vol. 3A §10.1 (XSAVE state components are in their initial configuration after RESET)",
                },
            ),
            Vendor::Amd => mk(f, Rule::Value(0), table),
        },
        _ => return None,
    })
}

pub(crate) fn row(f: Field, v: Vendor, e: Event) -> Row {
    match (reset_row(f, v), e) {
        (None, _) => unreachable_row(f, v),
        (Some(reset), Event::Reset) => reset,
        (Some(reset), Event::Init) if matches!(f, Field::TileCfg(_) | Field::TileData(..)) => {
            mk(f, Rule::Preserved, reset.citation).note(AMX_INIT_NOTE)
        }
        (Some(reset), Event::Init) => mk(f, Rule::Preserved, reset.citation).note(INIT_KEEPS_NOTE),
    }
}
