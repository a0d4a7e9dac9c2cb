//! Nested-virtualization state: what a hypervisor keeps for a guest that is itself a hypervisor.
//!
//! The model keeps what KVM's `struct nested_vmx` keeps at the level the RESET/INIT tables
//! need: the VMXON pointer, the current-VMCS pointer (all-ones when there is none, SDM Vol. 3C
//! §25.1), a Hyper-V enlightened-VMCS pointer, and the launch state of each VMCS region the guest
//! has used (SDM Vol. 3C §25.1, §25.11.3). The instructions check their operands as the SDM's
//! VMX instruction reference (Vol. 3C Chapter 31) says and fail with the VM-instruction error
//! numbers of Table 31-1.
//!
//! Beside the VMX pointers it keeps three flags, each one byte so that poison shows: guest mode
//! (VMX non-root operation, entered by [`NestedVmx::vm_entry`], or SVM guest mode, entered by
//! [`NestedVmx::vmrun`]), SVM's global interrupt flag (CLGI/STGI, APM Vol. 2 §15.17) and whether
//! the running SVM guest intercepts INIT. The type keeps its historical name; SVM's state is
//! here too because guest mode is one flag for both. The model runs no nested guest: entering
//! and leaving guest mode change only these flags, not the registers.
//!
//! A VMM store (see [`NestedVmx::store_part`]) can keep each part as it is or drop it to its
//! "none" value, but not create nested state: that takes the guest's VMXON, VMPTRLD, VMLAUNCH
//! or VMRUN, as on KVM, where KVM_SET_NESTED_STATE needs a whole saved state.

use std::collections::BTreeMap;

use vcpu_reset_spec::NestedReg;

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
#[non_exhaustive]
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
    /// The instruction was executed in guest mode, where it would cause a VM exit to the
    /// guest hypervisor (VMX non-root: SDM Vol. 3C §26.1.2; SVM: intercepted), which the model
    /// does not run.
    #[error(
        "{instruction} in guest mode (VMX non-root or SVM guest) causes a VM exit the model does not run: leave guest mode first (vm_exit / svm_vmexit)"
    )]
    InGuestMode {
        /// The instruction.
        instruction: &'static str,
    },
    /// The instruction needs guest mode and the vCPU is not in it.
    #[error("{instruction} outside guest mode: enter it first (vm_entry / vmrun)")]
    NotInGuestMode {
        /// The instruction.
        instruction: &'static str,
    },
    /// VMLAUNCH/VMRESUME entering non-root operation with a current VMCS that was not launched.
    #[error("VM entry with a current VMCS that is not launched: execute VMLAUNCH (vmlaunch) first")]
    NotLaunched,
    /// An SVM instruction in VMX operation, or VMXON in SVM guest mode: the model keeps the two
    /// apart, as a processor has only one of them.
    #[error(
        "{instruction} mixes SVM and VMX: a vCPU in VMX operation cannot use SVM and the reverse"
    )]
    MixedExtensions {
        /// The instruction.
        instruction: &'static str,
    },
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
            | NestedError::EvmcsOutsideVmx
            | NestedError::InGuestMode { .. }
            | NestedError::NotInGuestMode { .. }
            | NestedError::NotLaunched
            | NestedError::MixedExtensions { .. } => None,
        }
    }
}

/// Nested-virtualization state of one vCPU (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedVmx {
    vmxon: Option<u64>,
    current_vmcs: u64,
    evmcs: Option<u64>,
    launch: BTreeMap<u64, LaunchState>,
    /// VMX non-root operation or SVM guest mode: 0 or 1 (any other byte is poison).
    guest_mode: u8,
    /// SVM's GIF: 0 or 1.
    gif: u8,
    /// The running SVM guest intercepts INIT: 0 or 1.
    intercept_init: u8,
}

