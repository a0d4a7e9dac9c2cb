//! Adopting a vCPU a VMM created ([`KvmVcpu::adopt`]) and handing it back
//! ([`KvmVcpu::into_fd`]).
//!
//! A VMM on kvm-ioctls owns its VM and vCPU fds, sets the CPUID and runs its own KVM_RUN
//! loop. Adoption takes such a vCPU over without changing anything the VMM configured: the CPU
//! model (vendor, signature, XSAVE layout, performance counters) comes from the CPUID the vCPU
//! holds (KVM_GET_CPUID2), the local APIC version and IA32_MTRRCAP from the vCPU itself. The
//! hand-back applies every store still deferred to the next KVM_RUN with its ioctl and puts
//! `kvm_run`'s `kvm_valid_regs` and `kvm_dirty_regs` back as the VMM had them.

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_bindings::{
    CpuId, KVM_CAP_SET_BOOT_CPU_ID, KVM_IRQCHIP_PIC_MASTER, KVM_MAX_CPUID_ENTRIES,
    KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, KVM_SYNC_X86_VALID_FIELDS,
    kvm_irqchip, kvm_lapic_state,
};
use kvm_ioctls::{VcpuFd, VmFd};
use libc::c_ulong;
use vcpu_reset_spec::LapicReg;

use super::calls::{counted, other, raw_result, store};
use super::error::{AdoptRefusal, ReturnedFd};
use super::ioctls::{Ioctl, KVM_CHECK_EXTENSION, KVM_GET_IRQCHIP, KVM_SET_BOOT_CPU_ID};
use super::vcpu::Probed;
use super::vcpu_io::VcpuIo;
use super::{KvmError, KvmHost, KvmVcpu, KvmVcpuOptions};
use crate::backend::{BackendError, StateClass, Stats};

impl KvmVcpu {
    /// Take over vCPU `id` of `vm`, which a VMM created (KVM_CREATE_VCPU) and configured
    /// (KVM_SET_CPUID2 at least), with sync regs where the host offers them.
    ///
    /// See [`KvmVcpu::adopt_with_options`].
    ///
    /// # Errors
    /// As [`KvmVcpu::adopt_with_options`].
    pub fn adopt(host: &KvmHost, vm: &VmFd, fd: VcpuFd, id: u64) -> Result<KvmVcpu, KvmError> {
        KvmVcpu::adopt_with_options(host, vm, fd, id, KvmVcpuOptions::default())
    }

    /// Take over vCPU `id` of `vm`.
    ///
    /// Nothing the VMM configured changes: the CPUID is read back with KVM_GET_CPUID2 and the
    /// identity ([`KvmVcpu::vendor`], [`KvmVcpu::cpuid_signature`], the XSAVE layout, the
    /// performance counters) is derived from it, never from the host's; the APIC version,
    /// IA32_MTRRCAP, the VMX capability MSRs and the BSP flag are read from the vCPU. Stores
    /// the VMM left pending in `kvm_run` (`kvm_dirty_regs`) are applied first, with their
    /// ioctls. With sync regs, vcpu-reset sets its own `kvm_valid_regs` bits until
    /// [`KvmVcpu::into_fd`].
    ///
    /// Adoption costs these ioctls, counted as `other`: KVM_CHECK_EXTENSION and
    /// KVM_SET_BOOT_CPU_ID (does the VM have vCPUs?), KVM_GET_IRQCHIP, KVM_GET_LAPIC,
    /// KVM_GET_CPUID2, with an irqchip KVM_GET_MP_STATE, KVM_GET_VCPU_EVENTS where the host has
    /// it, and one KVM_GET_MSRS plus one per MSR the host lists but the vCPU refuses (8 where
    /// it refuses none); and, where the vCPU's last exit (an MMIO read, port I/O, an
    /// MSR or hypercall exit) is still to be completed by KVM, one KVM_RUN with
    /// `immediate_exit`, which completes it without entering the guest, counted in `runs`.
    ///
    /// # What adoption checks
    ///
    /// - The id: KVM names each vCPU fd `anon_inode:kvm-vcpu:<id>`, which `/proc/self/fd` shows;
    ///   an id that differs is [`AdoptRefusal::IdMismatch`] (no ioctl). Without procfs, the
    ///   xAPIC ID of the vCPU's local APIC (which KVM sets to the id) is compared instead.
    /// - The VM: KVM has no ioctl that names a vCPU's VM, so adoption checks what can be seen
    ///   without changing anything. A VM without any vCPU answers KVM_SET_BOOT_CPU_ID with an
    ///   invalid id with EINVAL, one with vCPUs with EBUSY (and nothing changes either way); a VM
    ///   with an in-kernel irqchip (KVM_GET_IRQCHIP answers) whose vCPUs all have a local APIC
    ///   cannot own a vCPU without one. Either is [`AdoptRefusal::OtherVm`]. A vCPU of another VM
    ///   of the same shape is not caught.
    /// - The CPUID: a vCPU whose CPUID was never set reports none, [`AdoptRefusal::NoCpuid`].
    ///
    /// # Errors
    /// [`KvmError::Adopt`] with the reason ([`AdoptRefusal`]) and the fd, which
    /// [`KvmError::into_fd`] gives back.
    pub fn adopt_with_options(
        host: &KvmHost,
        vm: &VmFd,
        fd: VcpuFd,
        id: u64,
        options: KvmVcpuOptions,
    ) -> Result<KvmVcpu, KvmError> {
        let mut stats = Stats::default();
        let mut fd = VcpuIo::owned(fd);
        match examine(host, borrow_vm(vm), &mut fd, id, &mut stats) {
            Ok((probed, vmm_valid_regs)) => Ok(KvmVcpu::assemble(
                fd,
                vm.run_size(),
                host,
                options,
                probed,
                stats,
                vmm_valid_regs,
            )),
            Err(refusal) => Err(KvmError::Adopt {
                id,
                refusal,
                fd: ReturnedFd(owned(fd)),
            }),
        }
    }

