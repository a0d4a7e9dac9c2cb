//! The register classes, moved with their ioctls: the general registers, RIP and RFLAGS; segments, descriptor tables, control registers, EFER and PDPTRs; the debug registers.
//!
//! [`StateClass::Regs`]: the general registers, RIP and RFLAGS (`kvm_regs`).
//!
//! [`StateClass::Sregs`]: segments, GDTR/IDTR, CR0/2/3/4/8, EFER and the PDPTRs.
//!
//! Moved with KVM_GET/SET_SREGS2 where the host has KVM_CAP_SREGS2 (kvm-ioctls has no wrapper;
//! the raw ioctls are in `ioctls.rs`), else KVM_GET/SET_SREGS, which cannot reach the PDPTRs.
//! KVM only takes PDPTRs from userspace in PAE paging mode (CR0.PG, CR4.PAE, not EFER.LMA), and
//! reports zeros outside it, so that is what a load returns there. Both structures also carry
//! IA32_APIC_BASE, which belongs to [`StateClass::Msrs`]: a store writes the vCPU's current
//! value back (known from the last load, store or exit, else read with one KVM_GET_MSRS).
//! `kvm_sregs`' interrupt bitmap (a pending external interrupt) belongs to
//! [`StateClass::Events`]: stores leave it empty, which queues nothing.
//!
//! [`StateClass::Debug`](crate::backend::StateClass::Debug): DR0–DR3, DR6, DR7 (`kvm_debugregs`).

use super::KvmVcpu;
use super::calls::{load, raw_result, store};
use super::codec::debugregs::{debugregs_from_state, debugregs_to_state};
use super::codec::regs::{regs_from_state, regs_to_state};
use super::codec::sregs::{
    from_legacy, is_pae_paging, sregs_from_state, sregs_to_state, to_legacy,
};
use super::ioctls::{Ioctl, KVM_GET_SREGS2, KVM_SET_SREGS2};
use crate::backend::{BackendError, StateClass};
use kvm_bindings::{kvm_msr_entry, kvm_sregs2};
use vcpu_reset_spec::VcpuState;

impl KvmVcpu {
    pub(super) fn load_regs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        if self.mirrored(StateClass::Regs) {
            regs_to_state(&self.fd.sync_regs_mut().regs, state);
            self.stats.sync_loads += 1;
            return Ok(());
        }
        let regs = load(&mut self.stats, Ioctl::GetRegs, || self.fd.get_regs())?;
        regs_to_state(&regs, state);
        if self.sync {
            self.fd.sync_regs_mut().regs = regs;
            self.mirror_filled(StateClass::Regs);
        }
        Ok(())
    }

    pub(super) fn store_regs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let regs = regs_from_state(state);
        if self.can_defer() {
            self.fd.sync_regs_mut().regs = regs;
            self.defer(StateClass::Regs);
            return Ok(());
        }
        store(&mut self.stats, Ioctl::SetRegs, || self.fd.set_regs(&regs))?;
        self.stored_by_ioctl(StateClass::Regs);
        Ok(())
    }
}

/// IA32_APIC_BASE (SDM Vol. 4 Table 2-2, APM Vol. 2 §16.3.1).
const MSR_IA32_APIC_BASE: u32 = 0x1b;