/// Why a VMM store of a nested part was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "nested.{part} = {wanted:#x} on a vCPU where it is {current:#x}: a store can keep nested state or drop it ({none:#x}), not create it — let the guest execute VMXON, VMPTRLD, VMLAUNCH or VMRUN"
)]
pub struct StoreRefused {
    /// The part's name.
    pub part: &'static str,
    /// The value stored.
    pub wanted: u64,
    /// The value held.
    pub current: u64,
    /// The "none" value a store may always write.
    pub none: u64,
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
    /// Not in VMX operation, no current VMCS, no enlightened VMCS, not in guest mode, GIF set.
    pub fn new() -> Self {
        NestedVmx {
            vmxon: None,
            current_vmcs: INVALID_VMCS_POINTER,
            evmcs: None,
            launch: BTreeMap::new(),
            guest_mode: 0,
            gif: 1,
            intercept_init: 0,
        }
    }

    /// The three pointers all set to `pattern` and the three flags to its low byte (as if in
    /// VMX operation with a current VMCS and an enlightened VMCS), with no launch state known:
    /// the model's poisoned nested state.
    #[allow(clippy::cast_possible_truncation)] // the low byte on purpose
    pub(crate) fn filled(pattern: u64) -> Self {
        let byte = pattern as u8;
        NestedVmx {
            vmxon: Some(pattern),
            current_vmcs: pattern,
            evmcs: Some(pattern),
            launch: BTreeMap::new(),
            guest_mode: byte,
            gif: byte,
            intercept_init: byte,
        }
    }

    /// Whether any nested state is present: in VMX operation, a current VMCS, an enlightened
    /// VMCS, guest mode, an INIT intercept, or GIF clear.
    pub fn is_present(&self) -> bool {
        self.vmxon.is_some()
            || self.current_vmcs != INVALID_VMCS_POINTER
            || self.evmcs.is_some()
            || self.guest_mode != 0
            || self.gif != 1
            || self.intercept_init != 0
    }

    /// In VMX operation or in guest mode: what `nested.state` reports (as KVM's nested state
    /// header does: a VMXON region or the guest-mode flag).
    pub fn in_operation(&self) -> bool {
        self.vmxon.is_some() || self.guest_mode != 0
    }

    /// In VMX non-root operation or SVM guest mode.
    pub fn in_guest_mode(&self) -> bool {
        self.guest_mode != 0
    }

    /// SVM's global interrupt flag.
    pub fn gif(&self) -> bool {
        self.gif != 0
    }

