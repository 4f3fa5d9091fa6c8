//! The Grafana dashboard (`charts/switchboard/dashboards/switchboard.json`) queries only
//! metrics the binaries really export, and the chart ships it as a ConfigMap for Grafana's
//! sidecar when `grafanaDashboard.enabled` is set.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use switchboard_tests::helm::{self, Render, of_kind};

fn dashboard_path() -> PathBuf {
    helm::chart_dir().join("dashboards/switchboard.json")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(dashboard_path()).expect("reading the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `expr` in the dashboard's panels (rows included) and template variables.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// `switchboard_...` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("switchboard_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

fn rust_sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).expect("reading sources").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&p).expect("reading a source file"));
        }
    }
}

/// Whether the code defines the metric `name` (a histogram's `_bucket`, `_sum` and `_count`
/// series belong to the histogram). Media-node metrics are full string literals; the
/// operator's registry adds the `switchboard_operator_` prefix to its literals.
fn defined(name: &str, media: &str, operator: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    let candidates = [name, base];
    candidates.iter().any(|n| {
        if let Some(short) = n.strip_prefix("switchboard_operator_") {
            operator.contains(&format!("\"{short}\""))
                && operator.contains("\"switchboard_operator\"")
        } else {
            media.contains(&format!("\"{n}\""))
        }
    })
}

#[test]
fn dashboard_queries_only_metrics_the_code_exports() {
    let root = helm::repo_root();
    let mut media = String::new();
    rust_sources(&root.join("media-node/src"), &mut media);
    let mut operator = String::new();
    rust_sources(&root.join("operator/src"), &mut operator);

    let mut all = Vec::new();
    exprs(&dashboard(), &mut all);
    assert!(
        all.len() > 20,
        "the dashboard has only {} queries",
        all.len()
    );
    let names: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !defined(n, &media, &operator))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no binary exports: {missing:?}"
    );
    // It covers what the dashboard is for.
    for must in [
        "switchboard_sip_active_calls",
        "switchboard_sip_calls_total",
        "switchboard_agent_connect_seconds_bucket",
        "switchboard_rtp_packets_lost_total",
        "switchboard_config_version",
        "switchboard_operator_config_version",
        "switchboard_operator_fleet_nodes",
    ] {
        assert!(names.contains(must), "the dashboard does not query {must}");
    }
}

#[test]
fn the_check_catches_a_metric_that_does_not_exist() {
    let root = helm::repo_root();
    let mut media = String::new();
    rust_sources(&root.join("media-node/src"), &mut media);
    let mut operator = String::new();
    rust_sources(&root.join("operator/src"), &mut operator);
    assert!(defined(
        "switchboard_rtp_jitter_seconds_bucket",
        &media,
        &operator
    ));
    assert!(defined(
        "switchboard_operator_resolve_seconds_count",
        &media,
        &operator
    ));
    assert!(!defined("switchboard_sip_calls", &media, &operator));
    assert!(!defined("switchboard_operator_nodes", &media, &operator));
    assert!(!defined("switchboard_made_up_total", &media, &operator));
    assert_eq!(
        metric_names("sum(rate(switchboard_a_total[5m])) / xswitchboard_b + switchboard_c"),
        BTreeSet::from(["switchboard_a_total".into(), "switchboard_c".into()])
    );
}

#[test]
fn panels_have_unique_ids_and_use_the_datasource_variable() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        let id = p["id"].as_i64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {} does not use the datasource variable",
                p["title"]
            );
        }
    }
}

#[test]
fn chart_ships_the_dashboard_as_a_configmap_when_enabled() {
    let off = Render::new("sb", "switchboard").documents();
    assert!(
        of_kind(&off, "ConfigMap")
            .iter()
            .all(|c| c["metadata"]["labels"]["grafana_dashboard"].is_null()),
        "the dashboard ConfigMap is rendered by default"
    );
    let on = Render::new("sb", "switchboard")
        .set("grafanaDashboard.enabled=true")
        .set("grafanaDashboard.annotations.grafana_folder=Voice")
        .documents();
    let cms: Vec<&Value> = of_kind(&on, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(cms.len(), 1, "one dashboard ConfigMap");
    let cm = cms[0];
    assert_eq!(cm["metadata"]["namespace"], "switchboard");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Voice");
    let shipped: Value = serde_json::from_str(
        cm["data"]["switchboard.json"]
            .as_str()
            .expect("switchboard.json in the ConfigMap"),
    )
    .expect("the shipped dashboard is JSON");
    assert_eq!(
        shipped,
        dashboard(),
        "the ConfigMap holds the dashboard file"
    );
    let err = Render::new("sb", "switchboard")
        .set("grafanaDashboard.enable=true")
        .template()
        .expect_err("a misspelt value is refused by the schema");
    assert!(err.contains("enable"), "{err}");
}
