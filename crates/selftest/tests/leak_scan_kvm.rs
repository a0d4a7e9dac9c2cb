//! A planted value in any MSR the host lets a VMM write does not survive vcpu-reset's RESET
//! where the spec says RESET changes it. Every MSR of the host's list (and of the spec) that
//! accepts a write gets a value that differs from what it held; after the RESET each one is read
//! back. MSRs without a spec row that keep their planted value are printed by index: state a
//! RESET does not establish (the same list `check` reports as `kvm msrs without a spec row`).
//!
//! Skips (printing why) where `/dev/kvm` cannot be used, unless `VCPU_RESET_REQUIRE_KVM=1`.

use std::collections::BTreeMap;

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;
use vcpu_reset::backend::kvm::KvmVcpu;
use vcpu_reset::backend::{
    Backend, BackendError, ClassSet, Exit, HostInit, HostInitBackend, StateClass, Stats,
};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{self, Event, Field, Msr, Rule, Transition, VcpuIdentity, VcpuState};
use vcpu_reset_selftest::host::kvm_for_tests;

fn read(fd: &VcpuFd, index: u32) -> Option<u64> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .ok()?;
    (fd.get_msrs(&mut msrs).ok()? == 1).then(|| msrs.as_slice()[0].data)
}

fn write(fd: &VcpuFd, index: u32, data: u64) -> bool {
    let Ok(msrs) = Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }]) else {
        return false;
    };
    fd.set_msrs(&msrs).ok() == Some(1)
}

/// A backend over a KVM vCPU whose fd the scan can borrow and take back.
trait Lent: Backend {
    fn lent_fd(&self) -> &VcpuFd;
    fn into_vcpu_fd(self) -> VcpuFd;
}

impl Lent for KvmVcpu {
    fn lent_fd(&self) -> &VcpuFd {
        self.fd()
    }
    fn into_vcpu_fd(self) -> VcpuFd {
        self.into_fd()
    }
}

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

/// Plant a value in every MSR that takes one, put the vCPU through `event` (vcpu-reset's RESET
/// or INIT), and return the spec rows whose planted value survived though the event sets them
/// to something else, and the MSRs without a spec row that kept theirs.
fn plant_and<B: Lent>(
    event: Event,
    wrap: impl FnOnce(KvmVcpu) -> B,
) -> Option<(usize, Vec<String>, Vec<String>)> {
    let host = kvm_for_tests()?;
    let vm = host.create_vm(true).expect("VM with an irqchip");
    let kv = KvmVcpu::new(&host, &vm, 0).expect("vCPU 0");
    let model = kv.cpu_model().expect("an Intel or AMD host");
    let identity = VcpuIdentity::new(0);
    let mut v = Vcpu::new(VcpuCache::adopt(wrap(kv)), model, identity);
    v.reset().expect("power-on RESET");
    let rows: BTreeMap<u32, Field> = Field::all()
        .into_iter()
        .filter_map(|f| f.msr_index().map(|i| (i, f)))
        .collect();
    let mut indices: Vec<u32> = host.msr_index_list().to_vec();
    indices.extend(rows.keys());
    indices.sort_unstable();
    indices.dedup();
    // The TSC counts by itself; the x2APIC range is the local APIC page (in xAPIC mode here).
    indices.retain(|&i| i != Msr::Tsc.index() && !(0x800..=0x8ff).contains(&i));

    // Plant: the first of a few bit flips the host accepts and reads back.
    let mut planted = BTreeMap::new();
    {
        let fd = v.cache_mut().backend_mut().lent_fd();
        for &i in &indices {
            let Some(now) = read(fd, i) else { continue };
            for flip in [1u64, 1 << 4, 1 << 8, 1 << 12, 1 << 31] {
                let value = now ^ flip;
                if write(fd, i, value) && read(fd, i) == Some(value) {
                    planted.insert(i, value);
                    break;
                }
            }
        }
    }
    v.cache_mut().invalidate();
    // What the event must give each row: RESET's values, or for INIT the rows INIT sets to a
    // value (every other MSR INIT keeps, planted value included).
    let (want, changes): (_, Box<dyn Fn(Field) -> bool>) = match event {
        Event::Reset => {
            v.reset().expect("RESET");
            let want = spec::expected_state(&model, identity, Transition::Reset);
            (want, Box::new(|_| true))
        }
        Event::Init => {
            v.init().expect("INIT");
            let want = spec::expected_state(&model, identity, Transition::Reset);
            let vendor = model.vendor;
            (
                want,
                Box::new(move |f| matches!(spec::row(f, vendor, Event::Init).rule, Rule::Value(_))),
            )
        }
    };
    let held: BTreeMap<u32, bool> = rows
        .iter()
        .map(|(&i, f)| (i, v.cache().holds(*f)))
        .collect();
    // What the vCPU's next KVM_RUN starts from: the stores a RESET defers to that run (REGS,
    // SREGS and EVENTS through `kvm_run`; IA32_FS_BASE and IA32_GS_BASE are the segment bases
    // in SREGS) applied with their ioctls, as when the VMM takes the fd back.
    let fd = v
        .into_cache()
        .into_backend()
        .expect("deferred stores applied")
        .into_vcpu_fd();
    let mut survived = Vec::new();
    let mut unknown_kept = Vec::new();
    for (&i, &value) in &planted {
        if read(&fd, i) != Some(value) {
            continue;
        }
        match rows.get(&i) {
            Some(f) if held[&i] && changes(*f) && f.get(&want) != u128::from(value) => {
                survived.push(format!("{f} ({i:#x}) kept {value:#x}"));
            }
            Some(_) => {}
            None => unknown_kept.push(format!("{i:#x}")),
        }
    }
    eprintln!(
        "{event:?}: planted {} MSRs; {} spec rows kept a value the event changes; without a spec row, kept: {}",
        planted.len(),
        survived.len(),
        unknown_kept.join(" ")
    );
    Some((planted.len(), survived, unknown_kept))
}

#[test]
fn no_planted_msr_value_survives_a_reset_where_the_spec_resets_it() {
    let Some((planted, survived, _)) = plant_and(Event::Reset, |kv| kv) else {
        return;
    };
    assert!(planted > 20, "values planted in {planted} MSRs");
    assert!(
        survived.is_empty(),
        "planted values survived the RESET: {survived:#?}"
    );
}

#[test]
fn no_planted_msr_value_survives_an_init_where_the_spec_sets_it() {
    let Some((planted, survived, _)) = plant_and(Event::Init, |kv| kv) else {
        return;
    };
    assert!(planted > 20, "values planted in {planted} MSRs");
    assert!(
        survived.is_empty(),
        "planted values survived the INIT: {survived:#?}"
    );
}

#[test]
fn the_scan_names_an_msr_a_reset_leaves_out() {
    let Some((_, survived, _)) = plant_and(Event::Reset, ForgetsPat) else {
        return;
    };
    assert_eq!(survived.len(), 1, "only the forgotten MSR: {survived:#?}");
    assert!(
        survived[0].starts_with("msr.ia32_pat (0x277) kept"),
        "{survived:#?}"
    );
}
