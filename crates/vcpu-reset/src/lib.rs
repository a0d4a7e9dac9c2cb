//! # vcpu-reset
//!
//! Exact, architecturally correct RESET and INIT for x86 vCPUs on KVM.
//!
//! KVM creates a vCPU in its power-on state but has no RESET ioctl, and its creation state is
//! not quite the architectural one (RDX, the x87 unit, LVT LINT0 differ). A VMM that reboots a
//! guest in place must write every piece of vCPU state back itself. vcpu-reset does that from
//! a cited specification ([`spec`]: Intel SDM Vol. 3A Table 10-1, AMD APM Vol. 2 Table 14-1
//! and the sections they point to), for the CPU model the vCPU's own CPUID presents.
//!
//! # Use in your VMM
//!
//! A VMM keeps its VM, memory, vCPU fds, CPUID and run loop, and a [`VcpuReset`] beside each
//! vCPU fd: what vcpu-reset learned about that vCPU (CPU model, identity, what the host's INIT
//! gets right), never the fd, which it borrows for the length of each call:
//!
//! ```no_run
//! use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
//! use kvm_ioctls::Kvm;
//! use vcpu_reset::VcpuReset;
//! use vcpu_reset::backend::kvm::KvmHost;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kvm = Kvm::new()?; // the VMM's own VM and vCPU
//! let vm = kvm.create_vm()?;
//! vm.create_irq_chip()?;
//! let mut vcpu = vm.create_vcpu(0)?;
//! vcpu.set_cpuid2(&kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?)?;
//!
//! let host = KvmHost::open()?;
//! let mut reset = VcpuReset::new(&host, &vm, &vcpu, 0)?;
//! reset.reset(&mut vcpu)?; // power-on: the exact RESET state
//! // ... the VMM's KVM_RUN loop; on 0x06 to port 0xCF9 or KVM_EXIT_SHUTDOWN:
//! let outcome = reset.reset(&mut vcpu)?;
//! println!("{} vCPU syscalls", outcome.calls.calls()); // 3 to 5 after a run
//! # Ok(())
//! # }
//! ```
//!
//! [`VcpuReset`] reads the CPUID back (KVM_GET_CPUID2) and never changes it: the vendor picks
//! Intel's or AMD's rules, CPUID.01H:EAX is what RDX holds after RESET, the XSAVE layout and
//! the local APIC version follow. Its cost in ioctls, and what a read through the VMM's fd
//! sees before the next KVM_RUN, are listed at [`VcpuReset`]. A VMM on another kvm-ioctls
//! version, on its own bindings or in C passes raw fds ([`VcpuReset::from_raw_fds`],
//! [`VcpuReset::reset_raw`]). [`reset_vcpu`] is the one-call form for a single RESET. The
//! repository's `crates/selftest/examples/tiny_vmm.rs` is a whole VMM built this way that
//! reboots its guest in place on a triple fault and on 0xCF9.
//!
//! # Keeping the vCPU: RESET, INIT, SIPI, verify
//!
//! [`KvmVcpu::adopt`](backend::kvm::KvmVcpu::adopt) takes the vCPU over for longer; the rest
//! of the chain is the one vcpu-reset uses for its own vCPUs. Here an AP the VMM created is
//! sent INIT and a startup IPI, checked, and handed back to the VMM's own KVM_RUN:
//!
//! ```no_run
//! use vcpu_reset::backend::kvm::{KvmHost, KvmVcpu};
//! use vcpu_reset::cache::VcpuCache;
//! use vcpu_reset::engine::{DeviationKind, Vcpu};
//!
//! # fn ap(host: &KvmHost, vm: &kvm_ioctls::VmFd, fd: kvm_ioctls::VcpuFd)
//! #     -> Result<kvm_ioctls::VcpuFd, Box<dyn std::error::Error>> {
//! let kv = KvmVcpu::adopt(host, vm, fd, 1)?; // vCPU 1 of `vm`, with its CPUID set
//! let model = kv.cpu_model().ok_or("the CPUID is neither Intel's nor AMD's")?;
//! let identity = kv.vcpu_identity(); // APIC ID 1, not the BSP
//! let mut vcpu = Vcpu::new(VcpuCache::adopt(kv), model, identity);
//! vcpu.init()?; // INIT: the AP waits for a SIPI
//! vcpu.sipi(0x10)?; // starts at 1000:0000
//! let deviations = vcpu.verify()?; // every field read back
//! assert!(deviations.iter().all(|d| d.kind != DeviationKind::Mismatch));
//! let fd = vcpu.into_cache().into_backend()?.into_fd(); // the VMM runs it next
//! # Ok(fd)
//! # }
//! ```
//!
//! What to know:
//!
//! - The vCPU needs its CPUID set (KVM_SET_CPUID2) and a GenuineIntel or AuthenticAMD vendor;
//!   adoption refuses a vCPU without CPUID, an id that is not the vCPU's and (where it can
//!   tell) a vCPU of another VM, with an [`AdoptRefusal`](backend::kvm::AdoptRefusal) that
//!   says what to do, and gives the fd back ([`KvmError::into_fd`](backend::kvm::KvmError::into_fd)).
//! - Between adoption and hand-back vcpu-reset may use sync regs (`kvm_run.kvm_valid_regs`);
//!   [`into_fd`](backend::kvm::KvmVcpu::into_fd) applies every deferred store with its ioctl and
//!   puts `kvm_valid_regs` and `kvm_dirty_regs` back as the VMM had them.
//! - Memory, the irqchip, devices and the run loop stay the VMM's; a reboot of the whole
//!   machine also puts the VMM's devices back.
//! - Fields a host's KVM cannot hold are reported by `verify()` as
//!   [`DeviationKind::NotHeld`](engine::DeviationKind::NotHeld), not silently skipped.
//!
//! # System calls, for seccomp filters
//!
//! What the library asks of the kernel, for a sandboxed VMM whose filter must allow it:
//!
//! - [`KvmHost::open`](backend::kvm::KvmHost::open), once (best before the sandbox is
//!   entered): `openat` of `/dev/kvm` (and, when that fails, `statx` of it and `openat` of
//!   `/etc/group` to say who may open it),
//!   and on its fd KVM_GET_API_VERSION, KVM_CHECK_EXTENSION, KVM_GET_SUPPORTED_CPUID and
//!   KVM_GET_MSR_INDEX_LIST; [`VcpuReset::from_raw_fds`] adds KVM_GET_VCPU_MMAP_SIZE.
//! - On the VM fd: KVM_CHECK_EXTENSION, KVM_SET_BOOT_CPU_ID (a probe that changes nothing) and
//!   KVM_GET_IRQCHIP when a vCPU is learned; KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_SET_IRQCHIP and
//!   KVM_SET_PIT2 for the devices ([`VmReset`],
//!   [`VmDevices`](backend::kvm::VmDevices)); KVM_CHECK_EXTENSION and KVM_ENABLE_CAP from
//!   [`disable_lint0_quirk`](backend::kvm::disable_lint0_quirk).
//! - On the vCPU fd: KVM_GET_CPUID2, KVM_GET_STATS_FD (when learned), and any of
//!   KVM_GET/SET_REGS, _SREGS, _SREGS2, _DEBUGREGS, _XSAVE (KVM_GET_XSAVE2), _XCRS, _MSRS,
//!   _LAPIC, _MP_STATE, _VCPU_EVENTS, _NESTED_STATE, KVM_GET_FPU, and KVM_RUN (only with
//!   `immediate_exit` set, to complete the VMM's last exit; the guest is never entered).
//! - `readlink` of `/proc/self/fd/<fd>` at every call (and when a vCPU is learned), to check
//!   the fd is the vCPU's.
//! - `pread64` on the vCPU's statistics fd (its count of guest entries: when learned, and at
//!   the calls that check whether the vCPU ran), and `close` of it when the [`VcpuReset`] is
//!   dropped.
//! - The raw-fd calls ([`VcpuReset::reset_raw`] and the C API): `mmap` and `munmap` of the
//!   vCPU's `kvm_run` page, one each per call.
//! - [`VmReset`] with [`VmReset::set_threads`] above 1, and 16 vCPUs or more: `clone3` (with
//!   the `mmap`, `mprotect`, `munmap`, `rt_sigprocmask`, `set_robust_list`, `sched_getaffinity`
//!   and `futex` that starting and joining a Rust thread makes). A `clone3` refused with an
//!   error only keeps the work on the calling thread; one that kills the process cannot be
//!   survived, so leave the default (1: no thread).
//! - Memory allocation (`brk`/`mmap`/`munmap` through the allocator) and `futex`.
//!
//! # The crate
//!
//! - [`spec`] (re-exported `vcpu-reset-spec`): the state after RESET and INIT, cited.
//! - [`engine`]: RESET, INIT, SIPI and verify on a cached vCPU, and running that over a
//!   whole VM's vCPUs in parallel.
//! - [`cache`]: the register cache with available/dirty tracking in front of a backend.
//! - [`backend`]: KVM and a software VMX-style model, behind one trait.
//! - [`slots`]: the state classes and register-cache slots backends and the cache share.
//! - [`VcpuReset`]: RESET and INIT of a VMM's own vCPU at the engine's cost; [`reset_vcpu`]:
//!   the one-call RESET.
//!
//! The conformance selftest, its guest probes, the small VMM that boots them and the
//! `vcpu-reset` command are the crate `vcpu-reset-selftest`, apart from this library: a VMM
//! that depends on `vcpu-reset` builds none of them. The feature `selftest` adds the few hooks
//! that tool needs (KVM's own INIT and SIPI raised from the host, second views of state KVM
//! reports twice, forcing the lazy host-INIT path); a VMM has no use for them.

pub use vcpu_reset_spec as spec;

mod api;
mod vm_reset;
mod vmm;
pub use api::{VcpuReset, VcpuResetError};
pub use vm_reset::{VmOutcome, VmReset, VmResetError};
pub use vmm::{ResetVcpuError, reset_vcpu, reset_vcpu_counted};

pub mod backend;
pub mod cache;
pub mod engine;
pub mod slots;
