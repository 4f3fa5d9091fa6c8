//! A number as the routing table keeps it: the protobuf bytes it arrived in
//! (for a snapshot, a slice of the request's buffer, not a copy), its id read
//! in place, decoded only when a call needs it. 100,000 decoded numbers held
//! about 60 MB on every node; their bytes hold about 10.

use bytes::Bytes;
use prost::Message;
use prost::encoding::decode_varint;
use switchboard_proto::v1alpha1::PhoneNumber;

/// An encoded `PhoneNumber` known to decode (checked when it was stored).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredNumber {
    wire: Bytes,
    /// Where the id's bytes are in `wire`: start and length.
    id: (u32, u32),
}

impl std::fmt::Debug for StoredNumber {
    /// The bytes hold the agent's bearer token: only the id shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredNumber")
            .field("id", &self.id())
            .field("bytes", &self.wire.len())
            .finish()
    }
}

impl StoredNumber {
    /// Checks that `wire` decodes, decoding it into `scratch` (cleared
    /// first; reusing one for many numbers reuses its allocations).
    pub fn from_wire(wire: Bytes, scratch: &mut PhoneNumber) -> Result<Self, prost::DecodeError> {
        scratch.clear();
        scratch.merge(wire.as_ref())?;
        Ok(Self::located(wire, scratch))
    }

    /// Encodes a decoded number (a delta's, or a file's).
    pub fn encode(n: &PhoneNumber) -> Self {
        Self::located(Bytes::from(n.encode_to_vec()), n)
    }

    /// `wire` decoded is `n`: finds the id in it. Protobuf lets a field
    /// appear more than once (the last one counts) or anywhere; should the
    /// bytes found not be the id decoding took, `n` is stored re-encoded.
    fn located(wire: Bytes, n: &PhoneNumber) -> Self {
        match id_range(&wire) {
            Some(id) if id_at(&wire, id).map(str::as_bytes) == Some(n.id.as_bytes()) => {
                StoredNumber { wire, id }
            }
            None if n.id.is_empty() => StoredNumber { wire, id: (0, 0) },
            _ => {
                let wire = Bytes::from(n.encode_to_vec());
                let id = id_range(&wire).unwrap_or((0, 0));
                StoredNumber { wire, id }
            }
        }
    }

    /// The number's id.
    pub fn id(&self) -> &str {
        id_at(&self.wire, self.id).unwrap_or("")
    }

    /// The number, decoded (it decoded when stored, so this does not fail;
    /// an empty number would stand for a broken invariant).
    pub fn decode(&self) -> PhoneNumber {
        PhoneNumber::decode(self.wire.as_ref()).unwrap_or_default()
    }

    /// The encoded message.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Bytes held (the message; a snapshot's numbers share its buffer).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.wire.len()
    }
}

/// `PhoneNumber.id`'s field number.
const ID_FIELD: u64 = 1;

/// The id of an encoded `PhoneNumber`, as decoding takes it, read in place.
pub fn wire_id(wire: &[u8]) -> Option<&str> {
    id_at(wire, id_range(wire)?)
}

/// Where the id (the last field 1) is in an encoded `PhoneNumber`.
fn id_range(wire: &[u8]) -> Option<(u32, u32)> {
    let (at, len) = last_string_field(wire, ID_FIELD)?;
    Some((u32::try_from(at).ok()?, u32::try_from(len).ok()?))
}

/// The UTF-8 text at `(start, length)` in `wire`.
fn id_at(wire: &[u8], (at, len): (u32, u32)) -> Option<&str> {
    let at = at as usize;
    let bytes = wire.get(at..at.checked_add(len as usize)?)?;
    std::str::from_utf8(bytes).ok()
}

/// The last length-delimited field `field` of an encoded message: its
/// value's start and length. `None` when the message does not parse as
/// protobuf fields or has no such field.
fn last_string_field(msg: &[u8], field: u64) -> Option<(usize, usize)> {
    let mut rest = msg;
    let mut found = None;
    while !rest.is_empty() {
        let key = decode_varint(&mut rest).ok()?;
        match key & 7 {
            0 => {
                decode_varint(&mut rest).ok()?;
            }
            1 => rest = rest.get(8..)?,
            2 => {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                let at = msg.len() - rest.len();
                if key >> 3 == field {
                    found = Some((at, len));
                }
                rest = rest.get(len..)?;
            }
            5 => rest = rest.get(4..)?,
            // Groups (3, 4) are not proto3; anything else is not protobuf.
            _ => return None,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::v1alpha1::Agent;

    fn number() -> PhoneNumber {
        PhoneNumber {
            id: "ns/n1".into(),
            e164: "+15550001111".into(),
            trunk_id: "ns/t".into(),
            agent: Some(Agent {
                url: "ws://agent".into(),
                bearer_token: "secret-token".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_stored_number_reads_its_id_in_place_and_decodes_as_it_was() {
        let n = number();
        let mut scratch = PhoneNumber::default();
        let s = StoredNumber::from_wire(n.encode_to_vec().into(), &mut scratch).expect("decodes");
        assert_eq!(scratch, n);
        assert_eq!(s.id(), "ns/n1");
        assert_eq!(s.decode(), n);
        assert_eq!(s, StoredNumber::encode(&n));
    }

    #[test]
    fn a_repeated_or_late_id_counts_as_decoding_takes_it() {
        let n = number();
        let mut wire = PhoneNumber {
            id: "ns/first".into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Fields after the id, then the id again: the last one counts.
        wire.extend(n.encode_to_vec());
        let mut scratch = PhoneNumber::default();
        let s = StoredNumber::from_wire(wire.into(), &mut scratch).expect("decodes");
        assert_eq!(s.id(), "ns/n1");
        assert_eq!(s.decode(), n);
        // The id nested in the agent (field 1 of Agent) is not the number's.
        let no_id = PhoneNumber {
            id: String::new(),
            ..number()
        };
        let s = StoredNumber::encode(&no_id);
        assert_eq!(s.id(), "");
        assert_eq!(s.decode(), no_id);
    }

    #[test]
    fn bytes_that_do_not_decode_are_refused() {
        let mut scratch = PhoneNumber::default();
        let mut wire = number().encode_to_vec();
        wire.truncate(wire.len() - 3);
        assert!(StoredNumber::from_wire(wire.into(), &mut scratch).is_err());
        // A string that is not UTF-8.
        let bad = vec![0x0a, 2, 0xff, 0xfe];
        assert!(StoredNumber::from_wire(bad.into(), &mut scratch).is_err());
        assert_eq!(
            last_string_field(&[0x0a, 9, 1], 1),
            None,
            "length past the end"
        );
        assert_eq!(last_string_field(&[0x0b], 1), None, "a group");
    }

    #[test]
    fn debug_shows_no_token() {
        let s = StoredNumber::encode(&number());
        let shown = format!("{s:?}");
        assert!(
            shown.contains("ns/n1") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
