//! A vCPU the backend does not own: lent for one call at a time by a VMM that keeps its fd
//! ([`VcpuReset`](crate::VcpuReset)).
//!
//! Between calls the [`KvmVcpu`] is detached: it keeps what it learned (the CPUID's model, the
//! identity, the MSRs held, the XSAVE layout, the count of guest entries) but no vCPU fd. A
//! call attaches the VMM's fd (and its `kvm_run` mapping, or one mapped for the call), works
//! through it exactly as on an owned vCPU, and detaches before it returns.
//!
//! At attach, anything the VMM may have done since the last call is taken into account:
//! - where the VMM ran the vCPU, KVM applied the stores this backend deferred into `kvm_run`
//!   (and took an INIT left raised for that run): the `kvm_dirty_regs` bits the backend left
//!   are gone. What the backend mirrored or shadowed is then forgotten, stores the VMM itself
//!   left in `kvm_dirty_regs` are applied with their ioctls, and an exit KVM completes only at
//!   the next KVM_RUN (a port input, an MMIO read, an MSR or hypercall exit) is completed with
//!   one KVM_RUN with `immediate_exit`, so that it cannot finish the old instruction over the
//!   new state;
//! - where the bits the backend left are still there, nothing ran: the deferred stores are
//!   still the backend's, and the next RESET replaces them.
//!
//! The backend never sets `kvm_valid_regs` on a lent vCPU (it never runs it, so nothing would
//! be delivered): the VMM's own bits stay. Where the VMM has some, the `kvm_run` copies of the
//! classes with no deferred store are refreshed at detach, so what the VMM reads there is
//! current.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;

use kvm_bindings::{KVM_SYNC_X86_VALID_FIELDS, kvm_run};
use vmm_sys_util::errno;

use super::adopt::{apply_vmm_pending, complete_vmm_exit, examine_vm, probe_vcpu};
use super::calls::other;
use super::error::AdoptRefusal;
use super::guest_entries::{EntryCount, stats_file};
use super::ioctls::Ioctl;
use super::vcpu_io::VcpuIo;
use super::{KvmHost, KvmVcpu, KvmVcpuOptions};
use crate::backend::{BackendError, ClassSet, StateClass, Stats};

const VALID: u64 = KVM_SYNC_X86_VALID_FIELDS as u64;

impl KvmVcpu {
    /// Learn vCPU `id` of VM `vm` through the borrowed `vcpu` fd, and keep what was learned
    /// without the fd (see the module documentation). `run_size` is the size of the vCPU's
    /// `kvm_run` mapping (KVM_GET_VCPU_MMAP_SIZE). Costs, counted as `other`: what adoption
    /// checks and reads ([`KvmVcpu::adopt`], without completing an exit or applying pending
    /// stores: that is done at each attach) and, where `count_entries`, KVM_GET_STATS_FD,
    /// whose file is kept (it holds the vCPU's count of guest entries, not its fd).
    ///
    /// # Errors
    /// [`AdoptRefusal`], as for [`KvmVcpu::adopt`].
    pub(crate) fn learn_lent(
        host: &KvmHost,
        vm: BorrowedFd<'_>,
        vcpu: BorrowedFd<'_>,
        id: u64,
        run_size: usize,
        options: KvmVcpuOptions,
        count_entries: bool,
    ) -> Result<KvmVcpu, AdoptRefusal> {
        let mut stats = Stats::default();
        let mut io = VcpuIo::detached();
        // SAFETY: `vcpu` is borrowed for this whole function and the loan ends before it
        // returns; no `kvm_run` is used while probing.
        unsafe { io.lend(vcpu.as_raw_fd(), None) };
        let learned = (|| {
            let (irqchip, lapic) = examine_vm(vm, &io, id, &mut stats)?;
            let probed = probe_vcpu(host, &io, id, irqchip, lapic, &mut stats)?;
            // A host without binary statistics only lacks the count.
            let entries = if count_entries {
                other(&mut stats, Ioctl::GetStatsFd, || stats_file(&io))
                    .ok()
                    .and_then(EntryCount::in_file)
            } else {
                None
            };
            Ok::<_, AdoptRefusal>((probed, entries))
        })();
        io.end_loan();
        let (probed, entries) = learned?;
        let mut vcpu = KvmVcpu::assemble(io, run_size, host, options, probed, stats, 0);
        vcpu.entries = entries;
        // `assemble` set `kvm_valid_regs` in the stand-in page; a lent vCPU's stay the VMM's.
        Ok(vcpu)
    }

