//! General-purpose registers, RIP and RFLAGS.

use super::common::{RowExt, mk, table_citation, unreachable_row};
use crate::field::{Field, Gpr};
use crate::rule::{Citation, Derivation, Event, Row, Rule, Source, Vendor};

/// Where the processor signature in EDX is defined.
fn signature_citation(v: Vendor) -> Citation {
    match v {
        Vendor::Intel => Citation {
            source: Source::SdmVol3A,
            locator: "§10.1.3 \"Model and Stepping Information\", Figure 10-2, and Table 10-1 \
                      note 3 (EDX = 000n06xxH)",
        },
        Vendor::Amd => Citation {
            source: Source::ApmVol2,
            locator: "§14.1.3, Table 14-1, and §14.2.1 \"Processor Implementation Information\"",
        },
    }
}

/// RESET and INIT give the same values here (SDM Table 10-1 has identical columns for these
/// rows; APM Table 14-1 lists one value for both).
pub(crate) fn row(f: Field, v: Vendor, _e: Event) -> Row {
    let table = table_citation(v);
    match f {
        Field::Gpr(Gpr::Rdx) => mk(f, Rule::Derived(Derivation::Signature), signature_citation(v))
            .note(
                "The signature is the vCPU's own CPUID.01H:EAX, as the VMM configures it. \
                 Known deviations: KVM reports 0x600 after KVM_CREATE_VCPU (it computes EDX \
                 before the VMM sets CPUID), Bochs 2.7 leaves EDX 0; vcpu-reset writes the \
                 vCPU's signature.",
            ),
        Field::Gpr(Gpr::Rax) => mk(f, Rule::Value(0), table).note(
            "Non-zero only when a built-in self-test was requested and failed (SDM Table 10-1 \
             note 4, APM Table 14-1); a VMM runs no BIST, and INIT never runs one.",
        ),
        Field::Gpr(_) => mk(f, Rule::Value(0), table),
        Field::Rip => mk(f, Rule::Value(0xfff0), table).note(
            "With CS.base FFFF0000H the first fetch is at FFFFFFF0H, the reset vector (SDM §10.1.4, \
             APM §14.1.5).",
        ),
        Field::Rflags => mk(f, Rule::Value(0x2), table).note(
            "Bit 1 is reserved and always set; all flags clear, so interrupts are disabled.",
        ),
        _ => unreachable_row(f, v),
    }
}
