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

/// MSRs KVM answers a read of but may refuse a host write of, with the value a RESET writes:
/// MSR_KVM_STEAL_TIME (refused where the host kernel has no schedstats, `sched_info_on()`),
/// MSR_KVM_ASYNC_PF_INT (refused without an in-kernel local APIC) and Hyper-V's SINT0–15
/// (a non-zero write refused while SynIC is off), in `kvm_set_msr_common()` and
/// `synic_set_msr()` (`arch/x86/kvm/x86.c`, `hyperv.c`). [`MsrSet::probe`] holds them only where
/// that write is taken, so a RESET never fails on them.
const WRITE_CHECKED: [(u32, u64); 18] = {
    let mut list = [(0, 0); 18];
    list[0] = (0x4b56_4d03, 0);
    list[1] = (0x4b56_4d06, 0);
    let mut i = 0;
    while i < 16 {
        // HV_X64_MSR_SINT0 + i, masked (Hyper-V TLFS: 0x10000 at reset).
        list[2 + i] = (0x4000_0090 + i as u32, 0x1_0000);
        i += 1;
    }
    list
};

/// IA32_MCG_CAP (SDM Vol. 3B, §16.3.1.1) and IA32_ARCH_CAPABILITIES (SDM Vol. 4, Table 2-2):
/// not spec fields, but they say which machine-check MSRs and whether IA32_TSX_CTRL exist
/// ([`vcpu_reset_spec::CpuModel::applies`]). [`MsrSet::probe`] reads them with the first
/// KVM_GET_MSRS it makes anyway; KVM answers a host read of both on every vendor
/// (`kvm_get_msr_common()`, `get_msr_mce()` in `arch/x86/kvm/x86.c`), and one it refuses is
/// left not known.
const CAPABILITY_MSRS: [u32; 2] = [MSR_IA32_MCG_CAP, MSR_IA32_ARCH_CAPABILITIES];
/// IA32_MCG_CAP.
const MSR_IA32_MCG_CAP: u32 = 0x179;
/// IA32_ARCH_CAPABILITIES.
const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;

/// KVM's older names of registers the spec also lists under their newer names: MSR_KVM_WALL_CLOCK
/// (11H, the VM's `kvm->arch.wall_clock`, as 4B564D00H) and MSR_KVM_SYSTEM_TIME (12H, the vCPU's
/// kvmclock register, as 4B564D01H), in `kvm_set_msr_common()` (`arch/x86/kvm/x86.c`). Moving
/// both names would write one register twice, the second write undoing the first; the newer name
/// alone moves it, and a RESET of it clears the older name too.
const OLDER_NAMES: [u32; 2] = [0x11, 0x12];

/// Write `data` to MSR `index` with one KVM_SET_MSRS, counted in `calls`; whether KVM took it.
fn write_one(fd: &VcpuIo, index: u32, data: u64, calls: &mut u64) -> Result<bool, IoctlError> {
    let entry = [kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }];
    let Ok(list) = msr_list(&entry) else {
        return Ok(false);
    };
    Ok(counted(calls, Ioctl::SetMsrs, || fd.set_msrs(&list))? == 1)
}

