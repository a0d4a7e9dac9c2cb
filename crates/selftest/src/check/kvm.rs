//! Scenarios on KVM, each observed host-side (every field through a fresh register cache) and
//! guest-side (the real-mode probe, run by the vCPU itself):
//!
//! | scenario | what happens | owner |
//! |---|---|---|
//! | `create` | fresh vCPUs, KVM's own RESET at KVM_CREATE_VCPU | host |
//! | `kvm-init` | vCPUs dirtied through the cache, then KVM's own INIT and SIPI, raised through the in-kernel local APIC | host |
//! | `kvm-init-ipi` | the AP dirties itself, the BSP sends INIT and SIPI ([`super::kvm_ipi`]) | host |
//! | `reset` | vCPUs dirtied through the cache, then vcpu-reset's RESET | vcpu-reset |
//! | `init` | vCPUs dirtied through the cache, then vcpu-reset's INIT (APs started by vcpu-reset's SIPI) | vcpu-reset |
//! | `reboot-<how>` | the probe firmware dirties state and reboots itself through the runner (0xCF9 hard/soft, port 0x92, KBC; a triple fault raised by KVM) | vcpu-reset |
//!
//! The BSP is probed at the reset vector; an AP after a startup IPI, with the probe copied to
//! the SIPI page. Fields the guest cannot see from real mode, and fields KVM does not hold on
//! this host, are `host-limit` with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use vcpu_reset_spec::{self as spec, CpuModel, Event, Field, Transition, VcpuIdentity, VcpuState};

use super::dirty::dirtied;
use super::report::{Report, ScenarioInfo, View};
use super::scenario::{Expectation, judge_all, observe_probe_run, vcpu_label};
use super::verdict::{Observed, Owner, Verdict};
use crate::probe::{self, ProbeOptions, RebootVia};
use crate::runner::{Firmware, RebootKind, SharedBuffer, Sink, Vm, VmConfig};
use vcpu_reset::backend::kvm::{KvmHost, KvmVcpu};
use vcpu_reset::backend::{Backend, StateClass};
use vcpu_reset::engine::Vcpu;

/// The SIPI vector an AP is started with; its probe is copied to `vector << 12`.
const AP_SIPI_VECTOR: u8 = 0x10;
/// Time limit of one probe run.
const RUN_LIMIT: Duration = Duration::from_secs(20);

type Fail = String;

fn err(e: impl std::fmt::Display) -> Fail {
    e.to_string()
}

/// A two-vCPU VM whose firmware is the probe (rebooting itself once through `reboot`).
fn probe_vm(
    tag: &str,
    reboot: Option<RebootVia>,
    kvm_create_state: bool,
) -> Result<(Vm, SharedBuffer), Fail> {
    let mut opts = ProbeOptions::reset_vector(tag);
    opts.reboot = reboot;
    let image = probe::firmware_image(&opts).map_err(err)?;
    let fw = Firmware::from_bytes(image, "probe firmware").map_err(err)?;
    let buf = SharedBuffer::default();
    let config = VmConfig {
        vcpus: if reboot.is_some() { 1 } else { 2 },
        memory_mib: 2,
        max_reboots: 4,
        timeout: RUN_LIMIT,
        sink: Sink::Buffer(buf.clone()),
        kvm_create_state,
        ..VmConfig::default()
    };
    let host = crate::host::open().map_err(err)?;
    let vm = Vm::with_host(host, &fw, config).map_err(err)?;
    Ok((vm, buf))
}

/// Why KVM does not hold `field` here.
fn not_held_reason(vcpu: &KvmVcpu, field: Field) -> String {
    let class = StateClass::of(field);
    if field == Field::Msr(vcpu_reset_spec::Msr::Tsc) && vcpu.tsc_writes_ignored() {
        "this host's KVM accepts writes to IA32_TSC but ignores them".into()
    } else if !vcpu.supported().contains(class) {
        format!("KVM offers no {class} state on this host")
    } else if class == StateClass::Msrs {
        "the host's KVM refuses this MSR for this vCPU".into()
    } else {
        format!("not in what KVM's {class} interface carries on this host")
    }
}

