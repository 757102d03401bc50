//! crds/ and the chart's crds/ hold the CRD generated from the Rust types; this fails when
//! someone changed the types and forgot to regenerate them.

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = hotload_operator::api::crd_yaml().expect("the CRD serialises");
    for file in [
        "crds/pluginreleases.hotload.dev.yaml",
        "charts/hotload/crds/pluginreleases.hotload.dev.yaml",
    ] {
        let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{file} is stale; regenerate it with `make crds`"
        );
    }
}
