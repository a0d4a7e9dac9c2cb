//! The VM-wide state a warm reboot puts back: KVM's in-kernel PIC pair, IOAPIC and PIT.
//!
//! A RESET of the machine resets its interrupt controllers and timer with its processors: the
//! 8259A pair must be initialised again (ICW1–ICW4) by the firmware, the I/O APIC's
//! redirection entries come back masked (Intel 82093AA I/O APIC datasheet, the IOREDTBL
//! registers' reset values), and the 8254 counters must be programmed again. KVM creates these devices in exactly that state (`KVM_CREATE_IRQCHIP`,
//! `KVM_CREATE_PIT2`) and has no ioctl that resets them afterwards, so [`VmDevices`] captures
//! them once, before the guest first runs, and writes that capture back at every reboot
//! (KVM_SET_IRQCHIP three times, KVM_SET_PIT2 once: four VM ioctls).
//!
//! Where the VM has no in-kernel PIC/IOAPIC (no irqchip, or a split irqchip whose PIC and
//! IOAPIC live in the VMM) or no in-kernel PIT, KVM answers ENXIO and that device is left to
//! the VMM, as are its own devices.

use std::os::fd::BorrowedFd;

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_irqchip, kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

use super::ioctls::{KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_SET_IRQCHIP, KVM_SET_PIT2};

/// Why capturing or restoring the VM's devices failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmDevicesError {
    /// A VM ioctl failed.
    #[error(
        "{op} on the VM failed: {errno} — pass the VM's own fd (not /dev/kvm's or a vCPU's); \
         KVM rejects a state it did not produce, so restore only what was captured from this VM"
    )]
    Ioctl {
        /// The ioctl (e.g. "KVM_GET_PIT2").
        op: &'static str,
        /// The error KVM gave.
        errno: errno::Error,
    },
}

/// The in-kernel PIC master and slave, IOAPIC and PIT of a VM, as captured: what a reboot
/// puts back. KVM creates these devices in their RESET state (the 8259A pair to be initialised
/// by the firmware, every I/O APIC redirection entry masked as after the 82093AA's reset, the
/// 8254 counters unprogrammed) and has no ioctl that resets them afterwards, so they are
/// captured once, before the guest first runs, and written back at every reboot.
#[derive(Clone)]
pub struct VmDevices {
    chips: Vec<kvm_irqchip>,
    pit: Option<kvm_pit_state2>,
}

impl std::fmt::Debug for VmDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmDevices")
            .field(
                "chips",
                &self.chips.iter().map(|c| c.chip_id).collect::<Vec<_>>(),
            )
            .field("pit", &self.pit.is_some())
            .finish()
    }
}

fn ioctl_error(op: &'static str) -> VmDevicesError {
    VmDevicesError::Ioctl {
        op,
        errno: errno::Error::last(),
    }
}

impl VmDevices {
    /// Capture the VM's in-kernel PIC, IOAPIC and PIT: call it once the VMM has created them
    /// (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2) and before the guest first runs, when they are in
    /// their RESET state. Four VM ioctls (KVM_GET_IRQCHIP three times, KVM_GET_PIT2).
    ///
    /// # Errors
    /// [`VmDevicesError::Ioctl`]; a device the VM does not have is not an error.
    pub fn capture(vm: &VmFd) -> Result<VmDevices, VmDevicesError> {
        VmDevices::capture_raw(super::adopt::borrow_vm(vm))
    }

    /// [`VmDevices::capture`] of a VM given by its raw fd.
    ///
    /// # Errors
    /// As [`VmDevices::capture`].
    pub fn capture_raw(vm: BorrowedFd<'_>) -> Result<VmDevices, VmDevicesError> {
        let mut chips = Vec::with_capacity(3);
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            // SAFETY: KVM_GET_IRQCHIP writes one `kvm_irqchip` into `chip`, which lives for the
            // call; `vm` is a live fd.
            if unsafe { ioctl_with_mut_ref(&vm, KVM_GET_IRQCHIP(), &mut chip) } < 0 {
                let e = ioctl_error("KVM_GET_IRQCHIP");
                if absent(&e) {
                    break;
                }
                return Err(e);
            }
            chips.push(chip);
        }
        let mut pit = kvm_pit_state2::default();
        // SAFETY: KVM_GET_PIT2 writes one `kvm_pit_state2` into `pit`; `vm` is a live fd.
        let pit = if unsafe { ioctl_with_mut_ref(&vm, KVM_GET_PIT2(), &mut pit) } < 0 {
            let e = ioctl_error("KVM_GET_PIT2");
            if !absent(&e) {
                return Err(e);
            }
            None
        } else {
            Some(pit)
        };
        Ok(VmDevices { chips, pit })
    }

    /// Put the captured state back (KVM_SET_IRQCHIP per chip, KVM_SET_PIT2). Returns the VM
    /// ioctls made.
    ///
    /// # Errors
    /// [`VmDevicesError::Ioctl`].
    pub fn restore(&self, vm: &VmFd) -> Result<u64, VmDevicesError> {
        self.restore_raw(super::adopt::borrow_vm(vm))
    }

    /// [`VmDevices::restore`] on a VM given by its raw fd.
    ///
    /// # Errors
    /// As [`VmDevices::restore`].
    pub fn restore_raw(&self, vm: BorrowedFd<'_>) -> Result<u64, VmDevicesError> {
        let mut calls = 0;
        for chip in &self.chips {
            calls += 1;
            // SAFETY: KVM_SET_IRQCHIP reads one `kvm_irqchip` from `chip`; `vm` is a live fd.
            if unsafe { ioctl_with_ref(&vm, KVM_SET_IRQCHIP(), chip) } < 0 {
                return Err(ioctl_error("KVM_SET_IRQCHIP"));
            }
        }
        if let Some(pit) = &self.pit {
            calls += 1;
            // SAFETY: KVM_SET_PIT2 reads one `kvm_pit_state2` from `pit`; `vm` is a live fd.
            if unsafe { ioctl_with_ref(&vm, KVM_SET_PIT2(), pit) } < 0 {
                return Err(ioctl_error("KVM_SET_PIT2"));
            }
        }
        Ok(calls)
    }

    /// The captured PIC master, PIC slave and IOAPIC, in that order (none where the VM has no
    /// in-kernel PIC and IOAPIC).
    pub fn chips(&self) -> &[kvm_irqchip] {
        &self.chips
    }

    /// The captured PIT, where the VM has an in-kernel one.
    pub fn pit(&self) -> Option<&kvm_pit_state2> {
        self.pit.as_ref()
    }
}

/// Whether `e` says the VM lacks the device (KVM answers ENXIO).
fn absent(e: &VmDevicesError) -> bool {
    match e {
        VmDevicesError::Ioctl { errno, .. } => errno.errno() == libc::ENXIO,
    }
}