    /// The vCPU fd, for reading what vcpu-reset does not model. A change of vCPU state through
    /// it is unknown to a [`VcpuCache`](crate::cache::VcpuCache) in front of this vCPU: call
    /// its `invalidate()` after. Each call also moves
    /// [`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count), so the next RESET
    /// stores everything again rather than trust state the fd may have changed.
    pub fn fd(&self) -> &VcpuFd {
        self.fd_lent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fd.as_owned() {
            Some(fd) => fd,
            None => unreachable!("{LENT_ONLY}"),
        }
    }

    /// Apply every store deferred to the next KVM_RUN (REGS, SREGS, EVENTS through sync regs)
    /// now, with its ioctl (KVM_SET_REGS, KVM_SET_SREGS, KVM_SET_VCPU_EVENTS, counted as
    /// stores). [`KvmVcpu::into_fd`] does this too; call it first to see an error.
    ///
    /// # Errors
    /// [`BackendError::Ioctl`] when KVM rejects a store; it stays deferred.
    pub fn apply_deferred(&mut self) -> Result<(), BackendError> {
        self.flush_all()
    }

    /// Hand the vCPU back: every deferred store applied with its ioctl, and `kvm_run`'s
    /// `kvm_valid_regs` and `kvm_dirty_regs` as the VMM had them at adoption (0 for a fresh
    /// vCPU, or one created by [`KvmVcpu::new`]). The VMM's own KVM_RUN then starts from
    /// exactly the state vcpu-reset established, with nothing of its sync-regs bookkeeping.
    ///
    /// Where the VMM had sync regs of its own (`kvm_valid_regs` not 0), the `kvm_run` copies
    /// of those classes are refreshed from KVM (one GET ioctl each), so what the VMM reads there
    /// is the current state. Pending stores the VMM had at adoption were applied then, so
    /// `kvm_dirty_regs` is 0. Should KVM reject a deferred store (only a state KVM refuses,
    /// which [`KvmVcpu::apply_deferred`] reports), it stays flagged in `kvm_dirty_regs` and
    /// the VMM's next KVM_RUN fails with KVM's error.
    pub fn into_fd(mut self) -> VcpuFd {
        // An INIT raised for a RESET and left for the next KVM_RUN is taken now, so the deferred
        // stores below land after it and the VMM's run loop starts from the finished state.
        let settled = self.settle_init(StateClass::Regs).is_ok();
        let flushed = settled && self.flush_all().is_ok();
        let valid = self.vmm_valid_regs;
        // Best effort: a class whose GET fails keeps the copy KVM left there. A class whose
        // store is still pending keeps its copy and its `kvm_dirty_regs` bit, so the VMM's
        // next KVM_RUN applies it (or fails with KVM's error), never the state from before.
        self.refresh_vmm_sync_regs(valid);
        let run = self.fd.get_kvm_run();
        run.kvm_valid_regs = valid;
        if flushed {
            run.kvm_dirty_regs = 0;
        }
        owned(self.fd)
    }

