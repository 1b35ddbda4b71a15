//! The path a request is priced by: its `:path` normalised so that every spelling an
//! upstream could route to the same handler matches the same rule.
//!
//! The steps follow Envoy's own order (`path_with_escaped_slashes_action`, then
//! `normalize_path`, then `merge_slashes`): behind the shipped Envoy config the path
//! Envoy forwards is already normal but for the readings below that Envoy leaves to
//! the upstream (`;`, sub-delims); without it the filter prices what that config
//! would have forwarded. Where servers read a spelling differently (encoded slashes,
//! `;`, encoded sub-delims), the filter takes the reading that costs more.
//! See docs/path-normalization.md.
//!
//! 1. The query and fragment are cut off; an absolute-form target keeps its path.
//! 2. Percent-encodings are decoded once (`%252e` is `%25` + `2e`, never `.`) when the
//!    character may stand literally in a segment: RFC 3986 unreserved characters, and
//!    also sub-delims (but `;`), `:` and `@`, because most routers match on decoded
//!    paths (`/v1/things%3Asearch` reaches a `/v1/things:search` handler). All other
//!    encodings get uppercase hex; raw bytes that may not stand in a path (controls,
//!    space, non-ASCII, ...) are encoded; an invalid `%` is a literal `%` (`%25`).
//! 3. `/`, `\`, `%2F` and `%5C` all separate segments: some upstreams treat each of
//!    them as `/`, and pricing a path as the more expensive reading is the safe error.
//! 4. A raw `;` ends a segment's name: `/v1;x/search` and `/x/..;/v1/search` are
//!    `/v1/search`, as servlet containers route them.
//! 5. Dot segments are removed (RFC 3986 §5.2.4), then duplicate slashes merged.
//!
//! Work and memory are linear in the path's length; the output is at most three bytes
//! per input byte, plus one.

use std::borrow::Cow;

/// The normalised form of a raw `:path`. Borrows when the path is already normal.
pub fn normalize(raw: &[u8]) -> Cow<'_, str> {
    let path = origin_form(before_query(raw));
    if is_normal(path) {
        if let Ok(s) = std::str::from_utf8(path) {
            return Cow::Borrowed(s);
        }
    }
    Cow::Owned(normalize_slow(path))
}

/// `true` when `path` (no query) is its own normal form.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    // Index of the byte after the current segment's leading `/`.
    let mut segment_start = 1;
    let mut i = 1;
    while let Some(&b) = path.get(i) {
        match b {
            b'/' => {
                let segment = path.get(segment_start..i).unwrap_or_default();
                if segment.is_empty() || is_dot_segment(segment) {
                    return false;
                }
                segment_start = i + 1;
                i += 1;
            }
            b'%' => match decode_at(path, i) {
                Some(d) if !is_literal(d) && !is_separator(d) && is_upper_hex_at(path, i) => i += 3,
                _ => return false,
            },
            b if is_literal(b) => i += 1,
            _ => return false,
        }
    }
    !is_dot_segment(path.get(segment_start..).unwrap_or_default())
}

fn normalize_slow(path: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(path.len() + 1);
    let mut i = 0;
    // A path that does not start with a separator (`*`) is taken as rooted.
    let mut units = std::iter::from_fn(|| next_unit(path, &mut i)).peekable();
    if units.peek() == Some(&Unit::Separator) {
        units.next();
    }
    // `out` holds `/segment` runs; `start` is where the current one's `/` is.
    let mut start = 0;
    out.push(b'/');
    let mut in_params = false;
    for unit in units {
        match unit {
            Unit::Separator => {
                end_segment(&mut out, start, false);
                start = out.len();
                out.push(b'/');
                in_params = false;
            }
            Unit::Params => in_params = true,
            _ if in_params => {}
            Unit::Literal(b) => out.push(b),
            Unit::Encoded(b) => {
                out.extend_from_slice(&[b'%', hex_digit(b >> 4), hex_digit(b & 0x0f)]);
            }
        }
    }
    end_segment(&mut out, start, true);
    // Merged after dot removal, as Envoy does: `/a//../b` is `/a/b`.
    out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    // Every byte pushed is ASCII.
    String::from_utf8(out).unwrap_or_else(|_| String::from("/"))
}

