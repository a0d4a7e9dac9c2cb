//! Guest memory: RAM from address 0, and the firmware image at the top of 4 GiB with its last
//! 64 KiB also below 1 MiB, as on a PC. RAM below 1 MiB stops where the firmware alias starts.

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::firmware::Firmware;

/// Least RAM accepted: the firmware alias takes the top of the first MiB.
pub const MIN_RAM_MIB: u32 = 1;
/// Most RAM accepted: RAM must end below the 32-bit MMIO hole (local APIC, I/O APIC, firmware).
pub const MAX_RAM_MIB: u32 = 3 << 10;

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Bad size.
    #[error(
        "guest memory of {mib} MiB is out of range — choose {MIN_RAM_MIB} to {MAX_RAM_MIB} MiB"
    )]
    Size {
        /// The size asked for.
        mib: u32,
    },
    /// The host could not allocate it.
    #[error("allocating guest memory failed: {0} — ask for less with --memory")]
    Alloc(String),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} at {guest:#x} failed: {errno}")]
    Register {
        /// Slot number.
        slot: u32,
        /// Guest address.
        guest: u64,
        /// The error.
        errno: vmm_sys_util::errno::Error,
    },
    /// A guest access outside memory.
    #[error("guest address {addr:#x} (+{len}) is outside guest memory")]
    Access {
        /// Address.
        addr: u64,
        /// Length.
        len: usize,
    },
}

/// One KVM memory slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Guest-physical start.
    pub guest: u64,
    /// Size in bytes.
    pub size: u64,
    /// Mapped read-only (firmware): guest writes become MMIO exits and are dropped.
    pub readonly: bool,
}

/// The VM's memory.
pub struct GuestMemory {
    mem: GuestMemoryMmap,
    slots: Vec<SlotInfo>,
    firmware: Firmware,
}

impl GuestMemory {
    /// `ram_mib` MiB of RAM and the firmware, with the firmware copied in.
    pub fn new(ram_mib: u32, firmware: &Firmware) -> Result<Self, MemoryError> {
        if !(MIN_RAM_MIB..=MAX_RAM_MIB).contains(&ram_mib) {
            return Err(MemoryError::Size { mib: ram_mib });
        }
        let ram = u64::from(ram_mib) << 20;
        let (alias_at, alias) = firmware.low_alias();
        let mut slots = vec![SlotInfo {
            guest: 0,
            size: alias_at,
            readonly: false,
        }];
        slots.push(SlotInfo {
            guest: alias_at,
            size: alias.len() as u64,
            readonly: true,
        });
        if ram > 1 << 20 {
            slots.push(SlotInfo {
                guest: 1 << 20,
                size: ram - (1 << 20),
                readonly: false,
            });
        }
        slots.push(SlotInfo {
            guest: firmware.base(),
            size: firmware.bytes().len() as u64,
            readonly: true,
        });
        let ranges: Vec<(GuestAddress, usize)> = slots
            .iter()
            .map(|s| (GuestAddress(s.guest), s.size as usize))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
            .map_err(|e| MemoryError::Alloc(e.to_string()))?;
        let m = GuestMemory {
            mem,
            slots,
            firmware: firmware.clone(),
        };
        m.restore_firmware()?;
        Ok(m)
    }

    /// The memory slots, in slot-number order.
    pub fn slots(&self) -> &[SlotInfo] {
        &self.slots
    }

    /// Copy the pristine firmware image back in (both places). Cheap when the image is small;
    /// called at every reboot so a firmware that wrote to its own shadow starts clean.
    pub fn restore_firmware(&self) -> Result<(), MemoryError> {
        let (alias_at, alias) = self.firmware.low_alias();
        self.write(alias_at, alias)?;
        self.write(self.firmware.base(), self.firmware.bytes())
    }

