//! Consume ids, minted by the filter for every metered request.
//!
//! An id is a 128-bit per-VM random seed followed by a per-VM sequence number, 48 hex
//! chars. The seed makes ids unique across workers, VMs and restarts; the sequence makes
//! them unique within a VM without drawing randomness per request. Nothing in an id
//! comes from the client, so a client replaying an id cannot dodge a charge.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Length of a minted id.
pub const ID_LEN: usize = 48;

/// Interior mutability: one minter per VM, shared by its single-threaded contexts.
#[derive(Debug)]
pub struct IdMinter {
    prefix: [u8; 32],
    next: Cell<u64>,
}

impl IdMinter {
    pub fn new(seed: u128) -> Self {
        let mut prefix = [0u8; 32];
        write_hex(&mut prefix, seed);
        Self {
            prefix,
            next: Cell::new(0),
        }
    }

    /// A minter seeded from the OS. On wasm32-wasip1 std's `RandomState` keys come
    /// from WASI `random_get`, which Envoy implements: no extra crate, no `unsafe`.
    /// Two SipHash outputs under those 128 random key bits make the seed.
    pub fn from_entropy() -> Self {
        let hi = u128::from(entropy_u64());
        let lo = u128::from(entropy_u64());
        Self::new((hi << 64) | lo)
    }

    pub fn mint(&self) -> String {
        let mut id = [0u8; ID_LEN];
        let (prefix, seq) = id.split_at_mut(32);
        prefix.copy_from_slice(&self.prefix);
        let next = self.next.get();
        write_hex(seq, u128::from(next));
        self.next.set(next.wrapping_add(1));
        // Only hex digits were written.
        String::from_utf8_lossy(&id).into_owned()
    }
}

/// 64 random bits. Each `RandomState` gets fresh keys (per-thread random keys, bumped on
/// every call), and hashing under them yields uniformly distributed output.
pub fn entropy_u64() -> u64 {
    RandomState::new().hash_one(0x5eed_u64)
}

/// Writes the low `out.len()` nibbles of `value` as lowercase hex, most significant first.
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS.get((value & 0xf) as usize).copied().unwrap_or(b'0');
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_seed_then_sequence_in_hex() {
        let m = IdMinter::new(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(m.mint(), "0123456789abcdef00112233445566770000000000000000");
        assert_eq!(m.mint(), "0123456789abcdef00112233445566770000000000000001");
    }

    #[test]
    fn ids_are_valid_consume_ids() {
        let id = IdMinter::from_entropy().mint();
        assert_eq!(id.len(), ID_LEN);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn separately_seeded_minters_do_not_collide() {
        let a = IdMinter::from_entropy().mint();
        let b = IdMinter::from_entropy().mint();
        assert_ne!(a, b);
    }

    #[test]
    fn sequence_never_repeats_within_a_minter() {
        let m = IdMinter::new(7);
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| m.mint()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
