//! KVM's own INIT as the bulk of a RESET ([`HostInitBackend::host_init`](crate::backend::HostInitBackend::host_init)).
//!
//! KVM's in-kernel INIT (`kvm_vcpu_reset(vcpu, true)` in `arch/x86/kvm/x86.c`, run by
//! `kvm_apic_accept_events()`) puts the local APIC into its INIT state (ID and IA32_APIC_BASE
//! kept), DR0–DR3, DR6 and DR7 to their reset values, the BSP to RUNNABLE and an AP to
//! INIT_RECEIVED (wait-for-SIPI), and clears pending events. What INIT keeps but RESET must
//! change is the MSRs (one KVM_SET_MSRS), x87/SSE/AVX state and XCR0 (KVM_SET_XSAVE,
//! KVM_SET_XCRS), CR0.CD/NW and the rest of REGS/SREGS/EVENTS (through sync regs, no ioctl).
//!
//! The INIT is raised inside that one KVM_SET_MSRS, before the MSRs of the RESET state:
//! 1. IA32_APIC_BASE with x2APIC mode on (a host write may make any transition; KVM sets the
//!    x2APIC ID to the vCPU id);
//! 2. the x2APIC ICR (MSR 0x830) = an INIT IPI (0x4500: INIT, assert, physical) to its own
//!    x2APIC ID: KVM makes INIT the only pending event of the local APIC, which also drops a
//!    startup IPI still pending from before (Intel SDM Vol. 3A §11.6.1, Table 11-2 and §11.12.10).
//!    A software-disabled local APIC still accepts INIT (SDM Vol. 3A §11.4.7.2), and KVM's
//!    send path (`kvm_apic_send_ipi`) does not look at the sender's SVR, so the APIC is not
//!    software-enabled first;
//! 3. the MSRs of the RESET state, IA32_APIC_BASE (with the BSP flag, which decides whether
//!    KVM's INIT leaves the vCPU RUNNABLE or waiting for SIPI) first. Leaving x2APIC mode
//!    straight for xAPIC mode is a transition only the host may make (SDM Vol. 3A §11.12.5
//!    forbids it to software); KVM sets the xAPIC ID back to the vCPU id on it, which INIT
//!    would keep. It does since Linux 6.3; on older kernels the preamble disables the APIC
//!    first (IA32_APIC_BASE = 0), and enabling it again resets the ID there.
//!
//! Each of these writes changes the APIC mode or ID, and KVM recomputes its VM-wide APIC map
//! (`kvm_recalculate_apic_map`, a walk over every vCPU) after each, and once more for the INIT:
//! three walks per vCPU, so a RESET of n vCPUs costs O(n²) there. An earlier sequence that also
//! software-enabled the APIC and disabled it before re-enabling it made five; at 32 vCPUs the
//! two fewer walks took a RESET in place from 3.6 ms to 2.3 ms on one thread (`bench reboot`).
//!
//! KVM then acts on the INIT at the vCPU's next KVM_GET_MP_STATE or KVM_RUN. This backend takes
//! it with KVM_GET_MP_STATE at once, so everything stored afterwards (REGS, SREGS, EVENTS,
//! XSAVE, XCRs, and any class whose INIT value the engine found wrong) lands after the INIT and
//! a host-side read before the next KVM_RUN sees exactly the RESET state. A RESET thus costs
//! KVM_SET_MSRS, KVM_GET_MP_STATE, KVM_SET_XSAVE and KVM_SET_XCRS: four ioctls, plus one per
//! class the INIT leaves wrong on the host (e.g. KVM_SET_LAPIC for the BSP where KVM's
//! LINT0_REENABLED quirk makes its LVT LINT0 0x700). Where the caller vouches that the MSRs
//! are at their RESET values already (`kept`: the vCPU has not run since its last RESET) and
//! the TSC needs no write, no MSR is written: the INIT is raised with `smi.latched_init` in a
//! KVM_SET_VCPU_EVENTS instead (`quiet_host_init`), and x87/SSE state and XCR0 are not stored
//! either: two ioctls.
//!
//! *Lazily* (when asked), the INIT is left for the next KVM_RUN, which saves KVM_GET_MP_STATE:
//! three ioctls. KVM applies sync regs before it acts on the INIT, so REGS, SREGS and EVENTS
//! (stored from the RESET state, `smi.latched_init` keeping the INIT raised) end as KVM's INIT
//! sets them: exact only where those are the spec's RESET values (CR0.CD/NW aside, which INIT
//! keeps), which the engine checks before it asks (a host whose INIT gives an AMD vCPU CS
//! attributes 0x9B, where APM Table 14-2 says 0x9A, does not pass). Anything read or written before that run,
//! other than XSAVE and XCRs, first has KVM act on the INIT with KVM_GET_MP_STATE, so host-side
//! reads see the state the vCPU will run from.
//!
//! Not offered (`None`): without an in-kernel irqchip, x2APIC in the vCPU's CPUID, sync regs or
//! IA32_APIC_BASE held; with nested state (INIT is held in VMX root operation); where the vCPU
//! may be in SMM (INIT is latched there) as far as the last exit does not show otherwise. Where
//! the host refuses one of the MSR writes that raise the INIT, KVM is made to act on what its
//! local APIC holds and every class is reported clobbered, so the caller stores them all.

