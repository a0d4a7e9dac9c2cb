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

/// A backend whose RESET forgets IA32_PAT (it keeps what the vCPU holds), as an engine that
/// left one MSR out would: the scan must name it.
struct ForgetsPat(KvmVcpu);

impl ForgetsPat {
    /// `state` with IA32_PAT as the vCPU holds it now.
    fn keeping_pat(&mut self, state: &VcpuState) -> Result<VcpuState, BackendError> {
        let mut now = VcpuState::default();
        self.0.load(StateClass::Msrs, &mut now)?;
        let mut kept = *state;
        kept.msrs.pat = now.msrs.pat;
        Ok(kept)
    }
}

impl Lent for ForgetsPat {
    fn lent_fd(&self) -> &VcpuFd {
        self.0.fd()
    }
    fn into_vcpu_fd(self) -> VcpuFd {
        self.0.into_fd()
    }
}

impl HostInitBackend for ForgetsPat {
    fn host_init(
        &mut self,
        target: &VcpuState,
        lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<HostInit>, BackendError> {
        let target = self.keeping_pat(target)?;
        self.0.host_init(&target, lazy, kept)
    }
    fn touch_count(&mut self) -> Option<u64> {
        self.0.touch_count()
    }
}

impl Backend for ForgetsPat {
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        self.0.load(class, state)
    }
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        if class == StateClass::Msrs {
            let state = self.keeping_pat(state)?;
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
        "{event:?}: planted {} MSRs; {} spec rows kept a value the event changes; without a spec row, kept: {}",
        found.planted,
        found.survived.len(),
        kept.join(" ")
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
    let Some(found) = scan(Event::Reset, ForgetsPat) else {
        return;
    };
    let named: Vec<(Field, u32)> = found.survived.iter().map(|s| (s.field, s.index)).collect();
    assert_eq!(
        named,
        [(Field::Msr(Msr::Pat), 0x277)],
        "only the forgotten MSR"
    );
}
