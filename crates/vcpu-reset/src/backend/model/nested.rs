//! Nested-VMX state: what a hypervisor keeps for a guest that is itself in VMX operation.
//!
//! The model keeps what KVM's `struct nested_vmx` keeps at the level the RESET/INIT tables
//! need: the VMXON pointer, the current-VMCS pointer (all-ones when there is none, SDM Vol. 3C
//! §25.1), a Hyper-V enlightened-VMCS pointer, and the launch state of each VMCS region the guest
//! has used (SDM Vol. 3C §25.1, §25.11.3). The instructions check their operands as the SDM's
//! VMX instruction reference (Vol. 3C Chapter 31) says and fail with the VM-instruction error
//! numbers of Table 31-1.

use std::collections::BTreeMap;

/// The current-VMCS pointer when there is no current VMCS: FFFFFFFF_FFFFFFFFH (SDM Vol. 3C
/// §25.1; VMXON and VMCLEAR of the current VMCS set it).
pub const INVALID_VMCS_POINTER: u64 = u64::MAX;

/// Physical-address width the model checks VMXON/VMPTRLD/VMCLEAR operands against: the
/// architectural maximum MAXPHYADDR of 52 bits (SDM Vol. 3A §4.1.4).
pub const MAX_PHYS_ADDR_BITS: u32 = 52;

/// Launch state of a VMCS region (SDM Vol. 3C §25.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchState {
    /// Clear: VMCLEAR was executed on it; VMLAUNCH is allowed.
    Clear,
    /// Launched: VMLAUNCH succeeded with it current.
    Launched,
}

/// A failed VMX instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NestedError {
    /// The instruction was executed outside VMX operation (#UD; SDM Vol. 3C Chapter 31).
    #[error("{instruction} outside VMX operation raises #UD: execute VMXON first")]
    NotInVmxOperation {
        /// The instruction.
        instruction: &'static str,
    },
    /// VMXON in VMX root operation (VM-instruction error 15, SDM Vol. 3C Table 31-1).
    #[error("VMXON executed in VMX root operation (VM-instruction error 15): execute VMXOFF first")]
    AlreadyInVmxOperation,
    /// The operand is not 4-KByte aligned or sets bits beyond the physical-address width
    /// (VMXON: VMfailInvalid; VMCLEAR: error 2; VMPTRLD: error 9).
    #[error(
        "{instruction} with invalid physical address {address:#x}: it must be 4-KByte aligned and below 2^{MAX_PHYS_ADDR_BITS}"
    )]
    InvalidAddress {
        /// The instruction.
        instruction: &'static str,
        /// The operand.
        address: u64,
    },
    /// VMCLEAR or VMPTRLD of the VMXON region (errors 3 and 10).
    #[error("{instruction} with the VMXON pointer: the VMXON region cannot be used as a VMCS")]
    VmxonPointer {
        /// The instruction.
        instruction: &'static str,
    },
    /// The instruction needs a current VMCS and there is none (VMfailInvalid).
    #[error("{instruction} without a current VMCS (VMfailInvalid): execute VMPTRLD first")]
    NoCurrentVmcs {
        /// The instruction.
        instruction: &'static str,
    },
    /// VMLAUNCH of a VMCS whose launch state is not clear (error 4).
    #[error("VMLAUNCH with non-clear VMCS (VM-instruction error 4): VMCLEAR it first")]
    NotClear,
    /// An enlightened VMCS can only be in use in VMX operation.
    #[error("an enlightened VMCS can only be used in VMX operation: execute VMXON first")]
    EvmcsOutsideVmx,
}

impl NestedError {
    /// The VM-instruction error number (SDM Vol. 3C §31.4, Table 31-1), for failures that
    /// report one (VMfailValid); `None` for #UD and VMfailInvalid.
    pub fn vm_instruction_error(&self) -> Option<u32> {
        match self {
            NestedError::AlreadyInVmxOperation => Some(15),
            NestedError::InvalidAddress { instruction, .. } => match *instruction {
                "VMCLEAR" => Some(2),
                "VMPTRLD" => Some(9),
                _ => None,
            },
            NestedError::VmxonPointer { instruction } => match *instruction {
                "VMCLEAR" => Some(3),
                "VMPTRLD" => Some(10),
                _ => None,
            },
            NestedError::NotClear => Some(4),
            NestedError::NotInVmxOperation { .. }
            | NestedError::NoCurrentVmcs { .. }
            | NestedError::EvmcsOutsideVmx => None,
        }
    }
}

/// Nested-VMX state of one vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedVmx {
    vmxon: Option<u64>,
    current_vmcs: u64,
    evmcs: Option<u64>,
    launch: BTreeMap<u64, LaunchState>,
}

impl Default for NestedVmx {
    fn default() -> Self {
        Self::new()
    }
}

fn valid_address(address: u64) -> bool {
    address & 0xfff == 0 && address >> MAX_PHYS_ADDR_BITS == 0
}