    /// Whether the running SVM guest intercepts INIT.
    pub fn intercepts_init(&self) -> bool {
        self.intercept_init != 0
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
        if self.vmxon.is_none() && self.guest_mode != 0 {
            return Err(NestedError::MixedExtensions {
                instruction: "VMXON",
            });
        }
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
        self.root_only("VMXOFF")?;
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
        self.root_only("VMPTRLD")?;
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
        self.root_only("VMCLEAR")?;
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
        self.root_only("VMLAUNCH")?;
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

    fn root_only(&self, instruction: &'static str) -> Result<(), NestedError> {
        if self.guest_mode != 0 {
            return Err(NestedError::InGuestMode { instruction });
        }
        Ok(())
    }

    /// A successful VMLAUNCH or VMRESUME as far as the operating mode goes: enter VMX non-root
    /// operation with the current VMCS, which must be launched ([`NestedVmx::vmlaunch`] sets
    /// that). The model runs no nested guest; only the mode changes.
    pub fn vm_entry(&mut self) -> Result<(), NestedError> {
        if self.vmxon.is_none() {
            return Err(NestedError::NotInVmxOperation {
                instruction: "VM entry",
            });
        }
        self.root_only("VM entry")?;
        let current = self.current_vmcs().ok_or(NestedError::NoCurrentVmcs {
            instruction: "VM entry",
        })?;
        if self.launch.get(&current) != Some(&LaunchState::Launched) {
            return Err(NestedError::NotLaunched);
        }
        self.guest_mode = 1;
        Ok(())
    }

    /// A VM exit: leave VMX non-root operation for root operation (VMXON, current VMCS and
    /// launch states are kept).
    pub fn vm_exit(&mut self) -> Result<(), NestedError> {
        if self.vmxon.is_none() {
            return Err(NestedError::NotInVmxOperation {
                instruction: "VM exit",
            });
        }
        if self.guest_mode == 0 {
            return Err(NestedError::NotInGuestMode {
                instruction: "VM exit",
            });
        }
        self.guest_mode = 0;
        Ok(())
    }

    fn svm_only(&self, instruction: &'static str) -> Result<(), NestedError> {
        if self.vmxon.is_some() {
            return Err(NestedError::MixedExtensions { instruction });
        }
        Ok(())
    }

    /// CLGI: clear GIF (APM Vol. 2 §15.17). The model does not check EFER.SVME.
    pub fn clgi(&mut self) -> Result<(), NestedError> {
        self.svm_only("CLGI")?;
        self.gif = 0;
        Ok(())
    }

    /// STGI: set GIF (APM Vol. 2 §15.17).
    pub fn stgi(&mut self) -> Result<(), NestedError> {
        self.svm_only("STGI")?;
        self.gif = 1;
        Ok(())
    }

    /// VMRUN: enter SVM guest mode with GIF set (APM Vol. 2 §15.5), the guest's VMCB
    /// intercepting INIT or not.
    pub fn vmrun(&mut self, intercept_init: bool) -> Result<(), NestedError> {
        self.svm_only("VMRUN")?;
        if self.guest_mode != 0 {
            return Err(NestedError::InGuestMode {
                instruction: "VMRUN",
            });
        }
        self.guest_mode = 1;
        self.gif = 1;
        self.intercept_init = u8::from(intercept_init);
        Ok(())
    }

    /// #VMEXIT: leave SVM guest mode; GIF is cleared (APM Vol. 2 §15.6) and the guest's
    /// intercepts end.
    pub fn svm_vmexit(&mut self) -> Result<(), NestedError> {
        self.svm_only("#VMEXIT")?;
        if self.guest_mode == 0 {
            return Err(NestedError::NotInGuestMode {
                instruction: "#VMEXIT",
            });
        }
        self.guest_mode = 0;
        self.gif = 0;
        self.intercept_init = 0;
        Ok(())
    }

    /// Fault injection for tests of the checks: set the current-VMCS pointer without any
    /// check, as a hypervisor that forgets to drop it would leave it.
    pub fn force_current_vmcs_pointer(&mut self, pointer: u64) {
        self.current_vmcs = pointer;
    }

    /// The value of a nested part as the spec field holds it: pointers all-ones for none, the
    /// flags as their byte (0 or 1 when valid; anything else is poison).
    pub fn part(&self, part: NestedReg) -> u64 {
        match part {
            NestedReg::VmxonPointer => self.vmxon.unwrap_or(INVALID_VMCS_POINTER),
            NestedReg::CurrentVmcs => self.current_vmcs,
            NestedReg::EvmcsPointer => self.evmcs.unwrap_or(INVALID_VMCS_POINTER),
            NestedReg::GuestMode => self.guest_mode.into(),
            NestedReg::Gif => self.gif.into(),
            NestedReg::InterceptInit => self.intercept_init.into(),
        }
    }

    /// A VMM store of one part: the value it holds is kept, and the part's "none" value
    /// ([`NestedReg::none`]) drops it — the VMXON pointer leaves VMX operation (current and
    /// enlightened VMCS and non-root operation with it), guest mode is left (and the INIT
    /// intercept with it). GIF, a plain flag the VMM may set either way (as
    /// KVM_SET_NESTED_STATE's GIF flag does), takes any value. Anything else would create
    /// nested state and is refused.
    #[allow(clippy::cast_possible_truncation)] // every part is at most 64 bits wide
    pub fn store_part(&mut self, part: NestedReg, value: u64) -> Result<(), StoreRefused> {
        let current = self.part(part);
        let none = part.none() as u64;
        if part == NestedReg::Gif {
            self.gif = u8::from(value != 0);
            return Ok(());
        }
        if value == current {
            return Ok(());
        }
        if value != none {
            return Err(StoreRefused {
                part: part.name(),
                wanted: value,
                current,
                none,
            });
        }
        match part {
            NestedReg::VmxonPointer => {
                self.vmxon = None;
                self.current_vmcs = INVALID_VMCS_POINTER;
                self.evmcs = None;
                self.guest_mode = 0;
            }
            NestedReg::CurrentVmcs => self.current_vmcs = INVALID_VMCS_POINTER,
            NestedReg::EvmcsPointer => self.evmcs = None,
            NestedReg::GuestMode => {
                self.guest_mode = 0;
                self.intercept_init = 0;
            }
            NestedReg::InterceptInit => self.intercept_init = 0,
            NestedReg::Gif => {}
        }
        Ok(())
    }

    /// Raw access for the model's storage: a flag's byte without checks.
    pub(crate) fn set_flag_raw(&mut self, part: NestedReg, byte: u8) {
        match part {
            NestedReg::GuestMode => self.guest_mode = byte,
            NestedReg::Gif => self.gif = byte,
            NestedReg::InterceptInit => self.intercept_init = byte,
            NestedReg::VmxonPointer | NestedReg::CurrentVmcs | NestedReg::EvmcsPointer => {}
        }
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
    fn guest_mode_and_gif() {
        let mut n = NestedVmx::new();
        assert_eq!(
            n.vm_entry(),
            Err(NestedError::NotInVmxOperation {
                instruction: "VM entry"
            })
        );
        n.vmxon(0x1000).unwrap();
        n.vmptrld(0x2000).unwrap();
        assert_eq!(n.vm_entry(), Err(NestedError::NotLaunched));
        n.vmlaunch().unwrap();
        n.vm_entry().unwrap();
        assert!(n.in_guest_mode());
        assert_eq!(
            n.vmxoff(),
            Err(NestedError::InGuestMode {
                instruction: "VMXOFF"
            })
        );
        assert_eq!(
            n.clgi(),
            Err(NestedError::MixedExtensions {
                instruction: "CLGI"
            })
        );
        n.vm_exit().unwrap();
        assert!(!n.in_guest_mode());
        assert!(n.in_operation());
        n.vmxoff().unwrap();
        assert!(!n.is_present());

        n.clgi().unwrap();
        assert!(!n.gif());
        assert!(n.is_present());
        assert!(
            !n.in_operation(),
            "GIF alone is not VMX operation or guest mode"
        );
        n.vmrun(true).unwrap();
        assert!(n.gif() && n.in_guest_mode() && n.intercepts_init());
        assert_eq!(
            n.vmxon(0x1000),
            Err(NestedError::MixedExtensions {
                instruction: "VMXON"
            })
        );
        n.svm_vmexit().unwrap();
        assert!(!n.gif() && !n.in_guest_mode() && !n.intercepts_init());
        n.stgi().unwrap();
        assert!(!n.is_present());
    }

    #[test]
    fn stores_keep_or_drop_but_never_create() {
        let mut n = NestedVmx::new();
        n.vmxon(0x1000).unwrap();
        n.vmptrld(0x2000).unwrap();
        n.set_evmcs(Some(0x3000)).unwrap();
        n.store_part(NestedReg::CurrentVmcs, 0x2000).unwrap();
        assert_eq!(n.current_vmcs(), Some(0x2000));
        let e = n.store_part(NestedReg::CurrentVmcs, 0x4000).unwrap_err();
        assert_eq!((e.wanted, e.current, e.none), (0x4000, 0x2000, u64::MAX));
        n.store_part(NestedReg::EvmcsPointer, u64::MAX).unwrap();
        assert_eq!(n.evmcs_pointer(), None);
        n.store_part(NestedReg::Gif, 0).unwrap();
        assert!(!n.gif());
        n.store_part(NestedReg::VmxonPointer, u64::MAX).unwrap();
        assert_eq!(n.current_vmcs(), None);
        assert!(!n.in_operation());
        assert!(n.store_part(NestedReg::GuestMode, 1).is_err());
        assert!(n.store_part(NestedReg::VmxonPointer, 0x1000).is_err());
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
