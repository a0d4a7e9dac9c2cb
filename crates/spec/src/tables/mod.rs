//! The RESET and INIT tables, one file per state class.
//!
//! Each class file has one function, `row(field, vendor, event)`, that says what the field is
//! after the event and cites where that comes from. A reader finds any register's RESET value
//! in the file named after its class.
//!
//! Section numbers follow the Intel SDM edition 325462-079US (March 2023), where the RESET/INIT
//! table is Table 10-1. Editions from about 2009 to 2022 number the same table 9-1 and the
//! local APIC chapter 10 (one chapter lower throughout); 2025 editions number it Table 12-1.

mod activity;
mod control;
mod debug;
mod fpu;
mod gprs;
mod lapic;
mod msrs;
mod segments;

use crate::field::{Class, Field};
use crate::rule::{Alternative, Citation, Event, Row, Rule, Source, Vendor};

/// Intel SDM Vol. 3A, the power-up/RESET/INIT table.
pub(crate) const SDM_TABLE: Citation = Citation {
    source: Source::SdmVol3A,
    locator: "§10.1.1, Table 10-1 (Table 9-1 before 2023)",
};

/// AMD APM Vol. 2, the RESET/INIT table.
pub(crate) const APM_TABLE: Citation = Citation {
    source: Source::ApmVol2,
    locator: "§14.1.3, Table 14-1 \"Initial Processor State\"",
};

/// The vendor's RESET/INIT table.
pub(crate) fn table_citation(v: Vendor) -> Citation {
    match v {
        Vendor::Intel => SDM_TABLE,
        Vendor::Amd => APM_TABLE,
    }
}

/// A row with no note and no alternatives.
pub(crate) fn mk(field: Field, rule: Rule, citation: Citation) -> Row {
    Row {
        field,
        rule,
        citation,
        note: None,
        also: &[],
    }
}

/// Builder helpers on [`Row`].
pub(crate) trait RowExt {
    fn note(self, note: &'static str) -> Row;
    fn also(self, also: &'static [Alternative]) -> Row;
}

impl RowExt for Row {
    fn note(mut self, note: &'static str) -> Row {
        self.note = Some(note);
        self
    }
    fn also(mut self, also: &'static [Alternative]) -> Row {
        self.also = also;
        self
    }
}

/// The row for `field` in the `vendor`'s table for `event`.
pub fn row_for(field: Field, vendor: Vendor, event: Event) -> Row {
    match field.class() {
        Class::Gprs => gprs::row(field, vendor, event),
        Class::Segments => segments::row(field, vendor, event),
        Class::Control => control::row(field, vendor, event),
        Class::Debug => debug::row(field, vendor, event),
        Class::Fpu => fpu::row(field, vendor, event),
        Class::Msrs => msrs::row(field, vendor, event),
        Class::Lapic => lapic::row(field, vendor, event),
        Class::Activity => activity::row(field, vendor, event),
    }
}
