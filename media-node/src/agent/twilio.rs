//! The Twilio Media Streams messages we exchange with agents (see shared/AGENT-PROTOCOL.md).
//!
//! Node -> agent messages are written by [`StreamWriter`], which keeps the stream's counters
//! (`sequenceNumber` for every message from `start` on, `chunk` for media) and writes into one
//! reused `String`, so the 50-per-second media messages allocate nothing once the buffer has
//! grown. Numbers Twilio sends as JSON strings are strings here too.
//!
//! Agent -> node messages are parsed leniently by [`parse_agent_message`]: unknown fields are
//! ignored, unknown events come back as [`AgentEvent::Unknown`] (the session counts and ignores
//! them), and only a frame that is not JSON, has no `event`, or lacks what its event needs is an
//! error — which the session also survives. Nesting cannot overflow the stack: unknown fields
//! are skipped without recursion (serde_json keeps one byte per level, bounded by the message
//! size) and the fields we read have a fixed shape. A media
//! payload is decoded by [`decode_payload`] in fixed steps into a stack buffer: no decode
//! buffer grows with what an agent sends.
//!
//! The serde types [`NodeMessage`] describe the node's messages for tests and for anyone who needs
//! to read them (an agent written in Rust, say).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `protocol` of the `connected` message.
pub const PROTOCOL: &str = "Call";
/// `version` of the `connected` message.
pub const VERSION: &str = "1.0.0";
/// Media encoding we announce.
pub const ENCODING: &str = "audio/x-mulaw";
/// Sample rate we announce.
pub const SAMPLE_RATE: u32 = 8000;

/// `mediaFormat` of the start message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    /// Always `audio/x-mulaw`.
    pub encoding: String,
    /// Always 8000.
    pub sample_rate: u32,
    /// Always 1.
    pub channels: u32,
}

impl Default for MediaFormat {
    fn default() -> Self {
        MediaFormat {
            encoding: ENCODING.to_string(),
            sample_rate: SAMPLE_RATE,
            channels: 1,
        }
    }
}

/// The `start` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartInfo {
    /// Stream id.
    pub stream_sid: String,
    /// Account identity (namespace/trunk).
    pub account_sid: String,
    /// Call id.
    pub call_sid: String,
    /// Always `["inbound"]`.
    pub tracks: Vec<String>,
    /// The number's agent parameters plus call facts.
    pub custom_parameters: BTreeMap<String, String>,
    /// Audio format.
    pub media_format: MediaFormat,
}

/// The `media` object of a node message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInfo {
    /// Always `inbound`.
    pub track: String,
    /// Media message count from 1, as a string.
    pub chunk: String,
    /// Milliseconds since the stream started, as a string.
    pub timestamp: String,
    /// Base64 of 160 bytes of μ-law.
    pub payload: String,
}

/// The `transfer` object of the extension event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInfo {
    /// E.164 target.
    pub target: String,
    /// `requested`, `accepted`, `ringing`, `succeeded` or `failed`.
    pub status: String,
    /// The SIP code behind it, 0 if none.
    pub code: u16,
    /// Why it failed (empty otherwise).
    pub reason: String,
}

/// The `dtmf` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfInfo {
    /// Always `inbound_track`.
    pub track: String,
    /// The digit.
    pub digit: String,
}

/// The `mark` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkInfo {
    /// Mark name.
    pub name: String,
}

/// The `stop` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopInfo {
    /// Account identity.
    pub account_sid: String,
    /// Call id.
    pub call_sid: String,
}

/// A node -> agent message, field order as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum NodeMessage {
    /// First message.
    Connected {
        /// `Call`.
        protocol: String,
        /// `1.0.0`.
        version: String,
    },
    /// Stream metadata.
    Start {
        /// Message count.
        sequence_number: String,
        /// Stream id.
        stream_sid: String,
        /// Details.
        start: StartInfo,
    },
    /// 20 ms of caller audio.
    Media {
        /// Message count.
        sequence_number: String,
        /// Stream id.
        stream_sid: String,
        /// Audio.
        media: MediaInfo,
    },
    /// A step of a transfer the agent or the call API asked for (an extension:
    /// `{"event":"transfer","transfer":{"target","status","code","reason"}}`).
    Transfer {
        /// Stream id.
        stream_sid: String,
        /// Message count.
        sequence_number: String,
        /// Where it stands.
        transfer: TransferInfo,
    },
    /// A key press.
    Dtmf {
        /// Stream id.
        stream_sid: String,
        /// Message count.
        sequence_number: String,
        /// Digit.
        dtmf: DtmfInfo,
    },
    /// Echo of an agent mark.
    Mark {
        /// Message count.
        sequence_number: String,
        /// Stream id.
        stream_sid: String,
        /// Mark.
        mark: MarkInfo,
    },
    /// End of stream.
    Stop {
        /// Message count.
        sequence_number: String,
        /// Stream id.
        stream_sid: String,
        /// Identity.
        stop: StopInfo,
    },
}

