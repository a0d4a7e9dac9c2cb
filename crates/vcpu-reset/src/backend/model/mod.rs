//! A software vCPU whose guest state is kept like a VMCS guest-state area.
//!
//! [`ModelVcpu`] executes no instructions. It keeps the state KVM keeps for a VMX guest, where
//! KVM keeps it:
//!
//! - in a VMCS guest-state area ([`vmcs::GuestStateArea`]), addressed by the SDM's field
//!   encodings (SDM Vol. 3D, Appendix B) and reached only through VMREAD/VMWRITE: segment
//!   selectors, bases, limits and access rights, GDTR/IDTR, CR0, CR3, CR4, DR7, RSP, RIP,
//!   RFLAGS, IA32_EFER, IA32_PAT, IA32_DEBUGCTL, IA32_PERF_GLOBAL_CTRL, IA32_SYSENTER_CS/ESP/EIP,
//!   SMBASE, PDPTE0–3, the interruptibility and activity states, the pending debug exceptions and
//!   the VMCS link pointer;
//! - beside it, in stores ([`Location`]): the other fifteen GPRs, CR2, CR8, DR0–DR3, DR6, an
//!   x87/SSE/XSAVE store (FPU, vector registers, PKRU), XCR0, an MSR store keyed by MSR index
//!   (every spec MSR not in the VMCS), a 1 KiB local-APIC register page keyed by xAPIC offset,
//!   the pending-event flags the VMCS has no bit for (NMI, exception, interrupt and SMI pending,
//!   SMM), and the nested state ([`NestedVmx`]: VMX pointers, guest mode, SVM's GIF and INIT
//!   intercept).
//!
//! # Mapping rules
//!
//! - Segment attributes are the low 16 bits of the VMX access rights (SDM Vol. 3C §25.4.1,
//!   Table 25-2). The spec has no unusable bit: a store sets access-rights bit 16 (unusable)
//!   exactly when P (bit 7) is clear, as KVM does; a load reports bits 15:0.
//! - IA32_SYSENTER_CS and SMBASE live in 32-bit VMCS fields: a store keeps bits 31:0, as VMWRITE
//!   and KVM do (SDM Vol. 3D, Appendix B.3.3).
//! - IA32_FS_BASE and IA32_GS_BASE are GUEST_FS_BASE and GUEST_GS_BASE; they belong to the
//!   `sregs` class with the segments (as in the register cache), not to `msrs`.
//! - The interrupt shadow is interruptibility bit 0 (STI) or 1 (MOV SS); a store of the
//!   `vcpu_events` class writes the whole field (bit 0 for the shadow, bit 3 for NMI blocking,
//!   all other bits 0) and clears the pending debug exceptions (SDM Vol. 3C §25.4.2, Table 25-3).
//! - The activity state is GUEST_ACTIVITY_STATE (0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI;
//!   SDM Vol. 3C §25.4.2). A load of a value that is no encoding fails with
//!   [`BackendError::Invalid`], as does a load of an event flag that is not 0 or 1.
//! - `nested.state` reads 1 in VMX operation or guest mode; a store of 0 drops all nested state
//!   (and sets the VMCS link pointer to all-ones); a store of 1 keeps what is there and fails
//!   with [`BackendError::Invalid`] when the vCPU is in neither. The parts (`nested.vmxon_pointer`
//!   … `nested.intercept_init`) are stored after it: each can be kept or dropped to its "none"
//!   value, GIF set either way, but nothing created ([`NestedVmx::store_part`]). A load of a
//!   nested flag that is not 0 or 1 (poison) fails with [`BackendError::Invalid`].
//! - The VMX capability MSRs, the SGX launch-enclave hash MSRs and VM_HSAVE_PA live in the MSR
//!   store like any MSR the VMCS has no field for; the model enforces no read-only-ness (a
//!   VMM may narrow the capabilities, as KVM lets it).
//!
//! # Poison
//!
//! [`ModelVcpu::new`] starts zeroed, like KVM's zero-allocated VMCS: code that VMREADs a field it
//! never wrote reads 0 and may work by accident (see the 2021 RESET thread: "VMREAD(GUEST_CR0) is
//! technically consuming garbage. In practice, it's consuming '0'"). [`ModelVcpu::new_poisoned`]
//! instead fills every location with [`POISON_BYTE`]; [`ModelVcpu::poisoned`] lists the
//! locations still holding it and [`is_poison`] recognises it in a loaded value.
//!
//! # Counting
//!
//! [`Stats::loads`] counts VMREADs plus store reads, [`Stats::stores`] VMWRITEs plus store
//! writes, one per field access as real VMREAD/VMWRITE would be; [`ModelVcpu::vmcs_counts`]
//! gives the VMREADs and VMWRITEs alone. What a guest hook does through [`GuestView`] is the
//! processor changing its own state and is not counted.

pub mod nested;
mod storage;
pub mod vmcs;

#[cfg(test)]
mod home_tests;

