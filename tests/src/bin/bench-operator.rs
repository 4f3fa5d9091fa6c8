//! Operator benchmarks: how long it takes, and how many bytes, to program
//! phone numbers onto a fleet of real media-node processes.
//!
//! 1. File source, 10 nodes: 1, 1,000 and 100,000 numbers from operator start
//!    to every node running them; then a one-number change.
//! 2. Kubernetes API (real kube-apiserver + etcd), 3 nodes: one PhoneNumber
//!    from apply to Programmed=True, then 10,000 numbers.
//!
//! Writes `bench/results/operator.md` (a BENCHMARKS.md section) and prints
//! the raw numbers. Run with `make bench` (release build).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use switchboard_operator::crd::PhoneNumber;
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::fleet::{ControlledNode, register_pod};
use switchboard_tests::operator::Operator;

const TRUNK: &str = r#"apiVersion: switchboard.dev/v1alpha1
kind: SipTrunk
metadata: {name: carrier}
spec:
  inbound: {allowedSources: ["127.0.0.0/8"]}
  healthCheck: {optionsIntervalSeconds: 0}
"#;

fn number_yaml(i: usize) -> String {
    format!(
        "---\napiVersion: switchboard.dev/v1alpha1\nkind: PhoneNumber\nmetadata: {{name: n{i}}}\nspec:\n  number: \"+1415{i:07}\"\n  trunkRef: {{name: carrier}}\n  agent: {{url: \"ws://127.0.0.1:8765/agent\", parameters: {{line: \"{i}\"}}}}\n"
    )
}

async fn numbers_on(node: &ControlledNode) -> Option<f64> {
    node.metric("switchboard_config_numbers").await
}

