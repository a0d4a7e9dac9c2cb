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
//! KVM_CAP_NESTED_STATE and offers neither nested VMX nor SGX launch control). Where KVM offers
//! nested SVM (KVM_CAP_NESTED_STATE on AMD, e.g. kvm_amd with `nested=1` in the guest of
//! `check --kernel`), a real vCPU is also put into SVM guest mode with GIF clear and
//! VM_HSAVE_PA set (KVM_SET_NESTED_STATE with a vmcb12): `bsp-svm-guest` judges every field
//! after RESET, `bsp-svm-gif-held` the nested fields after an INIT that GIF = 0 holds.
//!
//! `model.rs` holds the model's cases, `kvm.rs` the KVM ones; this file the shared setup.

mod kvm;
mod model;

use vcpu_reset_spec::{CpuModel, Vendor};

use super::BackendChoice;
use super::model::default_model;
use super::report::Report;
use vcpu_reset::backend::model::{NestedError, NestedVmx};

pub use kvm::run_kvm;
pub use model::run_model;

/// A scenario step's error as the text the report keeps.
fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

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

/// The AMD model of the SVM cases, with the default model's capability MSRs (every
/// machine-check MSR with a spec row exists, and so does IA32_TSX_CTRL, which KVM offers AMD
/// vCPUs too).
pub fn amd_model() -> CpuModel {
    let d = default_model();
    CpuModel {
        mcg_cap: d.mcg_cap,
        arch_capabilities: d.arch_capabilities,
        ..CpuModel::generic(Vendor::Amd)
    }
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

/// Run the nested scenarios on `backend`: the model for `Model`, KVM for `Kvm`, and for
/// `Auto` KVM where `/dev/kvm` opens, the model otherwise.
pub fn run(report: &mut Report, backend: BackendChoice) {
    let kvm = match backend {
        BackendChoice::Model => false,
        BackendChoice::Kvm => true,
        BackendChoice::Auto => crate::host::open().is_ok(),
    };
    if kvm {
        run_kvm(report);
    } else {
        run_model(report, super::model::engine);
    }
}
