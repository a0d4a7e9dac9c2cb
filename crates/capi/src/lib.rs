//! # vcpu-reset's C API
//!
//! `libvcpu_reset.a` / `libvcpu_reset.so` and `include/vcpu_reset.h`: the exact architectural
//! RESET and INIT of a KVM vCPU (Intel SDM Vol. 3A Table 10-1, AMD APM Vol. 2 Table 14-1), for
//! a VMM written in C or on any KVM bindings, through the raw VM and vCPU fds it already has.
//! A thin layer over [`vcpu_reset_lib::VcpuReset`]'s raw-fd calls and
//! [`vcpu_reset_lib::backend::kvm::VmDevices`]; the costs and the state a read through the
//! VMM's fd sees before its next KVM_RUN are documented there.
//!
//! Every function returns -1 (or NULL) on failure and leaves a message, which says what to
//! do next, for [`vcpu_reset_last_error`] on the calling thread. No function panics across the
//! boundary: a panic inside is reported as an error.
//!
//! A `struct vcpu_reset` belongs to one vCPU (the one it was made for: another vCPU's fd is
//! refused) and must not be used from two threads at once; handles of different vCPUs may be
//! used on different threads. Each keeps one fd of its own, the vCPU's KVM statistics file
//! (KVM_GET_STATS_FD), which holds a reference on the VM until [`vcpu_reset_free`]: free every
//! handle to release a VM the VMM has closed. The VM and vCPU fds stay the VMM's. `examples/c/reboot_vmm.c` is a whole VMM
//! on raw KVM ioctls built on it; `tests/c_example.rs` builds it with `cc` and runs it.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use vcpu_reset_lib::VcpuReset;
use vcpu_reset_lib::backend::kvm::{KvmHost, VmDevices};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// The host, opened once per process (`/dev/kvm`).
static HOST: OnceLock<KvmHost> = OnceLock::new();

fn host() -> Result<&'static KvmHost, String> {
    if let Some(h) = HOST.get() {
        return Ok(h);
    }
    let opened = KvmHost::open().map_err(|e| e.to_string())?;
    Ok(HOST.get_or_init(|| opened))
}

fn set_error(msg: &str) {
    // A message with a NUL in it is cut there.
    let bytes: Vec<u8> = msg.bytes().take_while(|b| *b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Run `f`, turning an error or a panic into `fail` and the thread's last error.
fn guarded<T>(fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(t)) => t,
        Ok(Err(msg)) => {
            set_error(&msg);
            fail
        }
        Err(_) => {
            set_error("vcpu-reset panicked — please report it with the VMM's setup");
            fail
        }
    }
}

/// A fd from C, refused where negative.
///
/// # Safety
/// A non-negative `fd` must be open for the length of the call.
unsafe fn borrowed<'a>(fd: c_int, what: &str) -> Result<BorrowedFd<'a>, String> {
    if fd < 0 {
        return Err(format!("{what} fd {fd} is negative — pass the open fd"));
    }
    // SAFETY: as the caller vouches.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// What vcpu-reset knows of one vCPU (`struct vcpu_reset` in C).
pub struct VcpuResetHandle {
    inner: VcpuReset,
}

/// Learn vCPU `id` of the VM `vm_fd`, whose fd is `vcpu_fd`; the VMM has created it and set
/// its CPUID (KVM_SET_CPUID2). Returns NULL on failure ([`vcpu_reset_last_error`]). Free the
/// result with [`vcpu_reset_free`]. The handle belongs to that one vCPU: every later call
/// must be given its fd. The VM and vCPU fds stay the VMM's; the handle keeps a file of its
/// own, the vCPU's KVM statistics (KVM_GET_STATS_FD, one per handle), which holds a reference
/// on the VM (its memory and vCPUs stay allocated in the kernel) until [`vcpu_reset_free`].
///
/// # Safety
/// `vm_fd` and `vcpu_fd` must be open fds for the length of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_new(
    vm_fd: c_int,
    vcpu_fd: c_int,
    id: u64,
) -> *mut VcpuResetHandle {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: the caller vouches for both fds.
        let (vm, vcpu) = unsafe { (borrowed(vm_fd, "VM")?, borrowed(vcpu_fd, "vCPU")?) };
        let inner = VcpuReset::from_raw_fds(host()?, vm, vcpu, id).map_err(|e| error_chain(&e))?;
        Ok(Box::into_raw(Box::new(VcpuResetHandle { inner })))
    })
}

