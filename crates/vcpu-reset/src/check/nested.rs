//! The nested scenarios: `nested-reset` and `nested-init`.
//!
//! On the software model each case starts from a poisoned vCPU, RESETs it (power-on), dirties
//! it as the other scenarios do, changes what the virtualization extensions own (the VMX
//! capability MSRs narrowed by the VMM, the SGX launch-enclave hashes written by the guest,
//! IA32_FEATURE_CONTROL locked, EFER.SVME and VM_HSAVE_PA on AMD) and puts it into nested
//! state the way a guest hypervisor does (VMXON, VMPTRLD, VMLAUNCH and VM entry; CLGI and
//! VMRUN). Then vcpu-reset's RESET or INIT is applied and the whole state is read back through
//! a fresh cache and judged field by field; RESET must also leave no poison.
//!
//! - `nested-reset`: RESET from VMX non-root operation with an enlightened VMCS (BSP), from
//!   VMX root operation (AP) and from SVM guest mode with GIF and the INIT intercept (BSP of
//!   an AMD model) ends in the spec's RESET state.
//! - `nested-init`: INIT in VMX root operation is held (nothing changes) and taken after the
//!   guest's VMXOFF; in VMX non-root operation it is a VM exit; with GIF = 0 it is held and
//!   taken after STGI; in SVM guest mode it is a #VMEXIT when intercepted and taken (leaving
//!   guest mode) when not.
//!
//! On KVM the scenarios RESET (and INIT) a real vCPU and judge the nested fields only: those
//! the host does not hold are host limits with the reason (this host has no
//! KVM_CAP_NESTED_STATE and offers neither nested VMX nor SGX launch control).

use vcpu_reset_spec::{
    self as spec, CpuModel, Event, Field, InitOutcome, InitRule, Msr, NestedReg, Transition,
    VcpuIdentity, VcpuState, Vendor,
};

use super::BackendChoice;
use super::dirty::dirtied;
use super::model::{Apply, default_model};
use super::report::{Report, ScenarioInfo, View};
use super::scenario::{Expectation, judge_all, run_cases};
use super::verdict::{Observed, Owner};
use crate::backend::Exit;
use crate::backend::kvm::{KvmHost, KvmVcpu};
use crate::backend::model::{ModelVcpu, NestedError, NestedVmx};
use crate::cache::VcpuCache;
use crate::engine::{NESTED_FIELDS, Vcpu};

/// Name of the RESET scenario.
pub const NESTED_RESET: &str = "nested-reset";
/// Name of the INIT scenario.
pub const NESTED_INIT: &str = "nested-init";

/// Guest-physical address of the guest hypervisor's VMXON region.
pub const VMXON_REGION: u64 = 0x1000;
/// Guest-physical address of its VMCS.
pub const VMCS_REGION: u64 = 0x2000;
/// Guest-physical address of its enlightened VMCS.
pub const EVMCS_REGION: u64 = 0x3000;
/// Guest-physical address of its host save area (VM_HSAVE_PA).
pub const HSAVE_AREA: u64 = 0x4000;

/// The Intel model of the nested scenarios: the check's default model, with SGX launch control
/// so that the launch-enclave hashes have a RESET value to restore.
pub fn intel_model() -> CpuModel {
    CpuModel {
        sgx_launch_control: true,
        ..default_model()
    }
}

/// The AMD model of the SVM cases.
pub fn amd_model() -> CpuModel {
    CpuModel::generic(Vendor::Amd)
}

/// How a case puts the vCPU into nested state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// VMXON, VMPTRLD, VMLAUNCH (launch state only) and an enlightened VMCS: VMX root.
    VmxRoot,
    /// As [`Setup::VmxRoot`], then VM entry: VMX non-root operation.
    VmxNonRoot,
    /// CLGI: GIF = 0 outside guest mode.
    SvmGifClear,
    /// CLGI and VMRUN: SVM guest mode, INIT intercepted or not.
    SvmGuest {
        /// The guest's VMCB intercepts INIT.
        intercept_init: bool,
    },
}

impl Setup {
    /// Do what a guest hypervisor does to get there.
    pub fn enter(self, n: &mut NestedVmx) -> Result<(), NestedError> {
        match self {
            Setup::VmxRoot | Setup::VmxNonRoot => {
                n.vmxon(VMXON_REGION)?;
                n.vmptrld(VMCS_REGION)?;
                n.vmlaunch()?;
                n.set_evmcs(Some(EVMCS_REGION))?;
                if self == Setup::VmxNonRoot {
                    n.vm_entry()?;
                }
                Ok(())
            }
            Setup::SvmGifClear => n.clgi(),
            Setup::SvmGuest { intercept_init } => {
                n.clgi()?;
                n.vmrun(intercept_init)
            }
        }
    }
}

