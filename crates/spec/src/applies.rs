//! Which fields exist on a vCPU, from the capability MSRs of its [`CpuModel`]: the
//! machine-check MSRs from IA32_MCG_CAP and IA32_TSX_CTRL from IA32_ARCH_CAPABILITIES. A field
//! that does not exist has no value to judge; one whose capability MSR is not known is not
//! judged either.

use crate::{CpuModel, Field, McReg, Msr};

/// IA32_MCG_CAP\[7:0\], Count: the number of error-reporting banks (Intel SDM Vol. 3B,
/// §16.3.1.1 "IA32_MCG_CAP MSR").
pub const MCG_COUNT_MASK: u64 = 0xff;
/// IA32_MCG_CAP\[8\], MCG_CTL_P: IA32_MCG_CTL is present (SDM Vol. 3B, §16.3.1.1).
pub const MCG_CTL_P: u64 = 1 << 8;
/// IA32_MCG_CAP\[10\], MCG_CMCI_P: corrected machine-check interrupts, and with them the
/// IA32_MCi_CTL2 MSRs (SDM Vol. 3B, §16.3.1.1 and §16.3.2.5 "IA32_MCi_CTL2 MSRs").
pub const MCG_CMCI_P: u64 = 1 << 10;
/// IA32_MCG_CAP\[27\], MCG_LMCE_P: local machine-check exceptions, and with them
/// IA32_MCG_EXT_CTL (SDM Vol. 3B, §16.3.1.1 and §16.3.1.4 "IA32_MCG_EXT_CTL MSR"). Bit 9
/// (MCG_EXT_P) is not it: that one announces the extended machine-check state registers from
/// 180H (IA32_MCG_RAX ...), which have no spec row.
pub const MCG_LMCE_P: u64 = 1 << 27;
/// IA32_ARCH_CAPABILITIES\[7\], TSX_CTRL: IA32_TSX_CTRL (122H) is present (SDM Vol. 4,
/// Table 2-2, IA32_ARCH_CAPABILITIES).
pub const ARCH_CAP_TSX_CTRL: u64 = 1 << 7;

