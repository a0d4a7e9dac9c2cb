//! The MSR leak scan (`check::leak`, which `check` runs too): a value planted in any MSR the
//! host lets a VMM write does not survive vcpu-reset's RESET, or its INIT, where the spec says
//! the event changes it; and the scan names an MSR a RESET leaves out. MSRs without a spec row
//! that keep their planted value are printed by index.
//!
//! Skips (printing why) where `/dev/kvm` cannot be used, unless `VCPU_RESET_REQUIRE_KVM=1`.

use kvm_ioctls::VcpuFd;
use vcpu_reset::backend::kvm::KvmVcpu;
use vcpu_reset::backend::{
    Backend, BackendError, ClassSet, Exit, HostInit, HostInitBackend, StateClass, Stats,
};
use vcpu_reset::spec::{Event, Field, Msr, VcpuState};
use vcpu_reset_selftest::check::leak::{self, LeakScan, Lent};
use vcpu_reset_selftest::host::kvm_for_tests;

/// A backend whose RESET forgets one field (it keeps what the vCPU holds), as an engine that
/// left it out would: the scan must name it.
struct Forgets(KvmVcpu, Field);

impl Forgets {
    /// `state` with the forgotten field as the vCPU holds it now.
    fn keeping(&mut self, state: &VcpuState) -> Result<VcpuState, BackendError> {
        let mut now = VcpuState::default();
        self.0.load(StateClass::of(self.1), &mut now)?;
        let mut kept = *state;
        self.1.set(&mut kept, self.1.get(&now));
        Ok(kept)
    }
}

impl Lent for Forgets {
    fn lent_fd(&self) -> &VcpuFd {
        self.0.fd()
    }
    fn lent_backend(&mut self) -> &mut KvmVcpu {
        &mut self.0
    }
    fn into_vcpu_fd(self) -> VcpuFd {
        self.0.into_fd()
    }
}

impl HostInitBackend for Forgets {
    fn host_init(
        &mut self,
        target: &VcpuState,
        lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<HostInit>, BackendError> {
        let target = self.keeping(target)?;
        self.0.host_init(&target, lazy, kept)
    }
    fn touch_count(&mut self) -> Option<u64> {
        self.0.touch_count()
    }
}

impl Backend for Forgets {
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        self.0.load(class, state)
    }
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        if class == StateClass::of(self.1) {
            let state = self.keeping(state)?;
            return self.0.store(class, &state);
        }
        self.0.store(class, state)
    }
    fn run(&mut self) -> Result<Exit, BackendError> {
        self.0.run()
    }
    fn set_io_in(&mut self, data: &[u8]) {
        self.0.set_io_in(data);
    }
    fn volatile(&self) -> ClassSet {
        self.0.volatile()
    }
    fn delivered(&self) -> ClassSet {
        self.0.delivered()
    }
    fn supported(&self) -> ClassSet {
        self.0.supported()
    }
    fn holds(&self, field: Field) -> bool {
        self.0.holds(field)
    }
    fn queues_signals(&self) -> bool {
        self.0.queues_signals()
    }
    fn stats(&self) -> Stats {
        self.0.stats()
    }
}

/// The scan on a new vCPU of the host over `wrap` of its backend, with what it found printed.
fn scan<B: Lent>(event: Event, wrap: impl FnOnce(KvmVcpu) -> B) -> Option<LeakScan> {
    let host = kvm_for_tests()?;
    let found = leak::scan(&host, event, wrap).expect("scan");
    let kept: Vec<String> = found
        .unknown_kept
        .iter()
        .map(|i| format!("{i:#x}"))
        .collect();
    eprintln!(
        "{event:?}: planted {} MSRs, {} other fields, XSAVE components {:?}; {} MSR rows and {} other fields kept a value the event changes ({:?}); without a spec row, kept: {}; not held, kept: {:x?}; XSAVE components kept: {:?}",
        found.planted,
        found.fields_planted,
        found.xsave_planted,
        found.survived.len(),
        found.fields_survived.len(),
        found.fields_survived,
        kept.join(" "),
        found.not_held_kept,
        found.xsave_kept,
    );
    Some(found)
}

/// The scan over the plain KVM backend plants in more than 20 MSRs and finds no survivor.
fn nothing_survives(event: Event) {
    let Some(found) = scan(event, |kv| kv) else {
        return;
    };
    assert!(
        found.planted > 20,
        "values planted in {} MSRs",
        found.planted
    );
    assert!(
        found.survived.is_empty(),
        "planted values survived the {event:?}: {:#?}",
        found.survived
    );
}

#[test]
fn no_planted_msr_value_survives_a_reset_where_the_spec_resets_it() {
    nothing_survives(Event::Reset);
}

