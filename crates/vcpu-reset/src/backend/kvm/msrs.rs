//! [`StateClass::Msrs`]: every MSR [`Field`] except EFER and the FS/GS bases, which travel in
//! `kvm_sregs`, through KVM_GET/SET_MSRS.
//!
//! The MSRs held are those the host supports ([`super::KvmHost::supported_msrs`]) that the vCPU
//! also answers: at creation one KVM_GET_MSRS reads them all, and each MSR KVM refuses costs one
//! more and is dropped. KVM_GET/SET_MSRS stop at the first MSR they refuse and return how many
//! they processed; a short count is [`BackendError::MsrRefused`]. IA32_MTRRCAP is read-only:
//! it is loaded but never stored. The VMX capability MSRs (held only where the host offers
//! nested VMX) are recorded as they read at creation: that is the VM's configuration, which
//! RESET restores ([`vcpu_reset_spec::CpuModel::vmx_capabilities`]).

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;
use vcpu_reset_spec::{Class, Field, Msr, SGX_LE_HASH0_INDEX, VMX_CAPABILITY_MSRS, VcpuState};

use super::vcpu::ioctl_error;
use super::{KvmError, KvmVcpu};
use crate::backend::{BackendError, StateClass};

const MSR_IA32_APIC_BASE: u32 = 0x1b;
const MSR_IA32_MTRRCAP: u32 = 0xfe;

/// The MSR fields a vCPU holds, in the order they are moved (IA32_APIC_BASE first).
#[derive(Clone, Debug, Default)]
pub(super) struct MsrSet {
    held: Vec<(Field, u32)>,
    mtrr_cap: Option<u64>,
    vmx_capabilities: [Option<u64>; VMX_CAPABILITY_MSRS],
}

/// The MSR fields this class moves: those with an MSR index, except EFER and FS/GS base.
pub(super) fn msr_fields() -> impl Iterator<Item = (Field, u32)> {
    Field::all().into_iter().filter_map(|f| {
        if f.class() != Class::Msrs || matches!(f, Field::Msr(Msr::FsBase | Msr::GsBase)) {
            return None;
        }
        f.msr_index().map(|index| (f, index))
    })
}

fn entries<'a>(
    fields: impl Iterator<Item = &'a (Field, u32)>,
    data: impl Fn(Field) -> u64,
) -> Result<Msrs, BackendError> {
    let list: Vec<kvm_msr_entry> = fields
        .map(|(f, index)| kvm_msr_entry {
            index: *index,
            data: data(*f),
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&list).map_err(|e| BackendError::Invalid {
        what: "MSR list",
        why: format!("{} MSRs do not fit KVM_GET/SET_MSRS: {e}", list.len()),
    })
}

impl MsrSet {
    /// Find which of the host's MSRs the vCPU answers. Returns the set and the number of
    /// KVM_GET_MSRS calls made.
    pub(super) fn probe(fd: &VcpuFd, supported: &[u32]) -> Result<(MsrSet, u64), KvmError> {
        let candidates: Vec<(Field, u32)> = msr_fields()
            .filter(|(_, index)| supported.binary_search(index).is_ok())
            .collect();
        let mut set = MsrSet::default();
        let mut calls = 0;
        let mut rest = &candidates[..];
        while !rest.is_empty() {
            let mut msrs = entries(rest.iter(), |_| 0).map_err(|_| {
                KvmError::ioctl(
                    "KVM_GET_MSRS",
                    vmm_sys_util::errno::Error::new(libc::E2BIG),
                    "too many MSRs for one call",
                )
            })?;
            calls += 1;
            let done = fd.get_msrs(&mut msrs).map_err(|e| {
                KvmError::ioctl("KVM_GET_MSRS", e, "the new vCPU does not answer MSR reads")
            })?;
            for (entry, field) in msrs.as_slice()[..done].iter().zip(rest) {
                if entry.index == MSR_IA32_MTRRCAP {
                    set.mtrr_cap = Some(entry.data);
                }
                if let Field::VmxCap(i) = field.0
                    && let Some(slot) = set.vmx_capabilities.get_mut(usize::from(i))
                {
                    *slot = Some(entry.data);
                }
                set.held.push(*field);
            }
            rest = rest.get(done + 1..).unwrap_or(&[]);
        }
        Ok((set, calls))
    }

    /// Whether the MSR is held.
    pub(super) fn holds(&self, index: u32) -> bool {
        self.held.iter().any(|(_, i)| *i == index)
    }

    /// The held MSR indices.
    pub(super) fn indices(&self) -> Vec<u32> {
        self.held.iter().map(|(_, i)| *i).collect()
    }

    /// IA32_MTRRCAP as the vCPU reported it at creation.
    pub(super) fn mtrr_cap(&self) -> Option<u64> {
        self.mtrr_cap
    }

    /// The VMX capability MSRs as the vCPU reported them at creation (0 for those not held).
    pub(super) fn vmx_capabilities(&self) -> [u64; VMX_CAPABILITY_MSRS] {
        self.vmx_capabilities.map(|v| v.unwrap_or(0))
    }

    /// Whether the SGX launch-enclave hash MSRs are held (the VM offers SGX launch control).
    pub(super) fn sgx_launch_control(&self) -> bool {
        self.holds(SGX_LE_HASH0_INDEX)
    }
}

#[allow(clippy::cast_possible_truncation)] // MSR fields are 64 bits wide
fn field_u64(state: &VcpuState, f: Field) -> u64 {
    f.get(state) as u64
}

impl KvmVcpu {
    pub(super) fn load_msrs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let mut msrs = entries(self.msrs.held.iter(), |_| 0)?;
        self.stats.loads += 1;
        let done = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(|e| ioctl_error("KVM_GET_MSRS", e))?;
        let total = self.msrs.held.len();
        if done < total {
            return Err(BackendError::MsrRefused {
                op: "KVM_GET_MSRS",
                done,
                total,
                index: self.msrs.held[done].1,
            });
        }
        for (entry, (field, _)) in msrs.as_slice().iter().zip(&self.msrs.held) {
            field.set(state, u128::from(entry.data));
            if entry.index == MSR_IA32_APIC_BASE {
                self.shadow.apic_base = Some(entry.data);
            }
        }
        Ok(())
    }

    pub(super) fn store_msrs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let writable: Vec<(Field, u32)> = self
            .msrs
            .held
            .iter()
            .copied()
            .filter(|(_, index)| *index != MSR_IA32_MTRRCAP)
            .collect();
        let msrs = entries(writable.iter(), |f| field_u64(state, f))?;
        self.stats.stores += 1;
        let done = self
            .fd
            .set_msrs(&msrs)
            .map_err(|e| ioctl_error("KVM_SET_MSRS", e))?;
        if let Some(apic_base) = msrs.as_slice()[..done]
            .iter()
            .find(|e| e.index == MSR_IA32_APIC_BASE)
            .map(|e| e.data)
        {
            self.apic_base_written(apic_base);
        }
        if done < writable.len() {
            return Err(BackendError::MsrRefused {
                op: "KVM_SET_MSRS",
                done,
                total: writable.len(),
                index: writable[done].1,
            });
        }
        Ok(())
    }

    /// IA32_APIC_BASE was written with KVM_SET_MSRS: `kvm_sregs` in the sync area (pending or
    /// not) must carry the new value, or a deferred sregs store would undo it.
    fn apic_base_written(&mut self, apic_base: u64) {
        self.shadow.apic_base = Some(apic_base);
        if self.mirrored(StateClass::Sregs) {
            self.fd.sync_regs_mut().sregs.apic_base = apic_base;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