/// Whether a field exists on the vCPU a [`CpuModel`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// It exists (or nothing in the model says otherwise).
    Yes,
    /// It does not exist, and why.
    No(&'static str),
    /// The capability MSR that decides it is not known: not judged, and why.
    NotKnown(&'static str),
}

impl CpuModel {
    /// Whether `field` exists on this vCPU, as far as IA32_MCG_CAP and IA32_ARCH_CAPABILITIES
    /// decide it; every other field [`Applies::Yes`] here.
    pub fn applies(&self, field: Field) -> Applies {
        let mcg = |need: u64, absent: &'static str| match self.mcg_cap {
            None => Applies::NotKnown(
                "IA32_MCG_CAP is not known, and it decides whether this machine-check MSR exists",
            ),
            Some(cap) if cap & need == 0 => Applies::No(absent),
            Some(_) => Applies::Yes,
        };
        let bank = |b: u8| match self.mcg_cap {
            Some(cap) if u64::from(b) >= cap & MCG_COUNT_MASK => Applies::No(
                "the bank is at or beyond IA32_MCG_CAP's count (bits 7:0): the vCPU has no such bank (SDM Vol. 3B, §16.3.1.1)",
            ),
            _ => Applies::Yes,
        };
        match field {
            Field::Msr(Msr::McgCtl) => mcg(
                MCG_CTL_P,
                "IA32_MCG_CAP.MCG_CTL_P (bit 8) = 0: the vCPU has no IA32_MCG_CTL (SDM Vol. 3B, §16.3.1.1)",
            ),
            Field::Msr(Msr::McgExtCtl) => mcg(
                MCG_LMCE_P,
                "IA32_MCG_CAP.MCG_LMCE_P (bit 27) = 0: the vCPU has no IA32_MCG_EXT_CTL (SDM Vol. 3B, §16.3.1.1)",
            ),
            Field::Mc(b, McReg::Ctl2) => match bank(b) {
                Applies::Yes => mcg(
                    MCG_CMCI_P,
                    "IA32_MCG_CAP.MCG_CMCI_P (bit 10) = 0: the vCPU has no IA32_MCi_CTL2 (SDM Vol. 3B, §16.3.2.5)",
                ),
                other => other,
            },
            Field::Mc(b, _) => bank(b),
            Field::Msr(Msr::TsxCtrl) => match self.arch_capabilities {
                None => Applies::NotKnown(
                    "IA32_ARCH_CAPABILITIES is not known, and its bit 7 (TSX_CTRL) decides whether IA32_TSX_CTRL exists",
                ),
                Some(caps) if caps & ARCH_CAP_TSX_CTRL == 0 => Applies::No(
                    "IA32_ARCH_CAPABILITIES.TSX_CTRL (bit 7) = 0: the vCPU has no IA32_TSX_CTRL (SDM Vol. 4, Table 2-2)",
                ),
                Some(_) => Applies::Yes,
            },
            _ => Applies::Yes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Vendor;

    fn model(mcg_cap: Option<u64>, arch_capabilities: Option<u64>) -> CpuModel {
        CpuModel {
            mcg_cap,
            arch_capabilities,
            ..CpuModel::generic(Vendor::Intel)
        }
    }

    #[test]
    fn mcg_ctl_follows_mcg_ctl_p() {
        let f = Field::Msr(Msr::McgCtl);
        assert!(matches!(model(Some(10), None).applies(f), Applies::No(_)));
        assert_eq!(model(Some(10 | MCG_CTL_P), None).applies(f), Applies::Yes);
        assert!(matches!(model(None, None).applies(f), Applies::NotKnown(_)));
    }

    #[test]
    fn mcg_ext_ctl_follows_lmce_p_not_ext_p() {
        let f = Field::Msr(Msr::McgExtCtl);
        assert!(matches!(
            model(Some(10 | 1 << 9), None).applies(f),
            Applies::No(_)
        ));
        assert_eq!(model(Some(10 | MCG_LMCE_P), None).applies(f), Applies::Yes);
    }

    #[test]
    fn mci_ctl2_needs_cmci_p_and_a_bank_below_the_count() {
        let cmci = model(Some(4 | MCG_CMCI_P), None);
        assert_eq!(cmci.applies(Field::Mc(3, McReg::Ctl2)), Applies::Yes);
        assert!(matches!(
            cmci.applies(Field::Mc(4, McReg::Ctl2)),
            Applies::No(_)
        ));
        assert!(matches!(
            model(Some(4), None).applies(Field::Mc(0, McReg::Ctl2)),
            Applies::No(_)
        ));
        assert!(matches!(
            model(None, None).applies(Field::Mc(0, McReg::Ctl2)),
            Applies::NotKnown(_)
        ));
    }

    #[test]
    fn banks_beyond_the_count_do_not_exist() {
        let m = model(Some(4), None);
        assert_eq!(m.applies(Field::Mc(3, McReg::Status)), Applies::Yes);
        assert!(matches!(
            m.applies(Field::Mc(4, McReg::Ctl)),
            Applies::No(_)
        ));
        // Not known: judged as before.
        assert_eq!(
            model(None, None).applies(Field::Mc(31, McReg::Ctl)),
            Applies::Yes
        );
    }

    #[test]
    fn tsx_ctrl_follows_arch_capabilities_bit_7() {
        let f = Field::Msr(Msr::TsxCtrl);
        assert!(matches!(model(None, Some(0)).applies(f), Applies::No(_)));
        assert_eq!(
            model(None, Some(ARCH_CAP_TSX_CTRL)).applies(f),
            Applies::Yes
        );
        assert!(matches!(model(None, None).applies(f), Applies::NotKnown(_)));
        assert_eq!(model(None, None).applies(Field::Cr0), Applies::Yes);
    }
}
