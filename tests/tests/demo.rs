//! `make demo` itself: it succeeds with one `DEMO OK` line and leaves
//! nothing running, and fails loudly (exit status, one `DEMO FAILED` line
//! naming the problem) when a call fails because the agent or the carrier
//! is absent. The demo uses the fixed ports of examples/ (agent 8765,
//! carrier 5080), so the runs are serialised.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

static FIXED_PORTS: Mutex<()> = Mutex::new(());

struct Run {
    code: Option<i32>,
    out: String,
}

fn make_demo(args: &str) -> Run {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // `timeout` bounds the whole run (build included) so a hang fails the
    // test instead of blocking it.
    let out = Command::new("timeout")
        .args(["600", "make", "-s", "demo"])
        .arg(format!("ARGS={args}"))
        .current_dir(&repo)
        .env("CARGO", env!("CARGO"))
        .output()
        .expect("running make demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A failed demo keeps its logs for a human; the test has read them.
    if let Some(dir) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("logs kept in "))
        .filter(|d| d.contains("switchboard-demo-"))
    {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
    Run {
        code: out.status.code(),
        out: text,
    }
}

fn last_demo_line(out: &str) -> &str {
    out.lines()
        .rev()
        .find(|l| l.starts_with("DEMO "))
        .unwrap_or_else(|| panic!("no DEMO result line in:\n{out}"))
}

/// The fixed ports are free again: nothing the demo started still runs.
fn assert_ports_released() {
    for addr in ["127.0.0.1:8765", "127.0.0.1:5080"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let tcp = std::net::TcpListener::bind(addr).is_ok();
            let udp = std::net::UdpSocket::bind(addr).is_ok();
            if tcp && udp {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} still in use after the demo: something was left running"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn demo_succeeds_end_to_end() {
    let _g = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let run = make_demo("");
    let line = last_demo_line(&run.out);
    assert_eq!(run.code, Some(0), "{}", run.out);
    assert!(line.starts_with("DEMO OK: 3 calls"), "{line}\n{}", run.out);
    assert_eq!(
        run.out.lines().filter(|l| l.starts_with("DEMO ")).count(),
        1,
        "exactly one result line"
    );
    // What the demo promises to show.
    for shown in [
        "routing (from the operator's resolved configuration)",
        "] answered ",
        "] completed ",
        "frames node->agent",
        "audio round trip",
        "<- dtmf 5",
        "SipTrunk     default/local-carrier",
    ] {
        assert!(
            run.out.contains(shown),
            "demo output lacks {shown:?}:\n{}",
            run.out
        );
    }
    assert!(
        !run.out.contains("demo-password"),
        "credentials never printed"
    );
    assert_ports_released();
}

#[test]
fn demo_fails_loudly_without_the_agent() {
    let _g = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let run = make_demo("--no-agent");
    let line = last_demo_line(&run.out);
    assert_ne!(run.code, Some(0), "must fail:\n{}", run.out);
    assert!(line.starts_with("DEMO FAILED"), "{line}");
    assert!(line.contains("inbound call to +14155550100"), "{line}");
    assert!(line.contains("the agent saw 0 of 3 calls"), "{line}");
    assert_ports_released();
}

#[test]
fn demo_fails_loudly_without_the_carrier() {
    let _g = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let run = make_demo("--no-carrier");
    let line = last_demo_line(&run.out);
    assert_ne!(run.code, Some(0), "must fail:\n{}", run.out);
    assert!(line.starts_with("DEMO FAILED"), "{line}");
    assert!(line.contains("outbound call"), "{line}");
    assert_ports_released();
}
