//! [`KvmVcpu`]: one KVM vCPU, its identity, and the [`Backend`] implementation that dispatches
//! to one mapping file per [`StateClass`].

use kvm_bindings::{CpuId, kvm_lapic_state, kvm_vcpu_events};
use kvm_ioctls::VmFd;
use vcpu_reset_spec::{
    CpuModel, EventFlag, Field, LapicReg, Msr, NestedReg, VcpuIdentity, VcpuState, Vendor, X87,
};

use super::KvmError;
use super::calls::other;
use super::codec::xsave::XsaveLayout;
use super::guest_entries::{EntryCount, stats_file};
use super::host::{KvmCaps, KvmHost};
use super::ioctls::{Ioctl, IoctlError};
use super::msr_set::MsrSet;
use super::tsc::TscState;
use super::vcpu_io::VcpuIo;
use crate::backend::{
    Backend, BackendError, ClassSet, Exit, HostInit, HostInitBackend, StateClass, Stats,
};
use crate::slots::RegSet;

/// The classes sync regs carry.
pub(super) const SYNC_CLASSES: ClassSet = ClassSet::EMPTY
    .with(StateClass::Regs)
    .with(StateClass::Sregs)
    .with(StateClass::Events);

/// Where the answer to an IN or MMIO read goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Answer {
    /// Port input: `len` bytes at `offset` into the `kvm_run` mapping.
    Io { offset: usize, len: usize },
    /// MMIO read: `len` bytes of `kvm_run.mmio.data`.
    Mmio { len: usize },
}

/// How [`KvmVcpu::with_options`] sets up the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmVcpuOptions {
    /// Use `KVM_CAP_SYNC_REGS` where the host offers REGS, SREGS and EVENTS: every exit then
    /// delivers those classes in `kvm_run`, and stores of them are deferred to the next run.
    /// `false` moves every class with its ioctl.
    pub sync_regs: bool,
}

impl Default for KvmVcpuOptions {
    fn default() -> Self {
        KvmVcpuOptions { sync_regs: true }
    }
}

/// What the vCPU's CPUID says about the CPU it models.
#[derive(Clone, Copy, Debug)]
struct Identity {
    vendor_id: [u8; 12],
    signature: u32,
    gp_counters: u8,
    /// The vCPU is the bootstrap processor.
    bsp: bool,
    /// CPUID.01H:ECX\[21\] (x2APIC) as the vCPU got it.
    x2apic: bool,
}

/// What a constructor learns from a vCPU whose CPUID is set, before the vCPU is assembled.
pub(super) struct Probed {
    id: u64,
    irqchip: bool,
    identity: Identity,
    xsave: XsaveLayout,
    apic_version: Option<u32>,
    may_be_uninitialized: bool,
    events_shadow: bool,
    events: Option<kvm_vcpu_events>,
    msrs: MsrSet,
}

