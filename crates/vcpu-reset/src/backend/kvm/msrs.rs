//! [`StateClass::Msrs`]: every MSR [`Field`] except EFER and the FS/GS bases, which travel in
//! `kvm_sregs`, through KVM_GET/SET_MSRS.
//!
//! The MSRs held are those the host supports ([`super::KvmHost::supported_msrs`]) that the vCPU
//! also answers: at creation one KVM_GET_MSRS reads them all, and each MSR KVM refuses costs one
//! more and is dropped. KVM_GET/SET_MSRS stop at the first MSR they refuse and return how many
//! they processed; a short count is [`BackendError::MsrRefused`]. Lists longer than KVM takes
//! in one call (255 MSRs) go in several. IA32_MTRRCAP is read-only:
//! it is loaded but never stored. The VMX capability MSRs (held only where the host offers
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
//! stores leave it out and loads leave it alone.

use kvm_bindings::kvm_msr_entry;
use vcpu_reset_spec::{Field, Msr, VcpuState};

use super::KvmVcpu;
use super::codec::msrs::{msr_entries, msr_value};
use super::ioctls::Ioctl;
use super::msr_set::{MSR_IA32_MTRRCAP, get_msr_chunks, set_msr_chunks};
use super::tsc::tsc_to_write;
use crate::backend::{BackendError, StateClass};

/// IA32_TSC (SDM Vol. 4 Table 2-2, APM Vol. 2 §13.2.4).
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_APIC_BASE (SDM Vol. 4 Table 2-2, APM Vol. 2 §16.3.1).
const MSR_IA32_APIC_BASE: u32 = 0x1b;

impl KvmVcpu {
    /// Whether this host was found to accept writes to IA32_TSC but ignore them (then the TSC
    /// is not held).
    pub fn tsc_writes_ignored(&self) -> bool {
        self.tsc.ignored
    }
}

impl KvmVcpu {
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
}
