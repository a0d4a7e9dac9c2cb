//! `docs/reset-state.md` is generated from the spec crate; this fails when it is stale.

#[test]
fn reset_state_doc_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reset-state.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == vcpu_reset::spec::markdown(),
        "docs/reset-state.md is out of date: run `cargo run -- spec --format markdown > docs/reset-state.md`"
    );
}