impl Probed {
    /// Read what the RESET/INIT tables and the state classes need from vCPU `id`, whose CPUID
    /// is `cpuid` (what KVM_GET_CPUID2 reports, or what was just set). `lapic` is a
    /// KVM_GET_LAPIC made after the CPUID was set, if the caller has one. Costs, counted in
    /// `stats` as `other`: with an irqchip KVM_GET_LAPIC (unless given) and KVM_GET_MP_STATE,
    /// KVM_GET_VCPU_EVENTS where the host has it, and the MSR probe (one KVM_GET_MSRS plus one
    /// per MSR the vCPU refuses).
    pub(super) fn read(
        fd: &VcpuIo,
        host: &KvmHost,
        id: u64,
        cpuid: &CpuId,
        irqchip: bool,
        lapic: Option<kvm_lapic_state>,
        stats: &mut Stats,
    ) -> Result<Probed, IoctlError> {
        let caps = host.caps();
        let xsave = XsaveLayout::from_cpuid(cpuid, caps.xsave2_size);

        let mut apic_version = None;
        let mut may_be_uninitialized = false;
        if irqchip {
            // The version register depends on the CPUID (e.g. directed EOI).
            let lapic = match lapic {
                Some(lapic) => lapic,
                None => other(stats, Ioctl::GetLapic, || fd.get_lapic())?,
            };
            apic_version = Some(super::codec::lapic::read_reg(
                &lapic,
                LapicReg::Version.offset(),
            ));

            let mp = other(stats, Ioctl::GetMpState, || fd.get_mp_state())?;
            may_be_uninitialized = mp.mp_state == kvm_bindings::KVM_MP_STATE_UNINITIALIZED;
        }

        let mut events_shadow = caps.intr_shadow;
        let mut events = None;
        if caps.vcpu_events {
            let e = other(stats, Ioctl::GetVcpuEvents, || fd.get_vcpu_events())?;
            events_shadow |= e.flags & kvm_bindings::KVM_VCPUEVENT_VALID_SHADOW != 0;
            events = Some(e);
        }

        let msrs = MsrSet::probe(fd, host.supported_msrs(), &mut stats.other)?;

        let mut identity = identity(cpuid);
        // KVM sets IA32_APIC_BASE.BSP on the vCPU KVM_SET_BOOT_CPU_ID named (vCPU 0 unless
        // the VMM chose another) when it creates the local APIC (Intel SDM Vol. 3A §11.4.4,
        // AMD APM Vol. 2 §16.3.1); without one the flag is not kept, and vCPU 0 is the BSP.
        identity.bsp = match msrs.probed_apic_base() {
            Some(base) if irqchip => base & APIC_BASE_BSP != 0,
            _ => id == 0,
        };
        Ok(Probed {
            id,
            irqchip,
            identity,
            xsave,
            apic_version,
            may_be_uninitialized,
            events_shadow,
            events,
            msrs,
        })
    }
}

/// IA32_APIC_BASE.BSP (bit 8).
const APIC_BASE_BSP: u64 = 1 << 8;

/// Copies of vCPU state kept to avoid ioctls, each valid until the guest can change it.
#[derive(Default)]
pub(super) struct Shadow {
    /// IA32_APIC_BASE, which `kvm_sregs` carries: a sregs store must write the current value.
    pub(super) apic_base: Option<u64>,
    /// The PDPTRs as KVM_GET_SREGS2 would report them.
    pub(super) pdptrs: Option<[u64; 4]>,
    /// The last `kvm_vcpu_events` read or written, for the details [`VcpuState`] does not keep
    /// (exception and interrupt vectors).
    pub(super) events: Option<kvm_vcpu_events>,
}

/// A KVM vCPU behind the [`Backend`] trait.
///
/// Each [`StateClass`] moves with one ioctl (KVM_GET/SET_REGS, SREGS2, XSAVE, ...), except that
/// with sync regs REGS, SREGS and EVENTS are read from and written to the `kvm_run` page without
/// one (see the [module documentation](super)). Every ioctl is counted in [`Backend::stats`].
pub struct KvmVcpu {
    pub(super) fd: VcpuIo,
    id: u64,
    pub(super) run_size: usize,
    pub(super) caps: KvmCaps,
    identity: Identity,
    pub(super) irqchip: bool,
    supported: ClassSet,
    pub(super) xsave: XsaveLayout,
    pub(super) msrs: MsrSet,
    /// What is known about IA32_TSC writes (see `msrs.rs`).
    pub(super) tsc: TscState,
    /// The local APIC has the CMCI LVT (its version register reports 7 LVT entries).
    pub(super) lapic_cmci: bool,
    apic_version: Option<u32>,
    /// KVM reports and accepts the interrupt shadow in `kvm_vcpu_events`.
    pub(super) events_shadow: bool,
    /// Sync regs are in use.
    pub(super) sync: bool,
    /// Sync classes whose copy in `kvm_run` is current (delivered by an exit, or written by us).
    pub(super) mirror: ClassSet,
    pub(super) shadow: Shadow,
    /// The vCPU may be in KVM_MP_STATE_UNINITIALIZED, where KVM_RUN returns before applying
    /// `kvm_dirty_regs` and then overwrites the sync area: stores must not be deferred.
    pub(super) may_be_uninitialized: bool,
    /// KVM's INIT was raised and will take effect at the next KVM_RUN or KVM_GET_MP_STATE
    /// (`init.rs`).
    pub(super) init_pending: bool,
    /// Where the answer to the last exit's IN or MMIO read goes.
    pub(super) answer: Option<Answer>,
    /// The `kvm_valid_regs` the VMM had set when the vCPU was adopted (0 for a vCPU created
    /// here), which [`KvmVcpu::into_fd`] puts back.
    pub(super) vmm_valid_regs: u64,
    /// The vCPU's count of guest entries (`guest_entries.rs`); not opened for an adopted vCPU.
    pub(super) entries: Option<EntryCount>,
    /// The last count read, with `stats.runs` then: only KVM_RUN moves it.
    pub(super) entries_seen: Option<(u64, u64)>,
    /// The `kvm_dirty_regs` a lent vCPU was handed back with (`lend.rs`).
    pub(super) left_dirty: u64,
    /// Stores of classes only the guest changes otherwise ([`GUEST_STATE`]), and KVM_RUNs that
    /// may complete an instruction without entering the guest.
    pub(super) guest_state_stores: u64,
    /// Times [`KvmVcpu::fd`] lent the fd out, through which anything may have been changed.
    pub(super) fd_lent: std::sync::atomic::AtomicU64,
    /// `fd_lent` when the mirror and shadow were last trusted ([`KvmVcpu::forget_after_loans`]).
    fd_lent_seen: u64,
    /// The last exit was port I/O or MMIO, whose instruction the next KVM_RUN completes.
    pub(super) completes_insn: bool,
    pub(super) stats: Stats,
}

