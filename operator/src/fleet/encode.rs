//! Snapshot requests encoded once for the whole fleet. Every node runs the
//! same numbers, so their protobuf encoding (about 100 bytes a number, 10 MB
//! at 100,000) is made once per generation and copied into each node's
//! request behind that node's own trunks; before, every node's snapshot
//! cloned and encoded every number again.
//!
//! A protobuf message may carry its fields in any order and a repeated field
//! in several runs, so `version` and `trunks` encoded per node followed by
//! the shared `numbers` bytes decode as one `RoutingConfig`.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{self, WireType};
use switchboard_proto::v1alpha1 as pb;

use super::node::Numbers;

/// `RoutingConfig.numbers`.
const NUMBERS_FIELD: u32 = 3;
/// `ApplyRequest.snapshot`.
const SNAPSHOT_FIELD: u32 = 1;
/// `ApplyRequest.term`.
const TERM_FIELD: u32 = 3;

/// The encoded `numbers` field of one generation of numbers, made on first
/// use and shared by every node given that generation. Equality ignores it:
/// it is a cache of what the numbers already say.
#[derive(Clone, Debug, Default)]
pub struct NumbersEncoding(Arc<OnceLock<Bytes>>);

impl PartialEq for NumbersEncoding {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl NumbersEncoding {
    /// The encoding of `numbers` (which must be the generation this cache
    /// was made for).
    pub fn get(&self, numbers: &Numbers) -> &Bytes {
        self.0.get_or_init(|| {
            let len: usize = numbers
                .values()
                .map(|n| encoding::message::encoded_len(NUMBERS_FIELD, n.as_ref()))
                .sum();
            let mut buf = BytesMut::with_capacity(len);
            for n in numbers.values() {
                encoding::message::encode(NUMBERS_FIELD, n.as_ref(), &mut buf);
            }
            buf.freeze()
        })
    }
}

/// An `ApplyRequest` carrying a snapshot: `head` (version and trunks, with
/// no numbers) followed by the shared numbers.
pub fn snapshot_request(head: &pb::RoutingConfig, numbers: &Bytes, term: u64) -> Bytes {
    debug_assert!(head.numbers.is_empty());
    let config_len = head.encoded_len() + numbers.len();
    let mut buf = BytesMut::with_capacity(config_len + 24);
    encoding::encode_key(SNAPSHOT_FIELD, WireType::LengthDelimited, &mut buf);
    encoding::encode_varint(config_len as u64, &mut buf);
    head.encode_raw(&mut buf);
    buf.put_slice(numbers);
    if term != 0 {
        encoding::uint64::encode(TERM_FIELD, &term, &mut buf);
    }
    buf.freeze()
}

/// A message already encoded, sent as it is (see [`snapshot_request`]).
#[derive(Clone, Debug, Default)]
pub struct Encoded(pub Bytes);

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent; never decoded.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(i: u32) -> (String, Arc<pb::PhoneNumber>) {
        let id = format!("ns/n{i:03}");
        let mut parameters = std::collections::HashMap::new();
        parameters.insert("line".to_string(), i.to_string());
        (
            id.clone(),
            Arc::new(pb::PhoneNumber {
                id,
                e164: format!("+1555{i:07}"),
                trunk_id: "ns/t".into(),
                inbound: true,
                agent: Some(pb::Agent {
                    url: "ws://agent".into(),
                    parameters,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn a_shared_snapshot_decodes_as_the_request_built_whole() {
        let numbers: Numbers = (0..50).map(number).collect();
        let trunks = vec![pb::Trunk {
            id: "ns/t".into(),
            options_interval_seconds: 7,
            ..Default::default()
        }];
        for term in [0, 4] {
            let head = pb::RoutingConfig {
                version: 12,
                trunks: trunks.clone(),
                numbers: Vec::new(),
            };
            let cache = NumbersEncoding::default();
            let bytes = snapshot_request(&head, cache.get(&numbers), term);
            let whole = pb::ApplyRequest {
                change: Some(pb::apply_request::Change::Snapshot(pb::RoutingConfig {
                    version: 12,
                    trunks: trunks.clone(),
                    numbers: numbers.values().map(|n| n.as_ref().clone()).collect(),
                })),
                term,
            };
            let decoded = pb::ApplyRequest::decode(bytes.clone()).expect("decodes");
            assert_eq!(decoded, whole);
            // Same bytes as prost's own encoding (fields in the same order).
            assert_eq!(bytes, Bytes::from(whole.encode_to_vec()));
        }
    }

    #[test]
    fn the_numbers_are_encoded_once_per_generation() {
        let numbers: Numbers = (0..3).map(number).collect();
        let cache = NumbersEncoding::default();
        let a = cache.get(&numbers).clone();
        let shared = cache.clone();
        let b = shared.get(&numbers).clone();
        // One buffer, not two encodings.
        assert_eq!(a.as_ptr(), b.as_ptr());
        let empty = NumbersEncoding::default();
        assert!(empty.get(&Numbers::default()).is_empty());
    }
}
