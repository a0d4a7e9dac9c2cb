//! The VMM-API path of `bench reboot`: a VMM's own VM, made with kvm-ioctls and vm-memory
//! alone, with one thread per vCPU that owns the vCPU fd and keeps a [`VcpuReset`] beside it.
//! A reboot tells every thread to RESET its own vCPU ([`VcpuReset::reset`]), waits for all of
//! them, and puts the in-kernel PIC, IOAPIC and PIT back ([`VmDevices::restore`]): what a VMM
//! built on the library does, next to the runner's [`Vm::reboot`](crate::runner::Vm::reboot).

use std::sync::mpsc;
use std::thread::JoinHandle;

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vcpu_reset::VcpuReset;
use vcpu_reset::backend::kvm::{KvmHost, TSS_ADDRESS, VmDevices, disable_lint0_quirk};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::BenchError;
use super::exits::{CODE, PORT, Program};
use crate::runner::firmware::FIRMWARE_END;

/// Low RAM: the loop at [`CODE`] and the firmware's alias below 1 MiB.
const LOW_RAM: usize = 1 << 20;

/// What a vCPU thread is told to do.
enum Cmd {
    /// Run to the loop's first OUT (the BSP).
    RunToOut,
    /// RESET the vCPU; reply with its syscalls.
    Reset,
}

/// A VMM's VM with a thread per vCPU.
pub struct VmmApiRig {
    // Field order is drop order: the threads (and their vCPU fds) go first, then the VM and
    // the memory it maps.
    threads: Vec<(mpsc::Sender<Cmd>, JoinHandle<()>)>,
    replies: mpsc::Receiver<Result<u64, String>>,
    devices: VmDevices,
    vm: VmFd,
    _memory: GuestMemoryMmap,
    _kvm: Kvm,
}

fn kvm_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Guest(format!("the VMM-API rig: {what}: {e}"))
}

impl VmmApiRig {
    /// Build the VM (in-kernel irqchip and PIT, KVM's LINT0_REENABLED quirk off as in the
    /// runner's VMs, the bench loop in RAM), RESET every vCPU and start its thread.
    ///
    /// # Errors
    /// [`BenchError`] when KVM refuses a step.
    pub fn new(host: &KvmHost, program: &Program, vcpus: u32) -> Result<VmmApiRig, BenchError> {
        let kvm = Kvm::new().map_err(|e| kvm_error("open /dev/kvm", e))?;
        let vm = kvm.create_vm().map_err(|e| kvm_error("KVM_CREATE_VM", e))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(|e| kvm_error("KVM_SET_TSS_ADDR", e))?;
        disable_lint0_quirk(&vm, 0).map_err(|e| kvm_error("turn the LINT0 quirk off", e))?;
        vm.create_irq_chip()
            .map_err(|e| kvm_error("KVM_CREATE_IRQCHIP", e))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|e| kvm_error("KVM_CREATE_PIT2", e))?;