    /// Where the VMM has sync regs of its own (`valid`, its `kvm_valid_regs`), refresh the
    /// `kvm_run` copies of the classes with no store of ours pending (one GET ioctl each, not
    /// counted: the VMM asked for them), so what it reads there is the current state.
    pub(super) fn refresh_vmm_sync_regs(&mut self, valid: u64) {
        if valid & u64::from(KVM_SYNC_X86_REGS) != 0
            && !self.pending(StateClass::Regs)
            && let Ok(regs) = self.fd.get_regs()
        {
            self.fd.sync_regs_mut().regs = regs;
        }
        if valid & u64::from(KVM_SYNC_X86_SREGS) != 0
            && !self.pending(StateClass::Sregs)
            && let Ok(sregs) = self.fd.get_sregs()
        {
            self.fd.sync_regs_mut().sregs = sregs;
        }
        if valid & u64::from(KVM_SYNC_X86_EVENTS) != 0
            && !self.pending(StateClass::Events)
            && let Ok(events) = self.fd.get_vcpu_events()
        {
            self.fd.sync_regs_mut().events = events;
        }
    }
}

/// `vm`'s fd, borrowed for as long as `vm` is.
pub(crate) fn borrow_vm(vm: &VmFd) -> BorrowedFd<'_> {
    // SAFETY: `vm` owns the fd and outlives the borrow, which the lifetime ties to it.
    unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }
}

/// `vcpu`'s fd, borrowed for as long as `vcpu` is.
pub(crate) fn borrow_vcpu(vcpu: &kvm_ioctls::VcpuFd) -> BorrowedFd<'_> {
    // SAFETY: `vcpu` owns the fd and outlives the borrow, which the lifetime ties to it.
    unsafe { BorrowedFd::borrow_raw(vcpu.as_raw_fd()) }
}

/// Why a [`KvmVcpu`] whose fd is not owned never reaches the code that hands an owned fd out.
const LENT_ONLY: &str =
    "a KvmVcpu without an owned fd exists only inside VcpuReset, which never hands it out";

/// The kvm-ioctls fd of a vCPU the backend owns: [`KvmVcpu::new`] and [`KvmVcpu::adopt`] make
/// only those; a lent or detached one lives inside [`VcpuReset`](crate::VcpuReset) alone.
fn owned(fd: VcpuIo) -> VcpuFd {
    match fd.into_owned() {
        Some(fd) => fd,
        None => unreachable!("{LENT_ONLY}"),
    }
}

/// The checks and reads of [`KvmVcpu::adopt_with_options`]: what the vCPU is, and the
/// `kvm_valid_regs` the VMM had.
fn examine(
    host: &KvmHost,
    vm: BorrowedFd<'_>,
    fd: &mut VcpuIo,
    id: u64,
    stats: &mut Stats,
) -> Result<(Probed, u64), AdoptRefusal> {
    let (irqchip, lapic) = examine_vm(vm, fd, id, stats)?;
    apply_vmm_pending(fd, stats)?;
    complete_vmm_exit(fd, stats)?;
    let vmm_valid_regs = fd.get_kvm_run().kvm_valid_regs & u64::from(KVM_SYNC_X86_VALID_FIELDS);
    let probed = probe_vcpu(host, fd, id, irqchip, lapic, stats)?;
    Ok((probed, vmm_valid_regs))
}

