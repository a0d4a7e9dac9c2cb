//! `/dev/kvm`: opening it, what the host's KVM offers, and creating VMs.

use std::os::raw::c_ulong;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_bindings::{
    CpuId, KVM_CAP_DEBUGREGS, KVM_CAP_INTR_SHADOW, KVM_CAP_IRQCHIP, KVM_CAP_MAX_VCPUS, KVM_CAP_MCE,
    KVM_CAP_NESTED_STATE, KVM_CAP_SET_IDENTITY_MAP_ADDR, KVM_CAP_SET_TSS_ADDR, KVM_CAP_SREGS2,
    KVM_CAP_SYNC_REGS, KVM_CAP_VCPU_EVENTS, KVM_CAP_X86_SMM, KVM_CAP_XCRS, KVM_CAP_XSAVE,
    KVM_CAP_XSAVE2, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VmFd};
use vcpu_reset_spec::{FIXED_MTRR_MSRS, MCE_BANKS, VARIABLE_MTRRS};
use vmm_sys_util::errno;

use super::KvmError;
use super::ioctls::{Ioctl, KVM_X86_GET_MCE_CAP_SUPPORTED};

/// The KVM API version this crate drives (KVM_GET_API_VERSION).
pub const KVM_API_VERSION: i32 = 12;

/// Guest-physical address of the three-page TSS KVM needs for real mode on VMX without
/// unrestricted guest (KVM_SET_TSS_ADDR), where QEMU puts it: just below the 4 GiB BIOS area.
pub const TSS_ADDRESS: usize = 0xfeff_d000;
/// Guest-physical address of the identity-map page table KVM needs for the same case
/// (KVM_SET_IDENTITY_MAP_ADDR), the page before the TSS.
pub const IDENTITY_MAP_ADDRESS: u64 = 0xfeff_c000;

const MSR_IA32_APIC_BASE: u32 = 0x1b;
const MSR_IA32_MTRRCAP: u32 = 0xfe;
const MSR_IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_IA32_MTRR_PHYSBASE0: u32 = 0x200;
const MSR_IA32_MC0_CTL: u32 = 0x400;
/// CPUID.01H:EDX.MTRR.
const CPUID_1_EDX_MTRR: u32 = 1 << 12;

/// What the host's KVM offers, as KVM_CHECK_EXTENSION and friends answered when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmCaps {
    /// KVM_CAP_SYNC_REGS: the `KVM_SYNC_X86_*` sets `kvm_run` can carry (7 = REGS|SREGS|EVENTS).
    pub sync_regs: u32,
    /// KVM_CAP_SREGS2: KVM_GET/SET_SREGS2 exist, so the PDPTRs can be read and written.
    pub sregs2: bool,
    /// KVM_CAP_XSAVE: KVM_GET/SET_XSAVE exist.
    pub xsave: bool,
    /// KVM_CAP_XSAVE2: the size in bytes of the buffer KVM_GET_XSAVE2 fills (0 without it).
    pub xsave2_size: usize,
    /// KVM_CAP_XCRS.
    pub xcrs: bool,
    /// KVM_CAP_DEBUGREGS.
    pub debugregs: bool,
    /// KVM_CAP_VCPU_EVENTS.
    pub vcpu_events: bool,
    /// KVM_CAP_INTR_SHADOW: `KVM_VCPUEVENT_VALID_SHADOW` is documented to work.
    pub intr_shadow: bool,
    /// KVM_CAP_X86_SMM: vCPUs can enter SMM, so SMM and pending SMIs are state.
    pub x86_smm: bool,
    /// KVM_CAP_NESTED_STATE: the largest nested state in bytes (0: no nested state).
    pub nested_state: usize,
    /// KVM_CAP_IRQCHIP: an in-kernel irqchip (PIC, IOAPIC, local APICs) can be created.
    pub irqchip: bool,
    /// KVM_CAP_MAX_VCPUS.
    pub max_vcpus: usize,
    /// Machine-check banks a vCPU has: the bank count of KVM_X86_GET_MCE_CAP_SUPPORTED where it
    /// reports one, else KVM_CAP_MCE's maximum (KVM's default for a new vCPU); 0 without MCE.
    pub mce_banks: u32,
    /// KVM_X86_GET_MCE_CAP_SUPPORTED: the IA32_MCG_CAP bits KVM can offer (0 without MCE).
    pub mce_cap: u64,
    /// KVM_CAP_SET_TSS_ADDR.
    pub set_tss_addr: bool,
    /// KVM_CAP_SET_IDENTITY_MAP_ADDR.
    pub set_identity_map_addr: bool,
    /// A host write of IA32_APIC_BASE that goes from x2APIC straight to xAPIC mode sets the
    /// xAPIC ID back to the vCPU id: Linux 6.3 and later (commit 052c3b99cbc8, "KVM: x86:
    /// Reinitialize xAPIC ID when userspace forces x2APIC => xAPIC"); taken from the kernel
    /// release, so a kernel that has the fix backported under an older number is treated as
    /// lacking it (the RESET then disables the APIC in between, which is slower, not wrong).
    pub x2apic_exit_sets_xapic_id: bool,
}