/// Run both scenarios on the software model, with `apply` as vcpu-reset's RESET and INIT.
pub fn run_model(report: &mut Report, apply: Apply) {
    let reset_cases = [
        ("bsp-vmx-non-root", intel_model(), 0, Setup::VmxNonRoot),
        ("ap1-vmx-root", intel_model(), 1, Setup::VmxRoot),
        (
            "bsp-svm-guest",
            amd_model(),
            0,
            Setup::SvmGuest {
                intercept_init: true,
            },
        ),
    ];
    run_cases(
        report,
        NESTED_RESET,
        Owner::VcpuReset,
        reset_cases.map(|(label, model, id, setup)| (label.to_string(), (label, model, id, setup))),
        |report, (label, model, id, setup)| reset_case(report, label, &model, id, setup, apply),
    );

    let init_cases: [(&str, CpuModel, Setup); 5] = [
        ("bsp-vmx-root", intel_model(), Setup::VmxRoot),
        ("bsp-vmx-non-root", intel_model(), Setup::VmxNonRoot),
        ("bsp-svm-gif", amd_model(), Setup::SvmGifClear),
        (
            "bsp-svm-intercept",
            amd_model(),
            Setup::SvmGuest {
                intercept_init: true,
            },
        ),
        (
            "bsp-svm-guest",
            amd_model(),
            Setup::SvmGuest {
                intercept_init: false,
            },
        ),
    ];
    run_cases(
        report,
        NESTED_INIT,
        Owner::VcpuReset,
        init_cases.map(|(label, model, setup)| (label.to_string(), (label, model, setup))),
        |report, (label, model, setup)| init_case(report, label, &model, setup, apply),
    );
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A poisoned vCPU, RESET, dirtied, with the extensions' fields changed and in nested state.
/// Returns the engine and the state it now holds.
fn prepare(
    model: &CpuModel,
    id: u32,
    setup: Setup,
) -> Result<(Vcpu<ModelVcpu>, VcpuState), String> {
    let ident = VcpuIdentity::new(id);
    let mut v = Vcpu::new(VcpuCache::adopt(ModelVcpu::new_poisoned()), *model, ident);
    v.reset().map_err(err)?;
    let mut prior = dirtied(&spec::expected_state(model, ident, Transition::Reset));
    match model.vendor {
        Vendor::Intel => {
            // Firmware locked IA32_FEATURE_CONTROL with VMXON allowed outside SMX.
            prior.msrs.feature_control = 0x5;
            // The VMM narrowed every capability; the guest wrote its own launch-enclave key.
            for (i, cap) in prior.msrs.vmx_capabilities.iter_mut().enumerate() {
                *cap = model.vmx_capabilities[i] ^ (1 << 40);
            }
            prior.msrs.sgx_le_pubkey_hash = [0x1111_2222_3333_4444; 4];
        }
        Vendor::Amd => {
            prior.efer |= 1 << 12; // SVME
            prior.msrs.vm_hsave_pa = HSAVE_AREA;
        }
    }
    v.cache().write_state(&prior);
    v.cache().flush().map_err(err)?;
    setup
        .enter(v.cache().backend_mut().nested_mut())
        .map_err(err)?;
    v.cache().invalidate();
    let state = *v.cache().state().map_err(err)?;
    Ok((v, state))
}

/// The whole state read back through a fresh cache, and the poison left.
fn read_back(v: Vcpu<ModelVcpu>) -> Result<(VcpuState, Vec<String>), String> {
    let backend = v.into_cache().into_backend().map_err(err)?;
    let leftover = backend.poisoned();
    let mut fresh = VcpuCache::adopt(backend);
    let state = *fresh.state().map_err(err)?;
    Ok((state, leftover))
}

struct Judged<'a> {
    scenario: &'a str,
    label: &'a str,
    vendor: Vendor,
    event: Event,
    expected: &'a VcpuState,
    prior: Option<&'a VcpuState>,
}

fn judge_state(report: &mut Report, j: &Judged<'_>, state: &VcpuState) {
    judge_all(
        report,
        &Expectation {
            scenario: j.scenario,
            owner: Owner::VcpuReset,
            view: View::Host,
            vcpu: j.label.to_string(),
            vendor: j.vendor,
            event: j.event,
            expected: j.expected,
            prior: j.prior,
        },
        |f: Field| Some(Observed::Value(f.get(state))),
    );
}