/// Whether vCPU `fd` is vCPU `id` of VM `vm` (see [`KvmVcpu::adopt_with_options`]); whether
/// it has a local APIC, and the APIC page read to find out. Costs, counted as `other`:
/// KVM_CHECK_EXTENSION, KVM_SET_BOOT_CPU_ID, KVM_GET_IRQCHIP and KVM_GET_LAPIC.
pub(super) fn examine_vm(
    vm: BorrowedFd<'_>,
    fd: &VcpuIo,
    id: u64,
    stats: &mut Stats,
) -> Result<(bool, Option<kvm_lapic_state>), AdoptRefusal> {
    let named = vcpu_id_of(fd);
    if let Some(actual) = named
        && actual != id
    {
        return Err(AdoptRefusal::IdMismatch { given: id, actual });
    }

    let boot_cpu_id = other(stats, Ioctl::CheckExtension, || {
        // SAFETY: KVM_CHECK_EXTENSION takes its argument by value and touches no memory of
        // ours; `vm` is a live fd for the call's length.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_val(
                &vm,
                KVM_CHECK_EXTENSION(),
                c_ulong::from(KVM_CAP_SET_BOOT_CPU_ID),
            )
        };
        if ret < 0 {
            Err(vmm_sys_util::errno::Error::last())
        } else {
            Ok(ret > 0)
        }
    })?;
    if boot_cpu_id {
        let answer = other(stats, Ioctl::SetBootCpuId, || {
            let (request, id) = (KVM_SET_BOOT_CPU_ID(), c_ulong::MAX);
            // SAFETY: KVM_SET_BOOT_CPU_ID takes its argument by value and touches no memory of
            // ours; `vm` is a live VM fd. The id c_ulong::MAX is above every KVM_MAX_VCPU_IDS,
            // so KVM changes nothing: it answers EBUSY when the VM has vCPUs, else EINVAL.
            raw_result(unsafe { vmm_sys_util::ioctl::ioctl_with_val(&vm, request, id) })
        });
        if answer.is_err_and(|e| e.errno.errno() == libc::EINVAL) {
            return Err(AdoptRefusal::OtherVm {
                why: "the VM has no vCPU at all",
            });
        }
    }

    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_PIC_MASTER,
        ..Default::default()
    };
    let vm_irqchip = other(stats, Ioctl::GetIrqchip, || {
        // SAFETY: the kernel reads the chip id from `chip` and writes one `kvm_irqchip` back.
        raw_result(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&vm, KVM_GET_IRQCHIP(), &mut chip)
        })
    })
    .is_ok();
    let lapic = other(stats, Ioctl::GetLapic, || fd.get_lapic()).ok();
    if vm_irqchip && lapic.is_none() {
        return Err(AdoptRefusal::OtherVm {
            why: "the VM has an in-kernel irqchip, so each of its vCPUs has a local APIC, but this vCPU has none",
        });
    }
    // Without procfs, the xAPIC ID KVM gave the local APIC (the vCPU id's low 8 bits, Intel
    // SDM Vol. 3A §11.4.6) is the next best witness.
    if named.is_none()
        && let Some(actual) = lapic.as_ref().and_then(|l| xapic_id_mismatch(l, id))
    {
        return Err(AdoptRefusal::IdMismatch { given: id, actual });
    }
    // A VM with a split irqchip also has local APICs but no KVM_GET_IRQCHIP.
    Ok((lapic.is_some(), lapic))
}

/// The CPUID of vCPU `fd` (KVM_GET_CPUID2, counted as `other`) and what [`Probed::read`] reads.
pub(super) fn probe_vcpu(
    host: &KvmHost,
    fd: &VcpuIo,
    id: u64,
    irqchip: bool,
    lapic: Option<kvm_lapic_state>,
    stats: &mut Stats,
) -> Result<Probed, AdoptRefusal> {
    let cpuid: CpuId = other(stats, Ioctl::GetCpuid2, || {
        fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
    })?;
    if cpuid.as_slice().is_empty() {
        return Err(AdoptRefusal::NoCpuid);
    }
    Ok(Probed::read(fd, host, id, &cpuid, irqchip, lapic, stats)?)
}