use vcpu_reset_spec::{Field, VcpuState};

pub use nested::{INVALID_VMCS_POINTER, LaunchState, NestedError, NestedVmx, StoreRefused};
pub use storage::{APIC_PAGE_SIZE, Location, POISON_BYTE, poison_pattern};
pub use vmcs::VmcsError;

use storage::{Storage, Via};

use super::{Backend, BackendError, ClassSet, Exit, HostInitBackend, StateClass, Stats};

pub use crate::slots::fields_of;

/// Whether `value`, read from `field`, is the poison pattern: [`POISON_BYTE`] repeated over
/// the bits of the field the model holds (its width, or less where its VMCS field is narrower,
/// e.g. 32 bits for IA32_SYSENTER_CS). Fields under 8 bits (activity state, event flags,
/// nested state) cannot carry a recognisable pattern and never match; [`ModelVcpu::poisoned`]
/// reports their storage instead.
pub fn is_poison(field: Field, value: u128) -> bool {
    let w = storage::held_width(field);
    w >= 8 && value == poison_pattern(w)
}

/// A guest hook: what the "guest" does during one [`Backend::run`]; its return value is the
/// exit.
pub type GuestHook = Box<dyn FnMut(&mut GuestView<'_>) -> Exit + Send>;

/// The guest's view of its own state during a run: reads and writes by [`Field`] go through
/// the same storage and mapping as the backend's loads and stores, uncounted (the processor
/// changes its own registers; no VMREAD/VMWRITE happens).
pub struct GuestView<'a> {
    storage: &'a mut Storage,
    io_in: &'a [u8],
}

impl GuestView<'_> {
    /// The value of `field`, masked to its width.
    pub fn get(&mut self, field: Field) -> Result<u128, BackendError> {
        Ok(self.storage.read_field(field, Via::Guest)? & field.mask())
    }

    /// Set `field` to `value` (bits beyond its width dropped), with the backend's mapping rules
    /// (see the [module documentation](self)).
    pub fn set(&mut self, field: Field, value: u128) -> Result<(), BackendError> {
        self.storage.write_field(field, value, Via::Guest)
    }

    /// The data the VMM gave with [`Backend::set_io_in`] before this run (empty if none).
    pub fn io_in(&self) -> &[u8] {
        self.io_in
    }

    /// The nested-VMX state, for a guest that executes VMXON, VMPTRLD, ...
    pub fn nested(&mut self) -> &mut NestedVmx {
        &mut self.storage.nested
    }
}

/// The software vCPU. See the [module documentation](self).
pub struct ModelVcpu {
    storage: Storage,
    runs: u64,
    guest: Option<GuestHook>,
    io_in: Vec<u8>,
}

impl std::fmt::Debug for ModelVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelVcpu")
            .field("storage", &self.storage)
            .field("runs", &self.runs)
            .field("guest", &self.guest.as_ref().map(|_| "hook"))
            .field("io_in", &self.io_in)
            .finish()
    }
}

impl Default for ModelVcpu {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelVcpu {
    /// A vCPU with every VMCS field, GPR, store byte, APIC register and MSR zero, and no nested
    /// state (VMXON none, current VMCS all-ones, eVMCS none), like a freshly created KVM vCPU
    /// before RESET.
    pub fn new() -> Self {
        Self::with_storage(Storage::zeroed())
    }

    /// A vCPU whose every VMCS field, GPR, store byte, APIC page byte, MSR and nested pointer
    /// holds [`POISON_BYTE`] repeated, so that state read before it was written stands out.
    pub fn new_poisoned() -> Self {
        Self::with_storage(Storage::poisoned())
    }

    fn with_storage(storage: Storage) -> Self {
        ModelVcpu {
            storage,
            runs: 0,
            guest: None,
            io_in: Vec::new(),
        }
    }

    /// VMREAD of a guest-state field (counted in [`ModelVcpu::vmcs_counts`] and
    /// [`Stats::loads`]).
    pub fn vmread(&mut self, encoding: u32) -> Result<u64, VmcsError> {
        self.storage.vmcs.vmread(encoding)
    }

    /// VMWRITE of a guest-state field (counted in [`ModelVcpu::vmcs_counts`] and
    /// [`Stats::stores`]).
    pub fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError> {
        self.storage.vmcs.vmwrite(encoding, value)
    }

    /// VMREADs and VMWRITEs executed so far, in that order.
    pub fn vmcs_counts(&self) -> (u64, u64) {
        self.storage.vmcs.counts()
    }

    /// Every storage location of the model: each VMCS guest-state field, each store location a
    /// spec field maps to, and the three nested pointers.
    pub fn locations(&self) -> Vec<Location> {
        self.storage.locations()
    }

    /// The locations still holding the poison pattern for their width.
    pub fn poisoned_locations(&self) -> Vec<Location> {
        self.storage.poisoned_locations()
    }