impl NestedVmx {
    /// Not in VMX operation, no current VMCS, no enlightened VMCS.
    pub fn new() -> Self {
        NestedVmx {
            vmxon: None,
            current_vmcs: INVALID_VMCS_POINTER,
            evmcs: None,
            launch: BTreeMap::new(),
        }
    }

    /// The three pointers all set to `pattern` (as if in VMX operation with a current VMCS and
    /// an enlightened VMCS), with no launch state known: the model's poisoned nested state.
    pub(crate) fn filled(pattern: u64) -> Self {
        NestedVmx {
            vmxon: Some(pattern),
            current_vmcs: pattern,
            evmcs: Some(pattern),
            launch: BTreeMap::new(),
        }
    }

    /// Whether any nested state is present: in VMX operation, a current VMCS, or an
    /// enlightened VMCS.
    pub fn is_present(&self) -> bool {
        self.vmxon.is_some() || self.current_vmcs != INVALID_VMCS_POINTER || self.evmcs.is_some()
    }

    /// The VMXON pointer, when in VMX operation.
    pub fn vmxon_pointer(&self) -> Option<u64> {
        self.vmxon
    }

    /// The current-VMCS pointer as the processor holds it ([`INVALID_VMCS_POINTER`] for none).
    pub fn current_vmcs_pointer(&self) -> u64 {
        self.current_vmcs
    }

    /// The current VMCS, if there is one.
    pub fn current_vmcs(&self) -> Option<u64> {
        (self.current_vmcs != INVALID_VMCS_POINTER).then_some(self.current_vmcs)
    }

    /// The enlightened-VMCS pointer, if one is in use.
    pub fn evmcs_pointer(&self) -> Option<u64> {
        self.evmcs
    }

    /// The launch state of the VMCS region at `address`, if the guest has used it.
    pub fn launch_state(&self, address: u64) -> Option<LaunchState> {
        self.launch.get(&address).copied()
    }

    /// Drop all nested state: leave VMX operation, no current VMCS, no enlightened VMCS, no
    /// launch states (what KVM's `vmx_leave_nested()`/`free_nested()` leave).
    pub fn drop_all(&mut self) {
        *self = NestedVmx::new();
    }

    /// VMXON with the VMXON region at `address`: enter VMX root operation with no current VMCS
    /// (SDM Vol. 3C Chapter 31, VMXON operation: "current-VMCS pointer ← FFFFFFFF_FFFFFFFFH").
    pub fn vmxon(&mut self, address: u64) -> Result<(), NestedError> {
        if self.vmxon.is_some() {
            return Err(NestedError::AlreadyInVmxOperation);
        }
        if !valid_address(address) {
            return Err(NestedError::InvalidAddress {
                instruction: "VMXON",
                address,
            });
        }
        self.vmxon = Some(address);
        self.current_vmcs = INVALID_VMCS_POINTER;
        Ok(())
    }

    /// VMXOFF: leave VMX operation. The model also forgets the current and enlightened VMCS,
    /// as KVM does when L1 leaves VMX operation (`free_nested()`); the SDM leaves the
    /// current-VMCS pointer unspecified after VMXOFF. Launch states stay (they live in the
    /// VMCS regions in memory).
    pub fn vmxoff(&mut self) -> Result<(), NestedError> {
        if self.vmxon.is_none() {
            return Err(NestedError::NotInVmxOperation {
                instruction: "VMXOFF",
            });
        }
        self.vmxon = None;
        self.current_vmcs = INVALID_VMCS_POINTER;
        self.evmcs = None;
        Ok(())
    }

    /// VMPTRLD: make the VMCS at `address` current (SDM Vol. 3C Chapter 31, VMPTRLD). A region
    /// not used before starts with an unknown launch state; the model treats it as clear, as
    /// a region prepared by VMCLEAR would be (SDM Vol. 3C §25.11.3).
    pub fn vmptrld(&mut self, address: u64) -> Result<(), NestedError> {
        let on = self.vmxon.ok_or(NestedError::NotInVmxOperation {
            instruction: "VMPTRLD",
        })?;
        if !valid_address(address) {
            return Err(NestedError::InvalidAddress {
                instruction: "VMPTRLD",
                address,
            });
        }
        if address == on {
            return Err(NestedError::VmxonPointer {
                instruction: "VMPTRLD",
            });
        }
        self.launch.entry(address).or_insert(LaunchState::Clear);
        self.current_vmcs = address;
        Ok(())
    }

    /// VMCLEAR: make the VMCS at `address` clear, and not current if it was (SDM Vol. 3C
    /// Chapter 31, VMCLEAR).
    pub fn vmclear(&mut self, address: u64) -> Result<(), NestedError> {
        let on = self.vmxon.ok_or(NestedError::NotInVmxOperation {
            instruction: "VMCLEAR",
        })?;
        if !valid_address(address) {
            return Err(NestedError::InvalidAddress {
                instruction: "VMCLEAR",
                address,
            });
        }
        if address == on {
            return Err(NestedError::VmxonPointer {
                instruction: "VMCLEAR",
            });
        }
        self.launch.insert(address, LaunchState::Clear);
        if self.current_vmcs == address {
            self.current_vmcs = INVALID_VMCS_POINTER;
        }
        Ok(())
    }