impl std::fmt::Debug for KvmVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVcpu")
            .field("id", &self.id)
            .field("irqchip", &self.irqchip)
            .field("sync", &self.sync)
            .field("supported", &self.supported)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

const CPUID_1_ECX_X2APIC: u32 = 1 << 21;

/// Classes whose stores [`HostInitBackend::touch_count`] counts: those only the guest's own
/// instructions change otherwise (x87/SSE/AVX state, XCR0, the MSRs, nested state), and the
/// local APIC, for its ID, which INIT keeps (`init.rs`).
const GUEST_STATE: ClassSet = ClassSet::EMPTY
    .with(StateClass::Fpu)
    .with(StateClass::Xcrs)
    .with(StateClass::Msrs)
    .with(StateClass::Nested)
    .with(StateClass::Lapic);

impl KvmVcpu {
    /// After [`KvmVcpu::fd`] lent the fd out, what the backend mirrors of `kvm_run` and
    /// shadows (IA32_APIC_BASE, the PDPTRs) is no longer trusted: the borrower may have changed
    /// any of it (KVM_SET_MSRS of EFER or a segment base changes SREGS too). Classes with a
    /// store still deferred to the next KVM_RUN stay mirrored: that store wins at the next run.
    fn forget_after_loans(&mut self) {
        let lent = self.fd_lent.load(std::sync::atomic::Ordering::Relaxed);
        if lent == self.fd_lent_seen {
            return;
        }
        self.fd_lent_seen = lent;
        let stale: Vec<StateClass> = self.mirror.iter().filter(|c| !self.pending(*c)).collect();
        for class in stale {
            self.mirror = self.mirror.without(class);
        }
        self.shadow = Default::default();
    }

    /// Create vCPU `id` in `vm` with sync regs where the host offers them.
    ///
    /// See [`KvmVcpu::with_options`].
    ///
    /// # Errors
    /// As [`KvmVcpu::with_options`].
    pub fn new(host: &KvmHost, vm: &VmFd, id: u64) -> Result<KvmVcpu, KvmError> {
        KvmVcpu::with_options(host, vm, id, KvmVcpuOptions::default())
    }

