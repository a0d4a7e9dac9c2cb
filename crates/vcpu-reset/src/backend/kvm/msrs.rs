//! [`StateClass::Msrs`]: every MSR [`Field`] except EFER and the FS/GS bases, which travel in
//! `kvm_sregs`, through KVM_GET/SET_MSRS.
//!
//! The MSRs held ([`MsrSet`]) are those the host supports ([`super::KvmHost::supported_msrs`])
//! that the vCPU also answers: at creation one KVM_GET_MSRS reads them all, and each MSR KVM
//! refuses costs one more and is dropped. KVM_GET/SET_MSRS stop at the first MSR they refuse
//! and return how many they processed; a short count is [`BackendError::MsrRefused`]. Lists
//! longer than KVM takes in one call ([`MSRS_PER_CALL`]) go in several; the lists themselves
//! are built by [`codec::msrs`](super::codec::msrs). IA32_MTRRCAP is read-only: it is loaded
//! but never stored. The VMX capability MSRs (held only where the host offers
//! nested VMX) are recorded as they read at creation: that is the VM's configuration, which
//! RESET restores ([`vcpu_reset_spec::CpuModel::vmx_capabilities`]).
//!
//! # IA32_TSC
//!
//! The TSC counts by itself, and KVM gives a host-initiated write of it a meaning of its own
//! (`kvm_synchronize_tsc()` in `arch/x86/kvm/x86.c`): a write of 0 means "a vCPU is being
//! created or hot-plugged, synchronise it with the others" and leaves the TSC running on the
//! VM's current offset, and a write that lands within one second (in TSC cycles) of what the
//! last write would have counted to by now is taken as meant to be that value and joins the
//! same offset. So a store:
//! - writes IA32_TSC only when its value differs from the one last loaded or stored since the
//!   last KVM_RUN: writing back a value read earlier would set the counter back by the time
//!   since the read (and start a new TSC generation for this vCPU alone), and writing again a
//!   value stored earlier would restart it;
//! - writes a 0 as 1, as QEMU does on reset (its commit 5286c3662294, "target/i386: properly
//!   reset TSC on reset"), so that the TSC really restarts; the vCPUs of a VM RESET within a
//!   second of each other then share one offset. A load still reports what the counter holds.
//!
//! Some hosts accept the write (KVM_SET_MSRS counts it) but ignore it, e.g. `kvm_pvm`. The first
//! MSR load after a write, with no KVM_RUN in between, checks that the counter went on from the
//! value written; if it did not, that load reports what it read and from then on
//! [`Backend::holds`](crate::backend::Backend::holds) says IA32_TSC is not held (a host limit),
//! stores leave it out and loads leave it alone. [`TscState`] is this policy, free of ioctls.

use kvm_bindings::kvm_msr_entry;
use kvm_ioctls::VcpuFd;
use vcpu_reset_spec::{Field, Msr, SGX_LE_HASH0_INDEX, VMX_CAPABILITY_MSRS, VcpuState};

use super::KvmVcpu;
use super::calls::counted;
use super::codec::msrs::{MSRS_PER_CALL, msr_entries, msr_fields, msr_list, msr_value};
use super::ioctls::{Ioctl, IoctlError};
use crate::backend::{BackendError, StateClass};

/// IA32_TSC (SDM Vol. 4 Table 2-2, APM Vol. 2 §13.2.4).
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_APIC_BASE (SDM Vol. 4 Table 2-2, APM Vol. 2 §16.3.1).
const MSR_IA32_APIC_BASE: u32 = 0x1b;
/// IA32_MTRRCAP (SDM Vol. 3A §12.11.1, APM Vol. 2 §7.7.1).
const MSR_IA32_MTRRCAP: u32 = 0xfe;

impl KvmVcpu {
    /// Whether this host was found to accept writes to IA32_TSC but ignore them (then the TSC
    /// is not held).
    pub fn tsc_writes_ignored(&self) -> bool {
        self.tsc.ignored
    }