use kvm_bindings::{
    KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE, KVM_VCPUEVENT_VALID_SMM, kvm_msr_entry,
    kvm_vcpu_events,
};
use vcpu_reset_spec::VcpuState;

use super::KvmVcpu;
use super::calls::{load, store};
use super::codec::events::events_from_state;
use super::ioctls::Ioctl;
use super::vcpu::Shadow;
use crate::backend::{BackendError, ClassSet, HostInit, StateClass};

const MSR_IA32_APIC_BASE: u32 = 0x1b;
const MSR_X2APIC_ICR: u32 = 0x830;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_BSP: u64 = 1 << 8;
/// ICR: delivery mode INIT (101b), level assert, edge, physical destination, no shorthand.
const ICR_INIT_ASSERT: u64 = 0x4500;

/// Classes KVM's INIT, with the MSRs stored before it, leaves at the RESET state.
const ESTABLISHED: ClassSet = ClassSet::EMPTY
    .with(StateClass::Lapic)
    .with(StateClass::Debug)
    .with(StateClass::MpState);

/// The class stored from the RESET state in the same call, which INIT keeps.
const MSRS: ClassSet = ClassSet::EMPTY.with(StateClass::Msrs);

/// Classes KVM's INIT overwrites with its own values, which the caller stores again.
const CLOBBERED: ClassSet = ClassSet::EMPTY
    .with(StateClass::Regs)
    .with(StateClass::Sregs)
    .with(StateClass::Events);

/// The MSR writes that raise KVM's INIT of vCPU `id` (see the module documentation). Where
/// leaving x2APIC mode straight for xAPIC mode does not reset the xAPIC ID (`direct_exit`
/// false: Linux before 6.3), the local APIC is disabled in between, which does.
fn init_preamble(id: u64, apic_base: u64, direct_exit: bool) -> Vec<kvm_msr_entry> {
    let base = apic_base & !0xfff;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let mut p = vec![
        entry(
            MSR_IA32_APIC_BASE,
            base | APIC_BASE_ENABLE | APIC_BASE_EXTD | (apic_base & APIC_BASE_BSP),
        ),
        entry(MSR_X2APIC_ICR, ((id & 0xffff_ffff) << 32) | ICR_INIT_ASSERT),
    ];
    if !direct_exit {
        p.push(entry(MSR_IA32_APIC_BASE, 0));
    }
    p
}

impl KvmVcpu {
    /// Whether KVM's INIT can be raised and taken as described in the module documentation.
    fn host_init_possible(&mut self) -> bool {
        if !(self.irqchip && self.sync && self.x2apic_cpuid())
            || self.caps.nested_state > 0
            || !self.msrs.holds(MSR_IA32_APIC_BASE)
        {
            return false;
        }
        if self.caps.x86_smm {
            // INIT is latched in SMM: only where the last exit shows the vCPU outside it.
            if !self.mirrored(StateClass::Events) {
                return false;
            }
            let e = self.fd.sync_regs_mut().events;
            return e.flags & KVM_VCPUEVENT_VALID_SMM != 0 && e.smi.smm == 0;
        }
        true
    }

