//! The `vcpu-reset spec` subcommand, run as a user would run it.

use std::process::{Command, Output};

use serde_json::Value;

fn vcpu_reset(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
        .args(args)
        .output()
        .expect("run the vcpu-reset binary")
}

fn spec_json(vendor: &str, event: &str) -> Vec<Value> {
    let out = vcpu_reset(&[
        "spec", "--vendor", vendor, "--event", event, "--format", "json",
    ]);
    assert!(
        out.status.success(),
        "spec --vendor {vendor} --event {event} --format json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    v.as_array().expect("a JSON array of entries").clone()
}

const COMBINATIONS: [(&str, &str); 4] = [
    ("intel", "reset"),
    ("intel", "init"),
    ("amd", "reset"),
    ("amd", "init"),
];

const REQUIRED_FIELDS: [&str; 21] = [
    "rip",
    "rflags",
    "rdx",
    "cr0",
    "cr3",
    "efer",
    "cs.selector",
    "cs.base",
    "cs.limit",
    "cs.attributes",
    "gdtr.limit",
    "dr6",
    "dr7",
    "x87.fcw",
    "x87.ftw",
    "mxcsr",
    "xcr0",
    "msr.ia32_pat",
    "msr.ia32_apic_base",
    "lapic.svr",
    "lapic.lvt_lint0",
];

fn is_hex(s: &str) -> bool {
    s.strip_prefix("0x")
        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn json_entries_are_well_formed() {
    for (vendor, event) in COMBINATIONS {
        let entries = spec_json(vendor, event);
        assert!(!entries.is_empty(), "{vendor} {event}: no entries");
        for e in &entries {
            let ctx = format!("{vendor} {event}: {e}");
            let field = e["field"].as_str().expect("field is a string");
            assert!(!field.is_empty(), "{ctx}");
            let citation = e["citation"].as_str().expect("citation is a string");
            assert!(!citation.trim().is_empty(), "{ctx}");
            let rule = e["rule"].as_str().expect("rule is a string");
            assert!(
                ["value", "preserved", "derived", "undefined"].contains(&rule),
                "{ctx}"
            );
            match &e["value"] {
                Value::Null => assert!(
                    rule == "preserved" || rule == "derived",
                    "null value for a {rule} rule: {ctx}"
                ),
                Value::String(s) => {
                    assert!(is_hex(s), "value {s:?} is not 0x-hex: {ctx}");
                    assert!(
                        rule == "value" || rule == "undefined",
                        "a {rule} rule has a value: {ctx}"
                    );
                }
                other => panic!("value {other} is neither null nor a string: {ctx}"),
            }
        }
    }
}

#[test]
fn json_has_the_named_fields_with_unique_names() {
    for (vendor, event) in COMBINATIONS {
        let entries = spec_json(vendor, event);
        let names: Vec<&str> = entries.iter().filter_map(|e| e["field"].as_str()).collect();
        for f in REQUIRED_FIELDS {
            assert!(names.contains(&f), "{vendor} {event}: {f} missing");
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            names.len(),
            "{vendor} {event}: duplicate fields"
        );
    }
}

#[test]
fn json_values_match_the_documents() {
    // SDM Table 10-1 / APM Table 14-1: RIP 0000FFF0H, CR0 60000010H after RESET; SDM §12.12.4:
    // PAT 0007040600070406H; SDM Table 10-1: DR7 00000400H.
    let value_of = |entries: &[Value], field: &str| -> Value {
        entries
            .iter()
            .find(|e| e["field"] == field)
            .unwrap_or_else(|| panic!("{field} missing"))
            .clone()
    };
    for vendor in ["intel", "amd"] {
        let reset = spec_json(vendor, "reset");
        assert_eq!(value_of(&reset, "rip")["value"], "0x000000000000fff0");
        assert_eq!(value_of(&reset, "cr0")["value"], "0x0000000060000010");
        assert_eq!(
            value_of(&reset, "msr.ia32_pat")["value"],
            "0x0007040600070406"
        );
        assert_eq!(value_of(&reset, "rdx")["rule"], "derived");
        let init = spec_json(vendor, "init");
        assert_eq!(value_of(&init, "cr0")["rule"], "derived");
        assert_eq!(value_of(&init, "x87.fcw")["rule"], "preserved");
        assert_eq!(value_of(&init, "x87.fcw")["value"], Value::Null);
    }
    assert_eq!(
        value_of(&spec_json("intel", "init"), "dr7")["value"],
        "0x0000000000000400"
    );
    assert_eq!(
        value_of(&spec_json("amd", "init"), "dr7")["rule"],
        "preserved"
    );
    assert_eq!(
        value_of(&spec_json("intel", "reset"), "cs.attributes")["value"],
        "0x009b"
    );
    assert_eq!(
        value_of(&spec_json("amd", "reset"), "cs.attributes")["value"],
        "0x009a"
    );
}

#[test]
fn table_and_markdown_formats_succeed() {
    for (vendor, event) in COMBINATIONS {
        for format in ["table", "markdown"] {
            let out = vcpu_reset(&[
                "spec", "--vendor", vendor, "--event", event, "--format", format,
            ]);
            assert!(
                out.status.success(),
                "{vendor} {event} {format}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !out.stdout.is_empty(),
                "{vendor} {event} {format}: empty output"
            );
        }
    }
    let out = vcpu_reset(&["spec"]);
    assert!(out.status.success(), "spec with defaults");
}

#[test]
fn bad_vendor_is_rejected_with_a_message() {
    let out = vcpu_reset(&["spec", "--vendor", "via", "--format", "json"]);
    assert!(!out.status.success(), "--vendor via must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("via"),
        "message should name the bad value: {err}"
    );
    assert!(out.stdout.is_empty(), "no table on a usage error");
}
