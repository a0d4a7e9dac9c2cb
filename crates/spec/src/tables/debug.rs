//! Debug registers.

use super::common::unreachable_row;
use super::common::{RowExt, mk, table_citation};
use crate::field::Field;
use crate::rule::{Alternative, Event, Row, Rule, Vendor};

const AMD_INIT_NOTE: &str = "APM Table 14-1 lists DR0–DR7 as \"not modified\" by INIT, unlike \
    Intel, whose table resets them on INIT. vcpu-reset follows the APM for AMD. Every \
    implementation examined (KVM on both vendors, QEMU, Bochs) resets them on INIT anyway, so \
    the RESET value is reported as spec-allows.";

/// Reset value of each debug register.
fn reset_value(f: Field) -> Option<u128> {
    match f {
        Field::Dr(_) => Some(0),
        // Bits 15:12 read as 0 on P6 and later (bit 12 was set on the 386/486 only); bits
        // 31:16 and 11:4 are reserved-as-1 (SDM §18.2.3).
        Field::Dr6 => Some(0xffff_0ff0),
        // Bit 10 is reserved-as-1; all breakpoints disabled.
        Field::Dr7 => Some(0x400),
        _ => None,
    }
}

pub(crate) fn row(f: Field, v: Vendor, e: Event) -> Row {
    let table = table_citation(v);
    let Some(value) = reset_value(f) else {
        return unreachable_row(f, v);
    };
    match (v, e) {
        (Vendor::Amd, Event::Init) => {
            let also: &'static [Alternative] = match f {
                Field::Dr6 => &[Alternative::Value(0xffff_0ff0)],
                Field::Dr7 => &[Alternative::Value(0x400)],
                _ => &[Alternative::Value(0)],
            };
            mk(f, Rule::Preserved, table).note(AMD_INIT_NOTE).also(also)
        }
        _ => mk(f, Rule::Value(value), table),
    }
}