    /// VMLAUNCH of the current VMCS, as far as launch state goes: it becomes launched (the model
    /// runs no nested guest).
    pub fn vmlaunch(&mut self) -> Result<(), NestedError> {
        if self.vmxon.is_none() {
            return Err(NestedError::NotInVmxOperation {
                instruction: "VMLAUNCH",
            });
        }
        let current = self.current_vmcs().ok_or(NestedError::NoCurrentVmcs {
            instruction: "VMLAUNCH",
        })?;
        match self.launch.get(&current) {
            Some(LaunchState::Launched) => Err(NestedError::NotClear),
            _ => {
                self.launch.insert(current, LaunchState::Launched);
                Ok(())
            }
        }
    }

    /// Use (`Some`) or stop using (`None`) an enlightened VMCS at a guest-physical address, as
    /// a Hyper-V guest does through its VP assist page. Only in VMX operation.
    pub fn set_evmcs(&mut self, pointer: Option<u64>) -> Result<(), NestedError> {
        if pointer.is_some() && self.vmxon.is_none() {
            return Err(NestedError::EvmcsOutsideVmx);
        }
        self.evmcs = pointer;
        Ok(())
    }

    /// Raw access for the model's storage: set the VMXON pointer without checks.
    pub(crate) fn set_vmxon_raw(&mut self, v: Option<u64>) {
        self.vmxon = v;
    }

    /// Raw access for the model's storage: set the current-VMCS pointer without checks.
    pub(crate) fn set_current_raw(&mut self, v: u64) {
        self.current_vmcs = v;
    }

    /// Raw access for the model's storage: set the eVMCS pointer without checks.
    pub(crate) fn set_evmcs_raw(&mut self, v: Option<u64>) {
        self.evmcs = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmxon_vmptrld_vmlaunch_vmclear_vmxoff() {
        let mut n = NestedVmx::new();
        assert!(!n.is_present());
        assert_eq!(n.current_vmcs_pointer(), INVALID_VMCS_POINTER);
        n.vmxon(0x1000).unwrap();
        assert!(n.is_present());
        assert_eq!(n.vmxon(0x3000), Err(NestedError::AlreadyInVmxOperation));
        assert_eq!(
            NestedError::AlreadyInVmxOperation.vm_instruction_error(),
            Some(15)
        );
        n.vmptrld(0x2000).unwrap();
        assert_eq!(n.current_vmcs(), Some(0x2000));
        assert_eq!(n.launch_state(0x2000), Some(LaunchState::Clear));
        n.vmlaunch().unwrap();
        assert_eq!(n.launch_state(0x2000), Some(LaunchState::Launched));
        assert_eq!(n.vmlaunch(), Err(NestedError::NotClear));
        assert_eq!(NestedError::NotClear.vm_instruction_error(), Some(4));
        n.vmclear(0x2000).unwrap();
        assert_eq!(n.current_vmcs(), None);
        assert_eq!(n.launch_state(0x2000), Some(LaunchState::Clear));
        n.set_evmcs(Some(0x5000)).unwrap();
        n.vmxoff().unwrap();
        assert!(!n.is_present());
        assert_eq!(n.evmcs_pointer(), None);
    }

    #[test]
    fn invalid_uses_fail_with_their_error_numbers() {
        let mut n = NestedVmx::new();
        let e = n.vmxoff().unwrap_err();
        assert_eq!(
            e,
            NestedError::NotInVmxOperation {
                instruction: "VMXOFF"
            }
        );
        assert_eq!(e.vm_instruction_error(), None);
        assert!(matches!(
            n.vmptrld(0x2000),
            Err(NestedError::NotInVmxOperation { .. })
        ));
        assert_eq!(n.set_evmcs(Some(0x5000)), Err(NestedError::EvmcsOutsideVmx));
        assert!(matches!(
            n.vmxon(0x1001),
            Err(NestedError::InvalidAddress { .. })
        ));
        assert!(matches!(
            n.vmxon(1 << 52),
            Err(NestedError::InvalidAddress { .. })
        ));
        n.vmxon(0x1000).unwrap();
        let e = n.vmptrld(0x1000).unwrap_err();
        assert_eq!(e.vm_instruction_error(), Some(10));
        let e = n.vmclear(0x1000).unwrap_err();
        assert_eq!(e.vm_instruction_error(), Some(3));
        let e = n.vmptrld(0x2008).unwrap_err();
        assert_eq!(e.vm_instruction_error(), Some(9));
        let e = n.vmclear(0x2008).unwrap_err();
        assert_eq!(e.vm_instruction_error(), Some(2));
        assert_eq!(
            n.vmlaunch(),
            Err(NestedError::NoCurrentVmcs {
                instruction: "VMLAUNCH"
            })
        );
    }
}