impl KvmVcpu {
    fn get_sregs2(&mut self) -> Result<kvm_sregs2, BackendError> {
        let mut s = kvm_sregs2::default();
        load(&mut self.stats, Ioctl::GetSregs2, || {
            // SAFETY: KVM_GET_SREGS2 writes exactly one `kvm_sregs2` (its size is in the
            // request number) through `&mut s`, on the fd `self.fd` owns; the return value is
            // checked.
            let ret = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.fd, KVM_GET_SREGS2(), &mut s)
            };
            raw_result(ret)
        })?;
        Ok(s)
    }

    fn set_sregs2(&mut self, s: &kvm_sregs2) -> Result<(), BackendError> {
        store(&mut self.stats, Ioctl::SetSregs2, || {
            // SAFETY: KVM_SET_SREGS2 on the vCPU fd `self.fd` owns reads exactly one
            // `struct kvm_sregs2` through the pointer, which `s` provides; the return value is
            // checked.
            let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_SET_SREGS2(), s) };
            raw_result(ret)
        })?;
        Ok(())
    }

    /// The vCPU's IA32_APIC_BASE, from what is known or with one KVM_GET_MSRS.
    fn current_apic_base(&mut self) -> Result<u64, BackendError> {
        if let Some(apic_base) = self.shadow.apic_base {
            return Ok(apic_base);
        }
        if self.mirrored(StateClass::Sregs) {
            return Ok(self.fd.sync_regs_mut().sregs.apic_base);
        }
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_APIC_BASE,
            ..Default::default()
        }])
        .map_err(|e| BackendError::Invalid {
            what: "MSR list",
            why: e.to_string(),
        })?;
        let done = load(&mut self.stats, Ioctl::GetMsrs, || {
            self.fd.get_msrs(&mut msrs)
        })?;
        if done != 1 {
            return Err(BackendError::MsrRefused {
                ioctl: Ioctl::GetMsrs,
                done,
                total: 1,
                index: MSR_IA32_APIC_BASE,
            });
        }
        let apic_base = msrs.as_slice()[0].data;
        self.shadow.apic_base = Some(apic_base);
        Ok(apic_base)
    }

    pub(super) fn load_sregs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let sregs2 = self.caps.sregs2;
        if self.mirrored(StateClass::Sregs) {
            let mut s = from_legacy(&self.fd.sync_regs_mut().sregs);
            self.stats.sync_loads += 1;
            if sregs2 {
                s.pdptrs = match self.shadow.pdptrs {
                    Some(p) => p,
                    None if is_pae_paging(s.cr0, s.cr4, s.efer) => self.get_sregs2()?.pdptrs,
                    None => [0; 4],
                };
                self.shadow.pdptrs = Some(s.pdptrs);
            }
            sregs_to_state(&s, state, sregs2);
            self.shadow.apic_base = Some(s.apic_base);
            return Ok(());
        }
        let s = if sregs2 {
            self.get_sregs2()?
        } else {
            from_legacy(&load(&mut self.stats, Ioctl::GetSregs, || {
                self.fd.get_sregs()
            })?)
        };
        sregs_to_state(&s, state, sregs2);
        self.shadow.apic_base = Some(s.apic_base);
        if sregs2 {
            self.shadow.pdptrs = Some(s.pdptrs);
        }
        if self.sync {
            self.fd.sync_regs_mut().sregs = to_legacy(&s);
            self.mirror_filled(StateClass::Sregs);
        }
        Ok(())
    }

    pub(super) fn store_sregs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let apic_base = self.current_apic_base()?;
        let sregs2 = self.caps.sregs2;
        let pae = is_pae_paging(state.cr0, state.cr4, state.efer);
        let with_pdptrs = sregs2 && pae;
        let s = sregs_from_state(state, apic_base, with_pdptrs);
        if self.can_defer() && !with_pdptrs {
            self.fd.sync_regs_mut().sregs = to_legacy(&s);
            self.defer(StateClass::Sregs);
        } else {
            if sregs2 {
                self.set_sregs2(&s)?;
            } else {
                let legacy = to_legacy(&s);
                store(&mut self.stats, Ioctl::SetSregs, || {
                    self.fd.set_sregs(&legacy)
                })?;
            }
            self.stored_by_ioctl(StateClass::Sregs);
        }
        self.shadow.apic_base = Some(apic_base);
        self.shadow.pdptrs = match (sregs2, with_pdptrs) {
            (false, _) => None,
            (true, true) => Some(state.pdptrs),
            (true, false) if pae => None,
            (true, false) => Some([0; 4]),
        };
        Ok(())
    }
}

impl KvmVcpu {
    pub(super) fn load_debugregs(&mut self, state: &mut VcpuState) -> Result<(), BackendError> {
        let d = load(&mut self.stats, Ioctl::GetDebugregs, || {
            self.fd.get_debug_regs()
        })?;
        debugregs_to_state(&d, state);
        Ok(())
    }

    pub(super) fn store_debugregs(&mut self, state: &VcpuState) -> Result<(), BackendError> {
        let d = debugregs_from_state(state);
        store(&mut self.stats, Ioctl::SetDebugregs, || {
            self.fd.set_debug_regs(&d)
        })?;
        Ok(())
    }
}
