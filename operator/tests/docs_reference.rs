//! docs/resources.md documents every field of the CRD schemas.

use std::path::Path;

use serde_json::Value;

/// Leaf field paths (objects are documented through their fields).
fn paths(schema: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let p = format!("{prefix}.{k}");
            if v.get("properties").is_none() {
                out.push(p.clone());
            }
            paths(v, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        paths(items, &format!("{prefix}[]"), out);
    }
}

#[test]
fn every_schema_field_is_documented() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/resources.md"))
            .expect("docs/resources.md");
    for (_, crd) in switchboard_operator::crd::all() {
        let v = serde_json::to_value(&crd).expect("crd json");
        let root = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let mut all = Vec::new();
        paths(&root["spec"], "spec", &mut all);
        paths(&root["status"], "status", &mut all);
        let missing: Vec<&String> = all
            .iter()
            // Condition sub-fields are the standard metav1.Condition ones.
            .filter(|p| !p.starts_with("status.conditions[]."))
            .filter(|p| !doc.contains(&format!("`{p}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: not in docs/resources.md: {missing:?}",
            crd.spec.names.kind
        );
    }
}
