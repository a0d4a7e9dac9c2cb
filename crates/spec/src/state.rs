//! The x86 vCPU state that RESET and INIT define, as plain data.
//!
//! Every piece of state the RESET/INIT tables speak of has a home here. The layout follows the
//! architecture, not any one backend: segment attributes use the VMX access-rights layout
//! (Intel SDM Vol. 3C, Table 25-2 "Format of Access Rights"), the x87 tag word is the full 16-bit
//! FTW (not FXSAVE's abridged byte), and the local APIC is kept register by register at its xAPIC
//! MMIO offsets (Intel SDM Vol. 3A, Table 11-1 "Local APIC Register Address Map").
//!
//! Values are read and written generically through [`crate::Field`]; the named members are for
//! code that knows what it wants.

pub use crate::msr::Msrs;
pub use crate::parts::{
    Activity, DescriptorTable, Events, FIXED_MTRRS, Fpu, GPRS, Lapic, MCE_BANKS, McBank, Nested,
    SGX_LE_HASH_MSRS, Segment, VARIABLE_MTRRS, VMX_CAPABILITY_MSRS, Vectors, tile_word,
};

/// The complete vCPU state for RESET/INIT purposes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VcpuState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8–R15, in the architectural encoding order.
    pub gprs: [u64; GPRS],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS, LDTR, TR, indexed by [`crate::Seg`].
    pub segments: [Segment; 8],
    /// Global descriptor-table register.
    pub gdtr: DescriptorTable,
    /// Interrupt descriptor-table register.
    pub idtr: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (task-priority register, TPR\[7:4\]).
    pub cr8: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// PAE page-directory-pointer-table entries.
    pub pdptrs: [u64; 4],
    /// DR0–DR3.
    pub dr: [u64; 4],
    /// DR6.
    pub dr6: u64,
    /// DR7.
    pub dr7: u64,
    /// x87 and MXCSR.
    pub fpu: Fpu,
    /// XMM/YMM/ZMM/opmask.
    pub vectors: Vectors,
    /// XCR0.
    pub xcr0: u64,
    /// PKRU (XSAVE component 9).
    pub pkru: u32,
    /// Model-specific registers.
    pub msrs: Msrs,
    /// Local APIC.
    pub lapic: Lapic,
    /// Activity state.
    pub activity: Activity,
    /// Pending events.
    pub events: Events,
    /// Nested-virtualization state.
    pub nested: Nested,
}