/// The error and its sources, one after another.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// The handle behind `r`, or an error for NULL.
///
/// # Safety
/// A non-NULL `r` must come from [`vcpu_reset_new`] and not be freed or used elsewhere.
unsafe fn handle<'a>(r: *mut VcpuResetHandle) -> Result<&'a mut VcpuResetHandle, String> {
    // SAFETY: as the caller vouches.
    unsafe { r.as_mut() }.ok_or_else(|| {
        "the vcpu_reset handle is NULL — pass what vcpu_reset_new returned".to_string()
    })
}

fn count(calls: u64) -> c_int {
    c_int::try_from(calls).unwrap_or(c_int::MAX)
}

/// Power-on RESET of the vCPU `vcpu_fd` (the one `r` was made for): the VMM's next KVM_RUN
/// starts in the exact RESET state. Returns the vCPU syscalls it made (3 to 5 after a run on
/// the project's hosts), or -1 ([`vcpu_reset_last_error`]); after a failure the fd is still
/// the VMM's and the next call writes every state class again.
///
/// # Safety
/// `r` as from [`vcpu_reset_new`], used by no other thread during the call; `vcpu_fd` the
/// KVM vCPU fd of the vCPU `r` was made for (another vCPU's fd, the VM's or any other file is
/// refused with an error where `/proc` is mounted, and nothing changes; a vCPU of another VM
/// with the same id is not detected), open for the call, with no other thread making an ioctl
/// on it (KVM_RUN included) or touching its `kvm_run` page meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_reset(r: *mut VcpuResetHandle, vcpu_fd: c_int) -> c_int {
    guarded(-1, || {
        // SAFETY: as the caller vouches.
        let (h, fd) = unsafe { (handle(r)?, borrowed(vcpu_fd, "vCPU")?) };
        // SAFETY: the caller vouches that `vcpu_fd` is the handle's vCPU and that no other
        // thread uses that vCPU during the call (the contract `vcpu_reset_reset` states).
        let out = unsafe { h.inner.reset_raw(fd) }.map_err(|e| error_chain(&e))?;
        Ok(count(out.calls.calls()))
    })
}

/// INIT of the vCPU `vcpu_fd` (Intel SDM Vol. 3A §10.1, AMD APM Vol. 2 §14.1.3): what INIT
/// keeps is kept; an AP then waits for a startup IPI. Returns the syscalls made, or -1.
///
/// # Safety
/// As [`vcpu_reset_reset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_init(r: *mut VcpuResetHandle, vcpu_fd: c_int) -> c_int {
    guarded(-1, || {
        // SAFETY: as the caller vouches.
        let (h, fd) = unsafe { (handle(r)?, borrowed(vcpu_fd, "vCPU")?) };
        // SAFETY: the caller vouches that `vcpu_fd` is the handle's vCPU and that no other
        // thread uses that vCPU during the call (the contract `vcpu_reset_reset` states).
        let out = unsafe { h.inner.init_raw(fd) }.map_err(|e| error_chain(&e))?;
        Ok(count(out.calls.calls()))
    })
}

/// Make reads through the VMM's own fd (KVM_GET_REGS, ...) show the state the vCPU will run
/// from, before its next KVM_RUN (e.g. before saving it). Returns the syscalls made, or -1.
///
/// # Safety
/// As [`vcpu_reset_reset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_settle(r: *mut VcpuResetHandle, vcpu_fd: c_int) -> c_int {
    guarded(-1, || {
        // SAFETY: as the caller vouches.
        let (h, fd) = unsafe { (handle(r)?, borrowed(vcpu_fd, "vCPU")?) };
        // SAFETY: the caller vouches that `vcpu_fd` is the handle's vCPU and that no other
        // thread uses that vCPU during the call (the contract `vcpu_reset_reset` states).
        let stats = unsafe { h.inner.settle_raw(fd) }.map_err(|e| error_chain(&e))?;
        Ok(count(stats.calls()))
    })
}

