//! [`VcpuReset`]: what vcpu-reset knows about one of a VMM's vCPUs, kept beside the VMM's fd.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;

use kvm_ioctls::{VcpuFd, VmFd};
use vcpu_reset_spec::{CpuModel, VcpuIdentity};

use crate::backend::kvm::{
    AdoptRefusal, Ioctl, KvmHost, KvmVcpu, KvmVcpuOptions, borrow_vcpu, borrow_vm,
};
use crate::backend::{BackendError, StateClass, Stats};
use crate::cache::{CacheError, VcpuCache};
use crate::engine::{Deviation, EngineError, Outcome, Vcpu};

/// Why a [`VcpuReset`] call failed. The vCPU fd is the VMM's throughout: no error takes it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VcpuResetError {
    /// The vCPU could not be taken on (wrong id or VM, no CPUID, an ioctl failed).
    #[error("cannot take vCPU {id} on: {refusal}")]
    Refused {
        /// The vCPU id given.
        id: u64,
        /// Why.
        refusal: AdoptRefusal,
    },
    /// The vCPU's CPUID names a vendor vcpu-reset has no RESET table for.
    #[error(
        "cannot RESET vCPU {id}: its CPUID.0H vendor is {vendor:?}, neither GenuineIntel nor AuthenticAMD — vcpu-reset has RESET tables for those two; present one of them in the CPUID"
    )]
    UnknownVendor {
        /// The vCPU id.
        id: u64,
        /// The vendor string.
        vendor: String,
    },
    /// The vCPU's `kvm_run` page could not be mapped for the call.
    #[error(
        "{op} of vCPU {id}: mapping its kvm_run page failed: {errno} — pass the vCPU's own fd (not a VM's or /dev/kvm's)"
    )]
    Map {
        /// What was asked: "RESET", "INIT", "settle" or "verify".
        op: &'static str,
        /// The vCPU id.
        id: u64,
        /// The error mmap returned.
        errno: vmm_sys_util::errno::Error,
    },
    /// The fd lent to the call is not this [`VcpuReset`]'s vCPU: another vCPU's (of this VM or,
    /// where KVM names it the same, of another), a VM's, `/dev/kvm`, or no KVM file at all.
    /// Nothing was done: no ioctl, no mapping, and what the `VcpuReset` knows still holds.
    #[error(
        "{op} of vCPU {id}: fd {fd} is {found}, not vCPU {id} — a VcpuReset belongs to the one vCPU it was created for: pass that vCPU's fd, and another vCPU's fd to that vCPU's own VcpuReset (nothing was changed)"
    )]
    NotThisVcpu {
        /// What was asked: "RESET", "INIT", "settle" or "verify".
        op: &'static str,
        /// The vCPU id this `VcpuReset` was created for.
        id: u64,
        /// The fd given.
        fd: RawFd,
        /// What the fd is, as `/proc/self/fd` names it ("vCPU 1", "`anon_inode:kvm-vm`", ...).
        found: String,
        /// The vCPU id the fd names, where it is a KVM vCPU fd.
        vcpu: Option<u64>,
    },
    /// A call on the vCPU failed. `call` names the ioctl and `class` the state class it
    /// moves, where the failure was one.
    #[error(
        "{op} of vCPU {id} failed{at}: {source} — the vCPU fd is still the VMM's; vcpu-reset no longer trusts what it knew of this vCPU's state, so the next RESET writes all of it: {next}; do not KVM_RUN the vCPU until a call succeeds (half-written deferred stores may sit in its kvm_run)",
        at = at(*call, *class),
        next = next_step(op)
    )]
    Failed {
        /// What was asked: "RESET", "INIT", "settle" or "verify".
        op: &'static str,
        /// The vCPU id.
        id: u64,
        /// The ioctl that failed, where one did.
        call: Option<Ioctl>,
        /// The state class that ioctl moves, where it moves one.
        class: Option<StateClass>,
        /// What failed, and what to do.
        source: EngineError,
    },
}