/// Why `field` does not exist on `vcpu`, where its XSAVE component is one the vCPU's CPUID does
/// not offer (AMX's tile state: XSAVE components 17 and 18, CPUID.(EAX=0DH,ECX=0):EAX[17] and
/// \[18\]).
fn not_offered(vcpu: &KvmVcpu, field: Field) -> Option<String> {
    let component = match field {
        Field::TileCfg(_) => 17,
        Field::TileData(..) => 18,
        _ => return None,
    };
    (vcpu.xsave_offered() & (1 << component) == 0).then(|| {
        format!(
            "the vCPU's CPUID does not offer XSAVE component {component} (CPUID.(EAX=0DH,ECX=0):EAX[{component}] = 0): no AMX tile state"
        )
    })
}

/// Every field of vCPU `v`, read through a fresh cache (flushed and invalidated first).
fn host_observe(v: &mut Vcpu<KvmVcpu>) -> Result<BTreeMap<Field, Observed>, Fail> {
    v.cache_mut().flush().map_err(err)?;
    v.cache_mut().invalidate();
    let state = *v.cache_mut().state().map_err(err)?;
    let mut out = BTreeMap::new();
    for f in Field::all() {
        let o = if v.cache().holds(f) {
            Observed::Value(f.get(&state))
        } else if let Some(why) = not_offered(v.cache().backend(), f) {
            Observed::NotApplicable(why)
        } else {
            Observed::Unobservable(not_held_reason(v.cache().backend(), f))
        };
        out.insert(f, o);
    }
    Ok(out)
}

/// What the probe run in `log` (the `index`-th run) saw, as observations of every field.
/// A field the vCPU does not implement (KVM does not hold it, e.g. the CMCI LVT of an APIC with
/// six LVT entries, whose MMIO read returns stale data) is a host limit whatever the guest read.
fn guest_observe(
    log: &[u8],
    index: usize,
    expected: &VcpuState,
    vcpu: &Vcpu<KvmVcpu>,
) -> Result<BTreeMap<Field, Observed>, Fail> {
    let held = |f: Field| {
        if vcpu.cache().holds(f) {
            None
        } else {
            Some(format!(
                "vcpu-reset cannot set it here ({}), so what the guest reads is not what was written",
                not_held_reason(vcpu.cache().backend(), f)
            ))
        }
    };
    let mut obs = observe_probe_run(log, index, expected, held)?;
    for (f, o) in obs.iter_mut() {
        if let Some(why) = not_offered(vcpu.cache().backend(), *f) {
            *o = Observed::NotApplicable(why);
        }
    }
    Ok(obs)
}

struct Judged<'a> {
    scenario: &'a str,
    owner: Owner,
    model: &'a CpuModel,
    event: Event,
    /// Fields measured to be out of vcpu-reset's reach on this host, with the reason.
    limits: &'a Limits,
}

/// Fields measured to be out of vcpu-reset's reach on this host, with the reason.
#[derive(Debug, Default)]
struct Limits {
    /// In every view.
    all: BTreeMap<Field, String>,
    /// In what the host reads between runs only; the guest still sees the field as it is.
    host_reads: BTreeMap<Field, String>,
}

impl Limits {
    fn get(&self, field: Field, view: View) -> Option<&String> {
        self.all.get(&field).or_else(|| match view {
            View::Host => self.host_reads.get(&field),
            View::Guest => None,
        })
    }
}

