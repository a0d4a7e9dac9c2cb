//! Criterion: handling one guest exit three ways — (a) bare `KVM_RUN`, (b) KVM_GET_REGS +
//! KVM_GET_SREGS + KVM_SET_REGS, (c) the register cache with sync regs — each reading RAX, RIP
//! and CS and writing RAX (see `vcpu_reset_selftest::bench::exits`). The time reported per iteration is
//! the CPU time of the vCPU thread for one exit, as in `vcpu-reset bench exits`.
//!
//! Skips (printing `skipped: no /dev/kvm (...)`) where KVM cannot be opened.

use criterion::Criterion;
use vcpu_reset_selftest::bench::exits::{ExitRig, Handler};
use vcpu_reset_selftest::host::kvm_for_tests;

fn main() {
    let Some(host) = kvm_for_tests() else { return };
    let mut rig = match ExitRig::new(&host) {
        Ok(rig) => rig,
        Err(e) => {
            eprintln!("skipped: the exit bench cannot be set up ({e})");
            return;
        }
    };
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("exit");
    for handler in Handler::ALL {
        group.bench_function(handler.name(), |b| {
            b.iter_custom(|iters| match rig.run(handler, iters) {
                Ok(sample) => sample.cpu,
                Err(e) => panic!("{}: {e}", handler.label()),
            })
        });
    }
    group.finish();
    c.final_summary();
}
