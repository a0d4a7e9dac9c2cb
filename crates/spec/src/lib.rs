//! # vcpu-reset-spec
//!
//! The x86 vCPU state after power-on RESET and after INIT, for Intel and AMD, as data: every
//! field with its value or rule and the table or section of the Intel SDM or AMD APM it comes
//! from.
//!
//! - [`VcpuState`] holds the state; [`Field`] names each value in it.
//! - [`row`] answers "what is this field after this event on this vendor, and why?".
//! - [`expected_state`] gives the whole state after RESET, or after INIT from a given earlier
//!   state; [`sipi`] then applies a startup IPI.
//! - [`entries`] flattens a table for rendering (table, JSON, markdown).
//! - [`init_outcome`] says whether an INIT takes effect, is held (VMX root, SVM GIF = 0) or
//!   becomes a VM exit (VMX non-root, SVM intercept), by the rules [`init_rules`] lists.
//! - [`x87`] decodes FXSAVE images and converts the x87 tag word (abridged ↔ full).
//!
//! The crate has no dependencies; `serde` support is behind the `serde` feature.
//!
//! With `default-features = false` (without the `std` feature) the crate is `#![no_std]` and
//! needs only `alloc`, for firmware and bare-metal hypervisors. [`row`], [`expected_value`],
//! [`sipi`], [`init_outcome`], [`init_vm_exit`], [`Field::get`], [`Field::set`] and the FXSAVE
//! decoding in [`x87`] do not allocate; [`Field::all`], [`table`], [`expected_state`] (it walks
//! [`Field::all`]), [`init_rules`], [`Field::name`] (and `Field`'s `Display`),
//! [`x87::FxsaveImage::fields`] and the renderers do, so they need a global allocator.

// `msr_table!` collects the Msrs members one row per recursion step.
#![recursion_limit = "512"]
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

mod applies;
mod blocking;
mod field;
mod msr;
mod parts;
mod render;
mod rule;
mod state;
mod tables;
pub mod x87;

pub use applies::{ARCH_CAP_TSX_CTRL, Applies, MCG_CMCI_P, MCG_COUNT_MASK, MCG_CTL_P, MCG_LMCE_P};
pub use blocking::{InitOutcome, InitRule, init_outcome, init_rules, init_vm_exit};
pub use field::{
    Class, Dt, EventFlag, FIXED_MTRR_MSRS, Field, Gpr, LapicBitmap, LapicReg, McReg, Msr,
    NestedReg, SGX_LE_HASH0_INDEX, Seg, SegPart, VMX_CAPABILITY_MSR_NAMES, X87,
};
pub use render::{Entry, entries, hex, markdown, text_table};
pub use rule::{
    Alternative, Citation, CpuModel, DEFAULT_VMX_CAPABILITIES, Derivation, Event,
    INTEL_LE_PUBKEY_HASH, Row, Rule, Source, VcpuIdentity, Vendor,
};
pub use state::{
    Activity, DescriptorTable, Events, FIXED_MTRRS, Fpu, GPRS, Lapic, MCE_BANKS, McBank, Msrs,
    Nested, SGX_LE_HASH_MSRS, Segment, VARIABLE_MTRRS, VMX_CAPABILITY_MSRS, VcpuState, Vectors,
    tile_word,
};

/// The row for `field` in `vendor`'s table for `event`.
pub fn row(field: Field, vendor: Vendor, event: Event) -> Row {
    tables::row_for(field, vendor, event)
}

/// Every row of `vendor`'s table for `event`, in [`Field::all`] order.
pub fn table(vendor: Vendor, event: Event) -> Vec<Row> {
    Field::all()
        .into_iter()
        .map(|f| row(f, vendor, event))
        .collect()
}

/// The event to compute the state after.
#[derive(Clone, Copy, Debug)]
pub enum Transition<'a> {
    /// Power-on or hardware RESET.
    Reset,
    /// INIT, from the state the vCPU had just before it.
    Init(&'a VcpuState),
}

impl Transition<'_> {
    /// The event.
    pub fn event(&self) -> Event {
        match self {
            Transition::Reset => Event::Reset,
            Transition::Init(_) => Event::Init,
        }
    }

    fn prior(&self) -> Option<&VcpuState> {
        match self {
            Transition::Reset => None,
            Transition::Init(p) => Some(p),
        }
    }
}

/// The value `row` gives for its field, for this CPU model, vCPU and transition.
///
/// `Preserved` takes the value from the state before an INIT; a RESET table has no preserved
/// rows (checked by the table tests), and would read 0 if it had. `Undefined` gives the value
/// a VMM should use.
pub fn expected_value(row: &Row, model: &CpuModel, vcpu: VcpuIdentity, t: Transition<'_>) -> u128 {
    let prior = t.prior();
    let v = match row.rule {
        Rule::Value(v) => v,
        Rule::Preserved => prior.map_or(0, |p| row.field.get(p)),
        Rule::Derived(d) => d.evaluate(model, vcpu, prior),
        Rule::Undefined { vmm, .. } => vmm,
    };
    v & row.field.mask()
}

/// The full expected state after `t` for vCPU `vcpu` of a VM presenting `model`.
///
/// For INIT every preserved field keeps the value it had in the earlier state and every other
/// field takes its INIT value. A startup IPI is a separate step: see [`sipi`].
pub fn expected_state(model: &CpuModel, vcpu: VcpuIdentity, t: Transition<'_>) -> VcpuState {
    let mut s = match t {
        Transition::Reset => VcpuState::default(),
        Transition::Init(prior) => *prior,
    };
    for f in Field::all() {
        let r = row(f, model.vendor, t.event());
        f.set(&mut s, expected_value(&r, model, vcpu, t));
    }
    s
}

/// Apply a startup IPI with `vector` to a vCPU waiting for one: CS.selector = vector << 8,
/// CS.base = vector << 12, RIP = 0, and the vCPU becomes active. CS limit and attributes keep
/// their INIT values.
///
/// Intel SDM Vol. 3A §9.4.3 and §11.6.1 (start-up IPI: the AP starts at 000VV000H); AMD APM
/// Vol. 2 §16.5.
/// A vCPU not waiting for SIPI ignores it: the state is returned unchanged and `false` says so.
pub fn sipi(state: &mut VcpuState, vector: u8) -> bool {
    if state.activity != Activity::WaitForSipi {
        return false;
    }
    let cs = &mut state.segments[Seg::Cs as usize];
    cs.selector = u16::from(vector) << 8;
    cs.base = u64::from(vector) << 12;
    state.rip = 0;
    state.activity = Activity::Active;
    true
}
