//! Opaque paging cursors: base64url of the JSON `[time_ms, source, id]` of the last
//! event returned. Opaque so clients do not build them, and so the key can change.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::ledger::EventKey;

pub fn encode(key: &EventKey) -> String {
    let json = serde_json::json!([key.time_ms, key.source, key.id]).to_string();
    URL_SAFE_NO_PAD.encode(json)
}

/// `None` when the text is not a cursor this service made.
pub fn decode(text: &str) -> Option<EventKey> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let (time_ms, source, id): (i64, String, String) = serde_json::from_slice(&bytes).ok()?;
    Some(EventKey {
        time_ms,
        source,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_keys_with_any_characters() {
        let key = EventKey {
            time_ms: -5,
            source: "//turnpike/envoy/a b\"c".into(),
            id: "x/y".into(),
        };
        let text = encode(&key);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode(&text), Some(key));
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        assert_eq!(decode("not a cursor!"), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("[1,2]")), None);
    }
}