/// Free a handle from [`vcpu_reset_new`]; NULL is ignored. The vCPU fd is not touched.
///
/// # Safety
/// `r` as from [`vcpu_reset_new`], not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_free(r: *mut VcpuResetHandle) {
    if !r.is_null() {
        // SAFETY: `r` came from `Box::into_raw` in `vcpu_reset_new` and is freed once.
        drop(unsafe { Box::from_raw(r) });
    }
}

/// The last error of a call on this thread: a NUL-terminated message saying what failed and
/// what to do, valid until the thread's next call. "" before any error.
#[unsafe(no_mangle)]
pub extern "C" fn vcpu_reset_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The in-kernel PIC, IOAPIC and PIT of a VM as captured (`struct vcpu_reset_devices`).
pub struct DevicesHandle {
    inner: VmDevices,
}

/// Capture the VM's in-kernel PIC, IOAPIC and PIT, once they are created and before the guest
/// first runs. NULL on failure. Free with [`vcpu_reset_devices_free`].
///
/// # Safety
/// `vm_fd` open for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_devices_capture(vm_fd: c_int) -> *mut DevicesHandle {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: as the caller vouches.
        let vm = unsafe { borrowed(vm_fd, "VM")? };
        let inner = VmDevices::capture_raw(vm).map_err(|e| error_chain(&e))?;
        Ok(Box::into_raw(Box::new(DevicesHandle { inner })))
    })
}

/// Put the captured devices back (at a reboot, once every vCPU is RESET). Returns the VM
/// ioctls made (4 with an in-kernel PIC, IOAPIC and PIT), or -1.
///
/// # Safety
/// `d` as from [`vcpu_reset_devices_capture`]; `vm_fd` open for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_devices_restore(
    d: *const DevicesHandle,
    vm_fd: c_int,
) -> c_int {
    guarded(-1, || {
        // SAFETY: as the caller vouches.
        let d = unsafe { d.as_ref() }
            .ok_or("the devices handle is NULL — pass what vcpu_reset_devices_capture returned")?;
        // SAFETY: as the caller vouches.
        let vm = unsafe { borrowed(vm_fd, "VM")? };
        let calls = d.inner.restore_raw(vm).map_err(|e| error_chain(&e))?;
        Ok(count(calls))
    })
}

/// Free a handle from [`vcpu_reset_devices_capture`]; NULL is ignored.
///
/// # Safety
/// `d` as from [`vcpu_reset_devices_capture`], not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_devices_free(d: *mut DevicesHandle) {
    if !d.is_null() {
        // SAFETY: `d` came from `Box::into_raw` and is freed once.
        drop(unsafe { Box::from_raw(d) });
    }
}

/// Turn off KVM's LINT0_REENABLED quirk on the VM, with `others`, the `KVM_X86_QUIRK_*` bits the
/// VMM turns off anyway (some kernels replace a VM's set of disabled quirks instead of adding
/// to it). Returns 1 when the quirk is now off, 0 when the host cannot turn it off, -1 on
/// failure. Saves a RESET of the BSP two ioctls: see
/// [`vcpu_reset_lib::backend::kvm::disable_lint0_quirk`].
///
/// # Safety
/// `vm_fd` open for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vcpu_reset_disable_lint0_quirk(vm_fd: c_int, others: u64) -> c_int {
    guarded(-1, || {
        // SAFETY: as the caller vouches.
        let vm = unsafe { borrowed(vm_fd, "VM")? };
        let off = vcpu_reset_lib::backend::kvm::disable_lint0_quirk_raw(vm, others)
            .map_err(|e| error_chain(&e))?;
        Ok(c_int::from(off))
    })
}
