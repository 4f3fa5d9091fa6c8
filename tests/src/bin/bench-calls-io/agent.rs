//! The echo agent: a minimal WebSocket server (RFC 6455, server side only) on one thread with
//! epoll, speaking just enough Twilio Media Streams to send every `media` payload straight back.
//!
//! Cheap on purpose: the payload is found with a byte search (no JSON value per message), the
//! reply is a preformatted `media` message, replies produced by one read leave in one `write`.
//! It also checks, per stream, what a voice agent relies on: `timestamp` 20 ms apart, `chunk`
//! counting up by 1, probe sequence numbers increasing; it counts silence frames (all 0xFF:
//! concealed losses) and probe frames.

use std::io::{self, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::sys::{self, Epoll};
use super::{FRAME, Probes, parse_probe};

/// Largest WebSocket frame accepted from the node (its messages are a few hundred bytes).
const MAX_FRAME: usize = 1 << 20;
/// Largest handshake request.
const MAX_REQUEST: usize = 8 << 10;
/// Replies queued for a connection that does not read: past this it is dropped.
const MAX_OUT: usize = 4 << 20;
const LISTENER: u64 = u64::MAX;
/// The agent reads its sockets at most this often (see [`run`]).
const POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// What the agent saw on its streams during one step.
#[derive(Default)]
pub struct StreamStats {
    /// `media` messages received.
    pub media: AtomicU64,
    /// Of those, frames carrying a probe.
    pub probes: AtomicU64,
    /// Of those, frames of silence (all 0xFF: a loss the node concealed, or no audio yet).
    pub silence: AtomicU64,
    /// `timestamp` not 20 ms after the previous one on the stream.
    pub ts_gaps: AtomicU64,
    /// `chunk` not one more than the previous one.
    pub chunk_gaps: AtomicU64,
    /// A probe whose sequence number is not above the previous probe's on the stream.
    pub out_of_order: AtomicU64,
    /// Streams (WebSocket connections) that sent media.
    pub streams: AtomicU64,
}

/// State shared between the agent thread and the bench.
#[derive(Default)]
pub struct AgentShared {
    /// The current step's probe tables.
    pub probes: Mutex<Option<Arc<Probes>>>,
    /// The current step's stream checks (replaced per step).
    pub stats: Mutex<Arc<StreamStats>>,
    /// WebSocket connections accepted so far.
    pub connections: AtomicUsize,
    /// Connections dropped for a protocol error or a send queue past its bound (not counted:
    /// connections the node closed).
    pub dropped: AtomicUsize,
    /// Reads the kernel gave no receive timestamp for (timed on reading instead).
    pub untimed_reads: AtomicUsize,
    /// The agent thread runs at real-time priority.
    pub realtime: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Stream {
    /// `{"event":"media","streamSid":"…","media":{"payload":"`: the reply up to the payload.
    prefix: Vec<u8>,
    last_ts: Option<u64>,
    last_chunk: Option<u64>,
    last_seq: Option<usize>,
    counted: bool,
}

struct Conn {
    sock: TcpStream,
    inbuf: Vec<u8>,
    filled: usize,
    out: Vec<u8>,
    open: bool,
    closing: bool,
    want_out: bool,
    stream: Stream,
}

/// Position of `needle` in `hay`: a first-byte scan, then a compare (a slice compare at every
/// offset costs several times more on these few-hundred-byte messages).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let last = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last {
        let off = hay[i..=last].iter().position(|&b| b == first)?;
        i += off;
        if &hay[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The string value after `key` (e.g. `"chunk":"`) at or after `from`, up to the closing
/// quote, and the position just past it. The node writes its fields in one order, so callers
/// search onward from the previous field and scan each message about once.
fn field_from<'a>(msg: &'a [u8], from: usize, key: &[u8]) -> Option<(&'a [u8], usize)> {
    let start = from + find(msg.get(from..)?, key)? + key.len();
    let len = msg[start..].iter().position(|&b| b == b'"')?;
    Some((&msg[start..start + len], start + len))
}

/// [`field_from`] after `from`, else anywhere in the message.
fn field<'a>(msg: &'a [u8], from: usize, key: &[u8]) -> Option<(&'a [u8], usize)> {
    field_from(msg, from, key).or_else(|| field_from(msg, 0, key))
}

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |a, &b| {
        b.is_ascii_digit().then(|| a * 10 + u64::from(b - b'0'))
    })
}

