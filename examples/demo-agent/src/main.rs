//! A demo voice agent for Switchboard: a WebSocket server speaking the
//! Twilio Media Streams protocol (see AGENT-PROTOCOL.md), the way agents
//! built with Pipecat and similar frameworks do.
//!
//! For every call it
//! - prints what it receives (connected, start with the custom parameters,
//!   DTMF digits, marks, stop);
//! - plays a one-second greeting generated here (a rising tone, μ-law, paced
//!   in 20 ms frames), followed by a mark;
//! - echoes the caller's audio back;
//! - measures the audio round trip when the far end echoes the greeting
//!   back (the demo's SIPp caller does): every greeting frame is unique, so
//!   the time from sending a frame to receiving the same bytes is the round
//!   trip agent -> node -> caller -> node -> agent;
//! - prints one `agent-summary {json}` line when the stream ends.
//!
//! Run: `switchboard-demo-agent --listen 127.0.0.1:8765`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Samples per 20 ms frame at 8 kHz.
const FRAME: usize = 160;

#[derive(Debug, Parser)]
#[command(about = "Switchboard demo agent (Twilio Media Streams over WebSocket)")]
struct Args {
    /// Address to listen on (any path is accepted, e.g. ws://HOST:PORT/agent).
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Length of the greeting in milliseconds.
    #[arg(long, default_value_t = 1000)]
    greeting_ms: u64,
}

/// G.711 μ-law encoding of one 16-bit linear sample (ITU-T G.711, with the
/// usual bias of 0x84 and clipping at 32635).
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (31 - (s as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// The greeting: a tone rising from 400 to 1600 Hz, as μ-law frames. A
/// sweep makes every frame different, which the round-trip measurement
/// relies on.
fn greeting(ms: u64) -> Vec<Vec<u8>> {
    let total = (ms as usize * 8).div_ceil(FRAME) * FRAME;
    let secs = total as f64 / 8000.0;
    let mut phase = 0.0f64;
    let samples: Vec<u8> = (0..total)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let f = 400.0 + 1200.0 * t / secs;
            phase += 2.0 * std::f64::consts::PI * f / 8000.0;
            linear_to_ulaw((phase.sin() * 8000.0) as i16)
        })
        .collect();
    samples.chunks(FRAME).map(<[u8]>::to_vec).collect()
}

/// True for frames of (near) silence, which are not worth echoing.
fn is_silence(frame: &[u8]) -> bool {
    // μ-law 0xFF/0x7F are +0/-0; 0xFE/0x7E, 0xFD/0x7D the next steps.
    frame.iter().all(|b| b | 0x80 >= 0xFD)
}

#[derive(Default)]
struct Stats {
    stream_sid: String,
    call_sid: String,
    params: Value,
    media_in: u64,
    media_out: u64,
    echoed: u64,
    dtmf: String,
    marks: Vec<String>,
    rtt_ms: Vec<f64>,
    events: Vec<String>,
}

fn print(conn: u64, text: &str) {
    println!("[agent #{conn}] {text}");
}

