//! `check` on real KVM: every scenario runs, vcpu-reset's own RESET/INIT pass on every field the
//! host lets it set, and KVM's known deviations show up as findings.

use vcpu_reset_selftest::check::{
    self, BackendChoice, CheckOptions, FieldResult, Report, Verdict, View,
};
use vcpu_reset_selftest::host::kvm_for_tests;

fn find<'a>(r: &'a Report, scenario: &str, view: View, vcpu: &str, field: &str) -> &'a FieldResult {
    r.results
        .iter()
        .find(|x| x.scenario == scenario && x.view == view && x.vcpu == vcpu && x.field == field)
        .unwrap_or_else(|| panic!("no verdict for {scenario}/{view:?}/{vcpu} {field}"))
}

#[test]
fn check_on_kvm_runs_every_scenario_and_vcpu_reset_passes() {
    let Some(host) = kvm_for_tests() else { return };
    let r = check::run(&CheckOptions {
        backend: BackendChoice::Kvm,
    });
    let names: Vec<&str> = r.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "create",
            "kvm-init",
            "kvm-init-ipi",
            "reset",
            "init",
            "reboot-cf9-hard",
            "reboot-cf9-soft",
            "reboot-port92",
            "reboot-kbc",
            "reboot-triple-fault",
            "leak-reset",
            "leak-init",
            "leak-guest-reset",
            "leak-guest-init",
            "leak-kvm-init",
            "nested-reset",
            "nested-init"
        ]
    );
    for s in &r.scenarios {
        assert_eq!(s.error, None, "scenario {} could not run", s.name);
    }
    let fails: Vec<String> = r
        .results
        .iter()
        .filter(|x| x.verdict == Verdict::Fail)
        .map(|x| {
            format!(
                "{} {}: {} vs {:?}",
                x.column(),
                x.field,
                x.expected,
                x.actual
            )
        })
        .collect();
    assert!(fails.is_empty(), "vcpu-reset failures: {fails:#?}");
    assert_eq!(r.exit_code(false), 0);

    // The leak scan's summary: something planted, nothing survived vcpu-reset's RESET or INIT;
    // KVM's own INIT keeps at least the MSRs (INIT keeps every MSR).
    let leak = r.host.get("leak").expect("leak host fact");
    assert!(
        leak.contains("survived RESET 0, INIT 0 (where INIT must change them)"),
        "{leak}"
    );
    let planted: usize = leak
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(planted > 100, "{leak}");
    let guest: usize = leak
        .split("(host), ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("guest count");
    assert!(guest >= 10, "{leak}");
    let kvm_init = r
        .host
        .get("leak kvm-init")
        .expect("leak kvm-init host fact");
    assert!(kvm_init.contains("msrs "), "{kvm_init}");

    // vcpu-reset's RESET and INIT, seen by the host and by the guest itself.
    for (scenario, cr0) in [
        ("reset", "0x0000000060000010"),
        ("init", "0x0000000000000010"),
    ] {
        for view in [View::Host, View::Guest] {
            for vcpu in ["bsp", "ap1"] {
                let x = find(&r, scenario, view, vcpu, "cr0");
                assert_eq!(x.verdict, Verdict::Pass, "{x:?}");
                assert_eq!(x.actual.as_deref(), Some(cr0), "{x:?}");
                assert_eq!(find(&r, scenario, view, vcpu, "cr3").verdict, Verdict::Pass);
            }
        }
    }
    let fcw = find(&r, "reset", View::Guest, "bsp", "x87.fcw");
    assert_eq!(
        (fcw.verdict, fcw.actual.as_deref()),
        (Verdict::Pass, Some("0x0040"))
    );
    let fcw = find(&r, "init", View::Guest, "ap1", "x87.fcw");
    assert_eq!(
        (fcw.verdict, fcw.actual.as_deref()),
        (Verdict::Pass, Some("0x027f")),
        "kept by INIT"
    );
    let sel = find(&r, "init", View::Guest, "ap1", "cs.selector");
    assert_eq!(
        (sel.verdict, sel.actual.as_deref()),
        (Verdict::Pass, Some("0x1000")),
        "SIPI vector 0x10"
    );
    for via in ["cf9-hard", "cf9-soft", "port92", "kbc", "triple-fault"] {
        let x = find(&r, &format!("reboot-{via}"), View::Guest, "bsp", "cr0");
        assert_eq!(x.verdict, Verdict::Pass, "{x:?}");
    }
    let pat = find(&r, "reboot-cf9-soft", View::Guest, "bsp", "msr.ia32_pat");
    assert_eq!(
        pat.actual.as_deref(),
        Some("0x0006060600060606"),
        "INIT keeps PAT"
    );
    let pat = find(&r, "reboot-cf9-hard", View::Guest, "bsp", "msr.ia32_pat");
    assert_eq!(
        pat.actual.as_deref(),
        Some("0x0007040600070406"),
        "RESET restores PAT"
    );

    // KVM's own RESET deviates where the spec notes say it does.
    let rdx = find(&r, "create", View::Host, "bsp", "rdx");
    assert_eq!(
        (rdx.verdict, rdx.actual.as_deref()),
        (Verdict::Finding, Some("0x0000000000000600"))
    );
    let fcw = find(&r, "create", View::Guest, "bsp", "x87.fcw");
    assert_eq!(
        (fcw.verdict, fcw.actual.as_deref()),
        (Verdict::Finding, Some("0x037f"))
    );
    // KVM creates an AP of a VM with an in-kernel irqchip in KVM_MP_STATE_UNINITIALIZED (4),
    // not the wait-for-SIPI (3) RESET gives: a finding, named, not read as running.
    let ap = find(&r, "create", View::Host, "ap1", "activity.state");
    assert_eq!(
        (ap.verdict, ap.expected.as_str(), ap.actual.as_deref()),
        (Verdict::Finding, "0x3", Some("0x4")),
        "{ap:?}"
    );
    assert!(
        ap.reason
            .as_deref()
            .is_some_and(|w| w.contains("KVM_MP_STATE_UNINITIALIZED")),
        "{ap:?}"
    );
    let bsp = find(&r, "create", View::Host, "bsp", "activity.state");
    assert_eq!(
        (bsp.verdict, bsp.actual.as_deref()),
        (Verdict::Pass, Some("0x0"))
    );
    let lint0 = find(&r, "create", View::Host, "bsp", "lapic.lvt_lint0");
    assert_eq!(
        (lint0.verdict, lint0.actual.as_deref()),
        (Verdict::Finding, Some("0x00000700"))
    );
    // Views of one value through two KVM interfaces: vcpu-reset's RESET makes them agree where
    // the host lets it; KVM's INIT leaves IA32_GS_BASE (KVM_GET_MSRS) behind KVM_GET_SREGS here.
    let gs = find(&r, "views-reset", View::Host, "bsp", "gs.base");
    assert_eq!(gs.verdict, Verdict::Pass, "{gs:?}");
    let gs = find(&r, "views-kvm-init", View::Host, "ap1", "gs.base");
    assert!(
        matches!(gs.verdict, Verdict::Pass | Verdict::Finding),
        "{gs:?}"
    );
    assert!(
        r.results
            .iter()
            .any(|x| x.scenario == "views-create" && x.field == "mxcsr")
    );
    // KVM's INIT driven by the guest: the AP dirtied itself, the BSP sent INIT and SIPI.
    for (field, value) in [
        ("cr0", "0x0000000000000010"),
        ("cr3", "0x0000000000000000"),
        ("x87.fcw", "0x027f"),
        ("mxcsr", "0x00001fa0"),
        ("msr.ia32_pat", "0x0006060600060606"),
        ("cs.selector", "0x1000"),
    ] {
        let x = find(&r, "kvm-init-ipi", View::Guest, "ap1", field);
        assert_eq!(
            (x.verdict, x.actual.as_deref()),
            (Verdict::Pass, Some(value)),
            "{x:?}"
        );
    }

    // AMX's tile state: not applicable where the host's CPUID offers no tile data (XSAVE
    // component 18), else passed or a host limit (KVM holds it once the VMM asks for it).
    let amx = host
        .supported_cpuid()
        .as_slice()
        .iter()
        .any(|e| e.function == 0xd && e.index == 0 && e.eax & (1 << 18) != 0);
    for view in [View::Host, View::Guest] {
        let t = find(&r, "reset", view, "bsp", "tmm7.63");
        if amx {
            assert!(
                matches!(t.verdict, Verdict::Pass | Verdict::HostLimit),
                "{t:?}"
            );
        } else {
            assert_eq!(t.verdict, Verdict::NotApplicable, "{t:?}");
        }
    }

    // No KVM_CAP_NESTED_STATE here: nested state is a host limit with the reason, not silence.
    let ns = find(&r, "reset", View::Host, "bsp", "nested.state");
    assert_eq!(ns.verdict, Verdict::HostLimit, "{ns:?}");
    assert!(r.results.iter().any(|x| x.scenario == "nested-reset"));
    assert_eq!(r.exit_code(true), 1, "--strict fails on findings");
}
