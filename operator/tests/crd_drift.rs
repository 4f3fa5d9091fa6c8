//! crds/ is generated from the Rust types; this fails when they drift apart.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, crd) in switchboard_operator::crd::all() {
        let want = switchboard_operator::crd::to_yaml(&crd).expect("render CRD");
        let path = dir.join(file);
        let have = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        assert!(
            have == want,
            "{} is out of date with operator/src/crd; run `make crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crds_carry_short_names_printer_columns_and_status() {
    for (_, crd) in switchboard_operator::crd::all() {
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        assert_eq!(short.len(), 1, "{}", crd.spec.names.kind);
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        // Routing resources show whether the fleet runs them; campaigns
        // their phase.
        assert!(
            (cols.contains(&"Programmed") || cols.contains(&"Phase")) && cols.contains(&"Age"),
            "{cols:?}"
        );
    }
}
