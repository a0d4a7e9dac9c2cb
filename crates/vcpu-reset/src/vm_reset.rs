//! [`VmReset`]: a whole VM's warm reboot for a VMM, in one call.

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_ioctls::{VcpuFd, VmFd};

use crate::api::{VcpuReset, VcpuResetError};
use crate::backend::Stats;
use crate::backend::kvm::{KvmHost, VmDevices, VmDevicesError};
use crate::engine::parallel::{on_threads, threads_for};

/// Why a [`VmReset`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmResetError {
    /// Capturing or restoring the in-kernel PIC, IOAPIC or PIT failed.
    #[error(transparent)]
    Devices(#[from] VmDevicesError),
    /// A vCPU could not be learned or reset; the other vCPUs were still reset, the devices
    /// not restored. Call [`VmReset::reset`] again.
    #[error("vCPU {index} of the reboot")]
    Vcpu {
        /// Its index in the slice given.
        index: usize,
        /// What failed, and what to do.
        source: VcpuResetError,
    },
    /// The call was given another number of vCPUs than [`VmReset`] was created with.
    #[error(
        "the VM's reboot was given {given} vCPU fds but knows {known} — pass all the VM's vCPU fds, in the order given at creation"
    )]
    Count {
        /// vCPUs known.
        known: usize,
        /// vCPU fds given.
        given: usize,
    },
}

/// What a [`VmReset::reset`] cost.
#[derive(Clone, Debug, Default)]
pub struct VmOutcome {
    /// Each vCPU's syscalls, in order.
    pub vcpus: Vec<Stats>,
    /// VM ioctls that restored the devices (4 with an in-kernel PIC, IOAPIC and PIT).
    pub device_calls: u64,
}

impl VmOutcome {
    /// Every syscall the reboot made.
    pub fn calls(&self) -> u64 {
        self.vcpus.iter().map(Stats::calls).sum::<u64>() + self.device_calls
    }
}

/// A warm reboot of a whole VM, for a VMM: the VM's in-kernel PIC, IOAPIC and PIT
/// ([`VmDevices`]) captured at creation, and a [`VcpuReset`] for each vCPU.
///
/// [`VmReset::reset`] RESETs every vCPU (on the calling thread, or spread over a few threads
/// where the VMM asks for them with [`VmReset::set_threads`]), after which the BSP is runnable at the reset vector
/// and the APs wait for a startup IPI (Intel SDM Vol. 3A §10.4, "Multiple-Processor (MP)
/// Initialization"), and then puts the devices back as captured. RAM, the VMM's own devices and
/// its run loop stay the VMM's: a firmware ROM the guest may have written, and the VMM's device
/// models, are the VMM's to restore.
///
/// Create it once the VMM has created the in-kernel irqchip and PIT and the vCPUs (with their
/// CPUID), before the guest first runs: what is captured then is the state a reboot puts back.
///
/// # vCPU ids
///
/// The vCPUs are given as a slice whose index is the KVM vCPU id: `vcpus[i]` must be vCPU `i`
/// (ids 0 to n-1, as KVM_CREATE_VCPU was given them), at creation and at every reset. A VM
/// whose vCPU ids have gaps keeps a [`VcpuReset`] per vCPU instead (created with its id) and
/// a [`VmDevices`]. Each fd is checked against its index's id before anything is reset
/// ([`VcpuResetError::NotThisVcpu`] in [`VmResetError::Vcpu`]): fds in another order change
/// nothing.
///
/// # Threads
///
/// By default everything runs on the calling thread: no thread is created unless the VMM asks
/// with [`VmReset::set_threads`] (a sandboxed VMM whose seccomp filter kills on clone3 stays
/// safe). Spreading pays only with many vCPUs and free cores: `bench reboot` on the project's
/// 2-CPU host (nested, shared with builds), 32 vCPUs, the RESETs over 2 threads against 1:
/// 1.05× (median of per-round ratios, 0.74–1.50) on one day, 1.44× (0.90–1.87) on another.
/// With threads asked for, one is used per 8 vCPUs ([`threads_for`]); a thread that cannot be
/// started (RLIMIT_NPROC, a filter refusing clone3 with an error) leaves its vCPUs to the
/// calling thread rather than failing or panicking.
///
/// # Other VM-wide state
///
/// - The kvmclock (KVM_GET_CLOCK/KVM_SET_CLOCK) is not set back: it is the VM's time since
///   creation, which goes on across a reboot as a machine's time does; what a guest enabled
///   over it (MSR_KVM_SYSTEM_TIME, the PV EOI and async-PF MSRs) is per vCPU and off after the
///   vCPU RESET (the spec's rows). The wall-clock MSR only makes KVM write the time once.
/// - The TSCs are written per vCPU (IA32_TSC = 1, matched onto one offset by KVM when done
///   within a second: see the crate's README).
/// - Lines a VMM device holds asserted (KVM_IRQ_LINE) are dropped with the IOAPIC's and PICs'
///   state: a device that is reset with the machine must not assert them again by itself.
/// - Not covered: Hyper-V's partition-wide MSRs (guest OS ID, hypercall page, reference TSC)
///   and Xen's shared info of a VM that enables them, and the dirty-page log.
///
/// # Cost
///
/// Each vCPU's RESET as [`VcpuReset`] gives it (3 to 5 ioctls after a run, 1 to 3 for an AP
/// that waited for SIPI through the boot) and four VM ioctls for the devices.
///
/// A VMM whose vCPU fds live on their own threads keeps a [`VcpuReset`] on each (its RESET is
/// then made by the thread that owns the fd) and calls [`VmReset::restore_devices`] once all
/// are through, or holds just a [`VmDevices`].
#[derive(Debug)]
pub struct VmReset {
    devices: VmDevices,
    vcpus: Vec<VcpuReset>,
    threads: usize,
}

