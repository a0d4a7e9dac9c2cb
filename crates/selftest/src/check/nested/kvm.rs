//! The nested scenarios on KVM: the nested fields of a real vCPU after RESET and INIT.

use vcpu_reset_spec::{Event, Field, Msr, NestedReg, VcpuIdentity};

use super::{NESTED_INIT, NESTED_RESET, err};
use crate::check::report::{Report, ScenarioInfo, View};
use crate::check::scenario::{Expectation, judge_all};
use crate::check::verdict::{Observed, Owner};
use vcpu_reset::backend::kvm::{KvmHost, KvmVcpu};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::{NESTED_FIELDS, Vcpu};

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
    let host = match crate::host::open() {
        Ok(h) => h,
        Err(e) => {
            for name in [NESTED_RESET, NESTED_INIT] {
                report.scenarios.push(ScenarioInfo {
                    name: name.into(),
                    owner: Owner::VcpuReset,
                    error: Some(format!("cannot open KVM: {e}")),
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
        prior = Some(*v.cache_mut().state().map_err(err)?);
        v.init().map_err(err)?;
    }
    let expected = *v.expected().ok_or("no state was established")?;
    v.cache_mut().invalidate();
    let nested_state = host.caps().nested_state;
    let mut observed = Vec::with_capacity(NESTED_FIELDS.len());
    for f in NESTED_FIELDS {
        let o = if v.cache_mut().holds(f) {
            Observed::Value(v.cache_mut().get(f).map_err(err)?)
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