/// Identity of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIds {
    /// `streamSid`.
    pub stream_sid: String,
    /// `accountSid`.
    pub account_sid: String,
    /// `callSid`.
    pub call_sid: String,
}

/// Writes the node's messages for one stream into a reused buffer, keeping the counters.
#[derive(Debug)]
pub struct StreamWriter {
    ids: StreamIds,
    /// `"streamSid":"..."` with the value JSON-escaped once, reused by every media message.
    stream_sid_field: String,
    sequence: u64,
    chunk: u64,
    buf: String,
}

impl StreamWriter {
    /// A writer for a stream; counters start at zero (the first counted message is 1).
    pub fn new(ids: StreamIds) -> Self {
        let mut stream_sid_field = String::from("\"streamSid\":");
        write_json_string(&mut stream_sid_field, &ids.stream_sid);
        StreamWriter {
            ids,
            stream_sid_field,
            sequence: 0,
            chunk: 0,
            // Room for a media message (base64 of 160 bytes is 216 characters).
            buf: String::with_capacity(512),
        }
    }

    /// The stream's identity.
    pub fn ids(&self) -> &StreamIds {
        &self.ids
    }

    /// `sequenceNumber` of the last message written (0 before `start`).
    pub fn sequence_number(&self) -> u64 {
        self.sequence
    }

    /// Media messages written so far.
    pub fn chunks(&self) -> u64 {
        self.chunk
    }

