//! The README's "Use in your VMM" snippet is the crate documentation's first doc test (which
//! `cargo test --doc` compiles), minus the `use` lines and the hidden lines rustdoc needs.

use std::path::Path;

/// The lines of the first fenced block after `heading` (prefixes stripped by `strip`).
fn block<'a>(text: &'a str, heading: &str, strip: impl Fn(&'a str) -> &'a str) -> Vec<&'a str> {
    let mut lines = text.lines().map(strip);
    lines
        .by_ref()
        .find(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    lines
        .by_ref()
        .find(|l| l.starts_with("```"))
        .expect("a code block");
    lines.take_while(|l| !l.starts_with("```")).collect()
}

#[test]
fn the_readme_snippet_is_the_doc_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).expect("README.md");
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let shown: Vec<&str> = block(&readme, "## Use in your VMM", |l| l)
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tested: Vec<&str> = block(&lib, "# Use in your VMM", |l| {
        l.strip_prefix("//! ")
            .or(l.strip_prefix("//!"))
            .unwrap_or(l)
    })
    .into_iter()
    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    .collect();
    assert!(shown.len() >= 8, "{shown:#?}");
    assert_eq!(
        shown, tested,
        "README.md and the doc test in src/lib.rs differ"
    );
}