/// Polls every node until all report `want` numbers; returns the time.
async fn wait_all(
    nodes: &[ControlledNode],
    want: usize,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let mut done = true;
        for n in nodes {
            if numbers_on(n).await != Some(want as f64) {
                done = false;
                break;
            }
        }
        if done {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            anyhow::bail!("nodes did not reach {want} numbers within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn pushed_bytes(op: &Operator, kind: &str) -> f64 {
    op.metric(&format!(
        r#"switchboard_operator_config_push_bytes_total{{kind="{kind}"}}"#
    ))
    .await
    .unwrap_or(0.0)
}

struct Row {
    what: String,
    took: Duration,
    bytes: f64,
}

async fn files_run(count: usize, node_count: usize) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests)?;
    let mut text = String::from(TRUNK);
    for i in 0..count {
        text.push_str(&number_yaml(i));
    }
    std::fs::write(manifests.join("numbers.yaml"), text)?;
    let nodes: Vec<ControlledNode> = (0..node_count)
        .map(|i| ControlledNode::start(&format!("node-{i}"), &[]))
        .collect();
    // Nodes must be listening before the clock starts.
    for n in &nodes {
        let t = Instant::now();
        while numbers_on(n).await.is_none() {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "node {} did not start",
                n.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut args = vec![
        "--manifests".to_string(),
        manifests.display().to_string(),
        "--control-insecure".into(),
    ];
    for n in &nodes {
        args.push("--node".into());
        args.push(format!("{}={}", n.name, n.control));
    }
    let started = Instant::now();
    let op = Operator::start(args, &[]);
    let full = wait_all(&nodes, count, started, Duration::from_secs(600)).await?;
    let snap = pushed_bytes(&op, "snapshot").await + pushed_bytes(&op, "delta").await;
    let mut rows = vec![Row {
        what: format!(
            "{count} numbers onto {node_count} nodes (operator start to all nodes running them)"
        ),
        took: full,
        bytes: snap,
    }];

    let before = pushed_bytes(&op, "delta").await;
    let changed = Instant::now();
    std::fs::write(manifests.join("one-more.yaml"), number_yaml(count + 1))?;
    let one = wait_all(&nodes, count + 1, changed, Duration::from_secs(60)).await?;
    let delta = pushed_bytes(&op, "delta").await - before;
    rows.push(Row {
        what: format!(
            "one-number change with {count} numbers on {node_count} nodes (file write to all nodes)"
        ),
        took: one,
        bytes: delta,
    });
    Ok(rows)
}

async fn kube_run(count: usize) -> anyhow::Result<Vec<Row>> {
    let cluster = TestCluster::start().await?;
    cluster
        .install_crds(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds"))
        .await?;
    let client = cluster.client().await?;
    let nodes: Vec<ControlledNode> = (0..3)
        .map(|i| ControlledNode::start(&format!("media-{i}"), &[]))
        .collect();
    for n in &nodes {
        register_pod(&client, "default", n).await;
    }
    let op = Operator::start_kube(
        cluster.kubeconfig_path(),
        "bench",
        &["--no-leader-election"],
    );
    let pp = PatchParams::apply("bench").force();
    let trunks: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::erase::<switchboard_operator::crd::SipTrunk>(&()),
    );
    let trunk: serde_json::Value = serde_saphyr::from_str(TRUNK)?;
    trunks.patch("carrier", &pp, &Patch::Apply(&trunk)).await?;
    let numbers: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::erase::<PhoneNumber>(&()),
    );
    let doc = |i: usize| -> anyhow::Result<serde_json::Value> {
        Ok(serde_saphyr::from_str(
            number_yaml(i).trim_start_matches("---\n"),
        )?)
    };
    wait_all(&nodes, 0, Instant::now(), Duration::from_secs(60)).await?;

    let programmed = |o: &DynamicObject| {
        o.data["status"]["conditions"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["type"] == "Programmed" && c["status"] == "True")
        })
    };
    let bytes0 = pushed_bytes(&op, "delta").await + pushed_bytes(&op, "snapshot").await;
    let t = Instant::now();
    numbers.patch("n0", &pp, &Patch::Apply(doc(0)?)).await?;
    let nodes_one = wait_all(&nodes, 1, t, Duration::from_secs(60)).await?;
    loop {
        if programmed(&numbers.get("n0").await?) {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "n0 never Programmed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status_one = t.elapsed();
    let bytes_one = pushed_bytes(&op, "delta").await + pushed_bytes(&op, "snapshot").await - bytes0;

    let bytes1 = pushed_bytes(&op, "delta").await + pushed_bytes(&op, "snapshot").await;
    let t = Instant::now();
    let docs: Vec<serde_json::Value> = (1..=count).map(doc).collect::<anyhow::Result<_>>()?;
    let results: Vec<_> = futures::stream::iter(docs.into_iter().enumerate())
        .map(|(i, d)| {
            let (numbers, pp) = (numbers.clone(), pp.clone());
            async move {
                numbers
                    .patch(&format!("n{}", i + 1), &pp, &Patch::Apply(d))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let applied = t.elapsed();
    let nodes_all = wait_all(&nodes, count + 1, t, Duration::from_secs(900)).await?;
    loop {
        let list = numbers.list(&ListParams::default()).await?;
        if list.items.len() == count + 1 && list.items.iter().all(programmed) {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(900),
            "numbers never all Programmed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status_all = t.elapsed();
    let bytes_all = pushed_bytes(&op, "delta").await + pushed_bytes(&op, "snapshot").await - bytes1;
    Ok(vec![
        Row {
            what: "1 PhoneNumber: apply to all 3 nodes running it".into(),
            took: nodes_one,
            bytes: bytes_one,
        },
        Row {
            what: "1 PhoneNumber: apply to Programmed=True in its status".into(),
            took: status_one,
            bytes: bytes_one,
        },
        Row {
            what: format!("{count} PhoneNumbers: creating them in the API server (32 in flight)"),
            took: applied,
            bytes: 0.0,
        },
        Row {
            what: format!("{count} PhoneNumbers: first create to all 3 nodes running them"),
            took: nodes_all,
            bytes: bytes_all,
        },
        Row {
            what: format!("{count} PhoneNumbers: first create to all Programmed=True"),
            took: status_all,
            bytes: bytes_all,
        },
    ])
}

fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| what | time | bytes pushed (all nodes) |\n| --- | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} ms | {:.0} |",
            r.what,
            r.took.as_secs_f64() * 1000.0,
            r.bytes
        );
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bench/results"));
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let sizes: &[usize] = if quick {
        &[1, 1000]
    } else {
        &[1, 1000, 100_000]
    };
    let kube_count = if quick { 1000 } else { 10_000 };
    let mut files_rows = Vec::new();
    for &n in sizes {
        eprintln!("bench-operator: file source, {n} numbers, 10 nodes");
        files_rows.extend(files_run(n, 10).await?);
    }
    eprintln!("bench-operator: Kubernetes API, {kube_count} numbers, 3 nodes");
    let kube_rows = kube_run(kube_count).await?;
    let mut md = String::new();
    let _ = writeln!(md, "## Operator: programming numbers onto the fleet\n");
    let _ = writeln!(
        md,
        "Method: real `switchboard-media-node` processes on loopback, programmed over gRPC (plaintext control, \
         `--control-insecure`); time is measured by polling each node's `switchboard_config_numbers` gauge every 5 ms \
         (and, for the API-server run, the PhoneNumbers' `Programmed` condition); bytes are the operator's \
         `switchboard_operator_config_push_bytes_total` (encoded protobuf, summed over nodes). Release build. \
         Command: `cargo run --release -p switchboard-tests --bin bench-operator`.\n"
    );
    let _ = writeln!(md, "### File source, 10 nodes\n\n{}", table(&files_rows));
    let _ = writeln!(
        md,
        "### Kubernetes API (kube-apiserver 1.35 + etcd 3.6 on loopback), 3 nodes\n\n{}",
        table(&kube_rows)
    );
    // Targets (issue 7): 100,000 numbers onto 10 nodes in under 2 s; a
    // one-number change in under 100 ms.
    let find = |rows: &[Row], prefix: &str| {
        rows.iter()
            .find(|r| r.what.starts_with(prefix))
            .map(|r| r.took)
    };
    let _ = writeln!(md, "### Against the targets\n");
    let verdict = |what: &str, got: Option<Duration>, target: Duration| match got {
        Some(t) if t <= target => format!(
            "- {what}: {:.0} ms, target {} ms: met.",
            t.as_secs_f64() * 1e3,
            target.as_millis()
        ),
        Some(t) => format!(
            "- {what}: {:.0} ms, target {} ms: missed by {:.1}x.",
            t.as_secs_f64() * 1e3,
            target.as_millis(),
            t.as_secs_f64() / target.as_secs_f64()
        ),
        None => format!("- {what}: not measured in this run."),
    };
    let _ = writeln!(
        md,
        "{}",
        verdict(
            "100,000 numbers onto 10 nodes",
            find(&files_rows, "100000 numbers onto"),
            Duration::from_secs(2)
        )
    );
    let _ = writeln!(
        md,
        "{}",
        verdict(
            "one-number change (1,000 numbers)",
            find(&files_rows, "one-number change with 1000 numbers"),
            Duration::from_millis(100)
        )
    );
    let _ = writeln!(
        md,
        "{}",
        verdict(
            "one-number change (100,000 numbers)",
            find(&files_rows, "one-number change with 100000 numbers"),
            Duration::from_millis(100)
        )
    );
    let _ = writeln!(
        md,
        "\nWhere the time goes at 100,000 numbers (from the code paths, not a profiler): each change rebuilds the \
         whole routing configuration from every object (file parsing is cached per file, resolution is O(n)), and each \
         node rebuilds its lookup tables from the full list after applying the delta in place. Ten node processes share \
         the machine's two cores with the operator, so node-side work is serialised. The next steps are incremental \
         resolution (re-resolve only the objects a change touches) and incremental node tables.\n"
    );
    print!("{md}");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("operator.md"), md)?;
    Ok(())
}
