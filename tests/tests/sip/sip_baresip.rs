//! A call between baresip (an independent SIP implementation) and the
//! node: baresip dials the number, the node answers with PCMU, baresip
//! hangs up with BYE after three seconds.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, free_port_pair};
use switchboard_tests::poll::eventually;

#[tokio::test]
async fn sip_baresip_call_completes() {
    let config = json!({
        "version": "1",
        "trunks": [{"id": "demo/carrier", "enabled": true, "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]}}],
        "numbers": [{"id": "demo/n", "e164": "+15550001111", "trunkId": "demo/carrier", "inbound": true}]
    });
    let node = MediaNode::start(&config, &["--debug-routes"])
        .await
        .expect("node starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let play = dir.path().join("play.wav");
    // ausine only produces 48 kHz stereo; baresip resamples to PCMU.
    let cfg = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{}\nsip_trans_def udp\naudio_player aufile,{p}\naudio_alert aufile,{p}\n\
         audio_source ausine,440\nausrc_srate 48000\nauplay_srate 48000\nausrc_channels 2\nauplay_channels 2\n\
         module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\nmodule aufile.so\nmodule_app account.so\nmodule_app menu.so\n",
        free_port_pair(),
        p = play.display()
    );
    std::fs::write(dir.path().join("config"), cfg).expect("config");
    std::fs::write(
        dir.path().join("accounts"),
        "<sip:caller@127.0.0.1>;regint=0\n",
    )
    .expect("accounts");
    let child = tokio::process::Command::new("baresip")
        .arg("-f")
        .arg(dir.path())
        .args([
            "-e",
            &format!("/dial sip:+15550001111@{}", node.sip),
            "-t",
            "3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("baresip installed (scripts/test-deps.sh)");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("baresip exits")
        .expect("baresip output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Call established"),
        "baresip did not establish the call:\n{text}\nnode log:\n{}",
        node.log()
    );
    assert!(
        text.contains("terminated"),
        "baresip did not hang up:\n{text}"
    );
    assert_eq!(
        node.metric(
            r#"switchboard_sip_calls_total{code="200",direction="inbound",result="answered"}"#
        )
        .await,
        1.0
    );
    eventually(
        "the node to see baresip's BYE",
        Duration::from_secs(5),
        || async {
            let (_, body) = node
                .http("GET", "/debug/calls", None)
                .await
                .map_err(|e| e.to_string())?;
            if body.trim() == "[]" {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
}
