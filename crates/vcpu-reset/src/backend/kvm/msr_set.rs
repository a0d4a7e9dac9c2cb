//! The MSRs a vCPU holds ([`MsrSet`], found by probing at creation) and KVM_GET/SET_MSRS in
//! chunks of [`MSRS_PER_CALL`], on a vCPU fd. The lists themselves are built by
//! [`codec::msrs`](super::codec::msrs).

use super::vcpu_io::VcpuIo;
use kvm_bindings::kvm_msr_entry;
use vcpu_reset_spec::{Field, SGX_LE_HASH0_INDEX, VMX_CAPABILITY_MSRS};

use super::calls::counted;
use super::codec::msrs::{MSRS_PER_CALL, msr_entries, msr_fields, msr_list};
use super::ioctls::{Ioctl, IoctlError};
use crate::backend::BackendError;

/// IA32_APIC_BASE (SDM Vol. 4 Table 2-2, APM Vol. 2 §16.3.1).
const MSR_IA32_APIC_BASE: u32 = 0x1b;
/// IA32_MTRRCAP (SDM Vol. 3A §12.11.1, APM Vol. 2 §7.7.1).
pub(super) const MSR_IA32_MTRRCAP: u32 = 0xfe;

/// The MSR fields a vCPU holds, in the order they are moved (IA32_APIC_BASE first).
#[derive(Clone, Debug, Default)]
pub(super) struct MsrSet {
    pub(super) held: Vec<(Field, u32)>,
    mtrr_cap: Option<u64>,
    /// IA32_APIC_BASE as the probe read it (its BSP flag names the bootstrap processor).
    apic_base: Option<u64>,
    vmx_capabilities: [Option<u64>; VMX_CAPABILITY_MSRS],
}

/// KVM_GET_MSRS of `list`, in chunks of [`MSRS_PER_CALL`], into `list`, each ioctl counted in
/// `calls`. Returns how many were read (fewer than asked when KVM refused one; later chunks
/// are then not asked).
pub(super) fn get_msr_chunks(
    fd: &VcpuIo,
    list: &mut [kvm_msr_entry],
    calls: &mut u64,
) -> Result<usize, BackendError> {
    let mut done = 0;
    for chunk in list.chunks_mut(MSRS_PER_CALL) {
        let mut msrs = msr_list(chunk)?;
        let n = counted(calls, Ioctl::GetMsrs, || fd.get_msrs(&mut msrs))?;
        let n = n.min(chunk.len());
        chunk[..n].copy_from_slice(&msrs.as_slice()[..n]);
        done += n;
        if n < chunk.len() {
            break;
        }
    }
    Ok(done)
}

/// KVM_SET_MSRS of `list`, in chunks of [`MSRS_PER_CALL`], in order, each ioctl counted in
/// `calls`. Returns how many were written (fewer when KVM refused one; later chunks are then
/// not written).
pub(super) fn set_msr_chunks(
    fd: &VcpuIo,
    list: &[kvm_msr_entry],
    calls: &mut u64,
) -> Result<usize, BackendError> {
    let mut done = 0;
    for chunk in list.chunks(MSRS_PER_CALL) {
        let msrs = msr_list(chunk)?;
        let n = counted(calls, Ioctl::SetMsrs, || fd.set_msrs(&msrs))?.min(chunk.len());
        done += n;
        if n < chunk.len() {
            break;
        }
    }
    Ok(done)
}

impl MsrSet {
    /// Find which of the host's MSRs the vCPU answers, each KVM_GET_MSRS counted in `calls`.
    pub(super) fn probe(
        fd: &VcpuIo,
        supported: &[u32],
        calls: &mut u64,
    ) -> Result<MsrSet, IoctlError> {
        let candidates: Vec<(Field, u32)> = msr_fields()
            .filter(|(_, index)| supported.binary_search(index).is_ok())
            .collect();
        let mut set = MsrSet::default();
        let mut rest = &candidates[..];
        while !rest.is_empty() {
            let mut list = msr_entries(rest.iter(), |_| 0);
            let done = get_msr_chunks(fd, &mut list, calls).map_err(|e| match e {
                BackendError::Ioctl(e) => e,
                // Only a list longer than KVM takes in one call is refused before the ioctl,
                // which chunks never are; KVM would answer such a list with E2BIG.
                _ => Ioctl::GetMsrs.failed(vmm_sys_util::errno::Error::new(libc::E2BIG)),
            })?;
            for (entry, field) in list[..done].iter().zip(rest) {
                if entry.index == MSR_IA32_MTRRCAP {
                    set.mtrr_cap = Some(entry.data);
                }
                if entry.index == MSR_IA32_APIC_BASE {
                    set.apic_base = Some(entry.data);
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
        Ok(set)
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

    /// IA32_APIC_BASE as the vCPU reported it at creation or adoption.
    pub(super) fn probed_apic_base(&self) -> Option<u64> {
        self.apic_base
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