    /// Register every slot with `vm`; firmware slots read-only when `readonly` is offered
    /// (KVM_CAP_READONLY_MEM), writable otherwise.
    pub fn register(&self, vm: &VmFd, readonly: bool) -> Result<(), MemoryError> {
        for (i, (slot, region)) in self.slots.iter().zip(self.mem.iter()).enumerate() {
            let index = i as u32;
            let host = region.as_ptr() as u64;
            debug_assert_eq!(region.start_addr().0, slot.guest);
            debug_assert_eq!(region.len(), slot.size);
            let flags = if slot.readonly && readonly {
                KVM_MEM_READONLY
            } else {
                0
            };
            let r = kvm_userspace_memory_region {
                slot: index,
                flags,
                guest_phys_addr: slot.guest,
                memory_size: slot.size,
                userspace_addr: host,
            };
            // SAFETY: `host` is the start of an anonymous mapping of `slot.size` bytes owned by
            // `self.mem`, which lives as long as this `GuestMemory`; the runner keeps the
            // `GuestMemory` alive for as long as the VM fd (it drops the VM first).
            unsafe { vm.set_user_memory_region(r) }.map_err(|errno| MemoryError::Register {
                slot: index,
                guest: slot.guest,
                errno,
            })?;
        }
        Ok(())
    }

    /// Write `bytes` at guest-physical `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|_| MemoryError::Access {
                addr,
                len: bytes.len(),
            })
    }

    /// Read `len` bytes at guest-physical `addr`. A range no slot holds is refused before
    /// anything is allocated (so `len` from a caller cannot size a huge buffer).
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemoryError> {
        let inside = self.slots.iter().any(|s| {
            addr >= s.guest
                && (addr - s.guest)
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= s.size)
        });
        if !inside {
            return Err(MemoryError::Access { addr, len });
        }
        let mut buf = vec![0; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(addr))
            .map_err(|_| MemoryError::Access { addr, len })?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw(pages: usize) -> Firmware {
        let mut b = vec![0u8; pages * 4096];
        let n = b.len();
        b[n - 16] = 0xea; // far jmp at the reset vector
        Firmware::from_bytes(b, "t").unwrap()
    }

    #[test]
    fn layout_places_ram_and_both_firmware_copies() {
        let m = GuestMemory::new(16, &fw(32)).unwrap();
        let s = m.slots();
        assert_eq!(
            s[0],
            SlotInfo {
                guest: 0,
                size: 0xf_0000,
                readonly: false
            }
        );
        assert_eq!(
            s[1],
            SlotInfo {
                guest: 0xf_0000,
                size: 0x1_0000,
                readonly: true
            }
        );
        assert_eq!(
            s[2],
            SlotInfo {
                guest: 0x10_0000,
                size: 15 << 20,
                readonly: false
            }
        );
        assert_eq!(
            s[3],
            SlotInfo {
                guest: 0xfffe_0000,
                size: 0x2_0000,
                readonly: true
            }
        );
        assert_eq!(m.read(0xffff_fff0, 1).unwrap(), vec![0xea]);
        assert_eq!(m.read(0xf_fff0, 1).unwrap(), vec![0xea]);
    }

    #[test]
    fn reads_outside_memory_are_refused_before_allocating() {
        let m = GuestMemory::new(2, &fw(1)).unwrap();
        assert!(matches!(
            m.read(0, usize::MAX),
            Err(MemoryError::Access { .. })
        ));
        assert!(m.read(u64::MAX, 2).is_err());
        assert_eq!(m.read(0x1000, 4).unwrap(), vec![0; 4]);
    }

    #[test]
    fn restore_firmware_undoes_writes() {
        let m = GuestMemory::new(2, &fw(1)).unwrap();
        m.write(0xffff_fff0, &[0x90]).unwrap();
        m.write(0xf_fff0, &[0x90]).unwrap();
        m.restore_firmware().unwrap();
        assert_eq!(m.read(0xffff_fff0, 1).unwrap(), vec![0xea]);
        assert_eq!(m.read(0xf_fff0, 1).unwrap(), vec![0xea]);
    }

    #[test]
    fn size_limits_are_enforced() {
        assert!(matches!(
            GuestMemory::new(0, &fw(1)),
            Err(MemoryError::Size { mib: 0 })
        ));
        assert!(matches!(
            GuestMemory::new(4096, &fw(1)),
            Err(MemoryError::Size { .. })
        ));
    }
}
