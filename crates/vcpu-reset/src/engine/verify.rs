//! Comparing what a backend holds with what the engine established.

use vcpu_reset_spec::{self as spec, Alternative, Event, Field, Msr, Vendor};

/// How a field differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviationKind {
    /// A real difference.
    Mismatch,
    /// Different, but another value the sources allow.
    Allowed,
    /// The backend does not hold this field (host limit).
    NotHeld,
}

/// One field that is not what the engine established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deviation {
    /// The field.
    pub field: Field,
    /// What the engine wrote.
    pub expected: u128,
    /// What the backend holds (0 when not held).
    pub actual: u128,
    /// How it differs.
    pub kind: DeviationKind,
}

impl Deviation {
    pub(crate) fn not_held(field: Field, expected: u128) -> Self {
        Deviation {
            field,
            expected,
            actual: 0,
            kind: DeviationKind::NotHeld,
        }
    }
}

/// Fields that change by themselves while nothing runs: the TSC counts.
fn counts_by_itself(field: Field) -> bool {
    field == Field::Msr(Msr::Tsc)
}

/// Whether `actual`, read some time after `expected` was established, is that value plus the
/// counting a free-running field (the TSC) did in between.
pub fn counted_from(field: Field, expected: u128, actual: u128) -> bool {
    counts_by_itself(field) && actual >= expected && actual - expected < TSC_SLACK
}

/// The TSC may have advanced since it was written, but not by more than this (about 100 s at
/// 10 GHz): anything else means the write did not take.
const TSC_SLACK: u128 = 1 << 40;

pub(crate) fn compare(
    field: Field,
    expected: u128,
    actual: u128,
    vendor: Vendor,
    event: Event,
) -> Option<Deviation> {
    if actual == expected {
        return None;
    }
    if counted_from(field, expected, actual) {
        return None;
    }
    let row = spec::row(field, vendor, event);
    let allowed = row
        .also
        .iter()
        .any(|a| matches!(a, Alternative::Value(v) if *v == actual));
    Some(Deviation {
        field,
        expected,
        actual,
        kind: if allowed {
            DeviationKind::Allowed
        } else {
            DeviationKind::Mismatch
        },
    })
}
