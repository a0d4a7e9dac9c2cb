//! The side-by-side matrix of a `check` report: one row per field, one column per VMM and
//! scenario (`qemu-tcg:reboot-cf9-soft/guest/bsp`, the local backend's `create/host/bsp`, …),
//! each cell the verdict with expected, actual, reason and citation. The table rendering of
//! [`Report::to_table`] already is this matrix; this module gives it to JSON and HTML.

use std::collections::BTreeMap;

use serde::Serialize;

use super::report::{FieldResult, Report, Summary};
use super::verdict::Verdict;

/// One column: a VMM and one of its scenarios, seen from one view on one vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    /// `scenario/view/vcpu`, as in the table.
    pub id: String,
    /// The VMM: the peer's name (`qemu-tcg`, `bochs`, …) or, for the local scenarios, the
    /// local backend (`kvm` or `model`).
    pub vmm: String,
    /// The scenario without the VMM's prefix (`power-on`, `reboot-kbc`, `create`, …).
    pub scenario: String,
    /// `host` or `guest`.
    pub view: String,
    /// `bsp` or `apN`.
    pub vcpu: String,
    /// Verdict counts in this column.
    pub summary: Summary,
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// The verdict.
    pub verdict: Verdict,
    /// Expected value.
    pub expected: String,
    /// Observed value, if observable.
    pub actual: Option<String>,
    /// Why (host limits, spec-allows, findings).
    pub reason: Option<String>,
    /// The spec's citation.
    pub citation: String,
}

/// One row: a field and its cell in every column (`None` where the column has no verdict).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Spec class.
    pub class: String,
    /// Dotted field name.
    pub field: String,
    /// One entry per column, in column order.
    pub cells: Vec<Option<Cell>>,
}

/// The whole matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// Columns, in first-seen order.
    pub columns: Vec<Column>,
    /// Rows, in first-seen order (grouped by class as the spec orders fields).
    pub rows: Vec<Row>,
}

/// The local backend's short name from the report's `backend` fact.
fn local_vmm(report: &Report) -> String {
    match report.host.get("backend").map(String::as_str) {
        Some(b) if b.starts_with("model") => "model".into(),
        Some("probe log") => "log".into(),
        _ => "kvm".into(),
    }
}

fn split(r: &FieldResult, local: &str) -> (String, String) {
    match r.scenario.split_once(':') {
        Some((vmm, scenario)) => (vmm.to_string(), scenario.to_string()),
        None => (local.to_string(), r.scenario.clone()),
    }
}

impl Matrix {
    /// The matrix of `report`.
    pub fn new(report: &Report) -> Matrix {
        let local = local_vmm(report);
        let mut columns: Vec<Column> = Vec::new();
        let mut col_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut rows: Vec<Row> = Vec::new();
        let mut row_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut cells: Vec<(usize, usize, Cell)> = Vec::new();
        let mut per_column: Vec<Vec<FieldResult>> = Vec::new();
        for r in &report.results {
            let id = r.column();
            let c = *col_index.entry(id.clone()).or_insert_with(|| {
                let (vmm, scenario) = split(r, &local);
                columns.push(Column {
                    id,
                    vmm,
                    scenario,
                    view: match r.view {
                        super::View::Host => "host".into(),
                        super::View::Guest => "guest".into(),
                    },
                    vcpu: r.vcpu.clone(),
                    summary: Summary::default(),
                });
                columns.len() - 1
            });
            per_column.resize_with(columns.len(), Vec::new);
            per_column[c].push(r.clone());
            let row = *row_index.entry(r.field.clone()).or_insert_with(|| {
                rows.push(Row {
                    class: r.class.clone(),
                    field: r.field.clone(),
                    cells: Vec::new(),
                });
                rows.len() - 1
            });
            cells.push((
                row,
                c,
                Cell {
                    verdict: r.verdict,
                    expected: r.expected.clone(),
                    actual: r.actual.clone(),
                    reason: r.reason.clone(),
                    citation: r.citation.clone(),
                },
            ));
        }
        for (column, results) in columns.iter_mut().zip(per_column) {
            column.summary = Report {
                results,
                ..Report::default()
            }
            .summary();
        }
        for row in &mut rows {
            row.cells = vec![None; columns.len()];
        }
        for (row, c, cell) in cells {
            rows[row].cells[c] = Some(cell);
        }
        // Keep the spec's class grouping: stable sort by the first appearance of each class.
        let mut class_order: Vec<String> = Vec::new();
        for r in &rows {
            if !class_order.contains(&r.class) {
                class_order.push(r.class.clone());
            }
        }
        rows.sort_by_key(|r| class_order.iter().position(|c| *c == r.class));
        Matrix { columns, rows }
    }

    /// The VMMs in column order, each with its number of columns.
    pub fn vmms(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for c in &self.columns {
            match out.last_mut() {
                Some((v, n)) if *v == c.vmm => *n += 1,
                _ => out.push((c.vmm.clone(), 1)),
            }
        }
        out
    }
}

/// The report's JSON (as [`Report::to_json`]) with the matrix added under `matrix`.
pub fn to_json(report: &Report) -> Result<String, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_str(&report.to_json()?)?;
    if let serde_json::Value::Object(map) = &mut v {
        map.insert("matrix".into(), serde_json::to_value(Matrix::new(report))?);
    }
    serde_json::to_string_pretty(&v)
}