fn reset_case(
    report: &mut Report,
    label: &str,
    model: &CpuModel,
    id: u32,
    setup: Setup,
    apply: Apply,
) -> Result<(), String> {
    let (mut v, _) = prepare(model, id, setup)?;
    apply(&mut v, Event::Reset)?;
    let expected = spec::expected_state(model, VcpuIdentity::new(id), Transition::Reset);
    let (state, leftover) = read_back(v)?;
    judge_state(
        report,
        &Judged {
            scenario: NESTED_RESET,
            label,
            vendor: model.vendor,
            event: Event::Reset,
            expected: &expected,
            prior: None,
        },
        &state,
    );
    if !leftover.is_empty() {
        return Err(format!("poison left in: {}", leftover.join(", ")));
    }
    Ok(())
}

/// What INIT must do in each setup, typed from the rules (not computed by the code under test).
fn expected_outcome(setup: Setup) -> InitOutcome {
    match setup {
        Setup::VmxRoot => InitOutcome::Held(InitRule::VmxRoot),
        Setup::VmxNonRoot => InitOutcome::VmExit(InitRule::VmxNonRoot),
        Setup::SvmGifClear => InitOutcome::Held(InitRule::SvmGif),
        Setup::SvmGuest {
            intercept_init: true,
        } => InitOutcome::VmExit(InitRule::SvmIntercept),
        Setup::SvmGuest {
            intercept_init: false,
        } => InitOutcome::Taken,
    }
}

/// Run the guest once, doing what ends the block: VMXOFF or STGI.
fn end_block(v: &mut Vcpu<ModelVcpu>, setup: Setup) -> Result<(), String> {
    let svm = matches!(setup, Setup::SvmGifClear);
    v.cache().backend_mut().set_guest(Box::new(move |g| {
        let r = if svm {
            g.nested().stgi()
        } else {
            g.nested().vmxoff()
        };
        match r {
            Ok(()) => Exit::Hlt,
            Err(e) => Exit::InternalError {
                reason: e.to_string(),
            },
        }
    }));
    let exit = v.cache().run().map_err(err)?;
    v.cache().backend_mut().clear_guest();
    if exit != Exit::Hlt {
        return Err(format!("the guest could not end the block: {exit:?}"));
    }
    Ok(())
}

fn init_case(
    report: &mut Report,
    label: &str,
    model: &CpuModel,
    setup: Setup,
    apply: Apply,
) -> Result<(), String> {
    let ident = VcpuIdentity::new(0);
    let (mut v, prior) = prepare(model, 0, setup)?;
    apply(&mut v, Event::Init)?;
    let want = expected_outcome(setup);
    let mut j = Judged {
        scenario: NESTED_INIT,
        label,
        vendor: model.vendor,
        event: Event::Init,
        expected: &prior,
        prior: Some(&prior),
    };
    match want {
        InitOutcome::Held(rule) => {
            if v.init_latched() != Some(rule) {
                return Err(format!(
                    "INIT under rule {rule} was not held (latched: {:?})",
                    v.init_latched()
                ));
            }
            // Held: nothing changed.
            v.cache().invalidate();
            let held = *v.cache().state().map_err(err)?;
            let held_label = format!("{label}-held");
            j.label = &held_label;
            judge_state(report, &j, &held);
            // The guest ends the block; the latched INIT is then taken.
            end_block(&mut v, setup)?;
            v.cache().invalidate();
            let before = *v.cache().state().map_err(err)?;
            let out = v.deliver_latched_init().map_err(err)?;
            if out.and_then(|o| o.init) != Some(InitOutcome::Taken) {
                return Err(format!(
                    "the latched INIT was not taken after the block ended: {out:?}"
                ));
            }
            let expected = spec::expected_state(model, ident, Transition::Init(&before));
            let (state, leftover) = read_back(v)?;
            let taken_label = format!("{label}-taken");
            judge_state(
                report,
                &Judged {
                    label: &taken_label,
                    expected: &expected,
                    prior: Some(&before),
                    ..j
                },
                &state,
            );
            no_poison(&leftover)
        }
        InitOutcome::VmExit(rule) => {
            if v.init_latched().is_some() {
                return Err(format!("INIT under rule {rule} was latched, not a VM exit"));
            }
            let expected = spec::init_vm_exit(rule, &prior);
            let (state, leftover) = read_back(v)?;
            judge_state(
                report,
                &Judged {
                    expected: &expected,
                    ..j
                },
                &state,
            );
            no_poison(&leftover)
        }
        InitOutcome::Taken => {
            let expected = spec::expected_state(model, ident, Transition::Init(&prior));
            let (state, leftover) = read_back(v)?;
            judge_state(
                report,
                &Judged {
                    expected: &expected,
                    ..j
                },
                &state,
            );
            no_poison(&leftover)
        }
    }
}

fn no_poison(leftover: &[String]) -> Result<(), String> {
    if leftover.is_empty() {
        Ok(())
    } else {
        Err(format!("poison left in: {}", leftover.join(", ")))
    }
}

