//! Reading a header map as proxy-wasm serializes it, in place: a little-endian `u32`
//! count, then each pair's name and value lengths (`u32` each), then each name and
//! value followed by a NUL. The SDK's reader copies every name and value into a new
//! `String` and `Vec` (two allocations a header, a dozen or more a request); the
//! filter needs two values and a look at every name, so it borrows them instead.

/// The (name, value) pairs of a serialized header map, in order. Stops at the first
/// pair that does not fit the buffer (a malformed map yields what came before).
pub fn pairs(buf: &[u8]) -> Pairs<'_> {
    let count = read_u32(buf, 0).unwrap_or(0);
    let data = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .unwrap_or(usize::MAX);
    Pairs {
        buf,
        count,
        index: 0,
        data,
    }
}

pub struct Pairs<'a> {
    buf: &'a [u8],
    count: usize,
    index: usize,
    /// Where the next name starts.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes = self.index.checked_mul(8)?.checked_add(4)?;
        let name_len = read_u32(self.buf, sizes)?;
        let value_len = read_u32(self.buf, sizes.checked_add(4)?)?;
        let name_end = self.data.checked_add(name_len)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let name = self.buf.get(self.data..name_end)?;
        let value = self.buf.get(value_start..value_end)?;
        self.data = value_end.checked_add(1)?;
        self.index += 1;
        Some((name, value))
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<usize> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    let n = u32::from_le_bytes(<[u8; 4]>::try_from(bytes).ok()?);
    usize::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's serialization (proxy-wasm-cpp-host's `getHeaderMapPairs`).
    fn serialize(map: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (map.len() as u32).to_le_bytes().to_vec();
        for (name, value) in map {
            out.extend((name.len() as u32).to_le_bytes());
            out.extend((value.len() as u32).to_le_bytes());
        }
        for (name, value) in map {
            out.extend(*name);
            out.push(0);
            out.extend(*value);
            out.push(0);
        }
        out
    }

    #[test]
    fn pairs_come_back_in_order_with_any_bytes_in_values() {
        let map: [(&[u8], &[u8]); 4] = [
            (b":path", b"/v1/things?q=\xff\x00x"),
            (b":method", b"GET"),
            (b"empty", b""),
            (b"turnpike-tenant", b"spoofed"),
        ];
        let buf = serialize(&map);
        assert_eq!(pairs(&buf).collect::<Vec<_>>(), map);
        assert_eq!(pairs(&serialize(&[])).count(), 0);
    }

    #[test]
    fn a_malformed_map_yields_what_fits_and_never_panics() {
        let map: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"bb", b"22")];
        let buf = serialize(&map);
        for cut in 0..buf.len() {
            let got: Vec<_> = pairs(&buf[..cut]).collect();
            assert!(got.len() <= 2);
            assert_eq!(got, map[..got.len()]);
        }
        // A count far larger than the buffer, and lengths past its end.
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pairs(&huge).count() <= 2);
        let mut long = buf;
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&long).count(), 0);
        assert_eq!(pairs(b"").count(), 0);
    }
}
