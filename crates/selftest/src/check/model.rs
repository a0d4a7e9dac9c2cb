//! Scenarios on the software VMX-style model: vcpu-reset's RESET and INIT of a poisoned vCPU
//! after the same dirtying the KVM scenarios use, read back host-side through a fresh cache.
//! The model executes no guest code, so there is no guest view here.

use vcpu_reset_spec::{self as spec, CpuModel, Event, Field, Transition, VcpuIdentity, Vendor};

use super::dirty::dirtied;
use super::report::{Report, View};
use super::scenario::{Expectation, judge_all, run_cases, vcpu_label};
use super::verdict::{Observed, Owner};
use vcpu_reset::backend::model::ModelVcpu;
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;

/// How vcpu-reset's RESET or INIT is applied; the conformance tests substitute broken ones.
pub type Apply = fn(&mut Vcpu<ModelVcpu>, Event) -> Result<(), String>;

/// The real engine.
pub fn engine(v: &mut Vcpu<ModelVcpu>, event: Event) -> Result<(), String> {
    match event {
        Event::Reset => v.reset().map(|_| ()),
        Event::Init => v.init().map(|_| ()),
    }
    .map_err(|e| e.to_string())
}

/// Run the `reset` and `init` scenarios for vCPUs 0 (BSP) and 1 (AP) of a VM presenting `model`.
pub fn run(report: &mut Report, model: &CpuModel, apply: Apply) {
    for (name, event) in [("reset", Event::Reset), ("init", Event::Init)] {
        run_cases(
            report,
            name,
            Owner::VcpuReset,
            [0u32, 1].map(|id| (format!("vCPU {id}"), id)),
            |report, id| scenario(report, model, name, event, id, apply),
        );
    }
}

fn scenario(
    report: &mut Report,
    model: &CpuModel,
    name: &str,
    event: Event,
    id: u32,
    apply: Apply,
) -> Result<(), String> {
    let ident = VcpuIdentity::new(id);
    // A poisoned vCPU, RESET once (the machine was powered on), then dirtied.
    let mut v = Vcpu::new(VcpuCache::adopt(ModelVcpu::new_poisoned()), *model, ident);
    v.reset().map_err(|e| e.to_string())?;
    let reset = spec::expected_state(model, ident, Transition::Reset);
    let prior = dirtied(&reset);
    v.cache_mut().write_state(&prior);
    v.cache_mut().flush().map_err(|e| e.to_string())?;
    v.cache_mut().invalidate();

    apply(&mut v, event)?;

    let expected = match event {
        Event::Reset => spec::expected_state(model, ident, Transition::Reset),
        Event::Init => spec::expected_state(model, ident, Transition::Init(&prior)),
    };
    // Read everything back through a fresh cache, as a VMM adopting the vCPU would.
    let backend = v.into_cache().into_backend().map_err(|e| e.to_string())?;
    let leftover = backend.poisoned();
    let mut fresh = VcpuCache::adopt(backend);
    let state = *fresh.state().map_err(|e| e.to_string())?;
    judge_all(
        report,
        &Expectation {
            scenario: name,
            owner: Owner::VcpuReset,
            view: View::Host,
            vcpu: vcpu_label(id),
            model,
            event,
            expected: &expected,
            prior: (event == Event::Init).then_some(&prior),
        },
        |f: Field| Some(Observed::Value(f.get(&state))),
    );
    if !leftover.is_empty() {
        return Err(format!("poison left in: {}", leftover.join(", ")));
    }
    Ok(())
}

/// The model's default CPU: Intel, with a plausible signature; IA32_MCG_CAP with 10 banks,
/// MCG_CTL_P, MCG_CMCI_P and MCG_LMCE_P (every machine-check MSR with a spec row exists), and
/// IA32_ARCH_CAPABILITIES with TSX_CTRL (Intel SDM Vol. 3B §16.3.1.1; Vol. 4, Table 2-2).
pub fn default_model() -> CpuModel {
    CpuModel {
        signature: 0x000a_06a4,
        mcg_cap: Some(10 | spec::MCG_CTL_P | spec::MCG_CMCI_P | spec::MCG_LMCE_P),
        arch_capabilities: Some(spec::ARCH_CAP_TSX_CTRL),
        ..CpuModel::generic(Vendor::Intel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Verdict;
    use vcpu_reset_spec::{McReg, Msr};

    fn verdict(r: &Report, vcpu: &str, field: Field) -> Verdict {
        let name = field.name();
        r.results
            .iter()
            .find(|x| x.scenario == "reset" && x.vcpu == vcpu && x.field == name)
            .map(|x| x.verdict)
            .unwrap_or_else(|| panic!("no verdict for {name}"))
    }

    /// A poisoned vCPU whose IA32_MCG_CAP has 2 banks and no MCG_CTL_P, MCG_CMCI_P or
    /// MCG_LMCE_P, and whose IA32_ARCH_CAPABILITIES has no TSX_CTRL: the MSRs it lacks are not
    /// applicable, the banks it has are judged, and nothing fails.
    #[test]
    fn machine_check_and_tsx_msrs_the_model_lacks_are_not_applicable() {
        let model = CpuModel {
            mcg_cap: Some(2),
            arch_capabilities: Some(0),
            ..default_model()
        };
        let mut r = Report::default();
        run(&mut r, &model, engine);
        for f in [
            Field::Msr(Msr::McgCtl),
            Field::Msr(Msr::McgExtCtl),
            Field::Msr(Msr::TsxCtrl),
            Field::Mc(0, McReg::Ctl2),
            Field::Mc(2, McReg::Status),
        ] {
            assert_eq!(verdict(&r, "bsp", f), Verdict::NotApplicable, "{f}");
        }
        assert_eq!(
            verdict(&r, "ap1", Field::Mc(1, McReg::Status)),
            Verdict::Pass
        );
        assert!(r.results.iter().all(|x| x.verdict != Verdict::Fail));
    }

    /// The default model has every one of them: judged, and passed.
    #[test]
    fn the_default_model_judges_every_machine_check_and_tsx_msr() {
        let mut r = Report::default();
        run(&mut r, &default_model(), engine);
        for f in [
            Field::Msr(Msr::McgCtl),
            Field::Msr(Msr::McgExtCtl),
            Field::Msr(Msr::TsxCtrl),
            Field::Mc(9, McReg::Ctl2),
        ] {
            assert_eq!(verdict(&r, "bsp", f), Verdict::Pass, "{f}");
        }
        assert!(
            r.results
                .iter()
                .all(|x| x.verdict != Verdict::NotApplicable)
        );
    }
}