impl Judged<'_> {
    fn add(
        &self,
        report: &mut Report,
        view: View,
        id: u32,
        expected: &VcpuState,
        prior: Option<&VcpuState>,
        obs: &BTreeMap<Field, Observed>,
    ) {
        let first = report.results.len();
        judge_all(
            report,
            &Expectation {
                scenario: self.scenario,
                owner: self.owner,
                view,
                vcpu: vcpu_label(id),
                model: self.model,
                event: self.event,
                expected,
                prior,
            },
            |f| match self.limits.get(f, view) {
                Some(why) if self.owner == Owner::VcpuReset => {
                    Some(Observed::Unobservable(why.clone()))
                }
                _ => obs.get(&f).cloned(),
            },
        );
        // The host's own transitions keep their verdict there; the reason says what the host
        // reads are worth.
        if view == View::Host {
            for r in &mut report.results[first..] {
                if r.verdict == Verdict::Finding
                    && let Some((_, why)) = self
                        .limits
                        .host_reads
                        .iter()
                        .find(|(f, _)| f.name() == r.field)
                {
                    r.reason = Some(match r.reason.take() {
                        Some(old) => format!("{old} {why}"),
                        None => why.clone(),
                    });
                }
            }
        }
    }
}

/// Run the probe for the AP: copy it to the SIPI page, start the AP with `start`, run.
fn probe_ap(
    vm: &mut Vm,
    buf: &SharedBuffer,
    tag: &str,
    start: impl FnOnce(&mut Vm) -> Result<(), Fail>,
) -> Result<Vec<u8>, Fail> {
    let mut opts = ProbeOptions::reset_vector(tag);
    opts.origin = probe::Origin {
        segment: u16::from(AP_SIPI_VECTOR) << 8,
        offset: 0,
    };
    let image = probe::assemble_image(&opts).map_err(err)?;
    vm.memory()
        .write(u64::from(opts.origin.linear()), &image.bytes)
        .map_err(err)?;
    take(buf);
    start(vm)?;
    vm.run().map_err(err)?;
    Ok(take(buf))
}

fn take(buf: &SharedBuffer) -> Vec<u8> {
    buf.lock()
        .map(|mut b| std::mem::take(&mut *b))
        .unwrap_or_default()
}

/// Dirty every vCPU through its cache; returns the states KVM then holds (the priors).
fn dirty_all(vm: &mut Vm) -> Result<Vec<VcpuState>, Fail> {
    let model = *vm.model();
    let mut priors = Vec::new();
    for (i, v) in vm.vcpus().iter_mut().enumerate() {
        let reset = spec::expected_state(&model, VcpuIdentity::new(i as u32), Transition::Reset);
        v.cache_mut().write_state(&dirtied(&reset));
        v.cache_mut().flush().map_err(err)?;
        v.cache_mut().invalidate();
        priors.push(*v.cache_mut().state().map_err(err)?);
    }
    Ok(priors)
}

/// Scenario `views-<of>`: the values the cache read for vCPU `id` (through KVM_GET_SREGS and
/// KVM_GET_XSAVE) against the same fields read through KVM's other interfaces (KVM_GET_MSRS,
/// KVM_GET_FPU). They must agree; a disagreement is a finding about the host.
fn cross_check(report: &mut Report, of: &str, id: u32, v: &mut Vcpu<KvmVcpu>) -> Result<(), Fail> {
    v.cache_mut().flush().map_err(err)?;
    let others = v.cache_mut().backend_mut().other_views().map_err(err)?;
    v.cache_mut().invalidate();
    for o in others {
        let mine = v.cache_mut().get(o.field).map_err(err)?;
        let (verdict, reason) = if mine == o.value {
            (super::Verdict::Pass, None)
        } else {
            (
                super::Verdict::Finding,
                Some(format!(
                    "{} reports {:#x}, the interface vcpu-reset uses reports {:#x}",
                    o.via, o.value, mine
                )),
            )
        };
        report.results.push(super::FieldResult {
            scenario: format!("views-{of}"),
            view: View::Host,
            vcpu: vcpu_label(id),
            field: o.field.name(),
            class: o.field.class().name().into(),
            verdict,
            expected: spec::hex(o.field, mine),
            actual: Some(spec::hex(o.field, o.value)),
            citation: format!("{} and the view vcpu-reset reads must agree", o.via),
            reason,
        });
    }
    Ok(())
}

