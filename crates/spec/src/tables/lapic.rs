//! Local APIC registers.
//!
//! RESET: SDM Vol. 3A §11.4.7.1 (§10.4.7.1 before 2023). INIT: §11.4.7.3 — "the same as after a
//! power-up or hardware reset, except that the APIC ID and arbitration ID registers are not
//! affected". IA32_APIC_BASE is an MSR and lives in the MSR table.

use super::common::unreachable_row;
use super::common::{RowExt, mk};
use crate::field::{Field, LapicReg};
use crate::rule::{Citation, Derivation, Event, Row, Rule, Source, Vendor};

fn citation(v: Vendor, e: Event) -> Citation {
    match (v, e) {
        (Vendor::Intel, Event::Reset) => Citation {
            source: Source::SdmVol3A,
            locator: "§11.4.7.1 \"Local APIC State After Power-Up or Reset\"",
        },
        (Vendor::Intel, Event::Init) => Citation {
            source: Source::SdmVol3A,
            locator: "§11.4.7.3 \"Local APIC State After an INIT Reset (Wait-for-SIPI State)\"",
        },
        (Vendor::Amd, _) => Citation {
            source: Source::ApmVol2,
            locator: "§16.3, Table 16-2 \"APIC Registers\" (reset values; referenced by Table 14-1)",
        },
    }
}

const LINT0_NOTE: &str = "Masked (00010000H) like every LVT. KVM (quirk LINT0_REENABLED, on by \
    default) gives the BSP 00000700H (ExtINT, unmasked) at RESET and at its own INIT, as a BIOS \
    would program it; a deviation, reported as a finding (QEMU, which sets the local APIC itself, leaves it \
    masked). vcpu-reset writes the masked value.";

pub(crate) fn row(f: Field, v: Vendor, e: Event) -> Row {
    let c = citation(v, e);
    match f {
        Field::Lapic(r) => match r {
            LapicReg::Id => match e {
                Event::Reset => mk(f, Rule::Derived(Derivation::ApicId), c)
                    .note("Assigned by hardware; vcpu-reset uses the vCPU index, as KVM does."),
                Event::Init => mk(f, Rule::Preserved, c),
            },
            LapicReg::Version => match e {
                Event::Reset => mk(f, Rule::Derived(Derivation::ApicVersion), c)
                    .note("Hard-wired: \"the version register is not affected\"."),
                Event::Init => mk(f, Rule::Preserved, c),
            },
            LapicReg::Dfr => match e {
                Event::Reset => mk(f, Rule::Value(0xffff_ffff), c).note("Flat model, all ones."),
                Event::Init => mk(f, Rule::Value(0xffff_ffff), c).note("Flat model, all ones. In x2APIC mode, which INIT keeps (IA32_APIC_BASE is unchanged; SDM Vol. 3A §11.12.5.1), the DFR does not exist (no x2APIC MSR for it: §11.12.1.2, Table 11-6); the value is the one the register returns once the APIC is back in xAPIC mode, and what KVM's INIT leaves in its page (kvm_lapic_reset: kvm_apic_set_dfr(apic, 0xffffffff))."),
            },
            LapicReg::Ldr if e == Event::Init => mk(f, Rule::Derived(Derivation::LdrInit), c).note(
                "INIT clears the LDR in xAPIC mode. In x2APIC mode, which INIT keeps (§11.12.5.1), the LDR is read-only and derived from the x2APIC ID (§11.12.10.2), so INIT leaves it so: KVM's kvm_lapic_reset() clears it only when !apic_x2apic_mode().",
            ),
            LapicReg::Svr => mk(f, Rule::Value(0xff), c)
                .note("Spurious vector FFH; bit 8 clear: the APIC is software-disabled."),
            LapicReg::LvtLint0 => mk(f, Rule::Value(0x1_0000), c).note(LINT0_NOTE),
            LapicReg::LvtCmci => mk(f, Rule::Derived(Derivation::LvtCmci), c).note(if v == Vendor::Amd {
                "AMD APICs have no CMCI LVT (Table 16-2 lists none at 2F0H): the version register's Max LVT Entry says 6 entries, and the register does not exist (0). Where a VMM's APIC reports 7, it is masked like the others."
            } else {
                "The 7th LVT entry: it exists only where the version register's Max LVT Entry (bits 23:16) is 6 or more (SDM Vol. 3A §11.4.8, Figure 11-7; §11.5.1 \"the LVT CMCI register\" on processors with CMCI). Masked (bit 16) there; with 6 entries there is no such register (0), as KVM gives a vCPU without IA32_MCG_CAP.MCG_CMCI_P."
            }),
            LapicReg::LvtTimer
            | LapicReg::LvtThermal
            | LapicReg::LvtPerf
            | LapicReg::LvtLint1
            | LapicReg::LvtError => mk(f, Rule::Value(0x1_0000), c).note("Masked (bit 16)."),
            LapicReg::Tpr
            | LapicReg::Apr
            | LapicReg::Ppr
            | LapicReg::Ldr
            | LapicReg::Esr
            | LapicReg::Icr
            | LapicReg::TimerInitial
            | LapicReg::TimerCurrent
            | LapicReg::TimerDivide => mk(f, Rule::Value(0), c),
        },
        Field::LapicBitmap(..) => mk(f, Rule::Value(0), c),
        _ => unreachable_row(f, v),
    }
}
