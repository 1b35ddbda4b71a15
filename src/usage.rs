//! Reserve before, settle after: meters whose quantity is only known once the upstream
//! answered (LLM tokens, bytes, results). A reservation is taken with the consume, from
//! a fixed estimate, a request header or a JSON field of the (bounded) request body;
//! the settlement is read from the response as it passes — a header or trailer, a
//! field of a JSON body, the last `usage` of a `text/event-stream` (line by line,
//! never holding the stream back), or the bytes sent. Pure: the glue feeds it.

use serde_json::Value;
use turnpike_wire::Decision;

/// Largest quantity accepted from a request or a response (the counter's bound).
pub const MAX_QUANTITY: u64 = 1 << 52;

/// Where a reservation comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    Fixed(u64),
    /// A request header holding a number; `default` when absent or unreadable, never
    /// more than `max`.
    Header {
        name: String,
        default: u64,
        max: u64,
    },
    /// A field of the JSON request body (a JSON pointer, e.g. `/max_tokens`).
    Json {
        pointer: String,
        default: u64,
        max: u64,
    },
}

/// Where the settled quantity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// A field of the JSON response body, or of the last `data:` event of a
    /// `text/event-stream` that has it.
    Json(String),
    /// A response header or trailer holding a number.
    Header(String),
    /// The response's bytes.
    ResponseBytes,
}

/// What to bill when the upstream reported nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Reservation,
    Zero,
}

/// One settled meter of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSpec {
    pub meter: String,
    pub reserve: Reserve,
    pub settle: Settle,
    pub missing: Missing,
}

/// A request header value as a reservation.
pub fn reserve_from_header(value: Option<&[u8]>, default: u64, max: u64) -> u64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default)
        .min(max)
}

/// A JSON request body's field as a reservation (`None`: the body is not JSON or has
/// no such number: use the default).
pub fn reserve_from_json(body: &[u8], pointer: &str) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    quantity(value.pointer(pointer)?).ok()
}

/// A JSON value as a quantity: a non-negative integer (or integral float) up to
/// [`MAX_QUANTITY`]; anything else (text, negative, fractional, huge) is malformed.
fn quantity(value: &Value) -> Result<u64, Malformed> {
    let q = match value {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(q), _) => q,
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_QUANTITY as f64 => f as u64,
            _ => return Err(Malformed),
        },
        // A count must be a JSON number: "42" is a bug upstream, not a count.
        _ => return Err(Malformed),
    };
    if q > MAX_QUANTITY {
        return Err(Malformed);
    }
    Ok(q)
}

/// A value was there but is not a usable quantity (negative, fractional, huge, text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// What the response said about one meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Nothing,
    Found(u64),
    Malformed,
}

impl Reading {
    fn from(result: Result<u64, Malformed>) -> Reading {
        match result {
            Ok(q) => Reading::Found(q),
            Err(Malformed) => Reading::Malformed,
        }
    }
}

/// How the response body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Not needed, or not JSON.
    Ignored,
    /// A JSON document, collected (up to a bound) to be read whole at the end.
    Json,
    /// Server-sent events, read line by line as they pass.
    EventStream,
}

/// Reads one response for the settled meters of its route.
#[derive(Debug)]
pub struct Settlement {
    /// (pointer, reading) per JSON-settled meter, in spec order.
    json: Vec<(String, Reading)>,
    body: Body,
    collected: Vec<u8>,
    /// The JSON body outgrew the bound: it is not read.
    too_large: bool,
    /// A partial SSE line carried to the next chunk.
    line: Vec<u8>,
    max_body: usize,
    max_line: usize,
    /// The response ended normally (not cut off by a reset).
    pub complete: bool,
    /// Bytes of body seen.
    pub body_bytes: u64,
}

impl Settlement {
    pub fn new(specs: &[UsageSpec], max_body: usize, max_line: usize) -> Settlement {
        Settlement {
            json: specs
                .iter()
                .filter_map(|s| match &s.settle {
                    Settle::Json(p) => Some((p.clone(), Reading::Nothing)),
                    _ => None,
                })
                .collect(),
            body: Body::Ignored,
            collected: Vec::new(),
            too_large: false,
            line: Vec::new(),
            max_body,
            max_line,
            complete: false,
            body_bytes: 0,
        }
    }

