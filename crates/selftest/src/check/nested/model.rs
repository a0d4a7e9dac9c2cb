//! The nested scenarios on the software model: real VMX/SVM operation, then RESET or INIT.

use vcpu_reset_spec::{
    self as spec, CpuModel, Event, Field, InitOutcome, InitRule, Transition, VcpuIdentity,
    VcpuState, Vendor,
};

use super::{HSAVE_AREA, NESTED_INIT, NESTED_RESET, Setup, amd_model, err, intel_model};
use crate::check::dirty::dirtied;
use crate::check::model::Apply;
use crate::check::report::{Report, View};
use crate::check::scenario::{Expectation, judge_all, run_cases};
use crate::check::verdict::{Observed, Owner};
use vcpu_reset::backend::Exit;
use vcpu_reset::backend::model::ModelVcpu;
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;
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
    v.cache_mut().write_state(&prior);
    v.cache_mut().flush().map_err(err)?;
    setup
        .enter(v.cache_mut().backend_mut().nested_mut())
        .map_err(err)?;
    v.cache_mut().invalidate();
    let state = *v.cache_mut().state().map_err(err)?;
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
    model: &'a CpuModel,
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
            model: j.model,
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
            model,
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
    v.cache_mut().backend_mut().set_guest(Box::new(move |g| {
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
    let exit = v.cache_mut().run().map_err(err)?;
    v.cache_mut().backend_mut().clear_guest();
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
        model,
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
            v.cache_mut().invalidate();
            let held = *v.cache_mut().state().map_err(err)?;
            let held_label = format!("{label}-held");
            j.label = &held_label;
            judge_state(report, &j, &held);
            // The guest ends the block; the latched INIT is then taken.
            end_block(&mut v, setup)?;
            v.cache_mut().invalidate();
            let before = *v.cache_mut().state().map_err(err)?;
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