// The handshake callback's error type is tungstenite's (large) HTTP response.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, peer: SocketAddr, conn: u64, greeting_ms: u64) {
    let mut path = String::new();
    let mut authorized = false;
    let ws = tokio_tungstenite::accept_hdr_async(
        stream,
        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            path = req.uri().path().to_owned();
            // Never print the token itself.
            authorized = req.headers().contains_key("authorization");
            Ok(resp)
        },
    )
    .await;
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            print(conn, &format!("handshake from {peer} failed: {e}"));
            return;
        }
    };
    print(
        conn,
        &format!(
            "connected from {peer} on {path}{}",
            if authorized {
                " (with a bearer token)"
            } else {
                ""
            }
        ),
    );
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(text) = out_rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let frames = greeting(greeting_ms);
    let mut sent_at: HashMap<Vec<u8>, Instant> = HashMap::new();
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
    let mut mark_sent: Option<Instant> = None;
    let mut st = Stats::default();
    let started = Instant::now();
    while let Some(msg) = source.next().await {
        // Greeting frames sent so far (for the round trip).
        while let Ok((f, t)) = sent_rx.try_recv() {
            sent_at.entry(f).or_insert(t);
        }
        let text = match msg {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            print(
                conn,
                &format!("ignoring a message that is not JSON: {text:.80}"),
            );
            continue;
        };
        let event = v["event"].as_str().unwrap_or("").to_owned();
        match event.as_str() {
            "connected" => {
                print(conn, &format!("<- connected (protocol {})", v["protocol"]));
                st.events.push(event);
            }
            "start" => {
                let s = &v["start"];
                st.stream_sid = s["streamSid"].as_str().unwrap_or("").to_owned();
                st.call_sid = s["callSid"].as_str().unwrap_or("").to_owned();
                st.params = s["customParameters"].clone();
                print(
                    conn,
                    &format!(
                        "<- start stream {} call {} format {} params {}",
                        st.stream_sid, st.call_sid, s["mediaFormat"], st.params
                    ),
                );
                st.events.push(event);
                // Play the greeting in real time so each frame's send time is
                // (nearly) its play time, then a mark.
                let out = out_tx.clone();
                let sid = st.stream_sid.clone();
                let frames = frames.clone();
                let sent = sent_tx.clone();
                mark_sent = Some(Instant::now() + Duration::from_millis(greeting_ms));
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    for f in frames {
                        tick.tick().await;
                        let _ = sent.send((f.clone(), Instant::now()));
                        let msg = json!({"event": "media", "streamSid": sid,
                            "media": {"payload": B64.encode(&f)}});
                        if out.send(msg.to_string()).is_err() {
                            return;
                        }
                    }
                    let mark = json!({"event": "mark", "streamSid": sid, "mark": {"name": "greeting-end"}});
                    let _ = out.send(mark.to_string());
                });
                st.media_out += frames_len(greeting_ms);
                print(
                    conn,
                    &format!("-> greeting: {greeting_ms} ms rising tone, then mark greeting-end"),
                );
            }
            "media" => {
                st.media_in += 1;
                let Some(payload) = v["media"]["payload"]
                    .as_str()
                    .and_then(|p| B64.decode(p).ok())
                else {
                    continue;
                };
                if st.media_in == 1 {
                    print(
                        conn,
                        &format!("<- first media frame ({} bytes)", payload.len()),
                    );
                }
                if let Some(t) = sent_at.remove(&payload) {
                    let rtt = t.elapsed().as_secs_f64() * 1000.0;
                    if st.rtt_ms.is_empty() {
                        print(
                            conn,
                            &format!("audio round trip: {rtt:.1} ms (greeting came back)"),
                        );
                    }
                    st.rtt_ms.push(rtt);
                } else if !is_silence(&payload) {
                    // The caller's own audio: echo it.
                    let msg = json!({"event": "media", "streamSid": st.stream_sid,
                        "media": {"payload": B64.encode(&payload)}});
                    let _ = out_tx.send(msg.to_string());
                    st.echoed += 1;
                    st.media_out += 1;
                }
            }
            "dtmf" => {
                let d = v["dtmf"]["digit"].as_str().unwrap_or("?");
                print(conn, &format!("<- dtmf {d}"));
                st.dtmf.push_str(d);
                st.events.push(event);
            }
            "mark" => {
                let name = v["mark"]["name"].as_str().unwrap_or("").to_owned();
                let late = mark_sent
                    .map(|t| {
                        format!(
                            " ({} ms after the last greeting frame was sent)",
                            Instant::now().saturating_duration_since(t).as_millis()
                        )
                    })
                    .unwrap_or_default();
                print(conn, &format!("<- mark {name}: played{late}"));
                st.marks.push(name);
                st.events.push(event);
            }
            "stop" => {
                print(conn, "<- stop");
                st.events.push(event);
                break;
            }
            other => {
                print(conn, &format!("<- unknown event {other:?} (ignored)"));
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
    let mut rtt = st.rtt_ms.clone();
    rtt.sort_by(f64::total_cmp);
    let median = rtt.get(rtt.len() / 2).copied();
    let summary = json!({
        "connection": conn,
        "streamSid": st.stream_sid,
        "callSid": st.call_sid,
        "customParameters": st.params,
        "events": st.events,
        "mediaIn": st.media_in,
        "mediaOut": st.media_out,
        "echoed": st.echoed,
        "dtmf": st.dtmf,
        "marks": st.marks,
        "rttSamples": rtt.len(),
        "rttMinMs": rtt.first(),
        "rttMedianMs": median,
        "seconds": started.elapsed().as_secs_f64(),
    });
    print(
        conn,
        &format!(
            "closed: {} frames in, {} out, dtmf {:?}, marks {:?}",
            st.media_in, st.media_out, st.dtmf, st.marks
        ),
    );
    println!("agent-summary {summary}");
}

fn frames_len(ms: u64) -> u64 {
    (ms * 8).div_ceil(FRAME as u64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "[agent] listening on ws://{}/agent (Twilio Media Streams)",
        listener.local_addr()?
    );
    let mut conn = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                conn += 1;
                tokio::spawn(serve(stream, peer, conn, args.greeting_ms));
            }
            _ = tokio::signal::ctrl_c() => {
                println!("[agent] stopping");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_reference_points() {
        // Zero encodes as 0xFF; the extremes as 0x80 / 0x00.
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(32767), 0x80);
        assert_eq!(linear_to_ulaw(-32768), 0x00);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        // Monotonic in magnitude for positive samples.
        let mut last = 0xFFu8;
        for s in (0..32000).step_by(100) {
            let u = linear_to_ulaw(s);
            assert!(!u >= !last, "non-monotonic at {s}");
            last = u;
        }
    }

    #[test]
    fn greeting_frames_are_unique_and_sized() {
        let g = greeting(1000);
        assert_eq!(g.len(), 50);
        assert!(g.iter().all(|f| f.len() == FRAME));
        let set: std::collections::HashSet<_> = g.iter().collect();
        assert_eq!(set.len(), g.len(), "every frame differs");
        assert!(g.iter().all(|f| !is_silence(f)));
    }
}