    /// The response's `content-type` decides how its body is read.
    pub fn on_content_type(&mut self, content_type: Option<&str>) {
        if self.json.is_empty() {
            return;
        }
        let essence = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase())
            .unwrap_or_default();
        self.body = if essence == "text/event-stream" {
            Body::EventStream
        } else if essence.is_empty() || essence == "application/json" || essence.ends_with("+json")
        {
            Body::Json
        } else {
            Body::Ignored
        };
    }

    /// Whether the glue needs the body's bytes (else it only counts them).
    pub fn wants_body(&self) -> bool {
        self.body != Body::Ignored
    }

    /// A chunk the glue did not read (the body is not needed): only counted.
    pub fn on_skipped_body(&mut self, len: usize, end_of_stream: bool) {
        self.body_bytes = self.body_bytes.saturating_add(len as u64);
        if end_of_stream {
            self.complete = true;
        }
    }

    /// One chunk of the response body, as it passes.
    pub fn on_body(&mut self, chunk: &[u8], end_of_stream: bool) {
        self.body_bytes = self.body_bytes.saturating_add(chunk.len() as u64);
        match self.body {
            Body::Ignored => {}
            Body::Json => {
                if !self.too_large {
                    if self.collected.len() + chunk.len() > self.max_body {
                        self.too_large = true;
                        self.collected = Vec::new();
                    } else {
                        self.collected.extend_from_slice(chunk);
                    }
                }
                if end_of_stream && !self.too_large {
                    self.read_json_document();
                }
            }
            Body::EventStream => {
                let mut rest = chunk;
                while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
                    let (head, tail) = rest.split_at(newline);
                    if self.line.len() + head.len() <= self.max_line {
                        self.line.extend_from_slice(head);
                        let line = std::mem::take(&mut self.line);
                        self.read_event_line(&line);
                    } else {
                        // An over-long line is skipped whole.
                        self.line.clear();
                    }
                    rest = tail.get(1..).unwrap_or_default();
                }
                if self.line.len() + rest.len() <= self.max_line {
                    self.line.extend_from_slice(rest);
                } else {
                    self.line.clear();
                }
                if end_of_stream && !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    self.read_event_line(&line);
                }
            }
        }
        if end_of_stream {
            self.complete = true;
        }
    }

    fn read_json_document(&mut self) {
        let Ok(doc) = serde_json::from_slice::<Value>(&self.collected) else {
            return;
        };
        for (pointer, reading) in &mut self.json {
            if let Some(v) = doc.pointer(pointer) {
                *reading = Reading::from(quantity(v));
            }
        }
        self.collected = Vec::new();
    }

    /// `data: {...}`: the last event that has a value wins (OpenAI sends `usage` in the
    /// last data event before `[DONE]`).
    fn read_event_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data.first() != Some(&b'{') {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        for (pointer, reading) in &mut self.json {
            if let Some(v) = event.pointer(pointer).filter(|v| !v.is_null()) {
                *reading = Reading::from(quantity(v));
            }
        }
    }

    /// What the response said of `spec`'s meter; `header` looks a name up in the
    /// response headers, then the trailers.
    pub fn reading(
        &self,
        spec: &UsageSpec,
        header: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Reading {
        match &spec.settle {
            Settle::Json(pointer) => self
                .json
                .iter()
                .find(|(p, _)| p == pointer)
                .map_or(Reading::Nothing, |(_, r)| *r),
            Settle::Header(name) => match header(name) {
                Some(v) => Reading::from(v.trim().parse::<u64>().map_err(|_| Malformed).and_then(
                    |q| {
                        if q > MAX_QUANTITY {
                            Err(Malformed)
                        } else {
                            Ok(q)
                        }
                    },
                )),
                None => Reading::Nothing,
            },
            Settle::ResponseBytes => Reading::Found(self.body_bytes),
        }
    }
}

/// The quantity to bill for a meter: what was read, else what the policy says.
pub fn settled(reading: Reading, reserved: u64, missing: Missing) -> u64 {
    match (reading, missing) {
        (Reading::Found(q), _) => q,
        (_, Missing::Reservation) => reserved,
        (_, Missing::Zero) => 0,
    }
}