    fn next_seq(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    fn write_serde(&mut self, msg: &NodeMessage) -> &str {
        self.buf.clear();
        // Serialising these plain structs cannot fail; an empty frame would be the only outcome.
        if let Ok(s) = serde_json::to_string(msg) {
            self.buf.push_str(&s);
        }
        &self.buf
    }

    /// The `connected` message (not counted in `sequenceNumber`).
    pub fn connected(&mut self) -> &str {
        let msg = NodeMessage::Connected {
            protocol: PROTOCOL.to_string(),
            version: VERSION.to_string(),
        };
        self.write_serde(&msg)
    }

    /// The `start` message.
    pub fn start(&mut self, custom_parameters: BTreeMap<String, String>) -> &str {
        let msg = NodeMessage::Start {
            sequence_number: self.next_seq(),
            stream_sid: self.ids.stream_sid.clone(),
            start: StartInfo {
                stream_sid: self.ids.stream_sid.clone(),
                account_sid: self.ids.account_sid.clone(),
                call_sid: self.ids.call_sid.clone(),
                tracks: vec!["inbound".to_string()],
                custom_parameters,
                media_format: MediaFormat::default(),
            },
        };
        self.write_serde(&msg)
    }

    /// A `media` message with `payload` (160 bytes of μ-law) at `timestamp_ms` since the stream
    /// started. Writes by hand into the reused buffer: no allocation once it has grown.
    pub fn media(&mut self, payload: &[u8], timestamp_ms: u64) -> &str {
        self.sequence += 1;
        self.chunk += 1;
        let b = &mut self.buf;
        b.clear();
        // Writing to a String cannot fail.
        let _ = write!(
            b,
            "{{\"event\":\"media\",\"sequenceNumber\":\"{}\",",
            self.sequence
        );
        b.push_str(&self.stream_sid_field);
        let _ = write!(
            b,
            ",\"media\":{{\"track\":\"inbound\",\"chunk\":\"{}\",\"timestamp\":\"{}\",\"payload\":\"",
            self.chunk, timestamp_ms
        );
        BASE64.encode_string(payload, b);
        b.push_str("\"}}");
        &self.buf
    }

    /// A `dtmf` message for `digit`.
    pub fn dtmf(&mut self, digit: char) -> &str {
        let msg = NodeMessage::Dtmf {
            stream_sid: self.ids.stream_sid.clone(),
            sequence_number: self.next_seq(),
            dtmf: DtmfInfo {
                track: "inbound_track".to_string(),
                digit: digit.to_string(),
            },
        };
        self.write_serde(&msg)
    }

    /// A `transfer` extension message.
    pub fn transfer(&mut self, u: &crate::call::transfer::TransferUpdate) -> &str {
        let msg = NodeMessage::Transfer {
            stream_sid: self.ids.stream_sid.clone(),
            sequence_number: self.next_seq(),
            transfer: TransferInfo {
                target: u.target.clone(),
                status: u.state.as_str().to_owned(),
                code: u.code,
                reason: u.reason.clone(),
            },
        };
        self.write_serde(&msg)
    }

    /// A `mark` message echoing the agent's mark `name`.
    pub fn mark(&mut self, name: &str) -> &str {
        let msg = NodeMessage::Mark {
            sequence_number: self.next_seq(),
            stream_sid: self.ids.stream_sid.clone(),
            mark: MarkInfo {
                name: name.to_string(),
            },
        };
        self.write_serde(&msg)
    }

    /// The `stop` message.
    pub fn stop(&mut self) -> &str {
        let msg = NodeMessage::Stop {
            sequence_number: self.next_seq(),
            stream_sid: self.ids.stream_sid.clone(),
            stop: StopInfo {
                account_sid: self.ids.account_sid.clone(),
                call_sid: self.ids.call_sid.clone(),
            },
        };
        self.write_serde(&msg)
    }
}

/// Appends `s` as a JSON string literal.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent<'a> {
    /// Audio: `payload` is the base64 text, to be decoded with [`decode_payload`].
    Media {
        /// Base64 of μ-law.
        payload: Cow<'a, str>,
    },
    /// A mark to place in the playout queue.
    Mark {
        /// Mark name.
        name: Cow<'a, str>,
    },
    /// Drop queued audio (barge-in).
    Clear,
    /// End the call (an extension to the Twilio protocol: `{"event":"hangup"}`, optionally
    /// with `"hangup":{"reason":"..."}`).
    Hangup {
        /// Why, as the agent says it (clipped by the session); empty when not given.
        reason: Cow<'a, str>,
    },
    /// Digits to send to the caller as RFC 4733 events (an extension:
    /// `{"event":"dtmf","dtmf":{"digits":"12#"}}`).
    Dtmf {
        /// The digits as sent (the session keeps only `0-9 * # A-D`).
        digits: Cow<'a, str>,
    },
    /// Transfer the call (an extension: `{"event":"transfer","transfer":{"target":"+1..."}}`).
    Transfer {
        /// The target as sent (checked against the trunk's policy by the call).
        target: Cow<'a, str>,
    },
    /// An event we do not handle; ignored and counted by the session.
    Unknown {
        /// The `event` value.
        event: Cow<'a, str>,
    },
}

/// Why an agent frame was unusable. None of these end the call.
#[derive(Debug, Error)]
pub enum AgentProtocolError {
    /// Not JSON, or JSON of the wrong shape (no `event` string).
    #[error("malformed agent message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A media message without `media.payload`.
    #[error("media message without media.payload")]
    MissingPayload,
    /// A mark message without `mark.name`.
    #[error("mark message without mark.name")]
    MissingMarkName,
    /// The payload is not valid base64.
    #[error("media payload is not base64: {0}")]
    BadBase64(#[from] base64::DecodeError),
}

/// Base64 characters decoded per step: whole 4-character quanta, so only the last step can
/// carry padding.
const DECODE_STEP: usize = 4096;
/// Bytes one step decodes to at most.
const DECODE_CHUNK: usize = DECODE_STEP / 4 * 3;

/// Decodes a base64 media payload in fixed steps, handing each decoded piece to `sink` in
/// order; returns the bytes decoded. Nothing is allocated. On invalid base64 the pieces before
/// the bad step have already been handed over (an agent sending garbage hears part of it).
pub fn decode_payload(
    payload: &str,
    mut sink: impl FnMut(&[u8]),
) -> Result<usize, AgentProtocolError> {
    let mut buf = [0u8; DECODE_CHUNK];
    let mut total = 0usize;
    let bytes = payload.as_bytes();
    for (i, step) in bytes.chunks(DECODE_STEP).enumerate() {
        // Padding may only end the whole payload, not a step of it.
        let last = (i + 1) * DECODE_STEP >= bytes.len();
        if !last && step.ends_with(b"=") {
            return Err(AgentProtocolError::BadBase64(
                base64::DecodeError::InvalidPadding,
            ));
        }
        let n = BASE64.decode_slice(step, &mut buf).map_err(|e| match e {
            base64::DecodeSliceError::DecodeError(e) => AgentProtocolError::BadBase64(e),
            // A step of DECODE_STEP characters never decodes to more than DECODE_CHUNK bytes.
            base64::DecodeSliceError::OutputSliceTooSmall => {
                AgentProtocolError::BadBase64(base64::DecodeError::InvalidLength(step.len()))
            }
        })?;
        sink(&buf[..n]);
        total = total.saturating_add(n);
    }
    Ok(total)
}

#[derive(Deserialize)]
struct RawAgentMessage<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<RawMedia<'a>>,
    #[serde(borrow, default)]
    mark: Option<RawMark<'a>>,
    #[serde(borrow, default)]
    hangup: Option<RawHangup<'a>>,
    #[serde(borrow, default)]
    dtmf: Option<RawDtmf<'a>>,
    #[serde(borrow, default)]
    transfer: Option<RawTransfer<'a>>,
}