/// Whether the Linux release `release` (e.g. "6.18.44-fc") is `major.minor` or later.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// An open `/dev/kvm`, with the host's capabilities, supported CPUID and MSRs recorded.
pub struct KvmHost {
    kvm: Kvm,
    caps: KvmCaps,
    cpuid: CpuId,
    msr_index_list: Vec<u32>,
    msrs: Vec<u32>,
}

impl std::fmt::Debug for KvmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmHost")
            .field("caps", &self.caps)
            .field("cpuid_entries", &self.cpuid.as_slice().len())
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// The error for EACCES/EPERM on `path`: "add the user to group G" only where the device is
/// read-write for its group and that group has a name (so joining it helps), else say who may
/// open it.
fn permission_denied(device: &Path, path: &str) -> KvmError {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(device) else {
        return KvmError::PermissionDenied { path: path.into() };
    };
    let group = group_name(meta.gid());
    match (meta.mode() & 0o060 == 0o060, group) {
        (true, Some(g)) if g == "kvm" => KvmError::PermissionDenied { path: path.into() },
        (true, Some(g)) => KvmError::AccessRestricted {
            path: path.into(),
            detail: format!(
                "mode {:o}, group {g}: add the user to group {g}",
                meta.mode() & 0o7777
            ),
        },
        _ => KvmError::AccessRestricted {
            path: path.into(),
            detail: format!(
                "mode {:o}, owner uid {}, no group may open it",
                meta.mode() & 0o7777,
                meta.uid()
            ),
        },
    }
}

/// The name of group `gid` from /etc/group (bounded read), if it has one.
fn group_name(gid: u32) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open("/etc/group")
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut bytes)
        .ok()?;
    String::from_utf8_lossy(&bytes).lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == gid).then(|| name.to_string())
    })
}

/// What `device` is, where that is plainly not a KVM device: anything but a character
/// device. `None` for a character device, and where it cannot be told (it does not exist:
/// the open says so).
fn not_a_device(device: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(device).ok()?.file_type();
    let what = if kind.is_char_device() {
        return None;
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a device"
    };
    Some(what.into())
}

/// The KVM device a host normally has.
pub const DEFAULT_DEVICE: &str = "/dev/kvm";

impl KvmHost {
    /// Open `/dev/kvm`, check the API version and record what the host offers
    /// ([`KvmHost::open_path`] with [`DEFAULT_DEVICE`]).
    ///
    /// # Errors
    /// As [`KvmHost::open_path`].
    pub fn open() -> Result<KvmHost, KvmError> {
        Self::open_path(Path::new(DEFAULT_DEVICE))
    }