impl VcpuResetError {
    /// The vCPU id the failed call was about.
    pub fn id(&self) -> u64 {
        match self {
            VcpuResetError::Refused { id, .. }
            | VcpuResetError::UnknownVendor { id, .. }
            | VcpuResetError::Map { id, .. }
            | VcpuResetError::NotThisVcpu { id, .. }
            | VcpuResetError::Failed { id, .. } => *id,
        }
    }
}

fn at(call: Option<Ioctl>, class: Option<StateClass>) -> String {
    match (call, class) {
        (Some(call), Some(class)) => format!(" in {call} ({class})"),
        (Some(call), None) => format!(" in {call}"),
        _ => String::new(),
    }
}

/// What to call after `op` failed.
fn next_step(op: &str) -> &'static str {
    match op {
        "INIT" => "call init() again (or reset())",
        "settle" => "call settle() again (or reset())",
        "verify" => "call verify() again (or reset())",
        _ => "call reset() again",
    }
}

/// What `/proc/self/fd` names `fd`, where procfs shows it.
fn fd_name(fd: RawFd) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// The vCPU id KVM named a vCPU fd with (`anon_inode:kvm-vcpu:<id>`).
fn vcpu_id_named(name: &str) -> Option<u64> {
    name.strip_prefix("anon_inode:kvm-vcpu:")?.parse().ok()
}

/// The ioctl a failure came from, where it came from one.
fn failed_ioctl(e: &EngineError) -> Option<Ioctl> {
    match e {
        EngineError::Cache(CacheError::Backend(b)) => match b {
            BackendError::Ioctl(e) => Some(e.ioctl),
            BackendError::MsrRefused { ioctl, .. } => Some(*ioctl),
            _ => None,
        },
        _ => None,
    }
}