/// The vCPUs' fds for one call.
enum Fds<'a> {
    Typed(&'a mut [VcpuFd]),
    Raw(&'a [BorrowedFd<'a>]),
}

impl VmReset {
    /// Capture `vm`'s devices and learn its vCPUs; `vcpus[i]` must be vCPU `i` (its KVM vCPU
    /// id; see the type's `# vCPU ids`).
    ///
    /// # Errors
    /// [`VmResetError::Devices`], [`VmResetError::Vcpu`].
    pub fn new(host: &KvmHost, vm: &VmFd, vcpus: &[VcpuFd]) -> Result<VmReset, VmResetError> {
        let devices = VmDevices::capture(vm)?;
        let vcpus = vcpus
            .iter()
            .enumerate()
            .map(|(i, fd)| {
                VcpuReset::new(host, vm, fd, i as u64)
                    .map_err(|source| VmResetError::Vcpu { index: i, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmReset::assemble(devices, vcpus))
    }

    /// [`VmReset::new`] for a VMM that has raw fds (another kvm-ioctls version, its own
    /// bindings, C).
    ///
    /// # Errors
    /// As [`VmReset::new`].
    pub fn from_raw_fds(
        host: &KvmHost,
        vm: BorrowedFd<'_>,
        vcpus: &[BorrowedFd<'_>],
    ) -> Result<VmReset, VmResetError> {
        let devices = VmDevices::capture_raw(vm)?;
        let vcpus = vcpus
            .iter()
            .enumerate()
            .map(|(i, fd)| {
                VcpuReset::from_raw_fds(host, vm, *fd, i as u64)
                    .map_err(|source| VmResetError::Vcpu { index: i, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmReset::assemble(devices, vcpus))
    }

    fn assemble(devices: VmDevices, vcpus: Vec<VcpuReset>) -> VmReset {
        VmReset {
            devices,
            vcpus,
            threads: 1,
        }
    }

    /// The most threads a reset spreads the vCPUs over (default 1: none is created; e.g.
    /// `std::thread::available_parallelism()` for a VMM with many vCPUs and free cores); fewer
    /// are used where there are too few vCPUs to pay for a thread ([`threads_for`]). See the
    /// type's `# Threads`.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The captured devices.
    pub fn devices(&self) -> &VmDevices {
        &self.devices
    }

    /// The vCPUs' [`VcpuReset`]s, in order.
    pub fn vcpus(&mut self) -> &mut [VcpuReset] {
        &mut self.vcpus
    }

    /// Reboot the VM in place: RESET every vCPU, then put the devices back. `vcpus` are the
    /// VM's vCPU fds in the order given at creation; no vCPU may be in KVM_RUN.
    ///
    /// # Errors
    /// [`VmResetError`]; after a vCPU's failure call it again (see [`VcpuReset::reset`]).
    pub fn reset(&mut self, vm: &VmFd, vcpus: &mut [VcpuFd]) -> Result<VmOutcome, VmResetError> {
        let vm = crate::backend::kvm::borrow_vm(vm);
        self.reboot(vm, Fds::Typed(vcpus))
    }

    /// [`VmReset::reset`] with raw fds ([`VcpuReset::reset_raw`] for each).
    ///
    /// # Safety
    /// Each of `vcpus` must be the KVM vCPU fd of its index's vCPU, and for the length of the
    /// call no other thread may make an ioctl on any of them (KVM_RUN included) or touch
    /// their `kvm_run` pages (as [`VcpuReset::reset_raw`]).
    ///
    /// # Errors
    /// As [`VmReset::reset`].
    pub unsafe fn reset_raw(
        &mut self,
        vm: BorrowedFd<'_>,
        vcpus: &[BorrowedFd<'_>],
    ) -> Result<VmOutcome, VmResetError> {
        self.reboot(vm, Fds::Raw(vcpus))
    }

    /// Put the devices back as captured (four VM ioctls), for a VMM that RESETs its vCPUs on
    /// their own threads.
    ///
    /// # Errors
    /// [`VmResetError::Devices`].
    pub fn restore_devices(&self, vm: &VmFd) -> Result<u64, VmResetError> {
        Ok(self.devices.restore(vm)?)
    }

    fn reboot(&mut self, vm: BorrowedFd<'_>, fds: Fds<'_>) -> Result<VmOutcome, VmResetError> {
        let given = match &fds {
            Fds::Typed(f) => f.len(),
            Fds::Raw(f) => f.len(),
        };
        if given != self.vcpus.len() {
            return Err(VmResetError::Count {
                known: self.vcpus.len(),
                given,
            });
        }
        // Every fd is checked to be its index's vCPU before any is reset, so that fds in
        // another order change nothing (each call checks its own again: a readlink each).
        let raws: Vec<_> = match &fds {
            Fds::Typed(f) => f.iter().map(AsRawFd::as_raw_fd).collect(),
            Fds::Raw(f) => f.iter().map(AsRawFd::as_raw_fd).collect(),
        };
        for (index, (r, fd)) in self.vcpus.iter().zip(raws).enumerate() {
            r.check_fd("RESET", fd)
                .map_err(|source| VmResetError::Vcpu { index, source })?;
        }
        let n = given;
        let threads = threads_for(n, self.threads);
        let per = n.div_ceil(threads.max(1)).max(1);
        let results: Vec<Result<Stats, VcpuResetError>> = match fds {
            Fds::Typed(fds) => spread(&mut self.vcpus, fds, per, |r, fd| r.reset(fd)),
            Fds::Raw(fds) => {
                let mut fds = fds.to_vec();
                // SAFETY: the caller vouches for each fd as `reset_raw` requires.
                spread(&mut self.vcpus, &mut fds, per, |r, fd| unsafe {
                    r.reset_raw(*fd)
                })
            }
        };
        let mut out = VmOutcome::default();
        for (index, r) in results.into_iter().enumerate() {
            out.vcpus
                .push(r.map_err(|source| VmResetError::Vcpu { index, source })?);
        }
        out.device_calls = self.devices.restore_raw(vm)?;
        Ok(out)
    }
}

/// Run `op` on each (`VcpuReset`, fd) pair, `per` pairs to a thread (the first group on the
/// calling thread). Returns each pair's result, in order.
fn spread<F, Fd>(
    resets: &mut [VcpuReset],
    fds: &mut [Fd],
    per: usize,
    op: F,
) -> Vec<Result<Stats, VcpuResetError>>
where
    Fd: Send,
    F: Fn(&mut VcpuReset, &mut Fd) -> Result<crate::engine::Outcome, VcpuResetError> + Sync,
{
    let run = |resets: &mut [VcpuReset], fds: &mut [Fd]| {
        resets
            .iter_mut()
            .zip(fds.iter_mut())
            .map(|(r, fd)| op(r, fd).map(|o| o.calls))
            .collect::<Vec<_>>()
    };
    if per >= resets.len() {
        return run(resets, fds);
    }
    // A group whose thread cannot be started runs on the calling thread (`on_threads`).
    let groups: Vec<_> = resets.chunks_mut(per).zip(fds.chunks_mut(per)).collect();
    on_threads(groups, |(r, f)| run(r, f))
        .into_iter()
        .flatten()
        .collect()
}
