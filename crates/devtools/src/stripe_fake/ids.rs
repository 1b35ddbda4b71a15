//! Stripe-looking identifiers: `mtr_test_…`, `req_…`, `mtrusg_test_…`. Random ones
//! come from a splitmix64 sequence (uniqueness, not secrecy, is what matters here);
//! summary ids are a hash of what the summary covers, so paging with
//! `starting_after` finds the same id on every call.

use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A source of random-looking ids.
#[derive(Debug)]
pub struct IdGen(AtomicU64);

impl IdGen {
    pub fn new(seed: u64) -> IdGen {
        IdGen(AtomicU64::new(seed))
    }

    /// Seeded from the clock and process id, so two runs do not repeat ids.
    pub fn from_entropy() -> IdGen {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        IdGen::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    fn next_u64(&self) -> u64 {
        splitmix64(self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }

    /// `prefix` followed by `len` base62 characters.
    pub fn make(&self, prefix: &str, len: usize) -> String {
        let mut out = String::with_capacity(prefix.len() + len);
        out.push_str(prefix);
        let mut bits = self.next_u64();
        let mut left = 10; // base62 digits drawn from one u64
        for _ in 0..len {
            if left == 0 {
                bits = self.next_u64();
                left = 10;
            }
            out.push(char::from(ALPHABET[(bits % 62) as usize]));
            bits /= 62;
            left -= 1;
        }
        out
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic id for `parts`: the same parts always give the same id.
pub fn stable_id(prefix: &str, parts: &[&str], len: usize) -> String {
    // FNV-1a over the parts with a separator, then expanded through splitmix64.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    IdGen::new(hash).make(prefix, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_prefix_and_length_and_do_not_repeat() {
        let ids = IdGen::new(1);
        let a = ids.make("mtr_test_", 24);
        let b = ids.make("mtr_test_", 24);
        assert!(a.starts_with("mtr_test_") && a.len() == 9 + 24, "{a}");
        assert!(a[9..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn stable_ids_depend_only_on_their_parts() {
        let one = stable_id("mtrusg_test_", &["mtr_1", "cus_1", "0", "3600"], 24);
        assert_eq!(
            one,
            stable_id("mtrusg_test_", &["mtr_1", "cus_1", "0", "3600"], 24)
        );
        assert_ne!(
            one,
            stable_id("mtrusg_test_", &["mtr_1", "cus_1", "0", "7200"], 24)
        );
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            stable_id("x_", &["ab", "c"], 16),
            stable_id("x_", &["a", "bc"], 16)
        );
    }
}