/// The MSR fields a vCPU holds, in the order they are moved (IA32_APIC_BASE first).
#[derive(Clone, Debug, Default)]
pub(super) struct MsrSet {
    pub(super) held: Vec<(Field, u32)>,
    mtrr_cap: Option<u64>,
    /// IA32_APIC_BASE as the probe read it (its BSP flag names the bootstrap processor).
    apic_base: Option<u64>,
    vmx_capabilities: [Option<u64>; VMX_CAPABILITY_MSRS],
    /// IA32_MCG_CAP as the probe read it.
    mcg_cap: Option<u64>,
    /// IA32_ARCH_CAPABILITIES as the probe read it.
    arch_capabilities: Option<u64>,
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
    ///
    /// The MSRs whose host write KVM may refuse ([`WRITE_CHECKED`]) are written: their RESET
    /// values, one KVM_SET_MSRS for all where KVM takes them, then each value read that differs
    /// put back with one KVM_SET_MSRS of its own. A refused put-back is
    /// [`Ioctl::SetMsrsWriteBack`]: the vCPU then holds the RESET value there.
    pub(super) fn probe(
        fd: &VcpuIo,
        supported: &[u32],
        calls: &mut u64,
    ) -> Result<MsrSet, IoctlError> {
        let candidates: Vec<(Field, u32)> = msr_fields()
            .filter(|(_, index)| {
                supported.binary_search(index).is_ok() && !OLDER_NAMES.contains(index)
            })
            .collect();
        let mut set = MsrSet::default();
        // MSRs whose host write KVM may refuse: ((field, index), RESET value, value read).
        let mut checked: Vec<((Field, u32), u64, u64)> = Vec::new();
        let mut rest = &candidates[..];
        // The capability MSRs ride at the head of the first KVM_GET_MSRS; one KVM refuses is
        // dropped (not known) and the rest asked again.
        let mut capabilities = &CAPABILITY_MSRS[..];
        while !rest.is_empty() || !capabilities.is_empty() {
            let mut list: Vec<kvm_msr_entry> = capabilities
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            list.extend(msr_entries(rest.iter(), |_| 0));
            let done = get_msr_chunks(fd, &mut list, calls).map_err(|e| match e {
                BackendError::Ioctl(e) => e,
                // Only a list longer than KVM takes in one call is refused before the ioctl,
                // which chunks never are; KVM would answer such a list with E2BIG.
                _ => Ioctl::GetMsrs.failed(vmm_sys_util::errno::Error::new(libc::E2BIG)),
            })?;
            let asked = capabilities.len();
            for entry in &list[..done.min(asked)] {
                match entry.index {
                    MSR_IA32_MCG_CAP => set.mcg_cap = Some(entry.data),
                    MSR_IA32_ARCH_CAPABILITIES => set.arch_capabilities = Some(entry.data),
                    _ => {}
                }
            }
            if done < asked {
                capabilities = capabilities.get(done + 1..).unwrap_or(&[]);
                continue;
            }
            capabilities = &[];
            let (list, done) = (&list[asked..], done - asked);
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
                if let Some(&(_, reset)) = WRITE_CHECKED.iter().find(|(i, _)| *i == entry.index) {
                    checked.push((*field, reset, entry.data));
                    continue;
                }
                set.held.push(*field);
            }
            rest = rest.get(done + 1..).unwrap_or(&[]);
        }
        // Try the values a RESET writes, all in one KVM_SET_MSRS where KVM takes them all (KVM
        // stops at the first it refuses: that one is not held, the rest go again), then put
        // back what was read where it differs.
        let mut left = &checked[..];
        while !left.is_empty() {
            let list: Vec<kvm_msr_entry> = left
                .iter()
                .map(|&((_, index), reset, _)| kvm_msr_entry {
                    index,
                    data: reset,
                    ..Default::default()
                })
                .collect();
            let taken = match msr_list(&list) {
                Ok(msrs) => counted(calls, Ioctl::SetMsrs, || fd.set_msrs(&msrs))?.min(list.len()),
                Err(_) => 0,
            };
            for &(field, reset, data) in &left[..taken] {
                // A vCPU that already ran may have had another value: put it back, and fail
                // (rather than leave the RESET value behind unnoticed) where KVM refuses it.
                if reset != data && !write_one(fd, field.1, data, calls)? {
                    return Err(Ioctl::SetMsrsWriteBack
                        .failed(vmm_sys_util::errno::Error::new(libc::EINVAL)));
                }
                set.held.push(field);
            }
            left = left.get(taken + 1..).unwrap_or(&[]);
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

    /// IA32_MCG_CAP as the vCPU reported it at creation or adoption, if KVM answered.
    pub(super) fn mcg_cap(&self) -> Option<u64> {
        self.mcg_cap
    }

    /// IA32_ARCH_CAPABILITIES as the vCPU reported it at creation or adoption, if KVM
    /// answered.
    pub(super) fn arch_capabilities(&self) -> Option<u64> {
        self.arch_capabilities
    }

    /// Whether the SGX launch-enclave hash MSRs are held (the VM offers SGX launch control).
    pub(super) fn sgx_launch_control(&self) -> bool {
        self.holds(SGX_LE_HASH0_INDEX)
    }
}
