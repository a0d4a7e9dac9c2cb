//! The matrix as one self-contained HTML page (`check --html FILE`, `--format html`): inline CSS,
//! no scripts, fonts or images from elsewhere. Cells are colour-coded by verdict and carry the
//! symbol of the table rendering; hovering a cell shows expected, actual, reason and citation
//! (`title`), hovering a field shows its citation; findings and failures are listed in full
//! below the matrix.

use std::fmt::Write as _;

use super::matrix::{Cell, Column, Matrix, Row};
use super::report::Report;
use super::verdict::Verdict;

/// Escapes text for HTML content and attribute values: each line as [`crate::files::escape`]
/// escapes text from outside (the page may be printed to a terminal with `--format html`),
/// the line breaks kept, then the HTML special characters.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for c in crate::files::escape(line).chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
    }
    out
}

fn class_of(v: Verdict) -> String {
    format!("v-{}", v.name())
}

/// The symbol the table rendering uses for `v`.
fn symbol(v: Verdict) -> &'static str {
    match v.name() {
        "pass" => ".",
        "spec-allows" => "~",
        "host-limit" => "-",
        "finding" => "F",
        "fail" => "X",
        _ => "/",
    }
}

const STYLE: &str = "
body{font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;color:#1b1f24;background:#fff}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:20px 0 6px}
table{border-collapse:collapse}
.facts td,.facts th{padding:1px 8px;text-align:left;vertical-align:top}
.facts th{font-weight:600;white-space:nowrap}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border-radius:3px}
.matrix th,.matrix td{border:1px solid #d0d7de}
.matrix thead th{position:sticky;background:#f6f8fa;z-index:2}
.matrix thead tr.vmm th{top:0;height:22px}
.matrix thead tr.col th{top:24px}
.matrix thead tr.count th{font-size:11px;padding:1px 2px}
.matrix thead tr.count th.field{text-align:right;font-weight:600}
.matrix th.col{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:500;padding:4px 2px;white-space:nowrap;font-size:11px}
.matrix th.field{position:sticky;left:0;background:#fff;text-align:left;font-weight:400;font-family:ui-monospace,monospace;padding:0 6px;white-space:nowrap;z-index:1}
.matrix tr.class th{background:#eaeef2;text-align:left;padding:3px 6px;font-weight:600;position:static}
.matrix td.cell{width:18px;min-width:18px;height:16px;text-align:center;font-family:ui-monospace,monospace;font-size:11px;padding:0}
.matrix th.vmm-head{border-left:3px solid #57606a}
td.first{border-left:3px solid #57606a!important}
.v-pass{background:#c7ecd0;color:#1a7f37}
.v-spec-allows{background:#dbeafe;color:#0b4a9c}
.v-host-limit{background:#eceef1;color:#6e7781}
.v-not-applicable{background:#f6f8fa;color:#8c959f}
.v-finding{background:#ffd8a8;color:#8a4500;font-weight:700}
.v-fail{background:#ff9b9b;color:#82071e;font-weight:700}
.none{background:#fff}
.list td,.list th{border:1px solid #d0d7de;padding:2px 6px;text-align:left;vertical-align:top}
.list td.v{white-space:nowrap}.list code{font-size:12px}
.notrun{color:#82071e}
";

/// The tooltip of a cell.
fn title(column: &str, field: &str, cell: &Cell) -> String {
    let mut t = format!(
        "{column} · {field}: {}\nexpected {}, got {}",
        cell.verdict.name(),
        cell.expected,
        cell.actual.as_deref().unwrap_or("-")
    );
    if let Some(r) = &cell.reason {
        let _ = write!(t, "\n{r}");
    }
    let _ = write!(t, "\n{}", cell.citation);
    t
}

/// The legend above the matrix: each verdict's colour and symbol.
const LEGEND: &str = "<p class=\"legend\"><span class=\"v-pass\">. pass</span><span class=\"v-spec-allows\">~ spec-allows</span>\
     <span class=\"v-host-limit\">- host-limit (not observable)</span><span class=\"v-not-applicable\">/ not applicable (the VMM does not offer the feature)</span><span class=\"v-finding\">F finding (the VMM deviates)</span>\
     <span class=\"v-fail\">X fail (vcpu-reset deviates)</span> Hover a cell for expected, actual and the citation.</p>\n";

/// The page.
pub fn render(report: &Report) -> String {
    let m = Matrix::new(report);
    let mut o = String::with_capacity(64 << 10);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>vcpu-reset check: RESET/INIT conformance matrix</title><style>{STYLE}</style></head><body>\n\
         <h1>vcpu-reset check: RESET/INIT conformance matrix</h1>\n"
    );
    facts(&mut o, report);
    o.push_str(LEGEND);
    let first = vmm_starts(&m);
    matrix_head(&mut o, &m, &first);
    matrix_body(&mut o, &m, &first);
    findings(&mut o, report);
    not_run(&mut o, report);
    o.push_str("</body></html>\n");
    o
}

/// The table of host facts, ending with the verdict counts.
fn facts(o: &mut String, report: &Report) {
    let s = report.summary();
    o.push_str("<table class=\"facts\">");
    for (k, v) in &report.host {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    let _ = write!(
        o,
        "<tr><th>summary</th><td id=\"summary\">{} pass, {} not applicable, {} spec-allows, {} host-limit, {} finding, {} fail; {} scenario(s) not run</td></tr></table>",
        s.pass,
        s.not_applicable,
        s.spec_allows,
        s.host_limit,
        s.finding,
        s.fail,
        s.scenarios_not_run
    );
}

/// Per column, whether it is a VMM's first (drawn with a thicker left edge).
fn vmm_starts(m: &Matrix) -> Vec<bool> {
    let mut first = vec![false; m.columns.len()];
    let mut i = 0;
    for (_, n) in &m.vmms() {
        first[i] = true;
        i += n;
    }
    first
}

/// The matrix's opening and its header: a row of VMMs, a row of their columns, a row of
/// finding and failure counts per column.
fn matrix_head(o: &mut String, m: &Matrix, first: &[bool]) {
    o.push_str(
        "<table class=\"matrix\" id=\"matrix\"><thead><tr class=\"vmm\"><th class=\"field\"></th>",
    );
    for (vmm, n) in &m.vmms() {
        let _ = write!(
            o,
            "<th class=\"vmm-head\" colspan=\"{n}\">{}</th>",
            escape(vmm)
        );
    }
    o.push_str("</tr><tr class=\"col\"><th class=\"field\">field</th>");
    for (c, col) in m.columns.iter().enumerate() {
        column_head(o, col, first[c]);
    }
    o.push_str("</tr><tr class=\"count\"><th class=\"field\">findings + failures</th>");
    for (c, col) in m.columns.iter().enumerate() {
        column_count(o, col, first[c]);
    }
    o.push_str("</tr></thead><tbody>\n");
}

/// A column's header cell: `scenario/view/vcpu`, its verdict counts in the tooltip.
fn column_head(o: &mut String, col: &Column, first: bool) {
    let cs = &col.summary;
    let _ = write!(
        o,
        "<th class=\"col{}\" title=\"{}: {} pass, {} not applicable, {} spec-allows, {} host-limit, {} finding, {} fail\">{}/{}/{}</th>",
        if first { " vmm-head" } else { "" },
        escape(&col.id),
        cs.pass,
        cs.not_applicable,
        cs.spec_allows,
        cs.host_limit,
        cs.finding,
        cs.fail,
        escape(&col.scenario),
        escape(&col.view),
        escape(&col.vcpu)
    );
}

/// A column's number of findings and failures, coloured by the worse of them.
fn column_count(o: &mut String, col: &Column, first: bool) {
    let n = col.summary.finding + col.summary.fail;
    let class = match (col.summary.fail, col.summary.finding) {
        (0, 0) => "v-pass",
        (0, _) => "v-finding",
        _ => "v-fail",
    };
    let _ = write!(
        o,
        "<th class=\"num {class}{}\">{n}</th>",
        if first { " vmm-head" } else { "" }
    );
}

/// The matrix's rows, a class heading before each class's first field, and its end.
fn matrix_body(o: &mut String, m: &Matrix, first: &[bool]) {
    let mut class = "";
    for row in &m.rows {
        if row.class != class {
            class = &row.class;
            let _ = write!(
                o,
                "<tr class=\"class\"><th colspan=\"{}\">{}</th></tr>",
                m.columns.len() + 1,
                escape(class)
            );
        }
        field_row(o, m, row, first);
    }
    o.push_str("</tbody></table>\n");
}

/// One field's row: its name (the citation in the tooltip) and a cell per column.
fn field_row(o: &mut String, m: &Matrix, row: &Row, first: &[bool]) {
    let citation = row
        .cells
        .iter()
        .flatten()
        .map(|c| c.citation.as_str())
        .next()
        .unwrap_or("");
    let _ = write!(
        o,
        "<tr><th class=\"field\" title=\"{}\">{}</th>",
        escape(citation),
        escape(&row.field)
    );
    for (c, cell) in row.cells.iter().enumerate() {
        let edge = if first[c] { " first" } else { "" };
        match cell {
            None => {
                let _ = write!(o, "<td class=\"cell none{edge}\"></td>");
            }
            Some(cell) => {
                let _ = write!(
                    o,
                    "<td class=\"cell {}{edge}\" title=\"{}\">{}</td>",
                    class_of(cell.verdict),
                    escape(&title(&m.columns[c].id, &row.field, cell)),
                    symbol(cell.verdict)
                );
            }
        }
    }
    o.push_str("</tr>\n");
}

/// Every finding and failure in full.
fn findings(o: &mut String, report: &Report) {
    let notable: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Finding | Verdict::Fail))
        .collect();
    let _ = write!(
        o,
        "<h2>Findings and failures ({})</h2>\n<table class=\"list\" id=\"findings\"><thead><tr><th>verdict</th><th>column</th><th>field</th><th>expected</th><th>actual</th><th>reason</th><th>citation</th></tr></thead><tbody>\n",
        notable.len()
    );
    for r in notable {
        let _ = write!(
            o,
            "<tr><td class=\"v {}\">{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            class_of(r.verdict),
            r.verdict.name(),
            escape(&r.column()),
            escape(&r.field),
            escape(&r.expected),
            escape(r.actual.as_deref().unwrap_or("-")),
            escape(r.reason.as_deref().unwrap_or("")),
            escape(&r.citation)
        );
    }
    o.push_str("</tbody></table>\n");
}

/// The scenarios that could not run, with why; nothing when all ran.
fn not_run(o: &mut String, report: &Report) {
    let not_run: Vec<_> = report
        .scenarios
        .iter()
        .filter(|s| s.error.is_some())
        .collect();
    if not_run.is_empty() {
        return;
    }
    o.push_str("<h2>Not run</h2><ul class=\"notrun\">");
    for sc in not_run {
        let _ = write!(
            o,
            "<li><b>{}</b>: {}</li>",
            escape(&sc.name),
            escape(sc.error.as_deref().unwrap_or(""))
        );
    }
    o.push_str("</ul>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::{FieldResult, ScenarioInfo, View};
    use crate::check::verdict::Owner;

    fn result(scenario: &str, field: &str, verdict: Verdict) -> FieldResult {
        FieldResult {
            scenario: scenario.into(),
            view: View::Guest,
            vcpu: "bsp".into(),
            field: field.into(),
            class: "control".into(),
            verdict,
            expected: "0x60000010".into(),
            actual: Some("0x0".into()),
            citation: "SDM Vol. 3A §10.1.1 <Table 10-1>".into(),
            reason: None,
        }
    }

    fn report() -> Report {
        let mut r = Report::default();
        r.host.insert("backend".into(), "kvm".into());
        r.scenarios.push(ScenarioInfo {
            name: "bochs:reboot-kbc".into(),
            owner: Owner::Host,
            error: Some("bochs: timed out".into()),
        });
        r.results = vec![
            result("create", "cr0", Verdict::Pass),
            result("qemu-tcg:power-on", "cr0", Verdict::Finding),
            result("qemu-tcg:power-on", "cr4", Verdict::HostLimit),
        ];
        r
    }

    #[test]
    fn matrix_has_a_cell_per_field_and_column() {
        let m = Matrix::new(&report());
        assert_eq!(m.columns.len(), 2);
        assert_eq!(m.columns[0].vmm, "kvm");
        assert_eq!(m.columns[1].vmm, "qemu-tcg");
        assert_eq!(m.columns[1].scenario, "power-on");
        assert_eq!(m.rows.len(), 2);
        assert!(m.rows[1].cells[0].is_none(), "cr4 has no create verdict");
        assert_eq!(m.columns[1].summary.finding, 1);
    }

    #[test]
    fn page_is_escaped_and_has_every_cell_with_a_title() {
        let page = render(&report());
        assert_eq!(page.matches("<td class=\"cell").count(), 4);
        assert!(page.contains("class=\"cell v-finding first\" title=\"qemu-tcg:power-on/guest/bsp · cr0: finding\nexpected 0x60000010, got 0x0\nSDM Vol. 3A §10.1.1 &lt;Table 10-1&gt;\">F</td>"), "{page}");
        assert!(!page.contains("<Table"), "citations are escaped");
        assert!(page.contains("bochs: timed out"));
        assert!(!page.contains("http"), "no external resources");
    }

    #[test]
    fn escape_covers_attribute_quotes() {
        assert_eq!(escape("a\"b'<&>"), "a&quot;b&#39;&lt;&amp;&gt;");
        assert_eq!(escape("a\u{1b}[1m\rb\nc"), "a\\u{1b}[1m\\rb\nc");
    }
}
