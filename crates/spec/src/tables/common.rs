//! What every class file of the tables shares: the vendors' RESET/INIT table citations and
//! the row builders. A leaf: the class files and the dispatch in `mod.rs` use it, it uses
//! neither.

use crate::field::Field;
use crate::rule::{Alternative, Citation, Row, Rule, Source, Vendor};

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

/// A field routed to the wrong class file: a programming error caught by the table tests.
pub(crate) fn unreachable_row(f: Field, v: Vendor) -> Row {
    mk(
        f,
        Rule::Undefined {
            vmm: 0,
            reason: "field routed to the wrong class table (bug)",
        },
        table_citation(v),
    )
}