    /// Attach the lent vCPU `fd`, whose `kvm_run` mapping is `run`, for one call.
    ///
    /// # Safety
    /// `fd` and `run` must stay valid, and be used by nothing else, until
    /// [`KvmVcpu::detach`].
    pub(crate) unsafe fn attach(
        &mut self,
        fd: RawFd,
        run: NonNull<kvm_run>,
    ) -> Result<(), BackendError> {
        // SAFETY: as the caller vouches.
        unsafe { self.fd.lend(fd, Some(run)) };
        self.after_attach()
    }

    /// Attach the lent vCPU `fd` for one call, mapping its `kvm_run` page for it (one mmap,
    /// and one munmap at [`KvmVcpu::detach`]).
    ///
    /// # Safety
    /// `fd` must stay open, and be used by nothing else, until [`KvmVcpu::detach`].
    pub(crate) unsafe fn attach_mapping(&mut self, fd: BorrowedFd<'_>) -> Result<(), errno::Error> {
        // SAFETY: as the caller vouches.
        unsafe { self.fd.lend_mapping(fd, self.run_size) }
    }

    /// What [`KvmVcpu::attach`] does once the fd is lent (see the module documentation).
    pub(crate) fn after_attach(&mut self) -> Result<(), BackendError> {
        self.entries_seen = None;
        self.answer = None;
        self.completes_insn = false;
        let run = self.fd.get_kvm_run();
        let dirty = run.kvm_dirty_regs & VALID;
        self.vmm_valid_regs = run.kvm_valid_regs & VALID;
        let ours = dirty != 0 && dirty == self.left_dirty;
        self.left_dirty = 0;
        if ours {
            return Ok(());
        }
        // The VMM ran the vCPU (or wrote `kvm_dirty_regs` itself): KVM took what was deferred
        // and any INIT left raised, and the guest may have changed anything.
        self.init_pending = false;
        self.forget_lent_state();
        self.tsc.ran();
        apply_vmm_pending(&mut self.fd, &mut self.stats).map_err(refusal_error)?;
        complete_vmm_exit(&mut self.fd, &mut self.stats).map_err(refusal_error)
    }

    /// Forget what is mirrored of `kvm_run` and shadowed: it may have changed under the VMM.
    pub(crate) fn forget_lent_state(&mut self) {
        self.mirror = ClassSet::EMPTY;
        self.shadow = Default::default();
    }

    /// After a call failed: nothing learned about the vCPU's current state is trusted (the
    /// next RESET stores every class again and checks nothing against a kept value); what was
    /// learned about the host and the CPU model stays.
    pub(crate) fn distrust(&mut self) {
        self.forget_lent_state();
        self.tsc.ran();
        self.entries_seen = None;
        // Moves the touch count, so the vCPU is not taken as untouched since its last RESET.
        self.guest_state_stores += 1;
    }

    /// Apply every store deferred into `kvm_run` now with its ioctl, after having KVM act on
    /// an INIT left raised for the next run (KVM_GET_MP_STATE), so that a read through the
    /// VMM's fd sees what the vCPU will run from.
    pub(crate) fn settle_lent(&mut self) -> Result<(), BackendError> {
        self.settle_init(StateClass::Regs)?;
        self.flush_all()
    }

    /// End the loan: refresh the VMM's own sync-regs copies, note the `kvm_dirty_regs` left for
    /// the VMM's next KVM_RUN, and drop the fd (and a mapping made for the call).
    pub(crate) fn detach(&mut self) {
        let valid = self.vmm_valid_regs;
        if valid != 0 {
            self.refresh_vmm_sync_regs(valid);
        }
        self.left_dirty = self.fd.get_kvm_run().kvm_dirty_regs & VALID;
        self.fd.end_loan();
    }
}

/// An attach-time failure as a backend error.
fn refusal_error(refusal: AdoptRefusal) -> BackendError {
    match refusal {
        AdoptRefusal::Ioctl(e) | AdoptRefusal::PendingStore(e) => BackendError::Ioctl(e),
        other => BackendError::Invalid {
            what: "lent vCPU",
            why: other.to_string(),
        },
    }
}
