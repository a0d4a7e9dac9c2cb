//! How the backend reaches its vCPU: [`VcpuIo`], one typed wrapper per vCPU ioctl on a raw file
//! descriptor, with the `kvm_run` page beside it.
//!
//! The vCPU is either owned (a kvm-ioctls [`VcpuFd`] the backend created or adopted), lent for
//! the length of one call (a VMM's fd and its `kvm_run` mapping, or one mapped for that call),
//! or detached (between the calls of a [`VcpuReset`](crate::VcpuReset), which keeps what it
//! learned about the vCPU but never its fd). Every ioctl is made here on the raw fd with the
//! request numbers of the Linux UAPI (`linux/kvm.h`) and the structures of kvm-bindings, so the
//! backend does not depend on which kvm-ioctls (if any) the VMM uses; only KVM_RUN of an owned
//! vCPU goes through [`VcpuFd::run`], whose exit decoding the run loop uses. A detached
//! `VcpuIo` answers every ioctl with `EBADF` and has a scratch `kvm_run` no kernel sees.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVMIO, Msrs, Xsave, kvm_cpuid2, kvm_debugregs, kvm_fpu,
    kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_nested_state, kvm_regs, kvm_run, kvm_sregs,
    kvm_sync_regs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{KvmNestedStateBuffer, SyncReg, VcpuExit, VcpuFd};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

// Request numbers from `include/uapi/linux/kvm.h`.
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
ioctl_iowr_nr!(KVM_GET_NESTED_STATE, KVMIO, 0xbe, kvm_nested_state);
ioctl_iow_nr!(KVM_SET_NESTED_STATE, KVMIO, 0xbf, kvm_nested_state);
ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);

type Result<T> = std::result::Result<T, errno::Error>;

/// 0 or the errno the ioctl left.
fn zero(ret: i32) -> Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(errno::Error::last())
    }
}

/// A count the ioctl returned, or its errno.
fn count(ret: i32) -> Result<usize> {
    usize::try_from(ret).map_err(|_| errno::Error::last())
}

/// Where the vCPU is.
enum Handle {
    Owned(VcpuFd),
    /// A fd lent for one call, and its `kvm_run` page: the lender's mapping, one mapped for
    /// the call (`mapped`, unmapped when the loan ends), or none (`scratch` stands in; only
    /// ioctls that do not involve `kvm_run` are made then).
    Lent {
        fd: RawFd,
        run: Option<NonNull<kvm_run>>,
        mapped: Option<usize>,
    },
    /// No vCPU: ioctls fail with EBADF, `kvm_run` is `scratch`.
    Detached,
}

/// The vCPU the KVM backend drives (see the module documentation).
pub(crate) struct VcpuIo {
    handle: Handle,
    /// A zeroed `kvm_run` for a detached vCPU, so no access needs a mapping to exist.
    scratch: Box<kvm_run>,
}

// SAFETY: the only non-Send/Sync part is the lent `kvm_run` pointer, which exists only while
// the lender's `&mut VcpuFd` or `BorrowedFd` borrow is held by the call that attached it
// (`KvmVcpu::attach`/`detach`), and is reached only through `&mut self`; the page itself is
// shared with the kernel, as kvm-ioctls' own `KvmRunWrapper` (Send + Sync) shares it.
unsafe impl Send for VcpuIo {}
// SAFETY: as for Send: `&self` methods make ioctls on an integer fd and never touch `kvm_run`.
unsafe impl Sync for VcpuIo {}

impl AsRawFd for VcpuIo {
    fn as_raw_fd(&self) -> RawFd {
        match &self.handle {
            Handle::Owned(fd) => fd.as_raw_fd(),
            Handle::Lent { fd, .. } => *fd,
            Handle::Detached => -1,
        }
    }
}

fn scratch() -> Box<kvm_run> {
    // SAFETY: `kvm_run` is a C struct of integers, arrays and unions of them; all zeroes is a
    // valid value of each.
    Box::new(unsafe { std::mem::zeroed() })
}

impl VcpuIo {
    /// An owned vCPU.
    pub(super) fn owned(fd: VcpuFd) -> VcpuIo {
        VcpuIo {
            handle: Handle::Owned(fd),
            scratch: scratch(),
        }
    }