/// Why KVM does not hold `field` on this vCPU.
fn not_held_reason(field: Field, nested_state: usize) -> String {
    match field {
        Field::Nested | Field::NestedReg(_) if nested_state == 0 => {
            "KVM_CAP_NESTED_STATE = 0: this host's KVM has no KVM_GET/SET_NESTED_STATE, so nested state can be neither read nor cleared; the model backend carries this scenario (vcpu-reset check --backend model)".into()
        }
        Field::NestedReg(NestedReg::EvmcsPointer | NestedReg::InterceptInit) => {
            "KVM_GET_NESTED_STATE carries no enlightened-VMCS address (only a flag) and keeps the INIT intercept inside the saved VMCB".into()
        }
        Field::VmxCap(_) => msr_reason(
            field,
            "the VMX capability MSRs exist only where the host offers nested VMX",
        ),
        Field::SgxLeHash(_) => msr_reason(
            field,
            "the launch-enclave hash MSRs exist only where the host offers SGX launch control",
        ),
        Field::Msr(Msr::VmHsavePa) => {
            msr_reason(field, "VM_HSAVE_PA exists only where the host offers SVM")
        }
        _ => msr_reason(field, "the host's KVM does not emulate it for this vCPU"),
    }
}

fn msr_reason(field: Field, why: &str) -> String {
    match field.msr_index() {
        Some(index) => format!(
            "the host's KVM does not offer MSR {index:#x} ({field}) to this vCPU (not in KVM_GET_MSR_INDEX_LIST, or refused by KVM_GET_MSRS): {why}"
        ),
        None => format!("{field} is not held by this vCPU: {why}"),
    }
}

/// Run both scenarios on KVM: RESET (and INIT) a vCPU with vcpu-reset and judge the nested
/// fields, as host limits where the host does not hold them.
pub fn run_kvm(report: &mut Report) {
    let host = match KvmHost::open() {
        Ok(h) => h,
        Err(e) => {
            for name in [NESTED_RESET, NESTED_INIT] {
                report.scenarios.push(ScenarioInfo {
                    name: name.into(),
                    owner: Owner::VcpuReset,
                    error: Some(format!("cannot open /dev/kvm: {e}")),
                });
            }
            return;
        }
    };
    for (name, event) in [(NESTED_RESET, Event::Reset), (NESTED_INIT, Event::Init)] {
        let error = kvm_scenario(report, &host, name, event).err();
        report.scenarios.push(ScenarioInfo {
            name: name.into(),
            owner: Owner::VcpuReset,
            error,
        });
    }
}

fn kvm_scenario(
    report: &mut Report,
    host: &KvmHost,
    name: &str,
    event: Event,
) -> Result<(), String> {
    let vm = host.create_vm(host.caps().irqchip).map_err(err)?;
    let kv = KvmVcpu::new(host, &vm, 0).map_err(err)?;
    let model = kv
        .cpu_model()
        .ok_or("the vCPU's CPUID vendor is neither Intel nor AMD")?;
    let ident = VcpuIdentity::new(0);
    let mut v = Vcpu::new(VcpuCache::adopt(kv), model, ident);
    v.reset().map_err(err)?;
    let mut prior = None;
    if event == Event::Init {
        prior = Some(*v.cache().state().map_err(err)?);
        v.init().map_err(err)?;
    }
    let expected = *v.expected().ok_or("no state was established")?;
    v.cache().invalidate();
    let nested_state = host.caps().nested_state;
    let mut observed = Vec::with_capacity(NESTED_FIELDS.len());
    for f in NESTED_FIELDS {
        let o = if v.cache().holds(f) {
            Observed::Value(v.cache().get(f).map_err(err)?)
        } else {
            Observed::Unobservable(not_held_reason(f, nested_state))
        };
        observed.push((f, o));
    }
    judge_all(
        report,
        &Expectation {
            scenario: name,
            owner: Owner::VcpuReset,
            view: View::Host,
            vcpu: "bsp".into(),
            vendor: model.vendor,
            event,
            expected: &expected,
            prior: prior.as_ref(),
        },
        |f: Field| {
            observed
                .iter()
                .find(|(g, _)| *g == f)
                .map(|(_, o)| o.clone())
        },
    );
    Ok(())
}

/// Run the nested scenarios on `backend`: the model for `Model`, KVM for `Kvm`, and for
/// `Auto` KVM where `/dev/kvm` opens, the model otherwise.
pub fn run(report: &mut Report, backend: BackendChoice) {
    let kvm = match backend {
        BackendChoice::Model => false,
        BackendChoice::Kvm => true,
        BackendChoice::Auto => KvmHost::open().is_ok(),
    };
    if kvm {
        run_kvm(report);
    } else {
        run_model(report, super::model::engine);
    }
}