fn create(report: &mut Report, limits: &Limits) -> Result<(), Fail> {
    let (mut vm, buf) = probe_vm("create", None, true)?;
    let model = *vm.model();
    let j = Judged {
        scenario: "create",
        owner: Owner::Host,
        model: &model,
        event: Event::Reset,
        limits,
    };
    for id in 0..2u32 {
        let expected = spec::expected_state(&model, VcpuIdentity::new(id), Transition::Reset);
        let obs = host_observe(&mut vm.vcpus()[id as usize])?;
        j.add(report, View::Host, id, &expected, None, &obs);
        cross_check(report, "create", id, &mut vm.vcpus()[id as usize])?;
    }
    let expected = spec::expected_state(&model, VcpuIdentity::new(0), Transition::Reset);
    vm.run().map_err(err)?;
    let obs = guest_observe(&take(&buf), 0, &expected, &vm.vcpus()[0])?;
    j.add(report, View::Guest, 0, &expected, None, &obs);
    Ok(())
}

/// `reset`, `init` (vcpu-reset's) and `kvm-init` (KVM's): dirty, apply, observe.
fn transition(
    report: &mut Report,
    name: &str,
    event: Event,
    kvm_own: bool,
    limits: &Limits,
) -> Result<(), Fail> {
    let (mut vm, buf) = probe_vm(name, None, kvm_own)?;
    let model = *vm.model();
    let priors = dirty_all(&mut vm)?;
    let j = Judged {
        scenario: name,
        owner: if kvm_own {
            Owner::Host
        } else {
            Owner::VcpuReset
        },
        model: &model,
        event,
        limits,
    };
    match (event, kvm_own) {
        (Event::Reset, _) => {
            vm.reboot(RebootKind::Reset).map_err(err)?;
        }
        (Event::Init, false) => {
            vm.reboot(RebootKind::Init).map_err(err)?;
        }
        (Event::Init, true) => {
            for v in vm.vcpus() {
                v.cache_mut().flush().map_err(err)?;
                v.cache_mut().backend_mut().kvm_init().map_err(err)?;
                v.cache_mut().invalidate();
            }
        }
    }
    let expect = |id: u32| match event {
        Event::Reset => spec::expected_state(&model, VcpuIdentity::new(id), Transition::Reset),
        Event::Init => spec::expected_state(
            &model,
            VcpuIdentity::new(id),
            Transition::Init(&priors[id as usize]),
        ),
    };
    for id in 0..2u32 {
        let obs = host_observe(&mut vm.vcpus()[id as usize])?;
        let prior = (event == Event::Init).then(|| &priors[id as usize]);
        j.add(report, View::Host, id, &expect(id), prior, &obs);
        cross_check(report, name, id, &mut vm.vcpus()[id as usize])?;
    }
    // The BSP is at the reset vector: the probe firmware runs.
    vm.run().map_err(err)?;
    let bsp = expect(0);
    let log = take(&buf);
    let obs = guest_observe(&log, 0, &bsp, &vm.vcpus()[0])?;
    j.add(
        report,
        View::Guest,
        0,
        &bsp,
        (event == Event::Init).then(|| &priors[0]),
        &obs,
    );
    // The AP waits for SIPI: start it at the probe's copy.
    let mut ap = expect(1);
    spec::sipi(&mut ap, AP_SIPI_VECTOR);
    let log = probe_ap(&mut vm, &buf, name, |vm| {
        let v = &mut vm.vcpus()[1];
        if kvm_own {
            v.cache_mut().flush().map_err(err)?;
            v.cache_mut()
                .backend_mut()
                .kvm_sipi(AP_SIPI_VECTOR)
                .map_err(err)?;
            v.cache_mut().invalidate();
            Ok(())
        } else {
            match v.sipi(AP_SIPI_VECTOR).map_err(err)? {
                true => Ok(()),
                false => Err("the AP was not waiting for SIPI".into()),
            }
        }
    })?;
    let obs = guest_observe(&log, 0, &ap, &vm.vcpus()[1])?;
    j.add(
        report,
        View::Guest,
        1,
        &ap,
        (event == Event::Init).then(|| &priors[1]),
        &obs,
    );
    Ok(())
}