#[test]
fn no_planted_msr_value_survives_an_init_where_the_spec_sets_it() {
    nothing_survives(Event::Init);
}

#[test]
fn the_scan_names_an_msr_a_reset_leaves_out() {
    let Some(found) = scan(Event::Reset, |kv| Forgets(kv, Field::Msr(Msr::Pat))) else {
        return;
    };
    let named: Vec<(Field, u32)> = found.survived.iter().map(|s| (s.field, s.index)).collect();
    assert_eq!(
        named,
        [(Field::Msr(Msr::Pat), 0x277)],
        "only the forgotten MSR"
    );
}

#[test]
fn the_scan_names_a_register_a_reset_leaves_out() {
    // XMM7 (the SSE component of XSAVE): KVM's INIT keeps it, so only the engine resets it.
    let Some(found) = scan(Event::Reset, |kv| Forgets(kv, Field::Xmm(7))) else {
        return;
    };
    assert!(found.survived.is_empty(), "{:#?}", found.survived);
    let named: Vec<Field> = found.fields_survived.iter().map(|s| s.field).collect();
    assert_eq!(named, [Field::Xmm(7)], "only the forgotten register");
    assert_eq!(found.fields_survived[0].expected, 0);
}

#[test]
fn the_scan_plants_in_the_lapic_page_debug_segment_and_vector_registers() {
    let Some(found) = scan(Event::Reset, |kv| kv) else {
        return;
    };
    // 6 debug registers, 8 segments x 4 parts + 2 tables x 2, XCR0, x87/SSE at least; the
    // local APIC page with an in-kernel irqchip.
    assert!(
        found.fields_planted > 100,
        "values planted in {} fields",
        found.fields_planted
    );
    assert!(
        found.fields_survived.is_empty(),
        "{:#?}",
        found.fields_survived
    );
    assert!(found.xsave_kept.is_empty(), "{:?}", found.xsave_kept);
}

#[test]
fn kvms_own_init_keeps_what_a_reset_must_change() {
    let Some(host) = kvm_for_tests() else { return };
    let found = leak::scan_kvm_init(&host).expect("scan");
    let kept: Vec<String> = found
        .survived
        .iter()
        .map(|s| s.field.to_string())
        .chain(found.fields_survived.iter().map(|s| s.field.to_string()))
        .collect();
    eprintln!(
        "KVM's INIT: {} planted, {} survived where RESET changes them: {}",
        found.total_planted(),
        found.total_survived(),
        kept.join(" ")
    );
    // INIT keeps the MSRs and x87/SSE state (SDM Table 10-1), so a reboot through KVM's INIT
    // alone keeps what the guest planted there: IA32_PAT among them on every host.
    assert!(
        found
            .survived
            .iter()
            .any(|s| s.field == Field::Msr(Msr::Pat)),
        "{kept:?}"
    );
}

/// The KVM backend with its host INIT hidden: the engine's explicit path, which stores every
/// class itself.
struct Explicit(KvmVcpu);

impl Lent for Explicit {
    fn lent_fd(&self) -> &VcpuFd {
        self.0.fd()
    }
    fn lent_backend(&mut self) -> &mut KvmVcpu {
        &mut self.0
    }
    fn into_vcpu_fd(self) -> VcpuFd {
        self.0.into_fd()
    }
}

impl HostInitBackend for Explicit {}

impl Backend for Explicit {
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        self.0.load(class, state)
    }
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        self.0.store(class, state)
    }
    fn run(&mut self) -> Result<Exit, BackendError> {
        self.0.run()
    }
    fn set_io_in(&mut self, data: &[u8]) {
        self.0.set_io_in(data);
    }
    fn volatile(&self) -> ClassSet {
        self.0.volatile()
    }
    fn delivered(&self) -> ClassSet {
        self.0.delivered()
    }
    fn supported(&self) -> ClassSet {
        self.0.supported()
    }
    fn holds(&self, field: Field) -> bool {
        self.0.holds(field)
    }
    fn queues_signals(&self) -> bool {
        self.0.queues_signals()
    }
    fn stats(&self) -> Stats {
        self.0.stats()
    }
}

#[test]
fn nothing_survives_the_explicit_path_either() {
    for event in [Event::Reset, Event::Init] {
        let Some(found) = scan(event, Explicit) else {
            return;
        };
        assert!(
            found.planted > 20 && found.fields_planted > 100,
            "{found:?}"
        );
        assert!(
            found.survived.is_empty(),
            "{event:?}: {:#?}",
            found.survived
        );
        assert!(
            found.fields_survived.is_empty(),
            "{event:?}: {:#?}",
            found.fields_survived
        );
    }
}