    /// The locations still holding the poison pattern, described (e.g.
    /// `vmcs 0x6800 GUEST_CR0`, `gpr rax`, `msr 0x1b msr.ia32_apic_base`,
    /// `apic 0x020 lapic.id`, `nested vmxon pointer`). Not counted.
    pub fn poisoned(&self) -> Vec<String> {
        self.poisoned_locations()
            .into_iter()
            .map(|l| l.to_string())
            .collect()
    }

    /// The nested state.
    pub fn nested(&self) -> &NestedVmx {
        &self.storage.nested
    }

    /// The nested state, for the processor's own changes (VMX and SVM instructions, fault
    /// injection); uncounted, like [`GuestView::nested`].
    pub fn nested_mut(&mut self) -> &mut NestedVmx {
        &mut self.storage.nested
    }

    /// VMXON with the VMXON region at `address` (see [`NestedVmx::vmxon`]).
    pub fn vmxon(&mut self, address: u64) -> Result<(), NestedError> {
        self.storage.nested.vmxon(address)
    }

    /// VMXOFF (see [`NestedVmx::vmxoff`]).
    pub fn vmxoff(&mut self) -> Result<(), NestedError> {
        self.storage.nested.vmxoff()
    }

    /// VMPTRLD of the VMCS at `address` (see [`NestedVmx::vmptrld`]).
    pub fn vmptrld(&mut self, address: u64) -> Result<(), NestedError> {
        self.storage.nested.vmptrld(address)
    }

    /// VMCLEAR of the VMCS at `address` (see [`NestedVmx::vmclear`]).
    pub fn vmclear(&mut self, address: u64) -> Result<(), NestedError> {
        self.storage.nested.vmclear(address)
    }

    /// VMLAUNCH's effect on launch state (see [`NestedVmx::vmlaunch`]).
    pub fn vmlaunch(&mut self) -> Result<(), NestedError> {
        self.storage.nested.vmlaunch()
    }

    /// Use or stop using an enlightened VMCS (see [`NestedVmx::set_evmcs`]).
    pub fn set_evmcs(&mut self, pointer: Option<u64>) -> Result<(), NestedError> {
        self.storage.nested.set_evmcs(pointer)
    }

    /// Run `hook` as the guest on every [`Backend::run`], replacing any earlier hook.
    pub fn set_guest(&mut self, hook: GuestHook) {
        self.guest = Some(hook);
    }

    /// Remove the guest hook: [`Backend::run`] then returns [`Exit::Hlt`] and changes nothing.
    pub fn clear_guest(&mut self) {
        self.guest = None;
    }
}

/// The model has no INIT of its own to build a RESET on.
impl HostInitBackend for ModelVcpu {}

impl Backend for ModelVcpu {
    /// Read every field of `class` (see [`fields_of`]) from the VMCS or the stores. On error
    /// `state` is left unchanged.
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        let mut next = *state;
        for f in fields_of(class) {
            let v = self.storage.read_field(*f, Via::Vmm)?;
            f.set(&mut next, v);
        }
        *state = next;
        Ok(())
    }

    /// Write every field of `class` to the VMCS or the stores. Only `nested_state` can fail
    /// (1 without nested state), and then nothing was written.
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        if class == StateClass::Events {
            return self.storage.store_events(state);
        }
        for f in fields_of(class) {
            self.storage.write_field(*f, f.get(state), Via::Vmm)?;
        }
        Ok(())
    }

    /// Run the guest hook once and return its exit; without a hook, [`Exit::Hlt`] and no change.
    /// The data of [`Backend::set_io_in`] is visible to this run only.
    fn run(&mut self) -> Result<Exit, BackendError> {
        self.runs += 1;
        let io_in = std::mem::take(&mut self.io_in);
        Ok(match self.guest.as_mut() {
            Some(hook) => {
                let mut view = GuestView {
                    storage: &mut self.storage,
                    io_in: &io_in,
                };
                hook(&mut view)
            }
            None => Exit::Hlt,
        })
    }

    /// Record up to 4 bytes for the next run's hook ([`GuestView::io_in`]).
    fn set_io_in(&mut self, data: &[u8]) {
        self.io_in = data.iter().take(4).copied().collect();
    }

    /// Every class: the guest hook may change anything.
    fn volatile(&self) -> ClassSet {
        ClassSet::all()
    }

    /// None: every load is a VMREAD or store read.
    fn delivered(&self) -> ClassSet {
        ClassSet::EMPTY
    }

    /// Every class.
    fn supported(&self) -> ClassSet {
        ClassSet::all()
    }

    /// Every field.
    fn holds(&self, _field: Field) -> bool {
        true
    }

    fn stats(&self) -> Stats {
        let (vmreads, vmwrites) = self.storage.vmcs.counts();
        let (reads, writes) = self.storage.store_counts();
        Stats {
            loads: vmreads + reads,
            stores: vmwrites + writes,
            runs: self.runs,
            ..Stats::default()
        }
    }
}