fn reboot(report: &mut Report, via: Option<RebootVia>, limits: &Limits) -> Result<(), Fail> {
    let name = format!("reboot-{}", via.map_or("triple-fault", RebootVia::name));
    let (mut vm, buf) = probe_vm(&name, via, false)?;
    let model = *vm.model();
    let reset = spec::expected_state(&model, VcpuIdentity::new(0), Transition::Reset);
    if via.is_none() {
        vm.inject_triple_fault(0).map_err(err)?;
    }
    let out = vm.run().map_err(err)?;
    let Some(record) = out.reboots.first() else {
        return Err("the guest did not reboot".into());
    };
    let kind = record.kind;
    let log = take(&buf);
    let mut prior = super::dirty::before_probe_reboot(&reset);
    // The TSC kept counting through the first run: take what the guest saw there as the prior.
    if via.is_some()
        && let Ok(runs) = probe::parse(&log)
        && let Some(tsc) = runs
            .first()
            .and_then(|r| r.number(&probe::record::msr_key(0x10)))
    {
        prior.msrs.tsc = tsc as u64;
    }
    let (event, expected) = match kind {
        RebootKind::Reset => (Event::Reset, reset),
        RebootKind::Init => (
            Event::Init,
            spec::expected_state(&model, VcpuIdentity::new(0), Transition::Init(&prior)),
        ),
    };
    let j = Judged {
        scenario: &name,
        owner: Owner::VcpuReset,
        model: &model,
        event,
        limits,
    };
    // With a self-reboot the second run is after it; with the injected triple fault, the only run.
    let index = usize::from(via.is_some());
    let obs = guest_observe(&log, index, &expected, &vm.vcpus()[0])?;
    j.add(
        report,
        View::Guest,
        0,
        &expected,
        (event == Event::Init).then_some(&prior),
        &obs,
    );
    Ok(())
}

fn record(report: &mut Report, name: &str, owner: Owner, result: Result<(), Fail>) {
    report.scenarios.push(ScenarioInfo {
        name: name.into(),
        owner,
        error: result.err(),
    });
}