    /// Open the KVM device at `device`, check the API version and record what the host offers.
    ///
    /// # Errors
    /// [`KvmError::NoDevice`] and [`KvmError::PermissionDenied`] say what to fix;
    /// [`KvmError::NotKvm`] when the device is not KVM; [`KvmError::ApiVersion`] when the API
    /// version is not 12; [`KvmError::Ioctl`] when a system ioctl (supported CPUID, MSR index
    /// list) fails.
    pub fn open_path(device: &Path) -> Result<KvmHost, KvmError> {
        // Messages name the device by at most 80 bytes of its path.
        let path = shown_path(device);
        let c_path = std::ffi::CString::new(device.as_os_str().as_bytes())
            .map_err(|_| KvmError::NoDevice { path: path.clone() })?;
        if let Some(what) = not_a_device(device) {
            return Err(KvmError::NotADevice { path, what });
        }
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENOTDIR => KvmError::NoDevice { path: path.clone() },
            libc::ENODEV | libc::ENXIO => KvmError::NotADevice {
                path: path.clone(),
                what: "a character device with no driver behind it".into(),
            },
            libc::EACCES | libc::EPERM => permission_denied(device, &path),
            _ => KvmError::Open {
                path: path.clone(),
                errno: e,
            },
        })?;
        let version = kvm.get_api_version();
        if version < 0 {
            // The ioctl failed (-1 and errno), e.g. /dev/null: not a version at all.
            return Err(KvmError::NotKvm {
                path,
                errno: errno::Error::last(),
            });
        }
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion { path, version });
        }
        Self::probe(kvm)
    }

    /// The host behind a `/dev/kvm` handle the caller already holds (a VMM that opened it
    /// itself, or was passed the fd in a sandbox), instead of opening the device again.
    ///
    /// # Errors
    /// [`KvmError::ApiVersion`] when the API version is not 12; [`KvmError::Ioctl`] when a
    /// system ioctl (supported CPUID, MSR index list) fails.
    pub fn from_kvm(kvm: Kvm) -> Result<KvmHost, KvmError> {
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion {
                path: "the given KVM handle".into(),
                version,
            });
        }
        Self::probe(kvm)
    }

    /// What the host offers: capabilities, supported CPUID and MSRs.
    fn probe(kvm: Kvm) -> Result<KvmHost, KvmError> {
        let caps = probe_caps(&kvm);
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Ioctl::GetSupportedCpuid.failed(e))?;
        let msr_index_list = kvm
            .get_msr_index_list()
            .map_err(|e| Ioctl::GetMsrIndexList.failed(e))?
            .as_slice()
            .to_vec();
        let msrs = supported_msrs(&msr_index_list, &cpuid, caps.mce_banks);
        Ok(KvmHost {
            kvm,
            caps,
            cpuid,
            msr_index_list,
            msrs,
        })
    }

    /// The `/dev/kvm` handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The host's capabilities.
    pub fn caps(&self) -> &KvmCaps {
        &self.caps
    }

    /// The CPUID KVM can offer a guest (KVM_GET_SUPPORTED_CPUID).
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// The MSRs KVM_GET_MSR_INDEX_LIST reports, in its order.
    pub fn msr_index_list(&self) -> &[u32] {
        &self.msr_index_list
    }

    /// The MSRs a vCPU on this host can have, sorted: the MSR index list plus what it leaves
    /// out although KVM emulates it: IA32_APIC_BASE (which KVM also carries in `kvm_sregs`),
    /// the MTRRs (IA32_MTRRCAP, IA32_MTRR_DEF_TYPE, the fixed and the modelled variable ranges,
    /// where the supported CPUID has MTRR) and the modelled machine-check banks (up to
    /// KVM_CAP_MCE of them).
    pub fn supported_msrs(&self) -> &[u32] {
        &self.msrs
    }

    /// Create a VM. With `irqchip`, also create the in-kernel irqchip (KVM_CREATE_IRQCHIP:
    /// PIC, IOAPIC and a local APIC per vCPU), which [`crate::backend::StateClass::Lapic`] and
    /// [`crate::backend::StateClass::MpState`] need. Where the host has the capabilities, the
    /// real-mode helper areas KVM may need on VMX (identity map, TSS) are placed at
    /// [`IDENTITY_MAP_ADDRESS`] and [`TSS_ADDRESS`]; keep guest memory away from them.
    ///
    /// # Errors
    /// [`KvmError::Ioctl`] naming the ioctl that failed.
    pub fn create_vm(&self, irqchip: bool) -> Result<VmFd, KvmError> {
        let vm = self
            .kvm
            .create_vm()
            .map_err(|e| Ioctl::CreateVm.failed(e))?;
        if self.caps.set_identity_map_addr {
            vm.set_identity_map_address(IDENTITY_MAP_ADDRESS)
                .map_err(|e| Ioctl::SetIdentityMapAddr.failed(e))?;
        }
        if self.caps.set_tss_addr {
            vm.set_tss_address(TSS_ADDRESS)
                .map_err(|e| Ioctl::SetTssAddr.failed(e))?;
        }
        if irqchip {
            if !self.caps.irqchip {
                let unsupported = errno::Error::new(libc::ENOTSUP);
                return Err(Ioctl::CreateIrqchip.failed(unsupported).into());
            }
            vm.create_irq_chip()
                .map_err(|e| Ioctl::CreateIrqchip.failed(e))?;
        }
        Ok(vm)
    }
}

