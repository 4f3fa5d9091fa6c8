//! The operator's file source: the same manifests from a directory, the same
//! conditions printed as a table, and reactions to file changes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchboard_proto::RoutingConfig;
use switchboard_tests::operator::{Operator, binary};
use switchboard_tests::poll::eventually;

const WAIT: Duration = Duration::from_secs(20);

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn copy_examples(to: &Path) {
    for e in std::fs::read_dir(examples()).expect("examples/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

/// The table row for an object, split into cells.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .rev()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .map(|l| l.split_whitespace().map(String::from).collect())
}

#[test]
fn once_prints_conditions_and_fails_on_unusable_objects() {
    let out = Command::new(binary("switchboard-operator"))
        .args(["--manifests"])
        .arg(examples())
        .arg("--once")
        .output()
        .expect("run operator");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "examples/ should be valid:\n{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trunk = row(&table, "default/local-carrier").expect("trunk row");
    assert_eq!(
        trunk[..6],
        [
            "SipTrunk",
            "default/local-carrier",
            "True",
            "True",
            "-",
            "2"
        ]
    );
    assert!(row(&table, "default/support-line").is_some());

    // A number naming a missing trunk: reported with its reason, exit 1.
    let dir = tempfile::tempdir().expect("dir");
    copy_examples(dir.path());
    std::fs::write(
        dir.path().join("orphan.yaml"),
        "apiVersion: switchboard.dev/v1alpha1\nkind: PhoneNumber\nmetadata: {name: orphan}\nspec:\n  number: \"+14155550199\"\n  trunkRef: {name: nowhere}\n  agent: {url: \"ws://127.0.0.1:1/\"}\n",
    )
    .expect("write");
    let out = Command::new(binary("switchboard-operator"))
        .arg("--manifests")
        .arg(dir.path())
        .arg("--once")
        .output()
        .expect("run operator");
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let r = row(&table, "default/orphan").expect("orphan row");
    assert_eq!(r[2..4], ["True", "False"]);
    assert!(r[5..].join(" ").contains("TrunkNotFound"), "{r:?}");
    // Secrets from the files never reach the output.
    assert!(!table.contains("demo-password"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("demo-password"));
}

#[tokio::test]
async fn reacts_to_file_changes_and_emits_the_routing_configuration() {
    let dir = tempfile::tempdir().expect("dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    copy_examples(&manifests);
    let config = dir.path().join("routing.json");
    let op = Operator::start(
        vec![
            "--manifests".into(),
            manifests.display().to_string(),
            "--emit-config".into(),
            config.display().to_string(),
        ],
        &[],
    );
    let read_config = || {
        let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
        RoutingConfig::from_json(&text).map_err(|e| e.to_string())
    };
    let first = eventually("the first configuration", WAIT, || async { read_config() }).await;
    assert_eq!(first.numbers.len(), 2);
    assert_eq!(
        first.trunks[0]
            .outbound
            .as_ref()
            .expect("outbound")
            .auth
            .as_ref()
            .expect("auth")
            .username,
        "demo-user"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&config).expect("stat").permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "routing.json holds credentials and must be private"
    );

    // Break the trunk's Secret reference: numbers drop out, the table says why.
    let trunk = std::fs::read_to_string(manifests.join("trunk-local.yaml")).expect("read");
    std::fs::write(
        manifests.join("trunk-local.yaml"),
        trunk.replace("name: carrier-credentials", "name: missing-creds"),
    )
    .expect("write");
    let second = eventually("a configuration without the trunk", WAIT, || async {
        let c = read_config()?;
        if c.trunks.is_empty() && c.version > first.version {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    assert!(second.numbers.is_empty());
    eventually("the table to show SecretNotFound", WAIT, || async {
        let log = op.log();
        let r = row(&log, "default/local-carrier").ok_or("no row")?;
        if r.join(" ").contains("SecretNotFound") {
            Ok(())
        } else {
            Err(r.join(" "))
        }
    })
    .await;

    // Restore it: recovers without a restart.
    std::fs::write(manifests.join("trunk-local.yaml"), trunk).expect("write");
    eventually("the configuration to recover", WAIT, || async {
        let c = read_config()?;
        if c.numbers.len() == 2 && c.version > second.version {
            Ok(())
        } else {
            Err(format!("{} numbers", c.numbers.len()))
        }
    })
    .await;
    assert!(!op.log().contains("demo-password"));

    // SIGTERM ends it promptly and cleanly, whatever the loop was doing.
    let mut op = op;
    op.terminate();
    assert_eq!(
        op.wait_exit(Duration::from_secs(5)).await,
        Some(0),
        "{}",
        op.log()
    );
}

#[tokio::test]
async fn file_source_programs_the_nodes_named_on_the_command_line() {
    use switchboard_tests::agent::TestAgent;
    use switchboard_tests::fleet::ControlledNode;
    use switchboard_tests::sipp::{Sipp, scenario};

    let agent = TestAgent::start().await.expect("agent");
    let nodes = [
        ControlledNode::start("local-a", &[]),
        ControlledNode::start("local-b", &[]),
    ];
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("fleet.yaml"),
        format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: SipTrunk\nmetadata: {{name: local}}\nspec:\n  inbound: {{allowedSources: [\"127.0.0.0/8\"]}}\n---\n\
             apiVersion: switchboard.dev/v1alpha1\nkind: PhoneNumber\nmetadata: {{name: line}}\nspec:\n  number: \"+14155550123\"\n  trunkRef: {{name: local}}\n  agent: {{url: \"{}\"}}\n",
            agent.url()
        ),
    )
    .expect("write");
    let mut args = vec![
        "--manifests".to_string(),
        dir.path().display().to_string(),
        "--control-insecure".into(),
    ];
    for n in &nodes {
        args.push(format!("--node={}={}", n.name, n.control));
    }
    let op = Operator::start(args, &[]);
    for n in &nodes {
        eventually(&format!("{} to be programmed", n.name), WAIT, || async {
            match n.readyz().await {
                Some(200) => Ok(()),
                s => Err(format!("{s:?}")),
            }
        })
        .await;
        Sipp::new(scenario("uac_call.xml"))
            .args(["-s", "+14155550123"])
            .run_client(n.sip, switchboard_tests::node::free_port())
            .await
            .expect("sipp")
            .assert_success(&format!("call through {}", n.name));
    }
    eventually("the table to show the number programmed", WAIT, || async {
        let log = op.log();
        let r = row(&log, "default/line").ok_or("no row")?;
        if r[4] == "True" {
            Ok(())
        } else {
            Err(r.join(" "))
        }
    })
    .await;
}