/// Per-vCPU knowledge a VMM keeps beside each vCPU fd, for an exact RESET or INIT at the
/// engine's cost; never the fd itself.
///
/// It holds what vcpu-reset learned once: the CPU model (vendor, signature, XSAVE layout,
/// APIC version, MTRRs, from the vCPU's own CPUID and MSRs), the identity (APIC ID, BSP), the
/// RESET state built from them, what the host's in-kernel INIT gets right (checked on the first
/// RESET), the MSRs the vCPU holds, and the vCPU's count of guest entries (its KVM statistics
/// file, opened once: a file of the vCPU's, not its fd, which keeps the VM's kernel object
/// alive until the `VcpuReset` is dropped). Each call borrows the VMM's fd for its length only.
///
/// # Cost
///
/// Measured by the backend's counters ([`Outcome::calls`]; the selftest's `vcpu_reset_api_kvm`
/// test checks them on every host, from what the engine learned there):
///
/// - after the guest ran: **4** vCPU ioctls per RESET (KVM_SET_MSRS raising KVM's own INIT,
///   KVM_GET_MP_STATE, KVM_SET_XSAVE, KVM_SET_XCRS), **3** where the host's INIT leaves REGS,
///   SREGS and EVENTS exactly at the RESET state ([`VcpuReset::host_init_lazy`]: the INIT is
///   left to the VMM's next KVM_RUN); REGS, SREGS and EVENTS ride the VMM's next KVM_RUN
///   through `kvm_run` (sync regs), without an ioctl;
/// - **2** for a vCPU that has not entered the guest since its last RESET (an AP that waited for
///   SIPI through a whole boot);
/// - one more per class the host's INIT leaves wrong (e.g. KVM_SET_LAPIC for the BSP where the
///   VM keeps KVM's LINT0_REENABLED quirk, which makes its LVT LINT0 0x700, and a
///   KVM_GET_MP_STATE that applies the INIT first; turn the quirk off with
///   [`disable_lint0_quirk`](crate::backend::kvm::disable_lint0_quirk) to save both);
/// - one KVM_RUN with `immediate_exit` where the vCPU's last exit is one KVM completes only at
///   the next KVM_RUN: port I/O (the 0xCF9 reboot request too: on VMX and SVM hardware KVM
///   skips an OUT at the next run while RIP still points at it, which would skip the guest's
///   first instruction were the OUT at the reset vector), MMIO, MSR or hypercall exits; not a
///   shutdown (triple fault) or a halt;
/// - the first RESET checks the host's INIT against the spec: it reads the classes back once
///   (7 loads on the Intel host here: 10 calls in all with KVM's LINT0_REENABLED quirk off,
///   11 with it on), and [`VcpuReset::new`] itself makes the adoption's checks and reads, one
///   KVM_SET_MSRS probing the MSRs KVM may refuse a host write of, and KVM_GET_STATS_FD (10
///   calls here).
///
/// Measured on the project's Intel host (nested `kvm_pvm`, Linux 6.18) by
/// `vcpu_reset_api_kvm`, for a BSP whose guest exited on a port output: with KVM's
/// LINT0_REENABLED quirk off, 3 ioctls and the completing KVM_RUN (KVM_SET_MSRS,
/// KVM_SET_XSAVE, KVM_SET_XCRS; the INIT left to the VMM's run), 1 for a RESET with no run
/// since the last; with the quirk on (KVM's default), 5 and the KVM_RUN (KVM_SET_MSRS,
/// KVM_GET_MP_STATE, KVM_SET_LAPIC, KVM_SET_XSAVE, KVM_SET_XCRS), 3 with no run since. An AP
/// that never ran: 1. The raw-fd calls cost the same ioctls, and an mmap and a munmap of
/// `kvm_run` (not ioctls; the munmap's TLB flush interrupts the CPUs running the VMM's other
/// vCPU threads: see [`VcpuReset::reset_raw`]). A VMM that turns the quirk off saves a
/// KVM_SET_LAPIC and a KVM_GET_MP_STATE per RESET.
///
/// Without an in-kernel irqchip, x2APIC in the CPUID or sync regs on the host, KVM's INIT
/// cannot do the bulk and a RESET stores every class (about 9 ioctls).
///
/// # Before the VMM's next KVM_RUN
///
/// The VMM's next KVM_RUN starts in the exact RESET state. Until then, what the VMM reads
/// through its own fd is not all of it: REGS, SREGS and EVENTS wait in `kvm_run`
/// (`kvm_dirty_regs`) for that run, so KVM_GET_REGS/SREGS/VCPU_EVENTS still return the state
/// before the RESET; where the INIT was left to the next run ([`VcpuReset::host_init_lazy`]),
/// KVM_GET_LAPIC, KVM_GET_DEBUGREGS and the MP state have not been reset either. A
/// KVM_GET_MP_STATE of the VMM's own makes KVM act on that INIT, which is harmless: the run
/// still starts in the RESET state. [`VcpuReset::settle`] makes every such read exact
/// (KVM_GET_MP_STATE where the INIT waits, then KVM_SET_REGS, KVM_SET_SREGS,
/// KVM_SET_VCPU_EVENTS): call it before saving or migrating the vCPU, and before the VMM
/// stores REGS, SREGS or EVENTS of its own ahead of the next run (e.g. to start elsewhere than
/// the reset vector, or to inject an event), which the deferred stores would otherwise
/// overwrite; not before merely running it.
///
/// # The VMM's `kvm_run`
///
/// `kvm_valid_regs` is left as the VMM set it; where it has bits, the `kvm_run` copies of those
/// classes show the RESET state after the call. Stores the VMM left in `kvm_dirty_regs` are
/// applied (with their ioctls) before the RESET. The VMM must not change `kvm_dirty_regs`
/// between the call and its next KVM_RUN (a VMM that uses sync regs itself ORs its bits in,
/// as kvm-ioctls' `set_sync_dirty_reg` does, rather than assigning the field).
///
/// The raw-fd calls map the vCPU's `kvm_run` page for their length: every mapping of a vCPU
/// fd is the same page, so what they defer there is what the VMM's own KVM_RUN applies, and
/// they read the last exit there (to complete it) and the VMM's `kvm_dirty_regs`. Without
/// sync regs KVM's INIT could not do the bulk of the RESET (REGS, SREGS and EVENTS must be
/// stored after it, at the VMM's next run), and a RESET would cost about 9 ioctls.
///
/// # One vCPU
///
/// A `VcpuReset` belongs to the vCPU it was created for: what it knows (identity: BSP or not,
/// APIC ID; the MSRs held; the count of guest entries its "untouched" shortcut trusts) is that
/// vCPU's. Every call checks the fd it is lent before using it: `/proc/self/fd` must name it
/// `anon_inode:kvm-vcpu:<id>` with this handle's id (one readlink, about a µs, no ioctl;
/// made at every call, not cached by fd number, since a closed fd's number comes back for the
/// next file opened). Another vCPU's fd is [`VcpuResetError::NotThisVcpu`] and nothing
/// changes. Not detected: a vCPU of *another VM* with the same id (KVM names it the same), and
/// any fd where procfs is not mounted (the check is then skipped).
///
/// # What "untouched" trusts
///
/// The 2-ioctl path is taken where the vCPU's count of guest entries has not moved since the
/// last RESET: its x87/SSE state, XCR0 and MSRs are then still at the RESET values. A VMM that
/// stores any of those (or the local APIC) through its own fd between two RESETs without
/// running the vCPU must call [`VcpuReset::forget`] first.
pub struct VcpuReset {
    vcpu: Vcpu<KvmVcpu>,
    id: u64,
}

