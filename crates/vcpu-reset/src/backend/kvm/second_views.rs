//! Second opinions: values KVM reports through two interfaces, read through the one this
//! backend does not use, so a selftest can check that the two agree.
//!
//! | field | this backend reads | the other view |
//! |---|---|---|
//! | `fs.base`, `gs.base` | KVM_GET_SREGS | KVM_GET_MSRS of IA32_FS_BASE / IA32_GS_BASE |
//! | `mxcsr`, `x87.fcw`, `x87.fsw`, `xmm0` | KVM_GET_XSAVE | KVM_GET_FPU |

use kvm_bindings::{Msrs, kvm_msr_entry};
use vcpu_reset_spec::{Field, Msr, X87};

use super::KvmVcpu;
use super::calls::load;
use super::ioctls::Ioctl;
use crate::backend::BackendError;

/// One value read through the other interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherView {
    /// The field.
    pub field: Field,
    /// Its value through `via`.
    pub value: u128,
    /// The interface, e.g. `KVM_GET_FPU`.
    pub via: &'static str,
}

impl KvmVcpu {
    /// Read the fields of the table above through their second interface. A cache in front
    /// of this backend should be flushed first, so both views see the same state.
    pub fn other_views(&mut self) -> Result<Vec<OtherView>, BackendError> {
        self.settle_init(crate::backend::StateClass::MpState)?;
        self.flush_all()?;
        let mut out = Vec::new();
        let entries: Vec<kvm_msr_entry> = [Msr::FsBase, Msr::GsBase]
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index(),
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| BackendError::Invalid {
            what: "MSR list",
            why: format!("{e:?}"),
        })?;
        let n = load(&mut self.stats, Ioctl::GetMsrs, || {
            self.fd.get_msrs(&mut msrs)
        })?;
        for (e, seg) in msrs
            .as_slice()
            .iter()
            .take(n)
            .zip([vcpu_reset_spec::Seg::Fs, vcpu_reset_spec::Seg::Gs])
        {
            out.push(OtherView {
                field: Field::Seg(seg, vcpu_reset_spec::SegPart::Base),
                value: e.data.into(),
                via: "KVM_GET_MSRS",
            });
        }
        let fpu = load(&mut self.stats, Ioctl::GetFpu, || self.fd.get_fpu())?;
        let xmm0 = u128::from_le_bytes(fpu.xmm[0]);
        for (field, value) in [
            (Field::Mxcsr, u128::from(fpu.mxcsr)),
            (Field::X87(X87::Fcw), u128::from(fpu.fcw)),
            (Field::X87(X87::Fsw), u128::from(fpu.fsw)),
            (Field::Xmm(0), xmm0),
        ] {
            out.push(OtherView {
                field,
                value,
                via: "KVM_GET_FPU",
            });
        }
        Ok(out)
    }
}
