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
mod common;
mod control;
mod debug;
mod fpu;
mod gprs;
mod lapic;
mod msrs;
mod segments;

use crate::field::{Class, Field};
use crate::rule::{Event, Row, Vendor};

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
