//! Opaque paging cursors: base64url of the last change sequence returned. Opaque so
//! clients do not build them, and so what they hold can change.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub fn encode(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("s{seq}"))
}

/// `None` when the text is not a cursor this service made.
pub fn decode(text: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    text.strip_prefix('s')?
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_text_is_refused() {
        for seq in [0, 1, 42, i64::MAX] {
            let text = encode(seq);
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(decode(&text), Some(seq));
        }
        assert_eq!(decode("not a cursor"), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("s-1")), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("x1")), None);
    }
}