#[derive(Deserialize)]
struct RawTransfer<'a> {
    #[serde(borrow, default)]
    target: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawDtmf<'a> {
    #[serde(borrow, default)]
    digits: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawHangup<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMark<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

/// Parses one text frame from the agent.
pub fn parse_agent_message(text: &str) -> Result<AgentEvent<'_>, AgentProtocolError> {
    let raw: RawAgentMessage<'_> = serde_json::from_str(text)?;
    match raw.event.as_ref() {
        "media" => {
            let payload = raw
                .media
                .and_then(|m| m.payload)
                .ok_or(AgentProtocolError::MissingPayload)?;
            Ok(AgentEvent::Media { payload })
        }
        "mark" => {
            let name = raw
                .mark
                .and_then(|m| m.name)
                .ok_or(AgentProtocolError::MissingMarkName)?;
            Ok(AgentEvent::Mark { name })
        }
        "clear" => Ok(AgentEvent::Clear),
        "dtmf" => Ok(AgentEvent::Dtmf {
            digits: raw.dtmf.and_then(|d| d.digits).unwrap_or_default(),
        }),
        "hangup" => Ok(AgentEvent::Hangup {
            reason: raw.hangup.and_then(|h| h.reason).unwrap_or_default(),
        }),
        "transfer" => Ok(AgentEvent::Transfer {
            target: raw.transfer.and_then(|t| t.target).unwrap_or_default(),
        }),
        _ => Ok(AgentEvent::Unknown { event: raw.event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> StreamWriter {
        StreamWriter::new(StreamIds {
            stream_sid: "MZ0001".into(),
            account_sid: "AC-default-carrier".into(),
            call_sid: "CA42".into(),
        })
    }

    #[test]
    fn golden_connected_and_start() {
        let mut w = writer();
        assert_eq!(
            w.connected(),
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#
        );
        let mut params = BTreeMap::new();
        params.insert("from".to_string(), "+15550001111".to_string());
        params.insert("to".to_string(), "+15550002222".to_string());
        assert_eq!(
            w.start(params),
            concat!(
                r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ0001","start":{"#,
                r#""streamSid":"MZ0001","accountSid":"AC-default-carrier","callSid":"CA42","#,
                r#""tracks":["inbound"],"customParameters":{"from":"+15550001111","#,
                r#""to":"+15550002222"},"mediaFormat":{"encoding":"audio/x-mulaw","#,
                r#""sampleRate":8000,"channels":1}}}"#
            )
        );
    }

    #[test]
    fn golden_media_dtmf_mark_stop_and_counters() {
        let mut w = writer();
        w.connected();
        w.start(BTreeMap::new());
        let payload = [0xFFu8; 160];
        let b64 = BASE64.encode(payload);
        assert_eq!(b64.len(), 216);
        assert_eq!(
            w.media(&payload, 0),
            format!(
                r#"{{"event":"media","sequenceNumber":"2","streamSid":"MZ0001","media":{{"track":"inbound","chunk":"1","timestamp":"0","payload":"{b64}"}}}}"#
            )
        );
        assert_eq!(
            w.media(&payload, 20),
            format!(
                r#"{{"event":"media","sequenceNumber":"3","streamSid":"MZ0001","media":{{"track":"inbound","chunk":"2","timestamp":"20","payload":"{b64}"}}}}"#
            )
        );
        assert_eq!(
            w.dtmf('5'),
            r#"{"event":"dtmf","streamSid":"MZ0001","sequenceNumber":"4","dtmf":{"track":"inbound_track","digit":"5"}}"#
        );
        assert_eq!(
            w.mark("greeting-done"),
            r#"{"event":"mark","sequenceNumber":"5","streamSid":"MZ0001","mark":{"name":"greeting-done"}}"#
        );
        assert_eq!(
            w.media(&payload, 40),
            format!(
                r#"{{"event":"media","sequenceNumber":"6","streamSid":"MZ0001","media":{{"track":"inbound","chunk":"3","timestamp":"40","payload":"{b64}"}}}}"#
            )
        );
        assert_eq!(
            w.stop(),
            r#"{"event":"stop","sequenceNumber":"7","streamSid":"MZ0001","stop":{"accountSid":"AC-default-carrier","callSid":"CA42"}}"#
        );
        assert_eq!(w.sequence_number(), 7);
        assert_eq!(w.chunks(), 3);
    }

    #[test]
    fn hand_written_media_matches_serde_and_escapes_sid() {
        let mut w = StreamWriter::new(StreamIds {
            stream_sid: "odd\"sid\\\u{1}".into(),
            account_sid: "a".into(),
            call_sid: "c".into(),
        });
        let payload: Vec<u8> = (0..160u32).map(|i| i as u8).collect();
        let text = w.media(&payload, 1234).to_string();
        let parsed: NodeMessage = serde_json::from_str(&text).expect("valid JSON");
        let expected = NodeMessage::Media {
            sequence_number: "1".into(),
            stream_sid: "odd\"sid\\\u{1}".into(),
            media: MediaInfo {
                track: "inbound".into(),
                chunk: "1".into(),
                timestamp: "1234".into(),
                payload: BASE64.encode(&payload),
            },
        };
        assert_eq!(parsed, expected);
        assert_eq!(text, serde_json::to_string(&expected).expect("serialise"));
    }

    #[test]
    fn media_reuses_its_buffer() {
        let mut w = writer();
        let payload = [0x7Fu8; 160];
        let first = w.media(&payload, 0).as_ptr();
        for i in 1..100 {
            w.media(&payload, i * 20);
        }
        assert_eq!(w.media(&payload, 2000).as_ptr(), first, "no reallocation");
    }

    /// Parses `text` and decodes its media payload, as the session does.
    fn parse_with_audio<'a>(
        text: &'a str,
        audio: &mut Vec<u8>,
    ) -> Result<AgentEvent<'a>, AgentProtocolError> {
        let ev = parse_agent_message(text)?;
        if let AgentEvent::Media { payload } = &ev {
            audio.clear();
            decode_payload(payload, |b| audio.extend_from_slice(b))?;
        }
        Ok(ev)
    }

    fn is_media(ev: &AgentEvent<'_>) -> bool {
        matches!(ev, AgentEvent::Media { .. })
    }

    #[test]
    fn parses_the_hangup_extension_with_or_without_a_reason() {
        assert_eq!(
            parse_agent_message(r#"{"event":"hangup","hangup":{"reason":"done"}}"#).expect("ok"),
            AgentEvent::Hangup {
                reason: "done".into()
            }
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"hangup"}"#).expect("ok"),
            AgentEvent::Hangup { reason: "".into() }
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"dtmf","dtmf":{"digits":"12#"}}"#).expect("ok"),
            AgentEvent::Dtmf {
                digits: "12#".into()
            }
        );
    }

    #[test]
    fn parses_agent_media_mark_clear() {
        let mut audio = Vec::new();
        let text = format!(
            r#"{{"event":"media","streamSid":"MZ0001","media":{{"payload":"{}"}}}}"#,
            BASE64.encode([1u8, 2, 3])
        );
        assert!(is_media(&parse_with_audio(&text, &mut audio).expect("ok")));
        assert_eq!(audio, vec![1, 2, 3]);
        assert_eq!(
            parse_with_audio(
                r#"{"event":"mark","streamSid":"MZ0001","mark":{"name":"m1"}}"#,
                &mut audio
            )
            .expect("ok"),
            AgentEvent::Mark { name: "m1".into() }
        );
        assert_eq!(
            parse_with_audio(r#"{"event":"clear","streamSid":"MZ0001"}"#, &mut audio).expect("ok"),
            AgentEvent::Clear
        );
        // Escaped names are unescaped.
        assert_eq!(
            parse_with_audio(r#"{"event":"mark","mark":{"name":"a\"b"}}"#, &mut audio).expect("ok"),
            AgentEvent::Mark {
                name: "a\"b".into()
            }
        );
    }

    #[test]
    fn lenient_with_unknown_events_and_fields() {
        let mut audio = Vec::new();
        let text = format!(
            r#"{{"event":"media","extra":{{"x":[1,2]}},"media":{{"payload":"{}","track":"outbound","chunk":"9"}},"streamSid":"S"}}"#,
            BASE64.encode([9u8; 4])
        );
        assert!(is_media(&parse_with_audio(&text, &mut audio).expect("ok")));
        assert_eq!(audio, vec![9; 4]);
        assert_eq!(
            parse_with_audio(r#"{"event":"transcript","text":"hi"}"#, &mut audio).expect("ok"),
            AgentEvent::Unknown {
                event: "transcript".into()
            }
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut audio = Vec::new();
        for bad in [
            "not json",
            "{}",
            r#"{"event":5}"#,
            "[1,2]",
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{}}"#,
            r#"{"event":"media","media":{"payload":"!!!"}}"#,
            r#"{"event":"mark","mark":{}}"#,
            r#"{"event":"mark"}"#,
        ] {
            assert!(
                parse_with_audio(bad, &mut audio).is_err(),
                "{bad} should be an error"
            );
        }
        assert!(matches!(
            parse_with_audio(r#"{"event":"media","media":{"payload":"%%"}}"#, &mut audio),
            Err(AgentProtocolError::BadBase64(_))
        ));
        assert!(matches!(
            parse_with_audio(r#"{"event":"media","media":{}}"#, &mut audio),
            Err(AgentProtocolError::MissingPayload)
        ));
    }

    #[test]
    fn payloads_decode_in_steps_exactly() {
        // Lengths around the step boundary, with and without padding.
        for len in [
            0usize,
            1,
            2,
            3,
            DECODE_CHUNK - 1,
            DECODE_CHUNK,
            DECODE_CHUNK + 1,
            3 * DECODE_CHUNK + 2,
            100_000,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let b64 = BASE64.encode(&bytes);
            let mut out = Vec::new();
            let mut pieces = 0;
            let n = decode_payload(&b64, |p| {
                assert!(p.len() <= DECODE_CHUNK);
                pieces += 1;
                out.extend_from_slice(p);
            })
            .expect("valid");
            assert_eq!(n, len);
            assert_eq!(out, bytes, "{len} bytes");
            assert_eq!(pieces, b64.len().div_ceil(DECODE_STEP));
        }
        // Padding in the middle (inside a step, or ending a step that is not the last), bad
        // characters, a truncated quantum.
        let inside = format!("{}{}", BASE64.encode([1u8; 10]), "AAAA".repeat(2000));
        assert!(decode_payload(&inside, |_| {}).is_err());
        let at_step_end = format!("{}AA=={}", "AAAA".repeat(DECODE_STEP / 4 - 1), "AAAA");
        assert!(decode_payload(&at_step_end, |_| {}).is_err());
        let at_the_end = format!("{}AA==", "AAAA".repeat(DECODE_STEP / 4 - 1));
        assert_eq!(
            decode_payload(&at_the_end, |_| {}).expect("valid"),
            DECODE_CHUNK - 2
        );
        assert!(decode_payload("AAA!", |_| {}).is_err());
        assert!(decode_payload("AAAAA", |_| {}).is_err());
    }

    #[test]
    fn deep_nesting_is_bounded_work_not_a_crash() {
        // Unknown fields are skipped by serde_json without recursion (its scratch stack is one
        // byte per level, bounded by the message size): the known fields still parse.
        let deep = format!(
            r#"{{"event":"mark","x":{}1{},"mark":{{"name":"m"}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse_agent_message(&deep).expect("parsed"),
            AgentEvent::Mark { name: "m".into() }
        );
        // Nesting where a known field is read is a type error at once; unbalanced nesting is
        // an error too.
        let deep_mark = format!(
            r#"{{"event":"mark","mark":{}{}}}"#,
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert!(matches!(
            parse_agent_message(&deep_mark),
            Err(AgentProtocolError::Malformed(_))
        ));
        let unbalanced = format!(r#"{{"event":"x","y":{}null}}"#, r#"{"a":"#.repeat(50_000));
        assert!(matches!(
            parse_agent_message(&unbalanced),
            Err(AgentProtocolError::Malformed(_))
        ));
    }
}