    pub(super) fn load_msrs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let mut list = msr_entries(self.msrs.held.iter(), |_| 0);
        let done = get_msr_chunks(&self.fd, &mut list, &mut self.stats.loads)?;
        let total = self.msrs.held.len();
        if done < total {
            return Err(BackendError::MsrRefused {
                ioctl: Ioctl::GetMsrs,
                done,
                total,
                index: self.msrs.held[done].1,
            });
        }
        for (entry, (field, _)) in list.iter().zip(&self.msrs.held) {
            // The load that finds TSC writes ignored still reports what it read.
            if entry.index == MSR_IA32_TSC && !self.tsc.loaded(entry.data) {
                continue;
            }
            field.set(state, u128::from(entry.data));
            if entry.index == MSR_IA32_APIC_BASE {
                self.shadow.apic_base = Some(entry.data);
            }
        }
        Ok(())
    }

    pub(super) fn store_msrs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        self.store_msrs_after(state, &[], false)
    }

    /// Store the MSRs of `state` after the entries of `preamble` (written first, in the same
    /// KVM_SET_MSRS where they fit). With `kept` (the vCPU holds `state`'s MSRs already) only
    /// IA32_APIC_BASE, which the preamble changes, and IA32_TSC, which counts, are written.
    pub(super) fn store_msrs_after(
        &mut self,
        state: &VcpuState,
        preamble: &[kvm_msr_entry],
        kept: bool,
    ) -> Result<(), BackendError> {
        let tsc = state.msrs.tsc;
        let write_tsc = self.tsc.writes(tsc);
        let writable: Vec<(Field, u32)> = self
            .msrs
            .held
            .iter()
            .copied()
            .filter(|(_, index)| match *index {
                MSR_IA32_MTRRCAP => false,
                MSR_IA32_TSC => write_tsc,
                MSR_IA32_APIC_BASE => true,
                _ => !kept,
            })
            .collect();
        let mut list = preamble.to_vec();
        list.extend(msr_entries(writable.iter(), |f| match f {
            Field::Msr(Msr::Tsc) => tsc_to_write(tsc),
            _ => msr_value(state, f),
        }));
        let done = set_msr_chunks(&self.fd, &list, &mut self.stats.stores)?;
        let written = &list[..done];
        if write_tsc && written.iter().any(|e| e.index == MSR_IA32_TSC) {
            self.tsc.stored(tsc);
        }
        if let Some(apic_base) = written
            .iter()
            .rev()
            .find(|e| e.index == MSR_IA32_APIC_BASE)
            .map(|e| e.data)
        {
            self.apic_base_written(apic_base);
        }
        if done < list.len() {
            return Err(BackendError::MsrRefused {
                ioctl: Ioctl::SetMsrs,
                done,
                total: list.len(),
                index: list[done].index,
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

/// The MSR fields a vCPU holds, in the order they are moved (IA32_APIC_BASE first).
#[derive(Clone, Debug, Default)]
pub(super) struct MsrSet {
    held: Vec<(Field, u32)>,
    mtrr_cap: Option<u64>,
    /// IA32_APIC_BASE as the probe read it (its BSP flag names the bootstrap processor).
    apic_base: Option<u64>,
    vmx_capabilities: [Option<u64>; VMX_CAPABILITY_MSRS],
}

/// KVM_GET_MSRS of `list`, in chunks of [`MSRS_PER_CALL`], into `list`, each ioctl counted in
/// `calls`. Returns how many were read (fewer than asked when KVM refused one; later chunks
/// are then not asked).
fn get_msr_chunks(
    fd: &VcpuFd,
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
fn set_msr_chunks(
    fd: &VcpuFd,
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
        fd: &VcpuFd,
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

/// What a host write of IA32_TSC means to KVM: 0 asks it to synchronise the vCPU with the VM's
/// other vCPUs instead of setting the counter, so a 0 is written as 1.
fn tsc_to_write(value: u64) -> u64 {
    value.max(1)
}

/// The fastest a TSC is taken to count: 10 GHz, in cycles per nanosecond.
const TSC_MAX_CYCLES_PER_NS: u128 = 10;
/// KVM matches a host TSC write to the VM's current TSC when it is within one second of it.
const KVM_TSC_MATCH_WINDOW_NS: u128 = 1_000_000_000;

/// Whether a TSC read of `read`, `elapsed_ns` after `written` was written, can have followed
/// from that write: it counted on at up to 10 GHz, or KVM matched the write to the VM's
/// current TSC, which is within one second of it.
fn tsc_followed(written: u64, read: u64, elapsed_ns: u128) -> bool {
    let window = KVM_TSC_MATCH_WINDOW_NS * TSC_MAX_CYCLES_PER_NS;
    let low = u128::from(written).saturating_sub(window);
    let high = u128::from(written) + (elapsed_ns + KVM_TSC_MATCH_WINDOW_NS) * TSC_MAX_CYCLES_PER_NS;
    (low..=high).contains(&u128::from(read))
}

/// What the backend knows about IA32_TSC (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TscState {
    /// The value last loaded or stored since the last run (as the state has it, before
    /// [`tsc_to_write`]).
    last: Option<u64>,
    /// The value last written and when, until the next load or run checks it.
    written: Option<(u64, std::time::Instant)>,
    /// The host accepts TSC writes but ignores them.
    pub(super) ignored: bool,
}

impl TscState {
    /// Whether a store of a state whose TSC is `value` writes IA32_TSC.
    pub(super) fn writes(&self, value: u64) -> bool {
        !self.ignored && self.last != Some(value)
    }

    /// `value` was written (as [`tsc_to_write`] of it).
    fn stored(&mut self, value: u64) {
        self.last = Some(value);
        self.written = Some((tsc_to_write(value), std::time::Instant::now()));
    }

    /// A load read `read`: check a pending write against it. Returns whether the load reports
    /// the value (it does unless the field was already known not to be held).
    fn loaded(&mut self, read: u64) -> bool {
        if self.ignored {
            return false;
        }
        if let Some((written, at)) = self.written.take()
            && !tsc_followed(written, read, at.elapsed().as_nanos())
        {
            self.ignored = true;
        }
        self.last = Some(read);
        true
    }

    /// A KVM_RUN happened: the counter moved on (and the guest may have written it), so the
    /// last value is no longer what it holds and a pending write can no longer be checked.
    pub(super) fn ran(&mut self) {
        self.last = None;
        self.written = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_longer_than_one_call_takes_go_in_chunks() {
        let Some(host) = super::super::host::test_host() else {
            return;
        };
        let vm = host.create_vm(true).expect("VM");
        let vcpu = KvmVcpu::new(&host, &vm, 0).expect("vCPU");
        const MSR_IA32_PAT: u32 = 0x277;
        let pat = 0x0007_0406_0007_0406;
        // 300 entries: KVM refuses 256 or more in one call (E2BIG).
        let mut list = vec![
            kvm_msr_entry {
                index: MSR_IA32_PAT,
                data: pat,
                ..Default::default()
            };
            300
        ];
        let mut calls = 0;
        let done = set_msr_chunks(&vcpu.fd, &list, &mut calls);
        assert_eq!((calls, done.expect("KVM_SET_MSRS")), (2, 300));
        for e in &mut list {
            e.data = 0;
        }
        let mut calls = 0;
        let done = get_msr_chunks(&vcpu.fd, &mut list, &mut calls);
        assert_eq!((calls, done.expect("KVM_GET_MSRS")), (2, 300));
        assert!(list.iter().all(|e| e.data == pat));
    }

    #[test]
    fn a_tsc_of_zero_is_written_as_one() {
        assert_eq!(tsc_to_write(0), 1);
        assert_eq!(tsc_to_write(1), 1);
        assert_eq!(tsc_to_write(0x1234_5678), 0x1234_5678);
    }

    #[test]
    fn the_tsc_is_written_only_when_it_changes() {
        let mut t = TscState::default();
        assert!(t.writes(0), "nothing known yet");
        t.stored(0);
        assert!(
            !t.writes(0),
            "0 was just written: writing it again would restart the count"
        );
        assert!(t.writes(5));
        assert!(t.loaded(1), "the counter went on from the 1 written");
        assert!(!t.ignored);
        assert!(!t.writes(1), "a value read is never written back");
        t.ran();
        assert!(
            t.writes(0),
            "after a run the counter has moved on: RESET writes it again"
        );
        assert!(t.writes(1));
    }

    #[test]
    fn a_host_that_ignores_tsc_writes_is_found_out_by_the_next_load() {
        let mut t = TscState::default();
        t.stored(0);
        assert!(
            t.loaded(0x81b_6154_0a7e),
            "the load that finds out still reports what it read"
        );
        assert!(t.ignored, "the count did not restart");
        assert!(!t.writes(0) && !t.writes(7), "nothing is written any more");
        assert!(!t.loaded(0x81b_6160_0000));
        // A run between the write and the load: the guest may have written the TSC itself.
        let mut t = TscState::default();
        t.stored(0);
        t.ran();
        assert!(t.loaded(0x81b_6154_0a7e));
        assert!(!t.ignored);
    }

    #[test]
    fn a_tsc_read_follows_a_write_by_counting_or_by_kvm_matching() {
        // Counting on from the write, at up to 10 GHz.
        assert!(tsc_followed(1, 1, 0));
        assert!(tsc_followed(1, 3_000_000, 1_000_000));
        assert!(tsc_followed(1, 100_000_000_000, 9_000_000_000));
        // KVM matched the write to the VM's TSC, within a second of it either way.
        assert!(tsc_followed(20_000_000_000, 11_000_000_000, 0));
        assert!(tsc_followed(1, 9_000_000_000, 0));
        // A host that ignored the write: the counter is where it was (here ~an hour at 2.3 GHz).
        assert!(!tsc_followed(1, 0x81b_6154_0a7e, 50_000));
        assert!(!tsc_followed(0x1_0000_0000_0000, 0x81b_615a_2c02, 50_000));
    }
}
