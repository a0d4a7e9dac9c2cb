//! The backend classes: groups of state a backend loads or stores in one operation.

/// A group of state a backend loads or stores in one operation (one ioctl on KVM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateClass {
    /// GPRs, RIP, RFLAGS (KVM_GET/SET_REGS).
    Regs,
    /// Segments, GDTR/IDTR, CR0/2/3/4/8, EFER, PDPTRs (KVM_GET/SET_SREGS or SREGS2).
    Sregs,
    /// DR0–DR3, DR6, DR7 (KVM_GET/SET_DEBUGREGS).
    Debug,
    /// x87, MXCSR, vector registers, PKRU (KVM_GET/SET_XSAVE).
    Fpu,
    /// XCR0 (KVM_GET/SET_XCRS).
    Xcrs,
    /// MSRs (KVM_GET/SET_MSRS), including IA32_APIC_BASE.
    Msrs,
    /// Local APIC registers (KVM_GET/SET_LAPIC).
    Lapic,
    /// Activity state (KVM_GET/SET_MP_STATE).
    MpState,
    /// Pending events (KVM_GET/SET_VCPU_EVENTS).
    Events,
    /// Nested-virtualization state (KVM_GET/SET_NESTED_STATE).
    Nested,
}

impl StateClass {
    /// All classes, in the order a full store writes them:
    /// - nested state first (leaving guest mode changes what the other classes mean);
    /// - MSRs before the LAPIC (KVM_SET_LAPIC's ID format depends on IA32_APIC_BASE);
    /// - the LAPIC before the MP state (KVM needs an in-kernel LAPIC for wait-for-SIPI);
    /// - the MP state before registers: an AP never run is in KVM_MP_STATE_UNINITIALIZED,
    ///   where KVM_RUN returns before applying sync regs, so leaving it first lets REGS, SREGS
    ///   and EVENTS ride the `kvm_run` page instead of three ioctls;
    /// - events last, so nothing written afterwards re-queues an event.
    pub const ALL: [StateClass; 10] = [
        StateClass::Nested,
        StateClass::Msrs,
        StateClass::Lapic,
        StateClass::MpState,
        StateClass::Sregs,
        StateClass::Regs,
        StateClass::Fpu,
        StateClass::Xcrs,
        StateClass::Debug,
        StateClass::Events,
    ];

    /// Bit for [`ClassSet`].
    pub const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            StateClass::Regs => "regs",
            StateClass::Sregs => "sregs",
            StateClass::Debug => "debugregs",
            StateClass::Fpu => "xsave",
            StateClass::Xcrs => "xcrs",
            StateClass::Msrs => "msrs",
            StateClass::Lapic => "lapic",
            StateClass::MpState => "mp_state",
            StateClass::Events => "vcpu_events",
            StateClass::Nested => "nested_state",
        }
    }
}

impl std::fmt::Display for StateClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`StateClass`]es.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClassSet(u16);

impl ClassSet {
    /// No class.
    pub const EMPTY: ClassSet = ClassSet(0);

    /// Every class.
    pub fn all() -> ClassSet {
        StateClass::ALL
            .iter()
            .fold(ClassSet::EMPTY, |s, c| s.with(*c))
    }

    /// This set plus `c`.
    #[must_use]
    pub const fn with(self, c: StateClass) -> ClassSet {
        ClassSet(self.0 | c.bit())
    }

    /// This set without `c`.
    #[must_use]
    pub const fn without(self, c: StateClass) -> ClassSet {
        ClassSet(self.0 & !c.bit())
    }

    /// Whether `c` is in the set.
    pub const fn contains(self, c: StateClass) -> bool {
        self.0 & c.bit() != 0
    }

    /// The classes in either set.
    #[must_use]
    pub const fn union(self, other: ClassSet) -> ClassSet {
        ClassSet(self.0 | other.0)
    }

    /// The classes in both sets.
    #[must_use]
    pub const fn intersection(self, other: ClassSet) -> ClassSet {
        ClassSet(self.0 & other.0)
    }

    /// The classes in this set and not in `other`.
    #[must_use]
    pub const fn difference(self, other: ClassSet) -> ClassSet {
        ClassSet(self.0 & !other.0)
    }

    /// Whether the set holds no class.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The classes in the set, in [`StateClass::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = StateClass> {
        StateClass::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}
