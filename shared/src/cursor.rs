//! Opaque, integrity-protected pagination cursors. A cursor names the list it belongs to, so a
//! cursor of one list is refused by another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const MAC_LEN: usize = 16;

/// A cursor that was altered, does not parse, or belongs to another list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cursor is not one this list issued")]
pub struct InvalidCursor;

#[derive(Clone)]
pub struct CursorCodec {
    /// The HMAC already keyed with the secret, cloned per cursor: keying hashes two blocks.
    mac: Hmac<Sha256>,
}

#[derive(Deserialize)]
struct Payload {
    /// The list this cursor walks, e.g. `flat:usr_02`.
    l: String,
    /// The position after which the next page starts.
    p: String,
}

/// [`Payload`] as written, borrowing what it writes.
#[derive(Serialize)]
struct PayloadRef<'a> {
    l: &'a str,
    p: &'a str,
}

impl CursorCodec {
    pub fn new(secret: &[u8]) -> Self {
        CursorCodec {
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.mac.clone()
    }

    pub fn encode(&self, list: &str, position: &str) -> String {
        let payload = serde_json::to_vec(&PayloadRef {
            l: list,
            p: position,
        })
        .expect("a cursor payload serialises");
        let mut mac = self.mac();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let mut cursor = String::with_capacity((payload.len() + MAC_LEN) * 4 / 3 + 4);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut cursor);
        cursor.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag[..MAC_LEN], &mut cursor);
        cursor
    }

    /// The position of a cursor issued for `list`; any other cursor is a `400`.
    pub fn decode(&self, list: &str, cursor: &str) -> Result<String, InvalidCursor> {
        let invalid = || InvalidCursor;
        let (payload_b64, tag_b64) = cursor.split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag_b64).map_err(|_| invalid())?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_truncated_left(&tag).map_err(|_| invalid())?;
        if tag.len() != MAC_LEN {
            return Err(invalid());
        }
        let payload: Payload = serde_json::from_slice(&payload).map_err(|_| invalid())?;
        if payload.l != list {
            return Err(invalid());
        }
        Ok(payload.p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_refuses_tampering_and_other_lists() {
        let codec = CursorCodec::new(b"secret");
        let c = codec.encode("flat:usr_02", "0000000000000001abc");
        assert_eq!(
            codec.decode("flat:usr_02", &c).unwrap(),
            "0000000000000001abc"
        );
        assert!(codec.decode("flat:usr_03", &c).is_err());
        assert!(CursorCodec::new(b"other")
            .decode("flat:usr_02", &c)
            .is_err());
        let mut bytes = c.clone().into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        assert!(codec
            .decode("flat:usr_02", &String::from_utf8(bytes).unwrap())
            .is_err());
        assert!(codec.decode("flat:usr_02", "garbage").is_err());
        assert!(codec.decode("flat:usr_02", "").is_err());
        let (p, _) = c.split_once('.').unwrap();
        assert!(codec.decode("flat:usr_02", &format!("{p}.")).is_err());
    }

    /// Cursors already handed out stay valid: the encoding is the one of earlier releases.
    #[test]
    fn the_encoding_is_stable() {
        let codec = CursorCodec::new(b"secret");
        let c = codec.encode("flat:usr_02", "0000000000000001abc");
        let (payload, tag) = c.split_once('.').unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(payload).unwrap(),
            br#"{"l":"flat:usr_02","p":"0000000000000001abc"}"#
        );
        assert_eq!(
            tag,
            tag_of(br#"{"l":"flat:usr_02","p":"0000000000000001abc"}"#)
        );
        // A list name that JSON escapes.
        let escaped = br#"{"l":"user:a\"b","p":"p"}"#;
        assert_eq!(
            codec.encode("user:a\"b", "p"),
            format!("{}.{}", URL_SAFE_NO_PAD.encode(escaped), tag_of(escaped))
        );
    }

    fn tag_of(payload: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(payload);
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..MAC_LEN])
    }
}