/// Stores the VMM left in `kvm_run` for its next KVM_RUN, applied now with their ioctls so that
/// what adoption reads, and what vcpu-reset writes later, comes after them.
pub(super) fn apply_vmm_pending(fd: &mut VcpuIo, stats: &mut Stats) -> Result<(), AdoptRefusal> {
    let dirty = fd.get_kvm_run().kvm_dirty_regs;
    if dirty == 0 {
        return Ok(());
    }
    if dirty & u64::from(KVM_SYNC_X86_REGS) != 0 {
        let regs = fd.sync_regs_mut().regs;
        store(stats, Ioctl::SetRegs, || fd.set_regs(&regs)).map_err(AdoptRefusal::PendingStore)?;
    }
    if dirty & u64::from(KVM_SYNC_X86_SREGS) != 0 {
        let sregs = fd.sync_regs_mut().sregs;
        store(stats, Ioctl::SetSregs, || fd.set_sregs(&sregs))
            .map_err(AdoptRefusal::PendingStore)?;
    }
    if dirty & u64::from(KVM_SYNC_X86_EVENTS) != 0 {
        let events = fd.sync_regs_mut().events;
        store(stats, Ioctl::SetVcpuEvents, || fd.set_vcpu_events(&events))
            .map_err(AdoptRefusal::PendingStore)?;
    }
    fd.get_kvm_run().kvm_dirty_regs = 0;
    Ok(())
}

/// Exits whose operation KVM completes only when userspace re-enters KVM_RUN (the KVM API
/// documentation, "kvm_run" exit reasons): an MMIO read's or port input's value written, the
/// instruction finished, RIP advanced. A port output is one too: on VMX and SVM hardware KVM's
/// fast path exits with RIP still at the OUT, and `complete_fast_pio_out()` (Linux
/// `arch/x86/kvm/x86.c`) skips the instruction at the next KVM_RUN if the linear RIP is the
/// one the OUT had. A RESET moves RIP to the reset vector, so that skip would only strike an
/// OUT that sat there, but then it would skip the guest's first instruction. An MMIO write may
/// have a second fragment still to write.
fn completed_by_next_run(run: &kvm_bindings::kvm_run) -> bool {
    matches!(
        run.exit_reason,
        kvm_bindings::KVM_EXIT_IO
            | kvm_bindings::KVM_EXIT_MMIO
            | kvm_bindings::KVM_EXIT_HYPERCALL
            | kvm_bindings::KVM_EXIT_XEN
            | kvm_bindings::KVM_EXIT_X86_RDMSR
            | kvm_bindings::KVM_EXIT_X86_WRMSR
    )
}

/// Where the vCPU's last exit left an operation for the next KVM_RUN to complete, complete it
/// now with a KVM_RUN that does not enter the guest (`immediate_exit`, as the KVM API
/// documentation advises before saving or restoring state). Done later, the completion would
/// finish the old instruction over the state vcpu-reset writes (an MMIO read would set RIP
/// past it).
pub(super) fn complete_vmm_exit(fd: &mut VcpuIo, stats: &mut Stats) -> Result<(), AdoptRefusal> {
    if !completed_by_next_run(fd.get_kvm_run()) {
        return Ok(());
    }
    let run = fd.get_kvm_run();
    let immediate_exit = run.immediate_exit;
    run.immediate_exit = 1;
    let result = counted(&mut stats.runs, Ioctl::RunImmediateExit, || fd.run_raw());
    let run = fd.get_kvm_run();
    run.immediate_exit = immediate_exit;
    // KVM_RUN does not store what the guest never saw: the exit is completed.
    run.exit_reason = kvm_bindings::KVM_EXIT_INTR;
    match result {
        Err(e) if e.errno.errno() != libc::EINTR => Err(e.into()),
        _ => Ok(()),
    }
}

/// The xAPIC ID in `lapic` where it is not the low 8 bits of `id`.
fn xapic_id_mismatch(lapic: &kvm_lapic_state, id: u64) -> Option<u64> {
    let xapic_id = u64::from(super::codec::lapic::read_reg(lapic, LapicReg::Id.offset()) >> 24);
    (xapic_id != id & 0xff).then_some(xapic_id)
}

/// The vCPU id KVM gave the fd's vCPU, from its name in `/proc/self/fd`
/// (`anon_inode:kvm-vcpu:<id>`), where procfs shows it.
fn vcpu_id_of(fd: &VcpuIo) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("anon_inode:kvm-vcpu:")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xapic_id_witnesses_the_vcpu_id() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[0x23] = 5; // ID register (offset 0x20), bits 31:24
        assert_eq!(xapic_id_mismatch(&lapic, 5), None);
        assert_eq!(xapic_id_mismatch(&lapic, 0x105), None, "only 8 bits");
        assert_eq!(xapic_id_mismatch(&lapic, 4), Some(5));
    }
}