        let firmware = &program.firmware;
        let size = firmware.bytes().len();
        let memory = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), LOW_RAM),
            (GuestAddress(FIRMWARE_END - size as u64), size),
        ])
        .map_err(|e| kvm_error("map guest memory", e))?;
        let write = |data: &[u8], at: u64| {
            memory
                .write_slice(data, GuestAddress(at))
                .map_err(|e| kvm_error("write guest memory", e))
        };
        write(firmware.bytes(), firmware.base())?;
        let (alias, bytes) = firmware.low_alias();
        write(bytes, alias)?;
        write(&program.code, CODE)?;
        for (slot, (base, len)) in [(0, LOW_RAM), (FIRMWARE_END - size as u64, size)]
            .into_iter()
            .enumerate()
        {
            let host_addr = memory
                .get_host_address(GuestAddress(base))
                .map_err(|e| kvm_error("guest memory", e))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: base,
                memory_size: len as u64,
                userspace_addr: host_addr as u64,
            };
            // SAFETY: the region is a live mapping of `len` bytes owned by `memory`, which the
            // rig drops only after the VM.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(|e| kvm_error("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        let devices = VmDevices::capture(&vm).map_err(|e| kvm_error("capture devices", e))?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| kvm_error("KVM_GET_SUPPORTED_CPUID", e))?;
        let (reply_to, replies) = mpsc::channel();
        let mut threads = Vec::new();
        for id in 0..vcpus {
            let mut fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| kvm_error("KVM_CREATE_VCPU", e))?;
            let mut cpuid = supported.clone();
            for e in cpuid.as_mut_slice() {
                match e.function {
                    1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
                    0xb | 0x1f => e.edx = id,
                    _ => {}
                }
            }
            fd.set_cpuid2(&cpuid)
                .map_err(|e| kvm_error("KVM_SET_CPUID2", e))?;
            let mut reset = VcpuReset::new(host, &vm, &fd, u64::from(id))
                .map_err(|e| kvm_error("VcpuReset::new", e))?;
            reset
                .reset(&mut fd)
                .map_err(|e| kvm_error("power-on RESET", e))?;
            let (tx, rx) = mpsc::channel();
            let reply = reply_to.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vmm-vcpu{id}"))
                .spawn(move || vcpu_thread(fd, reset, &rx, &reply))
                .map_err(|e| kvm_error("start a vCPU thread", e))?;
            threads.push((tx, handle));
        }
        Ok(VmmApiRig {
            threads,
            replies,
            devices,
            vm,
            _memory: memory,
            _kvm: kvm,
        })
    }

    fn ask(&self, to: &[usize], cmd: fn() -> Cmd) -> Result<u64, BenchError> {
        for &i in to {
            self.threads[i]
                .0
                .send(cmd())
                .map_err(|_| kvm_error("a vCPU thread", "ended"))?;
        }
        let mut total = 0;
        for _ in to {
            let reply = self
                .replies
                .recv()
                .map_err(|_| kvm_error("a vCPU thread", "ended"))?;
            total += reply.map_err(|e| BenchError::Mismatch {
                handler: "reboot: VMM API",
                exit: 1,
                what: e,
            })?;
        }
        Ok(total)
    }

    /// Run the BSP to the loop's first OUT (as before a guest's reboot request).
    ///
    /// # Errors
    /// [`BenchError::Mismatch`] when it does not get there.
    pub fn run_bsp(&mut self) -> Result<(), BenchError> {
        self.ask(&[0], || Cmd::RunToOut).map(|_| ())
    }

    /// The reboot: every vCPU thread RESETs its own vCPU, then the devices are put back.
    /// Returns the vCPU syscalls made.
    ///
    /// # Errors
    /// [`BenchError`] when a RESET or the restore fails.
    pub fn reboot(&mut self) -> Result<u64, BenchError> {
        let all: Vec<usize> = (0..self.threads.len()).collect();
        let calls = self.ask(&all, || Cmd::Reset)?;
        self.devices
            .restore(&self.vm)
            .map_err(|e| kvm_error("restore devices", e))?;
        Ok(calls)
    }
}

impl Drop for VmmApiRig {
    fn drop(&mut self) {
        for (tx, handle) in self.threads.drain(..) {
            drop(tx);
            // A thread that panicked has nothing left to report.
            let _ = handle.join();
        }
    }
}

/// One vCPU's thread: owns its fd and the `VcpuReset` beside it, until its channel closes.
fn vcpu_thread(
    mut fd: VcpuFd,
    mut reset: VcpuReset,
    commands: &mpsc::Receiver<Cmd>,
    reply: &mpsc::Sender<Result<u64, String>>,
) {
    while let Ok(cmd) = commands.recv() {
        let result = match cmd {
            Cmd::Reset => reset
                .reset(&mut fd)
                .map(|o| o.calls.calls())
                .map_err(|e| e.to_string()),
            Cmd::RunToOut => run_to_out(&mut fd).map(|()| 0),
        };
        if reply.send(result).is_err() {
            return;
        }
    }
}

fn run_to_out(fd: &mut VcpuFd) -> Result<(), String> {
    loop {
        match fd.run() {
            Ok(VcpuExit::IoOut(PORT, _)) => return Ok(()),
            Ok(VcpuExit::Intr) => {}
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Ok(other) => return Err(format!("{other:?}, expected an OUT to port {PORT:#x}")),
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}
