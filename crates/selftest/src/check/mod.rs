//! The conformance selftest: scenarios, verdicts and reports.
//!
//! `check` creates, runs, INITs and RESETs vCPUs, reads what the host sees (through the
//! register cache) and compares it with the spec. On the software model it runs vcpu-reset's
//! own `reset` and `init` scenarios; on KVM it also checks KVM's own behaviour (`create`,
//! `kvm-init`) and what the guest itself sees.

pub mod advertised;
mod backend_choice;
pub mod dirty;
pub mod html;
pub mod kernel;
pub mod kvm;
pub mod kvm_ipi;
pub mod leak;
pub mod leak_guest;
pub mod matrix;
pub mod model;
pub mod nested;
pub mod peers;
pub mod probe_log;
pub mod report;
pub mod scenario;
pub mod verdict;

pub use backend_choice::BackendChoice;
pub use report::{FieldResult, Report, ScenarioInfo, Summary, View};
pub use verdict::{Judge, Observed, Owner, Verdict, judge};

/// Options of a `check` run.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Backend.
    pub backend: BackendChoice,
}

/// Run the selftest.
pub fn run(opts: &CheckOptions) -> Report {
    let mut report = Report::default();
    let run_model = |report: &mut Report| {
        let m = model::default_model();
        report
            .host
            .insert("backend".into(), "model (software VMX-style vCPU)".into());
        report.host.insert("vendor".into(), m.vendor.name().into());
        model::run(report, &m, model::engine);
    };
    // A device the user named (VCPU_RESET_KVM_DEVICE) is KVM asked for: its failure is an
    // error, not a reason to judge the software model instead.
    let backend = match opts.backend {
        BackendChoice::Auto if std::env::var_os(crate::host::DEVICE_ENV).is_some() => {
            BackendChoice::Kvm
        }
        other => other,
    };
    match backend {
        BackendChoice::Model => run_model(&mut report),
        BackendChoice::Kvm | BackendChoice::Auto => match crate::host::open() {
            Ok(host) => kvm::run(&mut report, &host),
            Err(e) if backend == BackendChoice::Auto => {
                report.host.insert(
                    "note".into(),
                    format!("{e}; running against the software model instead"),
                );
                run_model(&mut report);
            }
            Err(e) => {
                report.host.insert("backend".into(), "kvm".into());
                report.scenarios.push(ScenarioInfo {
                    name: "kvm".into(),
                    owner: Owner::VcpuReset,
                    error: Some(e.to_string()),
                });
            }
        },
    }
    nested::run(&mut report, backend);
    report
}