    /// Create vCPU `id` in `vm`.
    ///
    /// The vCPU gets the host-supported CPUID with its APIC ID (`id`) patched into leaf 1
    /// EBX\[31:24\] and leaves 0xB/0x1F EDX (and 0x8000001E EAX), and without x2APIC when the VM
    /// has no in-kernel irqchip. Creation costs these ioctls, counted as `other`: KVM_CREATE_VCPU,
    /// KVM_GET_LAPIC (does the VM have an in-kernel local APIC?), KVM_SET_CPUID2, with an irqchip
    /// KVM_GET_LAPIC again (the APIC version under this CPUID) and KVM_GET_MP_STATE (is it an AP
    /// not yet started?), KVM_GET_VCPU_EVENTS (does KVM report the interrupt shadow?), and one
    /// KVM_GET_MSRS, plus one more per MSR the host lists but the vCPU refuses, one KVM_SET_MSRS
    /// trying the RESET values of the MSRs KVM may refuse a host write of (steal time, the
    /// async-PF vector, Hyper-V's SINTs; one more per refusal and per value put back), and
    /// KVM_GET_STATS_FD (the vCPU's count of guest entries, which lets a RESET skip what an AP
    /// that never ran cannot have changed: [`HostInitBackend::touch_count`]).
    ///
    /// # Errors
    /// [`KvmError::Ioctl`] naming the ioctl that failed.
    pub fn with_options(
        host: &KvmHost,
        vm: &VmFd,
        id: u64,
        options: KvmVcpuOptions,
    ) -> Result<KvmVcpu, KvmError> {
        let mut stats = Stats::default();
        let fd = VcpuIo::owned(other(&mut stats, Ioctl::CreateVcpu, || vm.create_vcpu(id))?);

        // Only a VM with an in-kernel irqchip has a local APIC to read.
        let irqchip = other(&mut stats, Ioctl::GetLapic, || fd.get_lapic()).is_ok();

        let apic_id = u32::try_from(id).unwrap_or(u32::MAX);
        let cpuid = vcpu_cpuid(host.supported_cpuid(), apic_id, irqchip);
        other(&mut stats, Ioctl::SetCpuid2, || fd.set_cpuid2(&cpuid))?;
        let probed = Probed::read(&fd, host, id, &cpuid, irqchip, None, &mut stats)?;
        // A host without binary statistics only lacks the count.
        let entries = other(&mut stats, Ioctl::GetStatsFd, || stats_file(&fd))
            .ok()
            .and_then(EntryCount::in_file);
        let mut vcpu = KvmVcpu::assemble(fd, vm.run_size(), host, options, probed, stats, 0);
        vcpu.entries = entries;
        Ok(vcpu)
    }

    /// The vCPU from its parts, with sync regs enabled where `options` and the host allow.
    /// `vmm_valid_regs` is the `kvm_valid_regs` [`KvmVcpu::into_fd`] restores.
    pub(super) fn assemble(
        fd: VcpuIo,
        run_size: usize,
        host: &KvmHost,
        options: KvmVcpuOptions,
        probed: Probed,
        stats: Stats,
        vmm_valid_regs: u64,
    ) -> KvmVcpu {
        let caps = *host.caps();
        let sync_bits = u64::from(kvm_bindings::KVM_SYNC_X86_VALID_FIELDS);
        let sync = options.sync_regs && u64::from(caps.sync_regs) & sync_bits == sync_bits;
        let mut vcpu = KvmVcpu {
            fd,
            id: probed.id,
            run_size,
            caps,
            identity: probed.identity,
            irqchip: probed.irqchip,
            supported: ClassSet::EMPTY,
            xsave: probed.xsave,
            msrs: probed.msrs,
            tsc: TscState::default(),
            lapic_cmci: probed.apic_version.is_some_and(|v| (v >> 16) & 0xff >= 6),
            apic_version: probed.apic_version,
            events_shadow: probed.events_shadow,
            sync,
            mirror: ClassSet::EMPTY,
            shadow: Shadow {
                events: probed.events,
                ..Shadow::default()
            },
            may_be_uninitialized: probed.may_be_uninitialized,
            init_pending: false,
            answer: None,
            vmm_valid_regs,
            entries: None,
            entries_seen: None,
            left_dirty: 0,
            guest_state_stores: 0,
            fd_lent: std::sync::atomic::AtomicU64::new(0),
            fd_lent_seen: 0,
            completes_insn: false,
            stats,
        };
        vcpu.supported = vcpu.compute_supported();
        if sync {
            vcpu.enable_sync_regs();
        }
        vcpu
    }

