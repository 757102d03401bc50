//! crds/ holds the CRD generated from the Rust types; this fails when someone changed the
//! types and forgot to regenerate it.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/pluginreleases.hotload.dev.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = hotload_operator::api::crd_yaml().expect("the CRD serialises");
    assert!(
        committed == generated,
        "crds/pluginreleases.hotload.dev.yaml is stale; regenerate it with `make crds`"
    );
}