/// Resolves the segment that starts at `out[start]` (its `/`) if it is `.` or `..`.
fn end_segment(out: &mut Vec<u8>, start: usize, last: bool) {
    let dots = match out.get(start + 1..) {
        Some(b".") => 1,
        Some(b"..") => 2,
        _ => return,
    };
    out.truncate(start);
    if dots == 2 {
        // Every segment starts with its `/`, and no segment holds one.
        let parent = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
        out.truncate(parent);
    }
    if last {
        // `/a/b/..` is `/a/`: the path names a directory.
        out.push(b'/');
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Separator,
    /// A raw `;`: the rest of the segment is parameters.
    Params,
    Literal(u8),
    /// Written as `%XX`.
    Encoded(u8),
}

fn next_unit(path: &[u8], i: &mut usize) -> Option<Unit> {
    let b = *path.get(*i)?;
    if b == b'%' {
        if let Some(d) = decode_at(path, *i) {
            *i += 3;
            return Some(match d {
                d if is_separator(d) => Unit::Separator,
                // Decoded when it may stand literally.
                d if is_literal(d) => Unit::Literal(d),
                d => Unit::Encoded(d),
            });
        }
        *i += 1;
        return Some(Unit::Encoded(b'%'));
    }
    *i += 1;
    Some(match b {
        b if is_separator(b) => Unit::Separator,
        b';' => Unit::Params,
        b if is_literal(b) => Unit::Literal(b),
        b => Unit::Encoded(b),
    })
}

/// The byte `%XX` at `path[i]` encodes, if it is a valid encoding.
fn decode_at(path: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*path.get(i + 1)?)?;
    let lo = hex_value(*path.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

fn is_upper_hex_at(path: &[u8], i: usize) -> bool {
    path.get(i + 1..i + 3)
        .is_some_and(|h| h.iter().all(|b| !b.is_ascii_lowercase()))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The uppercase hex digit of a nibble.
fn hex_digit(nibble: u8) -> u8 {
    b"0123456789ABCDEF"
        .get(usize::from(nibble))
        .copied()
        .unwrap_or(b'0')
}

fn is_separator(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// A byte that stands for itself in a normal path segment: RFC 3986 `pchar` without
/// `;` (a parameter delimiter here) and without `%`.
fn is_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// The path of a request target: up to the query or fragment.
fn before_query(raw: &[u8]) -> &[u8] {
    match raw.iter().position(|&b| b == b'?' || b == b'#') {
        Some(end) => raw.get(..end).unwrap_or(raw),
        None => raw,
    }
}

/// The path of an absolute-form target (`http://host/v1/search`), which servers must
/// accept (RFC 9112 §3.2.2); any other target unchanged. Envoy itself answers 404 to
/// a `:path` that does not start with `/`; this is for the filter's own sake.
fn origin_form(target: &[u8]) -> &[u8] {
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return target;
    };
    let scheme = target.get(..colon).unwrap_or_default();
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let Some(rest) = target.get(colon + 1..).filter(|_| is_scheme) else {
        return target;
    };
    let Some(authority_and_path) = rest.strip_prefix(b"//") else {
        return target;
    };
    match authority_and_path.iter().position(|&b| b == b'/') {
        Some(slash) => authority_and_path.get(slash..).unwrap_or(b"/"),
        None => b"/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str) -> String {
        normalize(raw.as_bytes()).into_owned()
    }

    fn is_borrowed(raw: &str) -> bool {
        matches!(normalize(raw.as_bytes()), Cow::Borrowed(_))
    }

    #[test]
    fn the_dodging_spellings_of_search_are_v1_search() {
        for spelling in [
            "/v1/search",
            "//v1/search",
            "/v1//search",
            "/v1/./search",
            "/x/../v1/search",
            "/v1/%73earch",
            "/v1/%73%65%61%72%63%68",
            "/v1/%2e/search",
            "/v1/%2E/search",
            "/x/%2e%2E/v1/search",
            "/x/%2E%2e/v1/search",
            "/v1/search?q=a",
            "/v1/search#frag",
            "///v1///search",
            "/v1/a/b/../../search",
        ] {
            assert_eq!(n(spelling), "/v1/search", "{spelling}");
        }
    }

    #[test]
    fn double_encoding_is_decoded_once_only() {
        assert_eq!(n("/v1/%252e/search"), "/v1/%252e/search");
        assert_eq!(n("/v1/%252E%252E/x"), "/v1/%252E%252E/x");
        assert_eq!(n("/v1/%25%32%65/x"), "/v1/%252e/x");
        assert_eq!(n("/a/%252F/b"), "/a/%252F/b");
    }

    #[test]
    fn dot_segments_cannot_climb_above_the_root() {
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/../.."), "/");
        assert_eq!(n("/a/b/../../.."), "/");
        assert_eq!(n("/../v1/search"), "/v1/search");
        assert_eq!(n("/."), "/");
        assert_eq!(n("/%2e%2e/%2E%2E/v1"), "/v1");
    }

    #[test]
    fn a_trailing_dot_segment_leaves_a_directory() {
        assert_eq!(n("/v1/search/."), "/v1/search/");
        assert_eq!(n("/v1/search/.."), "/v1/");
        assert_eq!(n("/v1/search/"), "/v1/search/");
        assert_eq!(n("/v1/search//"), "/v1/search/");
        assert_eq!(n("/v1/search/%2e"), "/v1/search/");
    }

    #[test]
    fn dots_that_are_not_whole_segments_stay() {
        for path in [
            "/v1/.well-known",
            "/v1/a..b",
            "/v1/...",
            "/v1/search.json",
            "/.",
        ] {
            let expected = if path == "/." { "/" } else { path };
            assert_eq!(n(path), expected, "{path}");
        }
    }

    #[test]
    fn empty_segments_merge_after_dot_removal_as_envoy_does() {
        assert_eq!(n("/a//../b"), "/a/b");
        assert_eq!(n("/a/b//.."), "/a/b/");
        assert_eq!(n("//"), "/");
        assert_eq!(n(""), "/");
    }

    #[test]
    fn encoded_slashes_and_backslashes_separate_segments() {
        for spelling in [
            "/v1%2Fsearch",
            "/v1%2fsearch",
            "/v1%5Csearch",
            "/v1%5csearch",
            "/v1\\search",
            "\\v1\\search",
            "/v1/x%2F..%2Fsearch",
            "/v1/x\\..\\search",
            "%2Fv1/search",
        ] {
            assert_eq!(n(spelling), "/v1/search", "{spelling}");
        }
    }

    #[test]
    fn path_parameters_end_a_segment_name() {
        assert_eq!(n("/v1;x=1/search"), "/v1/search");
        assert_eq!(n("/v1/search;jsessionid=abc"), "/v1/search");
        assert_eq!(n("/x/..;/v1/search"), "/v1/search");
        assert_eq!(n("/x/.;a/v1"), "/x/v1");
        assert_eq!(n("/v1/;/search"), "/v1/search");
        // An encoded `;` is a character of the name, not a delimiter.
        assert_eq!(n("/v1/search%3bx"), "/v1/search%3Bx");
        assert_eq!(n("/v1/search%3Bx/.."), "/v1/");
    }

    #[test]
    fn characters_that_may_stand_literally_are_decoded() {
        assert_eq!(n("/v1/things%3Asearch"), "/v1/things:search");
        assert_eq!(n("/v1/%41%7a%30%2D%5f%7E"), "/v1/Az0-_~");
        assert_eq!(n("/%21%24%26%27%28%29%2A%2B%2C%3D%3A%40"), "/!$&'()*+,=:@");
    }

    #[test]
    fn other_encodings_keep_uppercase_hex() {
        assert_eq!(n("/a%3fb"), "/a%3Fb");
        assert_eq!(n("/a%23b"), "/a%23b");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/a%c3%a9"), "/a%C3%A9");
        assert_eq!(n("/a%00b"), "/a%00b");
        assert_eq!(n("/a%25"), "/a%25");
    }

    #[test]
    fn invalid_percent_encodings_are_literal_percent_signs() {
        assert_eq!(n("/a%"), "/a%25");
        assert_eq!(n("/a%2"), "/a%252");
        assert_eq!(n("/a%zz"), "/a%25zz");
        assert_eq!(n("/a%%2e"), "/a%25.");
        assert_eq!(n("/%g0/.."), "/");
    }

    #[test]
    fn raw_bytes_that_may_not_stand_in_a_path_are_encoded() {
        assert_eq!(n("/a b"), "/a%20b");
        assert_eq!(n("/a\"<>`{|}^[]"), "/a%22%3C%3E%60%7B%7C%7D%5E%5B%5D");
        assert_eq!(normalize(b"/a\x00\x7f\x1b"), "/a%00%7F%1B");
        // Raw non-ASCII, valid UTF-8 or not, is its percent-encoding.
        assert_eq!(n("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(normalize(b"/v1/s\xffearch"), "/v1/s%FFearch");
        assert_eq!(n("/caf%C3%A9"), "/caf%C3%A9");
    }

    #[test]
    fn targets_not_starting_with_a_slash_are_rooted() {
        assert_eq!(n("*"), "/*");
        assert_eq!(n("v1/search"), "/v1/search");
        assert_eq!(n("http://api.example/v1/./search?q=1"), "/v1/search");
        assert_eq!(n("https://api.example"), "/");
        assert_eq!(n("HTTP+x://h:80/v1"), "/v1");
        // Not a scheme: an ordinary (rooted) path with a colon.
        assert_eq!(n("1http://h/v1"), "/1http:/h/v1");
        assert_eq!(n("/v1/x:y"), "/v1/x:y");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/v1/search",
            "/v1/search/",
            "/v1/things:search",
            "/v1/a%20b",
            "/v1/%C3%A9",
            "/v1/.well-known/x",
            "/v1/search?q=a//../b",
        ] {
            assert!(is_borrowed(path), "{path}");
        }
        for path in [
            "/v1/%c3%a9",
            "/v1/%41",
            "/v1//search",
            "/v1/./search",
            "/v1/..",
            "/v1/x;y",
            "/v1\\x",
            "/v1/%2F",
            "/v1/%",
            "v1",
            "/v1/é",
        ] {
            assert!(!is_borrowed(path), "{path}");
        }
    }

    /// A small deterministic generator: no test-only dependency for a fuzz loop.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    #[test]
    fn normal_form_is_idempotent_bounded_and_accepted_as_normal() {
        const PIECES: &[&[u8]] = &[
            b"/",
            b"//",
            b".",
            b"..",
            b"%2e",
            b"%2E",
            b"%2f",
            b"%5C",
            b"\\",
            b";",
            b";x",
            b"%",
            b"%2",
            b"%25",
            b"%3b",
            b"%41",
            b"a",
            b"v1",
            b"search",
            b"\xff",
            b"\xc3\xa9",
            b" ",
            b"?",
            b"#",
            b":",
            b"http://h",
            b"%00",
            b"~",
        ];
        let mut rng = Lcg(42);
        for _ in 0..20_000 {
            let mut raw = Vec::new();
            for _ in 0..rng.next() % 12 {
                let piece = PIECES[(rng.next() % PIECES.len() as u64) as usize];
                raw.extend_from_slice(piece);
            }
            let once = normalize(&raw).into_owned();
            assert!(once.starts_with('/'), "{raw:?} -> {once}");
            assert!(once.len() <= 3 * raw.len() + 1, "{raw:?} -> {once}");
            assert!(!once.contains("//"), "{raw:?} -> {once}");
            assert!(is_normal(once.as_bytes()), "{raw:?} -> {once}");
            assert_eq!(normalize(once.as_bytes()), once, "{raw:?}");
        }
    }

    #[test]
    fn long_paths_are_linear() {
        // 64 KiB of `..` segments and encodings: must finish at once and stay bounded.
        let raw = "/a/..%2F%2e%2e/%2e".repeat(4096);
        assert_eq!(n(&raw), "/");
        let raw = "/a".repeat(32 * 1024);
        assert!(is_borrowed(&raw));
        let raw = "\u{ff}".repeat(32 * 1024);
        assert_eq!(n(&raw).len(), 1 + 6 * 32 * 1024);
    }
}