    fn compute_supported(&self) -> ClassSet {
        let mut s = ClassSet::EMPTY
            .with(StateClass::Regs)
            .with(StateClass::Sregs)
            .with(StateClass::Msrs);
        let caps = &self.caps;
        for (class, has) in [
            (StateClass::Fpu, caps.xsave && self.xsave.usable()),
            (StateClass::Xcrs, caps.xcrs),
            (StateClass::Debug, caps.debugregs),
            (StateClass::Events, caps.vcpu_events),
            (StateClass::Lapic, self.irqchip),
            (StateClass::MpState, self.irqchip),
            (StateClass::Nested, caps.nested_state > 0),
        ] {
            if has {
                s = s.with(class);
            }
        }
        s
    }

    /// The vCPU id given at creation (also its initial APIC ID).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The identity the RESET/INIT tables need: the APIC ID (KVM's initial APIC ID is the
    /// vCPU id) and whether this is the bootstrap processor (IA32_APIC_BASE.BSP as KVM set it
    /// at creation, where the VM has an in-kernel irqchip; else vCPU 0). Pass it to
    /// [`crate::engine::Vcpu::new`] with [`KvmVcpu::cpu_model`].
    pub fn vcpu_identity(&self) -> VcpuIdentity {
        VcpuIdentity {
            apic_id: u32::try_from(self.id).unwrap_or(u32::MAX),
            bsp: self.identity.bsp,
        }
    }

    /// Whether the VM has an in-kernel irqchip, so the local APIC and MP state are held.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// Whether REGS, SREGS and EVENTS travel through sync regs.
    pub fn sync_regs(&self) -> bool {
        self.sync
    }

    /// CPUID.01H:EAX of the vCPU (family, model, stepping).
    pub fn cpuid_signature(&self) -> u32 {
        self.identity.signature
    }

    /// The classes this vCPU holds.
    pub(super) fn supported_classes(&self) -> ClassSet {
        self.supported
    }

    /// Whether the vCPU's CPUID offers x2APIC.
    pub(super) fn x2apic_cpuid(&self) -> bool {
        self.identity.x2apic
    }

    /// The vendor CPUID.0H names, if it is Intel or AMD.
    pub fn vendor(&self) -> Option<Vendor> {
        Vendor::from_cpuid_vendor(&self.identity.vendor_id)
    }

    /// The CPUID.0H vendor string.
    pub fn vendor_id(&self) -> [u8; 12] {
        self.identity.vendor_id
    }

    /// Number of general-purpose performance counters (CPUID.0AH:EAX\[15:8\]).
    pub fn gp_counters(&self) -> u8 {
        self.identity.gp_counters
    }

    /// The local APIC version register as the vCPU was created, with an in-kernel irqchip.
    pub fn apic_version(&self) -> Option<u32> {
        self.apic_version
    }

    /// IA32_MTRRCAP, where the vCPU has MTRRs.
    pub fn mtrr_cap(&self) -> Option<u64> {
        self.msrs.mtrr_cap()
    }

    /// The CPU model the RESET/INIT tables need, where the vendor is Intel or AMD. Without an
    /// in-kernel irqchip or MTRRs, the APIC version and IA32_MTRRCAP are those of
    /// [`CpuModel::generic`]. The VMX capabilities are the MSRs as they read at creation (0
    /// where the host offers no nested VMX); SGX launch control is offered where the
    /// launch-enclave hash MSRs are held; IA32_MCG_CAP and IA32_ARCH_CAPABILITIES as they read
    /// at creation (not known where KVM refused the read).
    pub fn cpu_model(&self) -> Option<CpuModel> {
        let vendor = self.vendor()?;
        let generic = CpuModel::generic(vendor);
        Some(CpuModel {
            vendor,
            signature: self.identity.signature,
            gp_counters: self.identity.gp_counters,
            apic_version: self.apic_version.unwrap_or(generic.apic_version),
            mtrr_cap: self.mtrr_cap().unwrap_or(generic.mtrr_cap),
            vmx_capabilities: self.msrs.vmx_capabilities(),
            sgx_launch_control: self.msrs.sgx_launch_control(),
            mcg_cap: self.msrs.mcg_cap(),
            arch_capabilities: self.msrs.arch_capabilities(),
        })
    }

    /// The MSR indices this vCPU holds, in the order they are moved.
    pub fn msr_indices(&self) -> Vec<u32> {
        self.msrs.indices()
    }