fn probe_caps(kvm: &Kvm) -> KvmCaps {
    let cap = |c: u32| kvm.check_extension_raw(c_ulong::from(c));
    let non_negative = |v: i32| usize::try_from(v).unwrap_or(0);
    let max_banks = u32::try_from(cap(KVM_CAP_MCE)).unwrap_or(0);
    let mut mce_cap = 0u64;
    if max_banks > 0 {
        // SAFETY: KVM_X86_GET_MCE_CAP_SUPPORTED is a system ioctl on the `/dev/kvm` fd that
        // `kvm` owns; it writes one u64 through the pointer, which `&mut mce_cap` provides.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(
                kvm,
                KVM_X86_GET_MCE_CAP_SUPPORTED(),
                &mut mce_cap,
            )
        };
        if ret != 0 {
            mce_cap = 0;
        }
    }
    // IA32_MCG_CAP.Count (bits 7:0) where KVM puts a bank count into the supported MCG_CAP,
    // else KVM_CAP_MCE's answer, the most banks a vCPU can have.
    let mce_banks = match u32::try_from(mce_cap & 0xff).unwrap_or(0) {
        0 => max_banks,
        count => count.min(max_banks),
    };
    KvmCaps {
        sync_regs: u32::try_from(cap(KVM_CAP_SYNC_REGS)).unwrap_or(0),
        sregs2: cap(KVM_CAP_SREGS2) > 0,
        xsave: cap(KVM_CAP_XSAVE) > 0,
        xsave2_size: non_negative(cap(KVM_CAP_XSAVE2)),
        xcrs: cap(KVM_CAP_XCRS) > 0,
        debugregs: cap(KVM_CAP_DEBUGREGS) > 0,
        vcpu_events: cap(KVM_CAP_VCPU_EVENTS) > 0,
        intr_shadow: cap(KVM_CAP_INTR_SHADOW) > 0,
        x86_smm: cap(KVM_CAP_X86_SMM) > 0,
        nested_state: non_negative(cap(KVM_CAP_NESTED_STATE)),
        irqchip: cap(KVM_CAP_IRQCHIP) > 0,
        max_vcpus: non_negative(cap(KVM_CAP_MAX_VCPUS)),
        mce_banks,
        mce_cap,
        set_tss_addr: cap(KVM_CAP_SET_TSS_ADDR) > 0,
        set_identity_map_addr: cap(KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0,
        x2apic_exit_sets_xapic_id: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|r| release_at_least(r.trim(), 6, 3)),
    }
}

fn supported_msrs(list: &[u32], cpuid: &CpuId, mce_banks: u32) -> Vec<u32> {
    let mut msrs = list.to_vec();
    msrs.push(MSR_IA32_APIC_BASE);
    let has_mtrr = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 1 && e.edx & CPUID_1_EDX_MTRR != 0);
    if has_mtrr {
        msrs.push(MSR_IA32_MTRRCAP);
        msrs.push(MSR_IA32_MTRR_DEF_TYPE);
        msrs.extend(FIXED_MTRR_MSRS.iter().map(|(_, index)| *index));
        let variable = u32::try_from(2 * VARIABLE_MTRRS).unwrap_or(0);
        msrs.extend((0..variable).map(|i| MSR_IA32_MTRR_PHYSBASE0 + i));
    }
    let banks = mce_banks.min(u32::try_from(MCE_BANKS).unwrap_or(0));
    msrs.extend((0..4 * banks).map(|i| MSR_IA32_MC0_CTL + i));
    msrs.sort_unstable();
    msrs.dedup();
    msrs
}

/// A path for a message: whole when at most 80 bytes, else its first 80 bytes with control
/// characters escaped and the length.
fn shown_path(path: &Path) -> String {
    const MAX: usize = 80;
    let text = path.display().to_string();
    if text.len() <= MAX {
        return text;
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let shown: String = text[..cut]
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    format!("{shown}… ({} bytes)", text.len())
}

/// KVM for the library's own unit tests: `None` (having said why) where `/dev/kvm` does not
/// open, a panic where `VCPU_RESET_REQUIRE_KVM=1` (CI sets it where `/dev/kvm` exists).
#[cfg(test)]
pub(super) fn test_host() -> Option<KvmHost> {
    match KvmHost::open() {
        Ok(host) => Some(host),
        Err(e) => {
            let required = std::env::var("VCPU_RESET_REQUIRE_KVM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "VCPU_RESET_REQUIRE_KVM=1 but KVM cannot be used: {e}"
            );
            eprintln!("skipped: no /dev/kvm ({e})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.18.44-fc-v1272", 6, 3));
        assert!(release_at_least("6.3.0", 6, 3));
        assert!(release_at_least("7.0-rc1", 6, 3));
        assert!(!release_at_least("6.2.16-300.fc38.x86_64", 6, 3));
        assert!(!release_at_least("5.15.0-91-generic", 6, 3));
        assert!(!release_at_least("unknown", 6, 3));
        assert!(!release_at_least("", 6, 3));
    }

    #[test]
    fn the_msr_list_gains_what_kvm_leaves_out() {
        let mut cpuid = CpuId::new(1).expect("one entry");
        cpuid.as_mut_slice()[0].function = 1;
        cpuid.as_mut_slice()[0].edx = CPUID_1_EDX_MTRR;
        let msrs = supported_msrs(&[0x277, 0x10], &cpuid, 32);
        for index in [0x10, 0x1b, 0xfe, 0x250, 0x20f, 0x277, 0x2ff, 0x400, 0x427] {
            assert!(msrs.binary_search(&index).is_ok(), "{index:#x}");
        }
        assert!(
            msrs.binary_search(&0x428).is_err(),
            "only the modelled banks"
        );
        assert!(
            msrs.binary_search(&0x210).is_err(),
            "only the modelled variable MTRRs"
        );
        let no_mtrr = supported_msrs(&[], &CpuId::new(0).expect("empty"), 0);
        assert_eq!(no_mtrr, vec![0x1b]);
    }
}