    /// No vCPU yet.
    pub(super) fn detached() -> VcpuIo {
        VcpuIo {
            handle: Handle::Detached,
            scratch: scratch(),
        }
    }

    /// Use the lent vCPU `fd`, whose `kvm_run` page is at `run` (or not used: `None`).
    ///
    /// # Safety
    /// `run` must be the live `kvm_run` mapping of `fd`, and both must stay valid until
    /// [`VcpuIo::end_loan`], with nothing else using them meanwhile.
    pub(super) unsafe fn lend(&mut self, fd: RawFd, run: Option<NonNull<kvm_run>>) {
        self.end_loan();
        self.handle = Handle::Lent {
            fd,
            run,
            mapped: None,
        };
    }

    /// Use the lent vCPU `fd`, mapping its `kvm_run` page (`run_size` bytes) for the loan: one
    /// mmap now and one munmap at [`VcpuIo::end_loan`]. The mapping is the page the kernel and
    /// the lender's own mapping (if any) share.
    ///
    /// # Safety
    /// `fd` must stay open until [`VcpuIo::end_loan`], with no other user of it meanwhile.
    pub(super) unsafe fn lend_mapping(
        &mut self,
        fd: BorrowedFd<'_>,
        run_size: usize,
    ) -> Result<()> {
        self.end_loan();
        // SAFETY: a new shared mapping of the vCPU fd's `kvm_run` page(s), at an address the
        // kernel picks; nothing of ours is overwritten. It is unmapped in `end_loan`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                run_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno::Error::last());
        }
        let Some(run) = NonNull::new(p.cast::<kvm_run>()) else {
            return Err(errno::Error::new(libc::ENOMEM));
        };
        self.handle = Handle::Lent {
            fd: fd.as_raw_fd(),
            run: Some(run),
            mapped: Some(run_size),
        };
        Ok(())
    }

    /// End a loan (unmapping a mapping made for it): the vCPU is detached. Nothing for an
    /// owned or detached vCPU.
    pub(super) fn end_loan(&mut self) {
        if let Handle::Lent { run, mapped, .. } = self.handle {
            if let (Some(run), Some(size)) = (run, mapped) {
                // SAFETY: `run` is the mapping of `size` bytes `lend_mapping` made; no
                // reference into it outlives this `&mut self`.
                unsafe { libc::munmap(run.as_ptr().cast(), size) };
            }
            self.handle = Handle::Detached;
        }
    }

    /// The owned kvm-ioctls fd, if the vCPU is owned.
    pub(super) fn as_owned(&self) -> Option<&VcpuFd> {
        match &self.handle {
            Handle::Owned(fd) => Some(fd),
            _ => None,
        }
    }

    /// The owned kvm-ioctls fd, if the vCPU is owned.
    pub(super) fn into_owned(mut self) -> Option<VcpuFd> {
        self.end_loan();
        match std::mem::replace(&mut self.handle, Handle::Detached) {
            Handle::Owned(fd) => Some(fd),
            _ => None,
        }
    }

    /// The `kvm_run` page (the scratch copy while detached).
    pub(super) fn get_kvm_run(&mut self) -> &mut kvm_run {
        match &mut self.handle {
            Handle::Owned(fd) => fd.get_kvm_run(),
            // SAFETY: `lend`/`lend_mapping` guarantee the mapping is live until the loan ends,
            // and `&mut self` makes this the only reference made through it.
            Handle::Lent { run: Some(run), .. } => unsafe { run.as_mut() },
            Handle::Lent { run: None, .. } | Handle::Detached => &mut self.scratch,
        }
    }

    /// The sync-regs area of `kvm_run`.
    pub(super) fn sync_regs_mut(&mut self) -> &mut kvm_sync_regs {
        // SAFETY: `s` is a union of the sync regs and padding the size of the whole area; on
        // x86 KVM uses it as `kvm_sync_regs`, which is plain integers.
        unsafe { &mut self.get_kvm_run().s.regs }
    }

    pub(super) fn set_sync_valid_reg(&mut self, reg: SyncReg) {
        self.get_kvm_run().kvm_valid_regs |= reg as u64;
    }

    pub(super) fn set_sync_dirty_reg(&mut self, reg: SyncReg) {
        self.get_kvm_run().kvm_dirty_regs |= reg as u64;
    }

    pub(super) fn clear_sync_dirty_reg(&mut self, reg: SyncReg) {
        self.get_kvm_run().kvm_dirty_regs &= !(reg as u64);
    }

    /// KVM_RUN of an owned vCPU, with kvm-ioctls' exit decoding.
    pub(super) fn run(&mut self) -> Result<VcpuExit<'_>> {
        match &mut self.handle {
            Handle::Owned(fd) => fd.run(),
            _ => Err(errno::Error::new(libc::EBADF)),
        }
    }

    /// KVM_RUN, the exit left in `kvm_run` (for a lent vCPU, to complete its last exit).
    pub(super) fn run_raw(&self) -> Result<()> {
        // SAFETY: KVM_RUN takes no argument; the kernel reads and writes only the vCPU's own
        // `kvm_run` page.
        zero(unsafe { ioctl(self, KVM_RUN()) })
    }

    pub(super) fn get_regs(&self) -> Result<kvm_regs> {
        let mut v = kvm_regs::default();
        // SAFETY: the kernel writes one `kvm_regs` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_REGS(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn set_regs(&self, v: &kvm_regs) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_regs` from `v`.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_REGS(), v) })
    }

    pub(super) fn get_sregs(&self) -> Result<kvm_sregs> {
        let mut v = kvm_sregs::default();
        // SAFETY: the kernel writes one `kvm_sregs` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_SREGS(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn set_sregs(&self, v: &kvm_sregs) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_sregs` from `v`.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_SREGS(), v) })
    }

    pub(super) fn get_debug_regs(&self) -> Result<kvm_debugregs> {
        let mut v = kvm_debugregs::default();
        // SAFETY: the kernel writes one `kvm_debugregs` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_DEBUGREGS(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn set_debug_regs(&self, v: &kvm_debugregs) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_debugregs` from `v`.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_DEBUGREGS(), v) })
    }

    #[cfg_attr(not(feature = "selftest"), allow(dead_code))]
    pub(super) fn get_fpu(&self) -> Result<kvm_fpu> {
        let mut v = kvm_fpu::default();
        // SAFETY: the kernel writes one `kvm_fpu` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_FPU(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn get_xsave(&self) -> Result<kvm_xsave> {
        let mut v = kvm_xsave::default();
        // SAFETY: the kernel writes one 4 KiB `kvm_xsave` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_XSAVE(), &mut v) })?;
        Ok(v)
    }

    /// KVM_GET_XSAVE2 into `x`.
    ///
    /// # Safety
    /// `x` must hold at least KVM_CAP_XSAVE2's size in bytes.
    pub(super) unsafe fn get_xsave2(&self, x: &mut Xsave) -> Result<()> {
        // SAFETY: the caller sized `x` for what KVM_CAP_XSAVE2 says the kernel writes.
        zero(unsafe {
            ioctl_with_mut_ref(self, KVM_GET_XSAVE2(), &mut x.as_mut_fam_struct().xsave)
        })
    }

    /// KVM_SET_XSAVE of `x`.
    ///
    /// # Safety
    /// `x` must be followed by as many bytes as KVM_CAP_XSAVE2 says, where that is above 4 KiB.
    pub(super) unsafe fn set_xsave(&self, x: &kvm_xsave) -> Result<()> {
        // SAFETY: the kernel reads the XSAVE image from `x`, as large as the caller vouches.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_XSAVE(), x) })
    }

    /// KVM_SET_XSAVE of the larger image of KVM_CAP_XSAVE2.
    ///
    /// # Safety
    /// `x` must hold at least KVM_CAP_XSAVE2's size in bytes.
    pub(super) unsafe fn set_xsave2(&self, x: &Xsave) -> Result<()> {
        // SAFETY: as the caller vouches.
        unsafe { self.set_xsave(&x.as_fam_struct_ref().xsave) }
    }

    pub(super) fn get_xcrs(&self) -> Result<kvm_xcrs> {
        let mut v = kvm_xcrs::default();
        // SAFETY: the kernel writes one `kvm_xcrs` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_XCRS(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn set_xcrs(&self, v: &kvm_xcrs) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_xcrs` from `v`.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_XCRS(), v) })
    }

    /// KVM_GET_MSRS: how many of `msrs` (from the first) were read.
    pub(super) fn get_msrs(&self, msrs: &mut Msrs) -> Result<usize> {
        // SAFETY: the kernel reads `nmsrs` and writes at most that many entries, which the
        // FAM wrapper holds.
        count(unsafe { ioctl_with_mut_ptr(self, KVM_GET_MSRS(), msrs.as_mut_fam_struct_ptr()) })
    }

    /// KVM_SET_MSRS: how many of `msrs` (from the first) were written.
    pub(super) fn set_msrs(&self, msrs: &Msrs) -> Result<usize> {
        // SAFETY: the kernel reads `nmsrs` and at most that many entries, which the FAM
        // wrapper holds.
        count(unsafe { ioctl_with_ptr(self, KVM_SET_MSRS(), msrs.as_fam_struct_ptr()) })
    }

    pub(super) fn get_lapic(&self) -> Result<kvm_lapic_state> {
        let mut v = kvm_lapic_state::default();
        // SAFETY: the kernel writes one `kvm_lapic_state` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_LAPIC(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn set_lapic(&self, v: &kvm_lapic_state) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_lapic_state` from `v`.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_LAPIC(), v) })
    }

    pub(super) fn get_mp_state(&self) -> Result<kvm_mp_state> {
        let mut v = kvm_mp_state::default();
        // SAFETY: the kernel writes one `kvm_mp_state` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_MP_STATE(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn set_mp_state(&self, v: kvm_mp_state) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_mp_state` from `v`.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_MP_STATE(), &v) })
    }

    pub(super) fn get_vcpu_events(&self) -> Result<kvm_vcpu_events> {
        let mut v = kvm_vcpu_events::default();
        // SAFETY: the kernel writes one `kvm_vcpu_events` into `v`.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_VCPU_EVENTS(), &mut v) })?;
        Ok(v)
    }

    pub(super) fn set_vcpu_events(&self, v: &kvm_vcpu_events) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_vcpu_events` from `v`.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_VCPU_EVENTS(), v) })
    }

    /// KVM_GET_NESTED_STATE into `buffer`: the state's size where there is more than the
    /// header.
    pub(super) fn nested_state(
        &self,
        buffer: &mut KvmNestedStateBuffer,
    ) -> Result<Option<NonZeroUsize>> {
        // SAFETY: the kernel writes at most `buffer.size` bytes, which the buffer holds.
        zero(unsafe { ioctl_with_mut_ref(self, KVM_GET_NESTED_STATE(), buffer) })?;
        let size = buffer.size as usize;
        Ok(if size <= size_of::<kvm_nested_state>() {
            None
        } else {
            NonZeroUsize::new(size)
        })
    }

    pub(super) fn set_nested_state(&self, buffer: &KvmNestedStateBuffer) -> Result<()> {
        // SAFETY: the kernel reads at most `buffer.size` bytes, which the buffer holds.
        zero(unsafe { ioctl_with_ref(self, KVM_SET_NESTED_STATE(), buffer) })
    }

    /// KVM_GET_CPUID2 of up to `entries` entries.
    pub(super) fn get_cpuid2(&self, entries: usize) -> Result<CpuId> {
        if entries > KVM_MAX_CPUID_ENTRIES {
            return Err(errno::Error::new(libc::ENOMEM));
        }
        let mut cpuid = CpuId::new(entries).map_err(|_| errno::Error::new(libc::ENOMEM))?;
        // SAFETY: the kernel reads `nent` and writes at most that many entries, which the FAM
        // wrapper holds.
        zero(unsafe { ioctl_with_mut_ptr(self, KVM_GET_CPUID2(), cpuid.as_mut_fam_struct_ptr()) })?;
        Ok(cpuid)
    }

    pub(super) fn set_cpuid2(&self, cpuid: &CpuId) -> Result<()> {
        // SAFETY: the kernel reads `nent` and at most that many entries, which the FAM wrapper
        // holds.
        zero(unsafe { ioctl_with_ptr(self, KVM_SET_CPUID2(), cpuid.as_fam_struct_ptr()) })
    }
}

impl Drop for VcpuIo {
    fn drop(&mut self) {
        self.end_loan();
    }
}