    /// XSAVE components whose registers this vCPU holds (a mask like XCR0).
    pub fn xsave_components(&self) -> u64 {
        self.xsave.held_components()
    }

    /// XSAVE components the vCPU's CPUID offers (CPUID.(EAX=0DH,ECX=0) EDX:EAX, the XCR0 bits
    /// it supports), held or not: a component offered but not held is a host limit (e.g. AMX
    /// the VMM did not ask for), one not offered does not exist on this vCPU.
    pub fn xsave_offered(&self) -> u64 {
        self.xsave.offered()
    }

    fn require(&self, class: StateClass) -> Result<(), BackendError> {
        if self.supported.contains(class) {
            return Ok(());
        }
        Err(BackendError::Unsupported {
            class,
            why: match class {
                StateClass::Lapic | StateClass::MpState => {
                    "the VM has no in-kernel irqchip; create it with KvmHost::create_vm(true)"
                }
                StateClass::Nested => {
                    "the host's KVM has no KVM_CAP_NESTED_STATE (nested virtualization is off or unsupported)"
                }
                StateClass::Fpu => {
                    "the host's KVM has no KVM_CAP_XSAVE or reports an XSAVE layout this crate cannot parse"
                }
                StateClass::Xcrs => "the host's KVM has no KVM_CAP_XCRS",
                StateClass::Debug => "the host's KVM has no KVM_CAP_DEBUGREGS",
                StateClass::Events => "the host's KVM has no KVM_CAP_VCPU_EVENTS",
                StateClass::Regs | StateClass::Sregs | StateClass::Msrs => {
                    "this class is always available on KVM"
                }
            },
        })
    }

    /// Forget guest state the last run may have changed; with sync regs the exit refreshed
    /// REGS, SREGS and EVENTS in `kvm_run`.
    pub(super) fn after_run(&mut self, refreshed: bool) {
        self.shadow = Shadow::default();
        self.tsc.ran();
        if self.sync && refreshed {
            self.mirror = SYNC_CLASSES;
            let sregs = &self.fd.sync_regs_mut().sregs;
            self.shadow.apic_base = Some(sregs.apic_base);
            if !super::codec::sregs::is_pae_paging(sregs.cr0, sregs.cr4, sregs.efer) {
                self.shadow.pdptrs = Some([0; 4]);
            }
        } else {
            self.mirror = ClassSet::EMPTY;
        }
    }
}

/// The host-supported CPUID with this vCPU's APIC ID.
fn vcpu_cpuid(supported: &CpuId, apic_id: u32, irqchip: bool) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | ((apic_id & 0xff) << 24);
                if !irqchip {
                    e.ecx &= !CPUID_1_ECX_X2APIC;
                }
            }
            0xb | 0x1f => e.edx = apic_id,
            0x8000_001e => e.eax = apic_id,
            _ => {}
        }
    }
    cpuid
}

fn identity(cpuid: &CpuId) -> Identity {
    let leaf = |function: u32| {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == 0)
    };
    let mut vendor_id = [0u8; 12];
    if let Some(e) = leaf(0) {
        vendor_id[0..4].copy_from_slice(&e.ebx.to_le_bytes());
        vendor_id[4..8].copy_from_slice(&e.edx.to_le_bytes());
        vendor_id[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    }
    Identity {
        vendor_id,
        signature: leaf(1).map_or(0, |e| e.eax),
        gp_counters: leaf(0xa).map_or(0, |e| e.eax.to_le_bytes()[1]),
        bsp: false,
        x2apic: leaf(1).is_some_and(|e| e.ecx & CPUID_1_ECX_X2APIC != 0),
    }
}