/// XORs the client's mask into `p` (8 bytes at a time: the 4-byte key repeats).
fn unmask(p: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = p.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ k8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (j, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[j & 3];
    }
}

/// Appends a server frame (never masked) to `out`.
fn push_frame(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    for p in parts {
        out.extend_from_slice(p);
    }
}

struct Ctx<'a> {
    probes: Option<&'a Probes>,
    stats: &'a StreamStats,
    rx_ns: u64,
    silence_b64: &'a [u8],
}

/// One `media` message: check the stream, time the probe, queue the echo.
fn on_text(msg: &[u8], st: &mut Stream, out: &mut Vec<u8>, cx: &Ctx) {
    let Some(at) = find(msg, b"\"event\":\"media\"") else {
        return;
    };
    let mut pos = at;
    if st.prefix.is_empty() {
        let sid = field(msg, pos, b"\"streamSid\":\"").map_or(&b""[..], |(v, _)| v);
        st.prefix
            .extend_from_slice(b"{\"event\":\"media\",\"streamSid\":\"");
        st.prefix.extend_from_slice(sid);
        st.prefix.extend_from_slice(b"\",\"media\":{\"payload\":\"");
    }
    let chunk = field(msg, pos, b"\"chunk\":\"").map(|(v, end)| {
        pos = end;
        digits(v)
    });
    let ts = field(msg, pos, b"\"timestamp\":\"").map(|(v, end)| {
        pos = end;
        digits(v)
    });
    let Some((payload, _)) = field(msg, pos, b"\"payload\":\"") else {
        return;
    };
    let stats = cx.stats;
    stats.media.fetch_add(1, Ordering::Relaxed);
    if !st.counted {
        st.counted = true;
        stats.streams.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(Some(ts)) = ts {
        if st.last_ts.is_some_and(|p| p.checked_add(20) != Some(ts)) {
            stats.ts_gaps.fetch_add(1, Ordering::Relaxed);
        }
        st.last_ts = Some(ts);
    }
    if let Some(Some(c)) = chunk {
        if st.last_chunk.is_some_and(|p| p.checked_add(1) != Some(c)) {
            stats.chunk_gaps.fetch_add(1, Ordering::Relaxed);
        }
        st.last_chunk = Some(c);
    }
    // 12 base64 characters hold the 8-byte probe header.
    let mut head = [0u8; 9];
    let probe = payload
        .get(..12)
        .and_then(|b| BASE64.decode_slice(b, &mut head).ok())
        .and_then(|n| parse_probe(&head[..n]));
    if let Some((call, seq)) = probe {
        stats.probes.fetch_add(1, Ordering::Relaxed);
        if st.last_seq.is_some_and(|p| seq <= p) {
            stats.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        st.last_seq = Some(seq);
        if let Some(p) = cx.probes
            && let Some(i) = p.slot(call, seq)
        {
            let _ =
                p.agent_in[i].compare_exchange(0, cx.rx_ns, Ordering::Relaxed, Ordering::Relaxed);
        }
    } else if payload == cx.silence_b64 {
        stats.silence.fetch_add(1, Ordering::Relaxed);
    }
    push_frame(out, 0x1, &[&st.prefix, payload, b"\"}}"]);
    if let Some((call, seq)) = probe
        && let Some(p) = cx.probes
        && let Some(i) = p.slot(call, seq)
    {
        let _ =
            p.agent_out[i].compare_exchange(0, sys::now_ns(), Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Answers the upgrade request in `req`; false if it is not one.
fn handshake(req: &[u8], out: &mut Vec<u8>) -> bool {
    let text = String::from_utf8_lossy(req);
    let key = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    });
    match key {
        Some(k) => {
            let accept = derive_accept_key(k.as_bytes());
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .as_bytes(),
            );
            true
        }
        None => {
            out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            false
        }
    }
}

/// Parses what `c` has read so far. Err: drop the connection.
fn process(c: &mut Conn, cx: &Ctx) -> Result<(), ()> {
    let mut pos = 0;
    if !c.open {
        let Some(end) = find(&c.inbuf[..c.filled], b"\r\n\r\n") else {
            return if c.filled > MAX_REQUEST {
                Err(())
            } else {
                Ok(())
            };
        };
        if !handshake(&c.inbuf[..end], &mut c.out) {
            c.closing = true;
        }
        c.open = true;
        pos = end + 4;
    }
    while !c.closing {
        let buf = &mut c.inbuf[pos..c.filled];
        if buf.len() < 2 {
            break;
        }
        let (b0, b1) = (buf[0], buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut hdr): (usize, usize) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (usize::try_from(u64::from_be_bytes(b)).map_err(|_| ())?, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if len > MAX_FRAME {
            return Err(());
        }
        let key_at = hdr;
        if masked {
            hdr += 4;
        }
        let Some(total) = hdr.checked_add(len) else {
            return Err(());
        };
        if buf.len() < total {
            break;
        }
        let (head, rest) = buf.split_at_mut(hdr);
        let payload = &mut rest[..len];
        if masked {
            let k = [
                head[key_at],
                head[key_at + 1],
                head[key_at + 2],
                head[key_at + 3],
            ];
            unmask(payload, k);
        }
        match b0 & 0x0F {
            // Text; the node never fragments its messages.
            0x1 if b0 & 0x80 != 0 => on_text(payload, &mut c.stream, &mut c.out, cx),
            0x8 => {
                let code = payload.get(..2).unwrap_or(&[0x03, 0xE8]);
                push_frame(&mut c.out, 0x8, &[code]);
                c.closing = true;
            }
            0x9 => push_frame(&mut c.out, 0xA, &[payload]),
            _ => {}
        }
        pos += total;
    }
    c.inbuf.copy_within(pos..c.filled, 0);
    c.filled -= pos;
    Ok(())
}

/// Why a connection ends early.
enum Gone {
    /// The node closed or reset it (e.g. the call ended with replies still queued): normal.
    Closed,
    /// It stopped reading and its replies piled up past [`MAX_OUT`].
    Stuck,
}

/// Writes what is queued.
fn flush(c: &mut Conn) -> Result<(), Gone> {
    while !c.out.is_empty() {
        match c.sock.write(&c.out) {
            Ok(0) => return Err(Gone::Closed),
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Gone::Closed),
        }
    }
    if c.out.len() > MAX_OUT {
        return Err(Gone::Stuck);
    }
    Ok(())
}

/// Starts the agent thread; returns the URL to give the node.
pub fn start_agent(shared: Arc<AgentShared>) -> io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let ep = Epoll::new()?;
    ep.add(listener.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)?;
    std::thread::Builder::new()
        .name("echo-agent".into())
        .spawn(move || run(listener, ep, shared))?;
    Ok(format!("ws://{addr}/agent"))
}

fn run(listener: TcpListener, ep: Epoll, shared: Arc<AgentShared>) {
    // A real agent runs elsewhere: its echoes must not wait for the cores the node keeps busy
    // here. It sleeps between batches, so it cannot starve the node.
    shared
        .realtime
        .store(sys::realtime_priority(), Ordering::Relaxed);
    let silence_b64 = BASE64.encode([0xFFu8; FRAME]).into_bytes();
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut evs = sys::events(512);
    loop {
        let Ok(n) = ep.wait(&mut evs, 1000) else {
            return;
        };
        if n == 0 {
            continue;
        }
        // Once per wake-up, not per message: the step's tables.
        let probes = shared.probes.lock().ok().and_then(|g| g.clone());
        let stats = shared.stats.lock().map(|g| g.clone()).unwrap_or_default();
        // A batch that opened a connection or answered a handshake is set-up traffic: no pause
        // after it, so the agent adds nothing to call set-up time.
        let mut setting_up = false;
        for ev in &evs[..n] {
            let token = ev.u64;
            if token == LISTENER {
                setting_up = true;
                while let Ok((sock, _)) = listener.accept() {
                    let fd = sock.as_raw_fd();
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    let _ = sys::enable_rx_timestamps(fd);
                    let conn = Conn {
                        sock,
                        inbuf: vec![0; 16 << 10],
                        filled: 0,
                        out: Vec::with_capacity(1024),
                        open: false,
                        closing: false,
                        want_out: false,
                        stream: Stream::default(),
                    };
                    let idx = match free.pop() {
                        Some(i) => {
                            conns[i] = Some(conn);
                            i
                        }
                        None => {
                            conns.push(Some(conn));
                            conns.len() - 1
                        }
                    };
                    if ep.add(fd, idx as u64, libc::EPOLLIN as u32).is_err() {
                        conns[idx] = None;
                        free.push(idx);
                        continue;
                    }
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let idx = token as usize;
            let Some(Some(c)) = conns.get_mut(idx) else {
                continue;
            };
            let mut keep = true;
            setting_up |= !c.open;
            let mut rx_ns = 0;
            if ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                if c.filled == c.inbuf.len() {
                    if c.inbuf.len() >= MAX_FRAME + 16 {
                        keep = false;
                    } else {
                        c.inbuf.resize(c.inbuf.len() * 2, 0);
                    }
                }
                if keep {
                    match sys::recv_ts(c.sock.as_raw_fd(), &mut c.inbuf[c.filled..]) {
                        Ok((0, _)) => keep = false,
                        Ok((got, ts)) => {
                            c.filled += got;
                            rx_ns = ts.unwrap_or_else(|| {
                                shared.untimed_reads.fetch_add(1, Ordering::Relaxed);
                                sys::now_ns()
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => keep = false,
                    }
                }
                if keep && rx_ns != 0 {
                    let cx = Ctx {
                        probes: probes.as_deref(),
                        stats: &stats,
                        rx_ns,
                        silence_b64: &silence_b64,
                    };
                    if process(c, &cx).is_err() {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        keep = false;
                    }
                }
            }
            if keep && let Err(why) = flush(c) {
                if matches!(why, Gone::Stuck) {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                keep = false;
            }
            if keep && c.closing && c.out.is_empty() {
                keep = false;
            }
            if keep {
                let want = !c.out.is_empty();
                if want != c.want_out {
                    let evmask =
                        libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
                    keep = ep.modify(c.sock.as_raw_fd(), token, evmask).is_ok();
                    c.want_out = want;
                }
            }
            if !keep {
                // Dropping the socket closes it, which also removes it from the epoll set.
                conns[idx] = None;
                free.push(idx);
            }
        }
        // Let messages gather before the next wait: one wake-up per millisecond instead of one
        // per message (a context switch costs more than the message). Receive times come from
        // the kernel; the wait is part of the agent's own time, which `added` excludes.
        if !setting_up {
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(chunk: u64, ts: u64, payload: &[u8]) -> Vec<u8> {
        format!(
            "{{\"event\":\"media\",\"sequenceNumber\":\"{}\",\"streamSid\":\"MZ1\",\"media\":{{\"track\":\"inbound\",\"chunk\":\"{chunk}\",\"timestamp\":\"{ts}\",\"payload\":\"{}\"}}}}",
            chunk + 1,
            BASE64.encode(payload)
        )
        .into_bytes()
    }

    fn probe(call: u16, seq: u32) -> [u8; FRAME] {
        let mut p = [0xFFu8; FRAME];
        super::super::write_probe(&mut p, call, seq);
        p
    }

    /// A client frame as the node sends it: masked.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        f
    }

    fn conn() -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (sock, _) = l.accept().expect("accept");
        let c = Conn {
            sock,
            inbuf: vec![0; 16 << 10],
            filled: 0,
            out: Vec::new(),
            open: true,
            closing: false,
            want_out: false,
            stream: Stream::default(),
        };
        (c, client)
    }

    fn feed(c: &mut Conn, bytes: &[u8], cx: &Ctx) {
        c.inbuf[c.filled..c.filled + bytes.len()].copy_from_slice(bytes);
        c.filled += bytes.len();
        process(c, cx).expect("process");
    }

    #[test]
    fn find_and_fields() {
        let m = media(7, 140, &[1, 2, 3]);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        let (c, end) = field(&m, 0, b"\"chunk\":\"").expect("chunk");
        assert_eq!(digits(c), Some(7));
        // Searching on from past a field still finds a later one, and falls back for an earlier.
        let (t, _) = field(&m, end, b"\"timestamp\":\"").expect("ts");
        assert_eq!(digits(t), Some(140));
        let (sid, _) = field(&m, end, b"\"streamSid\":\"").expect("sid");
        assert_eq!(sid, b"MZ1");
        assert_eq!(digits(b"12x"), None);
        assert_eq!(digits(b""), None);
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..=200u8).collect();
        let mut p = orig.clone();
        unmask(&mut p, key);
        let want: Vec<u8> = orig
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i & 3])
            .collect();
        assert_eq!(p, want);
    }

    #[test]
    fn stream_checks_count_gaps_disorder_and_silence_and_echo_the_payload() {
        let stats = StreamStats::default();
        let probes = Probes::new(1, 10, false);
        let silence = BASE64.encode([0xFFu8; FRAME]).into_bytes();
        let cx = Ctx {
            probes: Some(&probes),
            stats: &stats,
            rx_ns: 5,
            silence_b64: &silence,
        };
        let mut st = Stream::default();
        let mut out = Vec::new();
        // ts 0, 20, 40, then 80 (a gap); chunk 1..4 then 6 (a gap); probes 1, 3, 2 (disorder), 4.
        on_text(&media(1, 0, &probe(0, 1)), &mut st, &mut out, &cx);
        on_text(&media(2, 20, &probe(0, 3)), &mut st, &mut out, &cx);
        on_text(&media(3, 40, &probe(0, 2)), &mut st, &mut out, &cx);
        on_text(&media(4, 80, &[0xFF; FRAME]), &mut st, &mut out, &cx);
        on_text(&media(6, 100, &probe(0, 4)), &mut st, &mut out, &cx);
        on_text(
            b"{\"event\":\"mark\",\"mark\":{\"name\":\"x\"}}",
            &mut st,
            &mut out,
            &cx,
        );
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(g(&stats.media), 5);
        assert_eq!(g(&stats.probes), 4);
        assert_eq!(g(&stats.silence), 1);
        assert_eq!(g(&stats.ts_gaps), 1);
        assert_eq!(g(&stats.chunk_gaps), 1);
        assert_eq!(g(&stats.out_of_order), 1);
        assert_eq!(g(&stats.streams), 1);
        assert_eq!(probes.agent_in[3].load(Ordering::Relaxed), 5);
        assert_ne!(probes.agent_out[3].load(Ordering::Relaxed), 0);
        // Five server text frames, each a media message with the payload it got.
        let first_len = u16::from_be_bytes([out[2], out[3]]) as usize;
        assert_eq!(&out[..2], &[0x81, 126]);
        let msg: serde_json::Value =
            serde_json::from_slice(&out[4..4 + first_len]).expect("reply is JSON");
        assert_eq!(msg["event"], "media");
        assert_eq!(msg["streamSid"], "MZ1");
        assert_eq!(
            msg["media"]["payload"].as_str(),
            Some(BASE64.encode(probe(0, 1)).as_str())
        );
    }

    #[test]
    fn frames_split_across_reads_ping_and_close() {
        let stats = StreamStats::default();
        let silence = BASE64.encode([0xFFu8; FRAME]).into_bytes();
        let cx = Ctx {
            probes: None,
            stats: &stats,
            rx_ns: 1,
            silence_b64: &silence,
        };
        let (mut c, _client) = conn();
        let f = client_frame(0x1, &media(1, 0, &probe(0, 0)));
        feed(&mut c, &f[..3], &cx);
        assert_eq!(c.filled, 3, "an incomplete frame waits");
        assert!(c.out.is_empty());
        feed(&mut c, &f[3..], &cx);
        assert_eq!(c.filled, 0);
        assert_eq!(stats.media.load(Ordering::Relaxed), 1);
        c.out.clear();
        feed(&mut c, &client_frame(0x9, b"hi"), &cx);
        assert_eq!(c.out, [0x8A, 2, b'h', b'i']);
        c.out.clear();
        feed(&mut c, &client_frame(0x8, &[0x03, 0xE8]), &cx);
        assert_eq!(c.out, [0x88, 2, 0x03, 0xE8]);
        assert!(c.closing);
    }

    #[test]
    fn oversized_frame_drops_the_connection() {
        let stats = StreamStats::default();
        let cx = Ctx {
            probes: None,
            stats: &stats,
            rx_ns: 1,
            silence_b64: b"",
        };
        let (mut c, _client) = conn();
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&(u64::MAX).to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        c.inbuf[..f.len()].copy_from_slice(&f);
        c.filled = f.len();
        assert!(process(&mut c, &cx).is_err());
    }

    #[test]
    fn handshake_answers_with_the_accept_key() {
        let mut out = Vec::new();
        assert!(handshake(
            b"GET /agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13",
            &mut out
        ));
        // RFC 6455 section 1.3's example.
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 101"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        let mut out = Vec::new();
        assert!(!handshake(b"GET / HTTP/1.1\r\nHost: x", &mut out));
        assert!(out.starts_with(b"HTTP/1.1 400"));
    }
}
