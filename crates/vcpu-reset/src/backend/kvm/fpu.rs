//! x87/SSE/AVX state through the XSAVE image, and XCR0, moved with their ioctls.
//!
//! [`StateClass::Fpu`](crate::backend::StateClass::Fpu): x87, MXCSR, XMM/YMM/ZMM, opmask and
//! PKRU, through the XSAVE image of KVM_GET/SET_XSAVE (or XSAVE2 when the host's image is larger
//! than 4 KiB). The image's format and its conversion to and from the state are in
//! [`codec::xsave`](super::codec::xsave); this file makes the ioctls.
//!
//! [`StateClass::Xcrs`](crate::backend::StateClass::Xcrs): XCR0 (`kvm_xcrs`).

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::xcrs::{xcr0_of, xcrs_from_state};
use super::codec::xsave::{
    KVM_XSAVE_SIZE, bytes_to_words, words_to_bytes, xsave_from_state, xsave_to_state,
};
use super::ioctls::Ioctl;
use crate::backend::BackendError;
use kvm_bindings::{Xsave, kvm_xsave};
use vcpu_reset_spec::VcpuState;

impl KvmVcpu {
    /// Number of 4-byte entries beyond `struct kvm_xsave` an XSAVE2 buffer needs.
    fn xsave2_entries(&self) -> usize {
        (self.xsave.size() - KVM_XSAVE_SIZE).div_ceil(4)
    }

    fn get_xsave_image(&mut self) -> Result<Vec<u8>, BackendError> {
        let mut bytes = Vec::with_capacity(self.xsave.size());
        if self.xsave.size() <= KVM_XSAVE_SIZE {
            let x = load(&mut self.stats, Ioctl::GetXsave, || self.fd.get_xsave())?;
            words_to_bytes(&x.region, &mut bytes);
        } else {
            let mut x = Xsave::new(self.xsave2_entries()).map_err(|e| BackendError::Invalid {
                what: "XSAVE2 buffer",
                why: e.to_string(),
            })?;
            load(&mut self.stats, Ioctl::GetXsave2, || {
                // The buffer is sized for the KVM_CAP_XSAVE2 size the host reported when it was
                // opened; this process enables no further XSTATE features with arch_prctl().
                // SAFETY: `x` holds `struct kvm_xsave` plus the entries KVM_GET_XSAVE2 writes.
                unsafe { self.fd.get_xsave2(&mut x) }
            })?;
            words_to_bytes(&x.as_fam_struct_ref().xsave.region, &mut bytes);
            words_to_bytes(x.as_slice(), &mut bytes);
        }
        bytes.truncate(self.xsave.size());
        Ok(bytes)
    }

    fn set_xsave_image(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        if self.xsave.size() <= KVM_XSAVE_SIZE {
            let mut x = kvm_xsave::default();
            bytes_to_words(bytes, &mut x.region);
            store(&mut self.stats, Ioctl::SetXsave, || {
                // SAFETY: KVM_CAP_XSAVE2 reported at most 4096 bytes, so KVM_SET_XSAVE reads no
                // more than the `struct kvm_xsave` that `x` is (the condition kvm-ioctls
                // documents).
                unsafe { self.fd.set_xsave(&x) }
            })?;
        } else {
            let mut x = Xsave::new(self.xsave2_entries()).map_err(|e| BackendError::Invalid {
                what: "XSAVE2 buffer",
                why: e.to_string(),
            })?;
            let (head, tail) = bytes.split_at(KVM_XSAVE_SIZE.min(bytes.len()));
            // SAFETY: `as_mut_fam_struct` only exposes the header, which `region` is part of;
            // the length field is not touched.
            bytes_to_words(head, unsafe { &mut x.as_mut_fam_struct().xsave.region });
            bytes_to_words(tail, x.as_mut_slice());
            store(&mut self.stats, Ioctl::SetXsave, || {
                // SAFETY: `x` holds `struct kvm_xsave` plus enough entries for the
                // KVM_CAP_XSAVE2 size, which is what KVM_SET_XSAVE reads.
                unsafe { self.fd.set_xsave2(&x) }
            })?;
        }
        Ok(())
    }

    pub(super) fn load_fpu(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let image = self.get_xsave_image()?;
        xsave_to_state(&image, &self.xsave, state);
        Ok(())
    }

    pub(super) fn store_fpu(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let image = xsave_from_state(state, &self.xsave);
        self.set_xsave_image(&image)
    }
}

impl KvmVcpu {
    pub(super) fn load_xcrs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let x = load(&mut self.stats, Ioctl::GetXcrs, || self.fd.get_xcrs())?;
        state.xcr0 = xcr0_of(&x).ok_or_else(|| BackendError::Invalid {
            what: "kvm_xcrs",
            why: "KVM_GET_XCRS did not report XCR0; the host's KVM is inconsistent".into(),
        })?;
        Ok(())
    }

    pub(super) fn store_xcrs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let x = xcrs_from_state(state);
        store(&mut self.stats, Ioctl::SetXcrs, || self.fd.set_xcrs(&x))?;
        Ok(())
    }
}