impl Backend for KvmVcpu {
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        self.forget_after_loans();
        self.require(class)?;
        self.settle_init(class)?;
        match class {
            StateClass::Regs => self.load_regs(state),
            StateClass::Sregs => self.load_sregs(state),
            StateClass::Debug => self.load_debugregs(state),
            StateClass::Fpu => self.load_fpu(state),
            StateClass::Xcrs => self.load_xcrs(state),
            StateClass::Msrs => self.load_msrs(state),
            StateClass::Lapic => self.load_lapic(state),
            StateClass::MpState => self.load_mp_state(state),
            StateClass::Events => self.load_events(state),
            StateClass::Nested => self.load_nested(state),
        }
    }

    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        self.forget_after_loans();
        self.require(class)?;
        self.settle_init(class)?;
        if GUEST_STATE.contains(class) {
            self.guest_state_stores += 1;
        }
        match class {
            StateClass::Regs => self.store_regs(state),
            StateClass::Sregs => self.store_sregs(state),
            StateClass::Debug => self.store_debugregs(state),
            StateClass::Fpu => self.store_fpu(state),
            StateClass::Xcrs => self.store_xcrs(state),
            StateClass::Msrs => self.store_msrs(state),
            StateClass::Lapic => self.store_lapic(state),
            StateClass::MpState => self.store_mp_state(state),
            StateClass::Events => self.store_events(state),
            StateClass::Nested => self.store_nested(state),
        }
    }

    fn run(&mut self) -> Result<Exit, BackendError> {
        self.run_vcpu()
    }

    fn set_io_in(&mut self, data: &[u8]) {
        self.answer_in(data);
    }

    fn volatile(&self) -> ClassSet {
        self.supported
    }

    fn delivered(&self) -> ClassSet {
        self.free_classes()
    }

    fn supported(&self) -> ClassSet {
        self.supported
    }

    fn holds(&self, field: Field) -> bool {
        let class = StateClass::of(field);
        if !self.supported.contains(class) {
            return false;
        }
        match field {
            Field::Pdptr(_) => self.caps.sregs2,
            Field::X87(X87::Fcs | X87::Fds) => false,
            Field::YmmHi(_)
            | Field::ZmmHi256(..)
            | Field::Hi16Zmm(..)
            | Field::Opmask(_)
            | Field::TileCfg(_)
            | Field::TileData(..) => self.xsave.holds(field),
            Field::Pkru => self.xsave.holds(field),
            Field::Lapic(LapicReg::LvtCmci) => self.lapic_cmci,
            Field::Event(EventFlag::Smm | EventFlag::SmiPending) => self.caps.x86_smm,
            Field::Event(EventFlag::InterruptShadow) => self.events_shadow,
            // KVM_GET_NESTED_STATE has no enlightened-VMCS address (only a flag) and keeps
            // the INIT intercept inside the saved VMCB.
            Field::NestedReg(NestedReg::EvmcsPointer | NestedReg::InterceptInit) => false,
            Field::Msr(Msr::Tsc) if self.tsc.ignored => false,
            _ if class == StateClass::Msrs => field
                .msr_index()
                .is_some_and(|index| self.msrs.holds(index)),
            _ => true,
        }
    }

    fn queues_signals(&self) -> bool {
        // An AP KVM never started (KVM_MP_STATE_UNINITIALIZED) drops a SIPI, and acts on an INIT
        // only by leaving that state, which every RESET writes over anyway; reading its MP state
        // would instead make a RESET keep KVM's UNINITIALIZED, where a SIPI alone does nothing.
        self.irqchip && !self.may_be_uninitialized
    }

    fn load_slots(&mut self, class: StateClass, slots: RegSet, state: &mut VcpuState) -> bool {
        self.forget_after_loans();
        self.load_mirrored_slots(class, slots, state)
    }

    fn store_slots(&mut self, class: StateClass, slots: RegSet, state: &VcpuState) -> bool {
        self.forget_after_loans();
        self.store_mirrored_slots(class, slots, state)
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}

impl HostInitBackend for KvmVcpu {
    fn host_init(
        &mut self,
        target: &VcpuState,
        lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<HostInit>, BackendError> {
        self.forget_after_loans();
        self.host_init_reset(target, lazy, kept)
    }

    fn touch_count(&mut self) -> Option<u64> {
        let count = self.entries.as_ref()?;
        let exits = match self.entries_seen {
            Some((runs, exits)) if runs == self.stats.runs => exits,
            _ => {
                let exits = count.read()?;
                self.entries_seen = Some((self.stats.runs, exits));
                exits
            }
        };
        // All three only grow, so the sum moves whenever one does.
        let lent = self.fd_lent.load(std::sync::atomic::Ordering::Relaxed);
        Some(
            exits
                .wrapping_add(self.guest_state_stores)
                .wrapping_add(lent),
        )
    }
}