/// Whether an exchange that ended this way is settled at all (a refunded 5xx, a
/// denied or abandoned request bills nothing).
pub fn settles(decision: Decision, refunded: bool) -> bool {
    matches!(decision, Decision::Allowed) && !refunded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(meter: &str, settle: Settle) -> UsageSpec {
        UsageSpec {
            meter: meter.into(),
            reserve: Reserve::Fixed(100),
            settle,
            missing: Missing::Reservation,
        }
    }

    fn no_headers(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn reservations_come_from_headers_and_json_bodies_within_bounds() {
        assert_eq!(reserve_from_header(Some(b" 512 "), 100, 1000), 512);
        assert_eq!(reserve_from_header(Some(b"lots"), 100, 1000), 100);
        assert_eq!(reserve_from_header(None, 100, 1000), 100);
        assert_eq!(reserve_from_header(Some(b"99999"), 100, 1000), 1000);
        assert_eq!(
            reserve_from_json(br#"{"max_tokens": 256}"#, "/max_tokens"),
            Some(256)
        );
        assert_eq!(
            reserve_from_json(br#"{"max_tokens": -1}"#, "/max_tokens"),
            None
        );
        assert_eq!(reserve_from_json(b"not json", "/max_tokens"), None);
    }

    #[test]
    fn a_json_body_is_read_whole_even_across_chunks() {
        let specs = [
            spec("tokens", Settle::Json("/usage/total_tokens".into())),
            spec("prompt", Settle::Json("/usage/prompt_tokens".into())),
        ];
        let mut s = Settlement::new(&specs, 1 << 20, 1 << 16);
        s.on_content_type(Some("application/json; charset=utf-8"));
        assert!(s.wants_body());
        s.on_body(br#"{"choices":[],"usage":{"prompt_tokens":12,"#, false);
        s.on_body(br#""total_tokens":40}}"#, true);
        assert_eq!(s.reading(&specs[0], &mut no_headers), Reading::Found(40));
        assert_eq!(s.reading(&specs[1], &mut no_headers), Reading::Found(12));
        assert!(s.complete);
    }

    #[test]
    fn an_event_stream_is_read_as_it_passes_and_the_last_usage_wins() {
        let specs = [spec("tokens", Settle::Json("/usage/total_tokens".into()))];
        let mut s = Settlement::new(&specs, 16, 1 << 16);
        s.on_content_type(Some("text/event-stream"));
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"total_tokens\":7}}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"total_tokens\":42}}\r\n\r\n\
                      data: [DONE]\n\n";
        // Chunks that split lines and the usage object anywhere, bigger than the JSON
        // bound (the stream is never collected).
        for chunk in stream.as_bytes().chunks(5) {
            s.on_body(chunk, false);
        }
        s.on_body(b"", true);
        assert_eq!(s.reading(&specs[0], &mut no_headers), Reading::Found(42));
        assert_eq!(s.body_bytes, stream.len() as u64);
    }

    #[test]
    fn a_stream_cut_off_keeps_what_it_reported_so_far() {
        let specs = [spec("tokens", Settle::Json("/usage/total_tokens".into()))];
        let mut s = Settlement::new(&specs, 1 << 20, 1 << 16);
        s.on_content_type(Some("text/event-stream"));
        s.on_body(
            b"data: {\"usage\":{\"total_tokens\":9}}\n\ndata: {\"usage\":{\"tot",
            false,
        );
        assert!(!s.complete);
        assert_eq!(s.reading(&specs[0], &mut no_headers), Reading::Found(9));
    }

    #[test]
    fn malformed_values_are_told_apart_from_missing_ones() {
        let specs = [spec("tokens", Settle::Json("/usage/total_tokens".into()))];
        for (body, want) in [
            (r#"{"usage":{"total_tokens":"many"}}"#, Reading::Malformed),
            (r#"{"usage":{"total_tokens":-5}}"#, Reading::Malformed),
            (r#"{"usage":{"total_tokens":1e300}}"#, Reading::Malformed),
            (r#"{"usage":{"total_tokens":2.5}}"#, Reading::Malformed),
            (r#"{"usage":{"total_tokens":"17"}}"#, Reading::Malformed),
            (r#"{"usage":{"total_tokens":17.0}}"#, Reading::Found(17)),
            (r#"{"usage":{}}"#, Reading::Nothing),
            ("garbage", Reading::Nothing),
        ] {
            let mut s = Settlement::new(&specs, 1 << 20, 1 << 16);
            s.on_content_type(Some("application/json"));
            s.on_body(body.as_bytes(), true);
            assert_eq!(s.reading(&specs[0], &mut no_headers), want, "{body}");
        }
        assert_eq!(settled(Reading::Malformed, 100, Missing::Reservation), 100);
        assert_eq!(settled(Reading::Nothing, 100, Missing::Zero), 0);
        assert_eq!(settled(Reading::Found(3), 100, Missing::Zero), 3);
    }

    #[test]
    fn a_json_body_past_the_bound_is_not_read() {
        let specs = [spec("tokens", Settle::Json("/usage/total_tokens".into()))];
        let mut s = Settlement::new(&specs, 10, 1 << 16);
        s.on_content_type(Some("application/json"));
        s.on_body(br#"{"usage":{"total_tokens":40}}"#, true);
        assert_eq!(s.reading(&specs[0], &mut no_headers), Reading::Nothing);
    }

    #[test]
    fn headers_trailers_and_bytes_settle_too() {
        let header = spec("tokens", Settle::Header("x-usage-tokens".into()));
        let bytes = spec("bytes", Settle::ResponseBytes);
        let mut s = Settlement::new(&[header.clone(), bytes.clone()], 1 << 20, 1 << 16);
        s.on_content_type(Some("application/octet-stream"));
        assert!(!s.wants_body());
        s.on_body(&[0; 300], true);
        let mut lookup = |name: &str| (name == "x-usage-tokens").then(|| "55".to_owned());
        assert_eq!(s.reading(&header, &mut lookup), Reading::Found(55));
        assert_eq!(s.reading(&bytes, &mut lookup), Reading::Found(300));
        let mut bad = |_: &str| Some("-1".to_owned());
        assert_eq!(s.reading(&header, &mut bad), Reading::Malformed);
    }

    #[test]
    fn only_admitted_unrefunded_exchanges_settle() {
        assert!(settles(Decision::Allowed, false));
        assert!(!settles(Decision::Allowed, true));
        assert!(!settles(Decision::Denied, false));
        assert!(!settles(Decision::Unverified, false));
    }
}