    pub(super) fn host_init_reset(
        &mut self,
        target: &VcpuState,
        lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<HostInit>, BackendError> {
        if !self.host_init_possible() {
            return Ok(None);
        }
        // Deferred stores would land at the next KVM_RUN, on top of what is stored again: drop
        // them. An INIT raised before and not yet taken is raised again below.
        self.drop_pending();
        self.init_pending = false;
        // KVM_RUN on an AP KVM never started returns before applying sync regs: take the INIT
        // at once there.
        let lazy = lazy && !self.may_be_uninitialized;
        if !lazy
            && kept.contains(StateClass::Msrs)
            && !self.tsc.writes(target.msrs.tsc)
            && self.caps.vcpu_events
        {
            return self.quiet_host_init(target).map(Some);
        }
        let preamble = init_preamble(
            self.id(),
            target.msrs.apic_base,
            self.caps.x2apic_exit_sets_xapic_id,
        );
        self.guest_state_stores += 1;
        match self.store_msrs_after(target, &preamble, kept.contains(StateClass::Msrs)) {
            Err(BackendError::MsrRefused { done, .. }) if done < preamble.len() => {
                // The host refused a write that raises the INIT. Have KVM act on what its local
                // APIC holds (an INIT raised here if the ICR write went through, or an INIT or
                // SIPI from before) and the caller store every class after it.
                let mp = load(&mut self.stats, Ioctl::GetMpState, || {
                    self.fd.get_mp_state()
                })?;
                self.may_be_uninitialized = mp.mp_state == kvm_bindings::KVM_MP_STATE_UNINITIALIZED;
                self.shadow = Shadow::default();
                self.mirror = ClassSet::EMPTY;
                return Ok(Some(HostInit {
                    stored: ClassSet::EMPTY,
                    established: ClassSet::EMPTY,
                    clobbered: self.supported_classes(),
                }));
            }
            other => other?,
        }
        self.forget_after_init();
        if lazy {
            // REGS, SREGS and EVENTS of the RESET state ride `kvm_run`; KVM applies them, then
            // acts on the INIT (kept raised by `smi.latched_init`), which keeps CR0.CD/NW.
            self.store_regs(target)?;
            self.store_sregs(target)?;
            self.store_events(target)?;
            self.fd.sync_regs_mut().events.smi.latched_init = 1;
            self.init_pending = true;
            return Ok(Some(HostInit {
                stored: MSRS.union(CLOBBERED),
                established: ESTABLISHED,
                clobbered: ClassSet::EMPTY,
            }));
        }
        self.take_init(target).map(Some)
    }

    /// The RESET of a vCPU whose MSRs the caller vouches are at `target` (it has not run since
    /// its last RESET), on a host that ignores IA32_TSC writes or where the TSC needs none:
    /// no MSR is written, so the INIT is raised with `smi.latched_init` in one
    /// KVM_SET_VCPU_EVENTS (which also stores the RESET events), not through the x2APIC ICR,
    /// and IA32_APIC_BASE keeps its value. That spares KVM the two rebuilds of its APIC map
    /// the mode changes cost. The xAPIC ID, which INIT keeps, is the vCPU id still: only the
    /// guest or a store of the local APIC (counted by [`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count)) changes it. A
    /// startup IPI still pending is not dropped as an INIT IPI would drop it: KVM then starts
    /// the AP right after the INIT, which the MP-state check below sees, and the caller stores
    /// the local APIC, debug registers and MP state itself.
    ///
    /// [`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count): crate::backend::HostInitBackend::touch_count
    fn quiet_host_init(&mut self, target: &VcpuState) -> Result<HostInit, BackendError> {
        let mut e = events_from_state(target, &kvm_vcpu_events::default(), self.event_parts())?;
        e.flags |= KVM_VCPUEVENT_VALID_SMM;
        e.smi.latched_init = 1;
        store(&mut self.stats, Ioctl::SetVcpuEvents, || {
            self.fd.set_vcpu_events(&e)
        })?;
        self.forget_after_init();
        self.take_init(target)
    }

    /// What the backend knew of the classes KVM's INIT changes is stale (IA32_APIC_BASE, which
    /// INIT keeps, aside).
    fn forget_after_init(&mut self) {
        let apic_base = self.shadow.apic_base;
        self.shadow = Shadow {
            apic_base,
            ..Shadow::default()
        };
        self.mirror = ClassSet::EMPTY;
    }

    /// Have KVM act on the INIT raised with KVM_GET_MP_STATE, and say what it established.
    fn take_init(&mut self, target: &VcpuState) -> Result<HostInit, BackendError> {
        let mp = load(&mut self.stats, Ioctl::GetMpState, || {
            self.fd.get_mp_state()
        })?;
        self.may_be_uninitialized = false;
        let want = if target.msrs.apic_base & APIC_BASE_BSP != 0 {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_INIT_RECEIVED
        };
        if mp.mp_state != want {
            // The INIT did not take effect as meant (or a startup IPI followed it): only the
            // MSRs are known, and the classes the INIT should have set are for the caller to
            // store too.
            return Ok(HostInit {
                stored: MSRS,
                established: ClassSet::EMPTY,
                clobbered: CLOBBERED.union(ESTABLISHED),
            });
        }
        Ok(HostInit {
            stored: MSRS,
            established: ESTABLISHED,
            clobbered: CLOBBERED,
        })
    }

    /// Before `class` is loaded or stored: have KVM act on an INIT raised lazily, with
    /// KVM_GET_MP_STATE (XSAVE and XCRs, which INIT keeps, need not wait). The deferred REGS,
    /// SREGS and EVENTS, which hold the RESET values, then land after it at the next KVM_RUN,
    /// and no longer raise it again.
    pub(super) fn settle_init(&mut self, class: StateClass) -> Result<(), BackendError> {
        if !self.init_pending || matches!(class, StateClass::Fpu | StateClass::Xcrs) {
            return Ok(());
        }
        self.init_pending = false;
        if self.pending(StateClass::Events) {
            self.fd.sync_regs_mut().events.smi.latched_init = 0;
        }
        load(&mut self.stats, Ioctl::GetMpState, || {
            self.fd.get_mp_state()
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preamble_turns_x2apic_on_and_raises_an_init_to_the_vcpu_itself() {
        let p = init_preamble(3, 0xfee0_0900, true);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].index, p[0].data), (0x1b, 0xfee0_0d00));
        assert_eq!((p[1].index, p[1].data), (0x830, 0x0000_0003_0000_4500));
        let ap = init_preamble(1, 0xfee0_0800, true);
        assert_eq!(ap[0].data, 0xfee0_0c00, "no BSP flag for an AP");
        let old = init_preamble(3, 0xfee0_0900, false);
        assert_eq!(
            old.len(),
            3,
            "before Linux 6.3 the APIC is disabled in between"
        );
        assert_eq!((old[2].index, old[2].data), (0x1b, 0));
    }
}
