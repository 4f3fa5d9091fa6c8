//! The control channel is TLS with a bearer token: the operator programs a
//! node that presents a certificate from the CA it trusts and accepts its
//! token, and a node expecting another token is never programmed.

use std::path::Path;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::json;
use switchboard_operator::crd::{PhoneNumber, SipTrunk};
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::fleet::{ControlledNode, register_pod};
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;

const NS: &str = "default";
const SERVER_NAME: &str = "switchboard-media-node";

/// Writes ca.pem, node.pem, node-key.pem for the node's server name.
fn certificates(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchboard test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("node key");
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("node cert");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("node.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("node-key.pem"), key.serialize_pem()).expect("write");
}

#[tokio::test]
async fn tls_and_token_protect_the_control_channel() {
    let dir = tempfile::tempdir().expect("dir");
    certificates(dir.path());
    std::fs::write(dir.path().join("token"), "control-token-1\n").expect("write");
    std::fs::write(dir.path().join("other-token"), "another-token").expect("write");
    let p = |f: &str| dir.path().join(f).display().to_string();

    let cluster = TestCluster::start().await.expect("cluster");
    cluster
        .install_crds(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds"))
        .await
        .expect("crds");
    let client = cluster.client().await.expect("client");
    let (cert, key, token, other) = (
        p("node.pem"),
        p("node-key.pem"),
        p("token"),
        p("other-token"),
    );
    let good = ControlledNode::start_with_control(
        "media-good",
        &[
            "--control-cert",
            &cert,
            "--control-key",
            &key,
            "--control-token-file",
            &token,
        ],
        &[],
    );
    let wrong = ControlledNode::start_with_control(
        "media-wrong-token",
        &[
            "--control-cert",
            &cert,
            "--control-key",
            &key,
            "--control-token-file",
            &other,
        ],
        &[],
    );
    register_pod(&client, NS, &good).await;
    register_pod(&client, NS, &wrong).await;
    let ca = p("ca.pem");
    let op = Operator::start_kube(
        cluster.kubeconfig_path(),
        "op",
        &[
            "--no-leader-election",
            "--control-ca",
            &ca,
            "--control-token-file",
            &token,
        ],
    );

    let trunks: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<SipTrunk>(&()));
    let numbers: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<PhoneNumber>(&()));
    let pp = PatchParams::apply("test").force();
    trunks
        .patch("carrier", &pp, &Patch::Apply(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk", "metadata": {"name": "carrier"},
            "spec": {"inbound": {"allowedSources": ["127.0.0.0/8"]}}
        })))
        .await
        .expect("trunk");
    numbers
        .patch("main", &pp, &Patch::Apply(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber", "metadata": {"name": "main"},
            "spec": {"number": "+14155550100", "trunkRef": {"name": "carrier"}, "agent": {"url": "ws://127.0.0.1:9/"}}
        })))
        .await
        .expect("number");

    // The node with the right token is programmed over TLS and turns ready.
    eventually(
        "the good node to be programmed",
        Duration::from_secs(40),
        || async {
            match good.readyz().await {
                Some(200) => Ok(()),
                s => Err(format!("{s:?}")),
            }
        },
    )
    .await;
    // The other refuses the operator's token: never programmed, and the
    // trunk's status says 1 of 2 nodes (a number counts only nodes that
    // applied a configuration, so it is Programmed on the serving one).
    eventually(
        "Programmed to show 1/2",
        Duration::from_secs(40),
        || async {
            let n = trunks.get("carrier").await.map_err(|e| e.to_string())?;
            let c = n.data["status"]["conditions"].to_string();
            if c.contains("1/2 media nodes programmed") {
                Ok(())
            } else {
                Err(c)
            }
        },
    )
    .await;
    assert_eq!(wrong.readyz().await, Some(503));
    // The token never appears in the operator's log.
    assert!(!op.log().contains("control-token-1"));
    assert!(
        op.log().contains("unauthenticated")
            || op.log().contains("Unauthenticated")
            || op.log().contains("bearer"),
        "the operator should log why the node refused it:\n{}",
        op.log()
    );
}