impl std::fmt::Debug for VcpuReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuReset")
            .field("id", &self.id)
            .field("identity", &self.vcpu.identity())
            .finish_non_exhaustive()
    }
}

/// The VMM's vCPU for one call.
enum Lent<'a> {
    /// A kvm-ioctls fd, with its `kvm_run` mapping.
    Typed(&'a mut VcpuFd),
    /// A raw fd; its `kvm_run` is mapped for the call.
    Raw(BorrowedFd<'a>),
}

impl VcpuReset {
    /// Learn vCPU `id` of `vm`, which the VMM created and gave a CPUID (KVM_SET_CPUID2).
    ///
    /// Learning reads the vCPU and, to find which MSRs KVM lets the host write (it may refuse
    /// MSR_KVM_STEAL_TIME, MSR_KVM_ASYNC_PF_INT and Hyper-V's SINT0–15), writes those MSRs'
    /// RESET values and puts back each value the vCPU had that differs (a KVM_SET_MSRS each;
    /// none on a vCPU that never ran, whose values are the RESET ones). A put-back KVM refuses
    /// is an error ([`Ioctl::SetMsrsWriteBack`]). Best made before the guest first runs.
    ///
    /// # Errors
    /// [`VcpuResetError::Refused`] (wrong id or VM, no CPUID; as [`KvmVcpu::adopt`] checks),
    /// [`VcpuResetError::UnknownVendor`].
    pub fn new(
        host: &KvmHost,
        vm: &VmFd,
        vcpu: &VcpuFd,
        id: u64,
    ) -> Result<VcpuReset, VcpuResetError> {
        let (vm_fd, vcpu_fd) = (borrow_vm(vm), borrow_vcpu(vcpu));
        VcpuReset::learn(host, vm_fd, vcpu_fd, id, vm.run_size(), true)
    }

    /// [`VcpuReset::new`] for a single RESET ([`crate::reset_vcpu`]): without sync regs, so
    /// that every class is stored with its ioctl and a read through the VMM's fd right after
    /// shows the RESET state, and without the count of guest entries, which one call cannot
    /// use. Nothing is deferred to the VMM's next KVM_RUN.
    pub(crate) fn one_shot(
        host: &KvmHost,
        vm: &VmFd,
        vcpu: &VcpuFd,
        id: u64,
    ) -> Result<VcpuReset, VcpuResetError> {
        let (vm_fd, vcpu_fd) = (borrow_vm(vm), borrow_vcpu(vcpu));
        let options = KvmVcpuOptions { sync_regs: false };
        let kv = KvmVcpu::learn_lent(host, vm_fd, vcpu_fd, id, vm.run_size(), options, false)
            .map_err(|refusal| VcpuResetError::Refused { id, refusal })?;
        VcpuReset::from_learned(kv, id)
    }

    /// [`VcpuReset::new`] for any VMM that has the fds: another kvm-ioctls version, its own
    /// bindings, C. `vm` is the VM's fd, `vcpu` the vCPU's.
    ///
    /// # Errors
    /// As [`VcpuReset::new`].
    pub fn from_raw_fds(
        host: &KvmHost,
        vm: BorrowedFd<'_>,
        vcpu: BorrowedFd<'_>,
        id: u64,
    ) -> Result<VcpuReset, VcpuResetError> {
        let run_size = host
            .kvm()
            .get_vcpu_mmap_size()
            .map_err(|e| VcpuResetError::Refused {
                id,
                refusal: AdoptRefusal::Ioctl(crate::backend::kvm::IoctlError::new(
                    Ioctl::GetVcpuMmapSize,
                    e,
                )),
            })?;
        VcpuReset::learn(host, vm, vcpu, id, run_size, true)
    }

    fn learn(
        host: &KvmHost,
        vm: BorrowedFd<'_>,
        vcpu: BorrowedFd<'_>,
        id: u64,
        run_size: usize,
        count_entries: bool,
    ) -> Result<VcpuReset, VcpuResetError> {
        let options = KvmVcpuOptions::default();
        let kv = KvmVcpu::learn_lent(host, vm, vcpu, id, run_size, options, count_entries)
            .map_err(|refusal| VcpuResetError::Refused { id, refusal })?;
        VcpuReset::from_learned(kv, id)
    }

    fn from_learned(kv: KvmVcpu, id: u64) -> Result<VcpuReset, VcpuResetError> {
        let Some(model) = kv.cpu_model() else {
            return Err(VcpuResetError::UnknownVendor {
                id,
                vendor: String::from_utf8_lossy(&kv.vendor_id()).into_owned(),
            });
        };
        let identity = kv.vcpu_identity();
        Ok(VcpuReset {
            vcpu: Vcpu::new(VcpuCache::adopt(kv), model, identity),
            id,
        })
    }

    /// The vCPU id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The CPU model the vCPU's CPUID presents.
    pub fn cpu_model(&self) -> &CpuModel {
        self.vcpu.model()
    }

    /// APIC ID and whether this is the bootstrap processor.
    pub fn identity(&self) -> VcpuIdentity {
        self.vcpu.identity()
    }

    /// Whether RESETs leave KVM's INIT to the VMM's next KVM_RUN (3 ioctls after a run rather
    /// than 4): where the first RESET found the host's INIT leaves REGS, SREGS and EVENTS at
    /// the RESET state.
    pub fn host_init_lazy(&self) -> bool {
        self.vcpu.host_init_lazy()
    }

    /// The classes the host's INIT was found to leave wrong (stored by the engine after it),
    /// once the first RESET checked; `None` where the host's INIT is not used.
    pub fn host_init_inexact(&self) -> Option<crate::backend::ClassSet> {
        self.vcpu.host_init_inexact()
    }

    /// Whether the vCPU's count of guest entries is known, which the 2-ioctl RESET of an
    /// untouched vCPU needs (KVM binary statistics, Linux 5.14).
    pub fn counts_entries(&mut self) -> bool {
        self.vcpu.cache_mut().touch_count().is_some()
    }

    /// The ioctls made through this `VcpuReset` so far, by kind.
    pub fn stats(&self) -> Stats {
        self.vcpu.cache().backend_stats()
    }

    /// Forget what is known of the vCPU's current state: the next RESET stores every class.
    /// For a VMM that stored vCPU state through its own fd without running the vCPU since.
    pub fn forget(&mut self) {
        self.vcpu.cache_mut().invalidate();
        self.vcpu.cache_mut().backend_mut().distrust();
    }

    /// Power-on RESET of the VMM's vCPU (Intel SDM Vol. 3A Table 10-1, AMD APM Vol. 2
    /// Table 14-1, for the CPU model its CPUID presents): the VMM's next KVM_RUN starts there.
    /// [`Outcome::calls`] is what the call cost, attach included (see the type's `# Cost`).
    ///
    /// `vcpu` must be the fd of the vCPU this `VcpuReset` was created for: a handle belongs to
    /// one vCPU, and another's fd is refused ([`VcpuResetError::NotThisVcpu`]), unchanged.
    ///
    /// # Errors
    /// [`VcpuResetError::NotThisVcpu`]; [`VcpuResetError::Failed`], naming the ioctl and
    /// class; the fd stays the VMM's and the next `reset()` writes every class again.
    pub fn reset(&mut self, vcpu: &mut VcpuFd) -> Result<Outcome, VcpuResetError> {
        self.with(Lent::Typed(vcpu), "RESET", |v| v.reset())
            .map(|(o, _)| o)
    }

    /// INIT (Intel SDM Vol. 3A §10.1, Table 10-1; AMD APM Vol. 2 §14.1.3): the spec's INIT
    /// rules applied to the vCPU's current state. It reads that state first, so after a run it
    /// costs a load per class more than a RESET.
    ///
    /// # Errors
    /// As [`VcpuReset::reset`].
    pub fn init(&mut self, vcpu: &mut VcpuFd) -> Result<Outcome, VcpuResetError> {
        self.with(Lent::Typed(vcpu), "INIT", |v| v.init())
            .map(|(o, _)| o)
    }

    /// Make reads through the VMM's fd show the state the vCPU will run from (see the type's
    /// documentation): up to 4 ioctls, none where nothing waits.
    ///
    /// # Errors
    /// As [`VcpuReset::reset`].
    pub fn settle(&mut self, vcpu: &mut VcpuFd) -> Result<Stats, VcpuResetError> {
        self.with(Lent::Typed(vcpu), "settle", |v| {
            v.cache_mut()
                .backend_mut()
                .settle_lent()
                .map_err(|e| EngineError::Cache(e.into()))
        })
        .map(|(_, stats)| stats)
    }

    /// Read every field back and report each that differs from what the last RESET or INIT
    /// established (settling first, as [`VcpuReset::settle`]).
    ///
    /// # Errors
    /// As [`VcpuReset::reset`].
    pub fn verify(&mut self, vcpu: &mut VcpuFd) -> Result<Vec<Deviation>, VcpuResetError> {
        self.with(Lent::Typed(vcpu), "verify", |v| {
            v.cache_mut()
                .backend_mut()
                .settle_lent()
                .map_err(|e| EngineError::Cache(e.into()))?;
            v.verify()
        })
        .map(|(d, _)| d)
    }

    /// [`VcpuReset::reset`] of a vCPU given by its raw fd (a VMM on another kvm-ioctls
    /// version, its own bindings, C). Its `kvm_run` page is mapped for the call (one mmap and
    /// one munmap, not ioctls; the mapping is the same page the VMM's own maps). The munmap of
    /// a shared mapping flushes it from the TLBs of every CPU the process's threads ran on:
    /// alone a few µs, but in a VMM whose other vCPU threads are in the guest it interrupts
    /// their CPUs (an IPI each, a guest exit on each), so a reboot that RESETs every vCPU is
    /// best made while they are all out of KVM_RUN; the typed calls, which use the VMM's own
    /// mapping, make neither.
    ///
    /// The fd is checked first (`/proc/self/fd` must name it `anon_inode:kvm-vcpu:<id>` with
    /// this handle's id; see [`VcpuResetError::NotThisVcpu`]), so another vCPU's fd, a VM's or
    /// a regular file is an error before anything is mapped or asked of it.
    ///
    /// # Safety
    /// `vcpu` must be the KVM vCPU fd of this handle's vCPU (where procfs is not mounted the
    /// check above cannot be made), and for the length of the call no other thread may make
    /// an ioctl on that vCPU (KVM_RUN included) or read or write its `kvm_run` page: the call
    /// takes the page as its own, and a guest run at the same time would race with it.
    ///
    /// # Errors
    /// As [`VcpuReset::reset`], and [`VcpuResetError::NotThisVcpu`], [`VcpuResetError::Map`].
    pub unsafe fn reset_raw(&mut self, vcpu: BorrowedFd<'_>) -> Result<Outcome, VcpuResetError> {
        self.with(Lent::Raw(vcpu), "RESET", |v| v.reset())
            .map(|(o, _)| o)
    }

    /// [`VcpuReset::init`] of a vCPU given by its raw fd, as [`VcpuReset::reset_raw`].
    ///
    /// # Safety
    /// As [`VcpuReset::reset_raw`].
    ///
    /// # Errors
    /// As [`VcpuReset::reset_raw`].
    pub unsafe fn init_raw(&mut self, vcpu: BorrowedFd<'_>) -> Result<Outcome, VcpuResetError> {
        self.with(Lent::Raw(vcpu), "INIT", |v| v.init())
            .map(|(o, _)| o)
    }

    /// [`VcpuReset::settle`] of a vCPU given by its raw fd, as [`VcpuReset::reset_raw`].
    ///
    /// # Safety
    /// As [`VcpuReset::reset_raw`].
    ///
    /// # Errors
    /// As [`VcpuReset::reset_raw`].
    pub unsafe fn settle_raw(&mut self, vcpu: BorrowedFd<'_>) -> Result<Stats, VcpuResetError> {
        self.with(Lent::Raw(vcpu), "settle", |v| {
            v.cache_mut()
                .backend_mut()
                .settle_lent()
                .map_err(|e| EngineError::Cache(e.into()))
        })
        .map(|(_, stats)| stats)
    }

    /// [`VcpuReset::verify`] of a vCPU given by its raw fd, as [`VcpuReset::reset_raw`].
    ///
    /// # Safety
    /// As [`VcpuReset::reset_raw`].
    ///
    /// # Errors
    /// As [`VcpuReset::reset_raw`].
    pub unsafe fn verify_raw(
        &mut self,
        vcpu: BorrowedFd<'_>,
    ) -> Result<Vec<Deviation>, VcpuResetError> {
        self.with(Lent::Raw(vcpu), "verify", |v| {
            v.cache_mut()
                .backend_mut()
                .settle_lent()
                .map_err(|e| EngineError::Cache(e.into()))?;
            v.verify()
        })
        .map(|(d, _)| d)
    }

    /// Check that `fd` is this handle's vCPU: `/proc/self/fd` must name it
    /// `anon_inode:kvm-vcpu:<id>` with this handle's id (one readlink, no ioctl, about a µs;
    /// made at every call rather than cached by fd number, since a VMM may close a vCPU fd and
    /// get the number back for another file). Where procfs does not show the fd (no `/proc`
    /// in a sandbox), nothing is checked.
    ///
    /// # Errors
    /// [`VcpuResetError::NotThisVcpu`].
    pub(crate) fn check_fd(&self, op: &'static str, fd: RawFd) -> Result<(), VcpuResetError> {
        let Some(name) = fd_name(fd) else {
            return Ok(());
        };
        let vcpu = vcpu_id_named(&name);
        if vcpu == Some(self.id) {
            return Ok(());
        }
        Err(VcpuResetError::NotThisVcpu {
            op,
            id: self.id,
            fd,
            found: vcpu.map_or_else(|| format!("`{name}`"), |v| format!("vCPU {v}")),
            vcpu,
        })
    }

    /// Attach `lent`, run `op`, detach (always, on a panic too), and count what it all cost.
    fn with<T>(
        &mut self,
        lent: Lent<'_>,
        op: &'static str,
        f: impl FnOnce(&mut Vcpu<KvmVcpu>) -> Result<T, EngineError>,
    ) -> Result<(T, Stats), VcpuResetError>
    where
        T: WithCalls,
    {
        let id = self.id;
        let raw = match &lent {
            Lent::Typed(fd) => fd.as_raw_fd(),
            Lent::Raw(fd) => fd.as_raw_fd(),
        };
        // Before anything touches the fd (an mmap of a file that is not a vCPU's could fault).
        self.check_fd(op, raw)?;
        let before = self.vcpu.cache().backend_stats();
        let mut loan = Loan {
            vcpu: &mut self.vcpu,
            ended: false,
        };
        let kv = loan.vcpu.cache_mut().backend_mut();
        let attached = match lent {
            Lent::Typed(fd) => {
                let run = NonNull::from(fd.get_kvm_run());
                // SAFETY: `fd` and its `kvm_run` mapping are borrowed mutably for this whole
                // call, and the loan ends (`detach`, in `Loan::end` or its drop) before it
                // returns.
                unsafe { kv.attach(raw, run) }
            }
            Lent::Raw(fd) => {
                // SAFETY: `fd` is borrowed for this whole call, and the loan ends (and the
                // mapping with it) before it returns; the caller of the raw entry vouches that
                // nothing else uses the vCPU meanwhile.
                if let Err(errno) = unsafe { kv.attach_mapping(fd) } {
                    // Nothing was attached (the failed mapping left the vCPU detached).
                    loan.ended = true;
                    return Err(VcpuResetError::Map { op, id, errno });
                }
                kv.after_attach()
            }
        };
        let result = attached
            .map_err(|e| EngineError::Cache(e.into()))
            .and_then(|()| {
                // The VMM may have run the vCPU or changed it: nothing cached is current.
                loan.vcpu.cache_mut().invalidate();
                f(&mut *loan.vcpu)
            });
        loan.end(result.is_err());
        let calls = loan.vcpu.cache().backend_stats().since(&before);
        match result {
            Ok(mut t) => {
                t.set_calls(calls);
                Ok((t, calls))
            }
            Err(source) => {
                let call = failed_ioctl(&source);
                Err(VcpuResetError::Failed {
                    op,
                    id,
                    call,
                    class: call.and_then(Ioctl::class),
                    source,
                })
            }
        }
    }
}

/// A vCPU lent for one call: ends the loan when dropped, so that a panic (caught by the VMM)
/// cannot leave the fd attached; what is known of the vCPU's state is then distrusted.
struct Loan<'a> {
    vcpu: &'a mut Vcpu<KvmVcpu>,
    ended: bool,
}

impl Loan<'_> {
    /// End the loan; after a failure, distrust what is known of the vCPU's state.
    fn end(&mut self, failed: bool) {
        self.ended = true;
        finish(self.vcpu, failed);
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        // Reached with the loan still on only when unwinding.
        if !self.ended {
            finish(self.vcpu, true);
        }
    }
}

/// Detach the lent fd; where the call failed, nothing learned about the vCPU's current state
/// is trusted any more.
fn finish(vcpu: &mut Vcpu<KvmVcpu>, failed: bool) {
    let kv = vcpu.cache_mut().backend_mut();
    if failed {
        kv.distrust();
    }
    kv.detach();
    if failed {
        vcpu.cache_mut().invalidate();
    }
}

/// Results whose call count [`VcpuReset`] fills in with the whole call's, attach included.
trait WithCalls {
    fn set_calls(&mut self, _calls: Stats) {}
}

impl WithCalls for Outcome {
    fn set_calls(&mut self, calls: Stats) {
        self.calls = calls;
    }
}
impl WithCalls for () {}
impl WithCalls for Vec<Deviation> {}
