//! Decimal digits of a `u64`, appended without `core::fmt`. On the request path (the
//! `RateLimit` values of every metered answer) and in report bodies (a number per
//! leased request), `write!`'s formatter costs several times the digits themselves.

/// The digits of `n`, written into the right end of `buf`.
fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    // u64::MAX has 20 digits.
    let mut len = 0;
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + u8::try_from(n % 10).unwrap_or(0);
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.get(buf.len() - len..).unwrap_or(&[])
}

/// Appends `n` in decimal to a byte buffer.
pub fn push_bytes(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(digits(n, &mut [0; 20]));
}

/// Appends `n` in decimal to a string.
pub fn push_str(out: &mut String, n: u64) {
    out.extend(digits(n, &mut [0; 20]).iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_reads_as_display_does() {
        let mut probes = vec![0, 1, 9, 10, 99, 100, 1_000_000_007, u64::MAX - 1, u64::MAX];
        probes.extend((0..20).map(|p| 10u64.pow(p)));
        probes.extend((1..20).map(|p| 10u64.pow(p) - 1));
        for n in probes {
            let mut s = String::from("x=");
            push_str(&mut s, n);
            assert_eq!(s, format!("x={n}"));
            let mut b = b"y=".to_vec();
            push_bytes(&mut b, n);
            assert_eq!(b, format!("y={n}").into_bytes());
        }
    }
}
