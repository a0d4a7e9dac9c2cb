//! The MSRs a vCPU holds ([`MsrSet`], found by probing at creation) and KVM_GET/SET_MSRS in
//! chunks of [`MSRS_PER_CALL`], on a vCPU fd. The lists themselves are built by
//! [`codec::msrs`](super::codec::msrs).

use kvm_bindings::kvm_msr_entry;
use kvm_ioctls::VcpuFd;
use vcpu_reset_spec::{Field, SGX_LE_HASH0_INDEX, VMX_CAPABILITY_MSRS};

use super::KvmError;
use super::codec::msrs::{MSRS_PER_CALL, msr_entries, msr_fields, msr_list};
use super::ioctl_error::ioctl_error;
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

/// KVM_GET_MSRS of `list`, in chunks of [`MSRS_PER_CALL`], into `list`. Returns how many were
/// read (fewer than asked when KVM refused one; later chunks are then not asked) and the
/// number of ioctls made.
pub(super) fn get_msr_chunks(
    fd: &VcpuFd,
    list: &mut [kvm_msr_entry],
) -> (u64, Result<usize, BackendError>) {
    let mut calls = 0;
    let mut done = 0;
    for chunk in list.chunks_mut(MSRS_PER_CALL) {
        let mut msrs = match msr_list(chunk) {
            Ok(m) => m,
            Err(e) => return (calls, Err(e)),
        };
        calls += 1;
        let n = match fd.get_msrs(&mut msrs) {
            Ok(n) => n,
            Err(e) => return (calls, Err(ioctl_error("KVM_GET_MSRS", e))),
        };
        let n = n.min(chunk.len());
        chunk[..n].copy_from_slice(&msrs.as_slice()[..n]);
        done += n;
        if n < chunk.len() {
            break;
        }
    }
    (calls, Ok(done))
}

/// KVM_SET_MSRS of `list`, in chunks of [`MSRS_PER_CALL`], in order. Returns how many were
/// written (fewer when KVM refused one; later chunks are then not written) and the number of
/// ioctls made.
pub(super) fn set_msr_chunks(
    fd: &VcpuFd,
    list: &[kvm_msr_entry],
) -> (u64, Result<usize, BackendError>) {
    let mut calls = 0;
    let mut done = 0;
    for chunk in list.chunks(MSRS_PER_CALL) {
        let msrs = match msr_list(chunk) {
            Ok(m) => m,
            Err(e) => return (calls, Err(e)),
        };
        calls += 1;
        let n = match fd.set_msrs(&msrs) {
            Ok(n) => n.min(chunk.len()),
            Err(e) => return (calls, Err(ioctl_error("KVM_SET_MSRS", e))),
        };
        done += n;
        if n < chunk.len() {
            break;
        }
    }
    (calls, Ok(done))
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
            let mut list = msr_entries(rest.iter(), |_| 0);
            let (n, done) = get_msr_chunks(fd, &mut list);
            calls += n;
            let done = done.map_err(|e| match e {
                BackendError::Ioctl { errno, .. } => KvmError::ioctl(
                    "KVM_GET_MSRS",
                    errno,
                    "the new vCPU does not answer MSR reads",
                ),
                other => KvmError::ioctl(
                    "KVM_GET_MSRS",
                    vmm_sys_util::errno::Error::new(libc::E2BIG),
                    if matches!(other, BackendError::Invalid { .. }) {
                        "the MSR list does not fit one call"
                    } else {
                        "the new vCPU does not answer MSR reads"
                    },
                ),
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