/// The MSRs in `listed` (the host's KVM_GET_MSR_INDEX_LIST) that no spec field reads or
/// writes, in index order: state the host keeps that vcpu-reset's RESET does not establish.
/// The x2APIC range (800H–8FFH) is the local APIC page, which the spec covers register by
/// register.
pub fn msrs_without_spec_row(listed: &[u32]) -> Vec<u32> {
    let known: std::collections::BTreeSet<u32> =
        Field::all().iter().filter_map(Field::msr_index).collect();
    let mut out: Vec<u32> = listed
        .iter()
        .copied()
        .filter(|i| !known.contains(i) && !(0x800..=0x8ff).contains(i))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The host-side leak scan ([`super::leak`]) after vcpu-reset's RESET and INIT, and after
/// KVM's own INIT: the `leak` host fact (what was planted and what survived, in one line), a
/// failed field per survivor of vcpu-reset's RESET or INIT, and a `leak kvm-init` host fact
/// with what KVM's INIT alone keeps of what a RESET must change (a finding about the host,
/// counted by state class, not judged field by field).
fn leak(report: &mut Report, host: &KvmHost) {
    let mut planted = 0;
    let mut survived = Vec::new();
    let mut kept_unknown = Vec::new();
    let mut kept_unheld = Vec::new();
    let mut kept_by_host = Vec::new();
    for (event, name) in [(Event::Reset, "leak-reset"), (Event::Init, "leak-init")] {
        match super::leak::scan(host, event, |kv| kv) {
            Ok(found) => {
                planted = planted.max(found.total_planted());
                survived.push(found.total_survived());
                if event == Event::Reset {
                    kept_unknown = found.unknown_kept.clone();
                    kept_unheld = found.not_held_kept.clone();
                    kept_by_host = found.host_kept.clone();
                }
                let what = if event == Event::Reset {
                    "RESET"
                } else {
                    "INIT"
                };
                let survivors = found
                    .survived
                    .iter()
                    .map(|s| {
                        (
                            s.field,
                            s.expected,
                            u128::from(s.planted),
                            format!("MSR {:#x}", s.index),
                        )
                    })
                    .chain(
                        found
                            .fields_survived
                            .iter()
                            .map(|s| (s.field, s.expected, s.planted, s.field.name())),
                    );
                for (field, expected, value, place) in survivors {
                    let row = spec::row(field, found.vendor, event);
                    report.results.push(super::report::FieldResult {
                        scenario: name.into(),
                        view: View::Host,
                        vcpu: "bsp".into(),
                        field: field.name(),
                        class: field.class().name().to_string(),
                        verdict: super::Verdict::Fail,
                        expected: format!("{expected:#x}"),
                        actual: Some(format!("{value:#x}")),
                        citation: row.citation.to_string(),
                        reason: Some(format!(
                            "the value planted in {place} before vcpu-reset's {what} survived it"
                        )),
                    });
                }
                record(report, name, Owner::VcpuReset, Ok(()));
            }
            Err(e) => {
                survived.push(0);
                record(report, name, Owner::VcpuReset, Err(e));
            }
        }
    }
    // The guest side: what a real-mode guest plants, read back after a reboot through 0xCF9.
    let mut guest_planted = 0;
    for (i, (event, name)) in [
        (Event::Reset, "leak-guest-reset"),
        (Event::Init, "leak-guest-init"),
    ]
    .into_iter()
    .enumerate()
    {
        match super::leak_guest::run_on_kvm(event) {
            Ok(found) => {
                guest_planted = guest_planted.max(found.planted.len());
                let what = if event == Event::Reset {
                    "RESET"
                } else {
                    "INIT"
                };
                let mut n = 0;
                for p in found.survivors() {
                    n += 1;
                    let row = spec::row(p.field, found.vendor, event);
                    report.results.push(super::report::FieldResult {
                        scenario: name.into(),
                        view: View::Guest,
                        vcpu: "bsp".into(),
                        field: p.field.name(),
                        class: p.field.class().name().to_string(),
                        verdict: super::Verdict::Fail,
                        expected: format!("{:#x}", p.expected.unwrap_or(0)),
                        actual: Some(format!("{:#x}", p.planted)),
                        citation: row.citation.to_string(),
                        reason: Some(format!(
                            "the guest planted this before a reboot through 0xCF9 (vcpu-reset's {what}) and read it back after"
                        )),
                    });
                }
                for (area, dwords) in found.clobbered() {
                    n += 1;
                    let field = if area == super::leak_guest::STEAL_AREA {
                        Field::Msr(vcpu_reset_spec::Msr::KvmStealTime)
                    } else {
                        Field::Msr(vcpu_reset_spec::Msr::KvmSystemTime)
                    };
                    report.results.push(super::report::FieldResult {
                        scenario: name.into(),
                        view: View::Guest,
                        vcpu: "bsp".into(),
                        field: field.name(),
                        class: field.class().name().to_string(),
                        verdict: super::Verdict::Fail,
                        expected: "0x0".into(),
                        actual: None,
                        citation: spec::row(field, found.vendor, event).citation.to_string(),
                        reason: Some(format!(
                            "after vcpu-reset's {what} the host still wrote {dwords} dwords of the canary the guest put over the previous boot's area at {area:#x}"
                        )),
                    });
                }
                if let Some(s) = survived.get_mut(i) {
                    *s += n;
                }
                record(report, name, Owner::VcpuReset, Ok(()));
            }
            Err(e) => record(report, name, Owner::VcpuReset, Err(e)),
        }
    }
    let hex = |v: &[u32]| {
        v.iter()
            .map(|i| format!("{i:#x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut line = format!(
        "{planted} fields planted (host), {guest_planted} (guest); survived RESET {}, INIT {} (where INIT must change them)",
        survived.first().copied().unwrap_or(0),
        survived.get(1).copied().unwrap_or(0),
    );
    if !kept_unknown.is_empty() {
        line.push_str(&format!(
            "; kept without a spec row: {}",
            hex(&kept_unknown)
        ));
    }
    if !kept_by_host.is_empty() {
        line.push_str(&format!(
            "; kept, the host refuses the RESET value: {}",
            hex(&kept_by_host)
        ));
    }
    if !kept_unheld.is_empty() {
        line.push_str(&format!(
            "; kept, not in the host's MSR list: {}",
            hex(&kept_unheld)
        ));
    }
    report.host.insert("leak".into(), line);
    match super::leak::scan_kvm_init(host) {
        Ok(found) => {
            let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
            for f in found
                .survived
                .iter()
                .map(|s| s.field)
                .chain(found.fields_survived.iter().map(|s| s.field))
            {
                *by_class.entry(f.class().name()).or_default() += 1;
            }
            let classes: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
            report.host.insert(
                "leak kvm-init".into(),
                format!(
                    "KVM's own INIT keeps {} of {} planted fields a RESET changes ({})",
                    found.total_survived(),
                    found.total_planted(),
                    classes.join(", ")
                ),
            );
            record(report, "leak-kvm-init", Owner::Host, Ok(()));
        }
        Err(e) => record(report, "leak-kvm-init", Owner::Host, Err(e)),
    }
}

/// Run every KVM scenario.
pub fn run(report: &mut Report, host: &KvmHost) {
    report.host.insert("backend".into(), "kvm".into());
    let caps = host.caps();
    report.host.insert(
        "kvm".into(),
        format!(
            "sync_regs={} sregs2={} nested_state={} max_vcpus={}",
            caps.sync_regs, caps.sregs2, caps.nested_state, caps.max_vcpus
        ),
    );
    let unknown = msrs_without_spec_row(host.msr_index_list());
    if !unknown.is_empty() {
        // State the host holds and a RESET does not know: reported, so a new kernel's MSRs
        // are never kept silently.
        report.host.insert(
            "kvm msrs without a spec row".into(),
            unknown
                .iter()
                .map(|i| format!("{i:#x}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let (limits, cpu) = probe_host();
    if let Some(cpu) = cpu {
        report.host.insert("cpu".into(), cpu);
    }
    for (f, why) in &limits.all {
        report.host.insert(format!("limit {f}"), why.clone());
    }
    for (f, why) in &limits.host_reads {
        report
            .host
            .insert(format!("limit {f} (host reads)"), why.clone());
    }
    let r = create(report, &limits);
    record(report, "create", Owner::Host, r);
    let r = transition(report, "kvm-init", Event::Init, true, &limits);
    record(report, "kvm-init", Owner::Host, r);
    let r = super::kvm_ipi::run(report, &limits.all);
    record(report, "kvm-init-ipi", Owner::Host, r);
    let r = transition(report, "reset", Event::Reset, false, &limits);
    record(report, "reset", Owner::VcpuReset, r);
    let r = transition(report, "init", Event::Init, false, &limits);
    record(report, "init", Owner::VcpuReset, r);
    for via in RebootVia::ALL.map(Some).into_iter().chain([None]) {
        let name = format!("reboot-{}", via.map_or("triple-fault", RebootVia::name));
        let r = reboot(report, via, &limits);
        record(report, &name, Owner::VcpuReset, r);
    }
    leak(report, host);
}

/// What vcpu-reset cannot set on this host, and the CPU model, from one probe vCPU: a write
/// of IA32_TSC that the backend finds ignored (it checks the first read-back after a write)
/// makes the TSC a host limit for vcpu-reset's scenarios, and a TSC that does not count
/// between two host reads ([`TSC_REBASED`]) a limit of what the host reads.
fn probe_host() -> (Limits, Option<String>) {
    let mut limits = Limits::default();
    let tsc = Field::Msr(vcpu_reset_spec::Msr::Tsc);
    let Some(host) = crate::host::open().ok() else {
        return (limits, None);
    };
    let Some(vm) = host.create_vm(true).ok() else {
        return (limits, None);
    };
    let Some(kv) = KvmVcpu::new(&host, &vm, 0).ok() else {
        return (limits, None);
    };
    let cpu = kv.cpu_model().map(|m| {
        format!(
            "{} signature {:#x}, {} GP counters, APIC version {:#x}",
            m.vendor.name(),
            m.signature,
            m.gp_counters,
            m.apic_version
        )
    });
    let mut c = vcpu_reset::cache::VcpuCache::adopt(kv);
    // Two reads with nothing run in between, TSC_PAUSE apart.
    let read = |c: &mut vcpu_reset::cache::VcpuCache<KvmVcpu>| {
        c.invalidate();
        c.get(tsc).ok().map(|v| (v, std::time::Instant::now()))
    };
    if let Some((first, at)) = read(&mut c) {
        std::thread::sleep(TSC_PAUSE);
        if let Some((second, then)) = read(&mut c)
            && !tsc_counted(first, second, then.duration_since(at).as_nanos())
        {
            limits.host_reads.insert(tsc, TSC_REBASED.into());
        }
    }
    let wrote = c.get(tsc).and_then(|v| c.set(tsc, v ^ (1 << 44)));
    if wrote.is_ok() && c.flush().is_ok() {
        c.invalidate();
        let _ = c.get(tsc);
        if c.backend().tsc_writes_ignored() {
            limits.all.insert(tsc, not_held_reason(c.backend(), tsc));
        }
    }
    (limits, cpu)
}

/// How long [`probe_host`] waits between its two reads of the TSC.
const TSC_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Why the host's reads of IA32_TSC between runs cannot show that a transition kept it
/// counting, on a host whose KVM re-bases the TSC at every vCPU ioctl.
pub const TSC_REBASED: &str = "this KVM does not count the TSC between runs: where the host kernel \
     marked its own TSC unstable, every vCPU ioctl sets the vCPU's TSC back to its value at the \
     last VM exit (kvm_arch_vcpu_load() in arch/x86/kvm/x86.c) and the next KVM_RUN catches it \
     up, so two host reads with no run between may go backwards; the guest's view is judged";

/// Whether a TSC read `second`, `elapsed_ns` after a read `first` with no run in between,
/// counted on: by at least 1/20 of the time passed in cycles (a TSC of 50 MHz or more).
fn tsc_counted(first: u128, second: u128, elapsed_ns: u128) -> bool {
    second >= first && second - first >= elapsed_ns / 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_of_host_reads_leaves_the_guest_view_judged() {
        let tsc = Field::Msr(vcpu_reset_spec::Msr::Tsc);
        let mut limits = Limits::default();
        limits.host_reads.insert(tsc, TSC_REBASED.into());
        assert_eq!(
            limits.get(tsc, View::Host).map(String::as_str),
            Some(TSC_REBASED)
        );
        assert_eq!(limits.get(tsc, View::Guest), None);
        limits.all.insert(tsc, "ignored".into());
        assert_eq!(
            limits.get(tsc, View::Guest).map(String::as_str),
            Some("ignored")
        );
    }

    #[test]
    fn a_tsc_that_stood_still_or_went_back_between_reads_did_not_count() {
        // 5 ms at 2.6 GHz.
        assert!(tsc_counted(1_000, 13_001_000, 5_000_000));
        // A KVM that re-bases at each ioctl: a few µs of counting, or less than before.
        assert!(!tsc_counted(0x33_bd3d, 0x33_ae83, 5_000_000));
        assert!(!tsc_counted(1_000, 4_000, 5_000_000));
    }

    #[test]
    fn msrs_the_host_lists_without_a_spec_row_are_named_by_index() {
        // IA32_DEBUGCTL, the kvmclock MSR, SMI_COUNT and steal time have rows, the x2APIC TPR
        // is the LAPIC page; MSR_LASTBRANCH_TOS (1DAH) and a KVM paravirtual MSR of a future
        // kernel (4B564D08H) have none.
        let listed = [
            0x1d9,
            0x4b56_4d01,
            0x808,
            0x4b56_4d08,
            0x34,
            0x1da,
            0x4b56_4d03,
            0x1da,
        ];
        assert_eq!(msrs_without_spec_row(&listed), vec![0x1da, 0x4b56_4d08]);
    }
}
