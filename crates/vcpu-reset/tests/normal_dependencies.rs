//! The library a VMM takes stays lean: its normal dependency tree (what `cargo add vcpu-reset`
//! brings into a VMM's build) holds the spec crate, the rust-vmm crates, libc, thiserror and
//! what those need, and none of the selftest tool's crates or any dev-only crate.
//!
//! A crate that joins the tree fails here until it is added to [`ALLOWED`] with a reason in the
//! README ("Crates and what they depend on").

use std::collections::BTreeSet;
use std::process::Command;

/// Every crate the library's normal dependency tree may hold, by name.
const ALLOWED: [&str; 13] = [
    "vcpu-reset",
    "vcpu-reset-spec",
    // rust-vmm
    "kvm-ioctls",
    "kvm-bindings",
    "vmm-sys-util",
    "bitflags",
    "libc",
    // thiserror and its derive
    "thiserror",
    "thiserror-impl",
    "proc-macro2",
    "quote",
    "syn",
    "unicode-ident",
];

/// Crates that belong to the selftest tool or to tests, never to the library.
const TOOL_OR_DEV: [&str; 8] = [
    "clap",
    "iced-x86",
    "serde_json",
    "serde",
    "vm-memory",
    "proptest",
    "criterion",
    "vcpu-reset-selftest",
];

fn normal_dependencies() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "vcpu-reset",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_library_depends_on_no_crate_of_the_tool_or_the_tests() {
    let deps = normal_dependencies();
    assert!(deps.contains("kvm-ioctls"), "the tree was read: {deps:?}");
    let bad: Vec<&&str> = TOOL_OR_DEV.iter().filter(|c| deps.contains(**c)).collect();
    assert!(
        bad.is_empty(),
        "the library's normal dependencies gained {bad:?}"
    );
    let unknown: Vec<&String> = deps
        .iter()
        .filter(|d| !ALLOWED.contains(&d.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "new crates in the library's normal dependency tree: {unknown:?} (add each to ALLOWED \
         with a reason in the README, or drop it)"
    );
}
