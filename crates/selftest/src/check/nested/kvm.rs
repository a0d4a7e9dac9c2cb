//! The nested scenarios on KVM: the nested fields of a real vCPU after RESET and INIT.

use kvm_bindings::nested::{KvmNestedStateBuffer, kvm_svm_nested_state_data};
use kvm_bindings::{
    KVM_STATE_NESTED_FORMAT_SVM, KVM_STATE_NESTED_GUEST_MODE, kvm_svm_nested_state_hdr,
};
use vcpu_reset_spec::{
    CpuModel, Event, Field, InitOutcome, InitRule, Msr, NestedReg, VcpuIdentity, VcpuState, Vendor,
};

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
    judge_nested(
        report,
        &mut v,
        host,
        name,
        event,
        "bsp",
        &expected,
        prior.as_ref(),
    )?;
    if host.caps().nested_state > 0 && model.vendor == Vendor::Amd {
        svm_case(report, &mut v, host, name, event)?;
    }
    Ok(())
}

/// Judges the nested fields of `v` as read now (through a fresh cache) against `expected`.
#[allow(clippy::too_many_arguments)]
fn judge_nested(
    report: &mut Report,
    v: &mut Vcpu<KvmVcpu>,
    host: &KvmHost,
    name: &str,
    event: Event,
    vcpu: &str,
    expected: &VcpuState,
    prior: Option<&VcpuState>,
) -> Result<(), String> {
    v.cache_mut().invalidate();
    let model = *v.model();
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
            vcpu: vcpu.into(),
            model: &model,
            event,
            expected,
            prior,
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

/// Guest-physical address of the guest hypervisor's VMCB (vmcb12) in the SVM case.
const VMCB12: u64 = 0x5000;
/// The SVM case's I/O and MSR permission maps (only their addresses are checked).
const IOPM: u64 = 0x10_000;
const MSRPM: u64 = 0x20_000;
/// VM_HSAVE_PA (AMD APM Vol. 2 §15.30.4).
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
/// EFER.SVME (AMD APM Vol. 2 §3.1.7).
const EFER_SVME: u64 = 1 << 12;

/// The vmcb12 KVM_SET_NESTED_STATE takes for SVM guest mode (the control area at 0, the
/// guest hypervisor's own state, saved by its VMRUN, at 0x400; AMD APM Vol. 2 Appendix B,
/// Tables B-1 and B-2): VMRUN intercepted and ASID 1, as VMRUN's consistency checks require
/// (APM §15.5.1), and a protected-mode, paged hypervisor with EFER.SVME set.
fn vmcb12() -> [u8; 4096] {
    let mut b = [0u8; 4096];
    let mut put =
        |off: usize, v: u64, n: usize| b[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
    put(0x010, 1, 4); // intercept VMRUN (vector 4, bit 0)
    put(0x040, IOPM, 8);
    put(0x048, MSRPM, 8);
    put(0x058, 1, 4); // guest ASID
    put(0x400 + 0xd0, EFER_SVME, 8); // EFER
    put(0x400 + 0x150, 0x6000, 8); // CR3
    put(0x400 + 0x158, 0x8000_0011, 8); // CR0: PG, ET, PE
    put(0x400 + 0x160, 0x400, 8); // DR7
    put(0x400 + 0x168, 0xffff_0ff0, 8); // DR6
    put(0x400 + 0x170, 2, 8); // RFLAGS
    b
}

/// The SVM case on a host that offers nested SVM (`KVM_CAP_NESTED_STATE` with kvm_amd's
/// `nested=1`): the vCPU is put into SVM guest mode with GIF clear (KVM_SET_NESTED_STATE with a
/// vmcb12, after EFER.SVME and VM_HSAVE_PA are set, as a guest hypervisor's CLGI and VMRUN
/// leave it), then vcpu-reset's RESET must drop all of it (every field is judged, not only the
/// nested ones: leaving guest mode must not bring the guest hypervisor's state back) and its
/// INIT must be held by GIF = 0 (AMD APM Vol. 2 §15.17), changing nothing.
fn svm_case(
    report: &mut Report,
    v: &mut Vcpu<KvmVcpu>,
    host: &KvmHost,
    name: &str,
    event: Event,
) -> Result<(), String> {
    v.reset().map_err(err)?;
    v.cache_mut().flush().map_err(err)?;
    v.cache_mut().backend_mut().apply_deferred().map_err(err)?;
    {
        let fd = v.cache().backend().fd();
        let mut sregs = fd.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        sregs.efer |= EFER_SVME;
        fd.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS with EFER.SVME: {e}"))?;
        let msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: MSR_VM_HSAVE_PA,
            data: super::HSAVE_AREA,
            ..Default::default()
        }])
        .map_err(|e| format!("VM_HSAVE_PA entry: {e:?}"))?;
        let n = fd
            .set_msrs(&msrs)
            .map_err(|e| format!("KVM_SET_MSRS VM_HSAVE_PA: {e}"))?;
        if n != 1 {
            return Err("KVM refused VM_HSAVE_PA".into());
        }
        let mut buf = KvmNestedStateBuffer::empty();
        buf.format = KVM_STATE_NESTED_FORMAT_SVM as u16;
        // GUEST_MODE without GIF_SET: in SVM guest mode with GIF clear.
        buf.flags = KVM_STATE_NESTED_GUEST_MODE as u16;
        buf.size = (std::mem::size_of::<kvm_bindings::kvm_nested_state>() + 4096) as u32;
        buf.hdr.svm = kvm_svm_nested_state_hdr { vmcb_pa: VMCB12 };
        buf.data.svm = kvm_svm_nested_state_data { vmcb12: vmcb12() };
        fd.set_nested_state(&buf)
            .map_err(|e| format!("KVM_SET_NESTED_STATE into SVM guest mode with GIF clear: {e}"))?;
    }
    v.cache_mut().invalidate();
    let prior = *v.cache_mut().state().map_err(err)?;
    let n = &prior.nested;
    if !(n.present && n.guest_mode && !n.gif) {
        return Err(format!(
            "KVM accepted the nested state but reads back present={} guest_mode={} gif={}",
            n.present, n.guest_mode, n.gif
        ));
    }
    // This case is an SVM guest: AMD's table applies.
    let amd = CpuModel {
        vendor: Vendor::Amd,
        ..*v.model()
    };
    match event {
        Event::Reset => {
            v.reset().map_err(err)?;
            let expected = *v.expected().ok_or("no state was established")?;
            v.cache_mut().invalidate();
            let state = *v.cache_mut().state().map_err(err)?;
            let observed: Vec<(Field, Observed)> = Field::all()
                .into_iter()
                .map(|f| {
                    let o = if v.cache().holds(f) {
                        Observed::Value(f.get(&state))
                    } else {
                        Observed::Unobservable(not_held_reason(f, host.caps().nested_state))
                    };
                    (f, o)
                })
                .collect();
            judge_all(
                report,
                &Expectation {
                    scenario: name,
                    owner: Owner::VcpuReset,
                    view: View::Host,
                    vcpu: "bsp-svm-guest".into(),
                    model: &amd,
                    event,
                    expected: &expected,
                    prior: None,
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
        Event::Init => {
            let outcome = v.init().map_err(err)?;
            if outcome.init != Some(InitOutcome::Held(InitRule::SvmGif)) {
                return Err(format!(
                    "INIT with GIF clear: the engine did {:?}, not hold it (APM Vol. 2 §15.17)",
                    outcome.init
                ));
            }
            let expected = *v.expected().ok_or("no state was established")?;
            judge_nested(
                report,
                v,
                host,
                name,
                event,
                "bsp-svm-gif-held",
                &expected,
                Some(&prior),
            )
        }
    }
}
