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
/// no numbers) followed by the shared numbers, which are not copied here
/// (tonic copies the message into its send buffer once).
pub fn snapshot_request(head: &pb::RoutingConfig, numbers: &Bytes, term: u64) -> Encoded {
    debug_assert!(head.numbers.is_empty());
    let config_len = head.encoded_len() + numbers.len();
    let mut first = BytesMut::with_capacity(head.encoded_len() + 16);
    encoding::encode_key(SNAPSHOT_FIELD, WireType::LengthDelimited, &mut first);
    encoding::encode_varint(config_len as u64, &mut first);
    head.encode_raw(&mut first);
    let mut last = BytesMut::new();
    if term != 0 {
        encoding::uint64::encode(TERM_FIELD, &term, &mut last);
    }
    Encoded(vec![first.freeze(), numbers.clone(), last.freeze()])
}

/// A message already encoded, in parts sent one after the other (see
/// [`snapshot_request`]).
#[derive(Clone, Debug, Default)]
pub struct Encoded(pub Vec<Bytes>);

impl Encoded {
    /// A message encoded in one piece.
    pub fn whole(b: Bytes) -> Encoded {
        Encoded(vec![b])
    }
}

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for part in &self.0 {
            buf.put_slice(part);
        }
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
        self.0.iter().map(Bytes::len).sum()
    }

    fn clear(&mut self) {
        self.0.clear();
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
            let bytes =
                Bytes::from(snapshot_request(&head, cache.get(&numbers), term).encode_to_vec());
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
