//! An LLM-shaped demo endpoint: `POST /v1/chat/completions` answers like OpenAI's Chat
//! Completions API, with a `usage` object whose token counts follow from the request
//! alone, so tests of token metering know the numbers in advance.
//!
//! - `prompt_tokens`: the whitespace-separated words of every message's `content` (a
//!   string, or a list of `{"type": "text", "text": ...}` parts).
//! - `completion_tokens`: the `x-demo-completion-tokens` header, else `max_tokens` (or
//!   `max_completion_tokens`), else [`DEFAULT_COMPLETION_TOKENS`]. The answer has
//!   exactly that many words, one word per token.
//! - `"stream": true`: a `text/event-stream` of `data: {chunk}` events, then one whose
//!   `choices` is empty and which carries `usage` (as OpenAI sends with
//!   `stream_options.include_usage`), then `data: [DONE]`. The usage event is sent
//!   unless the request says `"stream_options": {"include_usage": false}`.
//!
//! Test knobs, as request headers:
//!
//! | header | effect |
//! |---|---|
//! | `x-demo-completion-tokens: N` | completion tokens (0..=10,000,000: a very long stream) |
//! | `x-demo-chunk-tokens: N` | tokens per streamed chunk (default 1) |
//! | `x-demo-chunk-delay-ms: N` | pause before each streamed event (default 0, at most 10 s) |
//! | `x-demo-split-usage: N` | send the usage event in N body writes (2..=64), 5 ms apart |
//! | `x-demo-usage: nan\|negative\|huge\|missing` | malformed usage: counts as strings, negative, past u64, or no usage at all |
//! | `x-demo-status: N` | answer status N (400..=599) with an error body that still carries `usage` |
//! | `x-demo-usage-header: header\|trailer` | also report the total as `x-usage-tokens`, as a response header or a trailer (HTTP/1.1 trailers need the request's `TE: trailers`) |

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{json, Value};

/// Completion tokens when neither the header nor `max_tokens` says.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 16;
/// Longest answer the knobs may ask for.
pub const MAX_COMPLETION_TOKENS: u64 = 10_000_000;
const MAX_DELAY_MS: u64 = 10_000;
const SPLIT_PAUSE: Duration = Duration::from_millis(5);
const WORDS: [&str; 12] = [
    "metered", "tokens", "flow", "through", "the", "proxy", "and", "every", "one", "is", "counted",
    "once",
];

/// How the usage object is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStyle {
    Valid,
    /// Counts as strings.
    NotANumber,
    Negative,
    /// Counts past `u64::MAX`.
    Huge,
    /// No usage object at all.
    Missing,
}

/// Where `x-usage-tokens` goes, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsagePlacement {
    Header,
    Trailer,
}

/// The test knobs of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    pub completion_tokens: Option<u64>,
    pub chunk_tokens: u64,
    pub chunk_delay: Duration,
    pub split_usage: usize,
    pub usage: UsageStyle,
    pub status: Option<StatusCode>,
    pub usage_header: Option<UsagePlacement>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            completion_tokens: None,
            chunk_tokens: 1,
            chunk_delay: Duration::ZERO,
            split_usage: 1,
            usage: UsageStyle::Valid,
            status: None,
            usage_header: None,
        }
    }
}

/// A request the endpoint refuses, OpenAI-style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.0, "type": "invalid_request_error",
                                    "param": null, "code": null}});
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    }
}

fn header_u64(
    headers: &HeaderMap,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, BadRequest> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let n = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            BadRequest(format!(
                "{name}: expected a whole number in {}..={}",
                range.start(),
                range.end()
            ))
        })?;
    Ok(Some(n))
}

impl Knobs {
    /// The knobs in `headers`; a knob with a value it cannot take is a 400 naming it.
    pub fn from_headers(headers: &HeaderMap) -> Result<Knobs, BadRequest> {
        let text = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase())
        };
        let usage = match text("x-demo-usage").as_deref() {
            None | Some("valid") => UsageStyle::Valid,
            Some("nan") => UsageStyle::NotANumber,
            Some("negative") => UsageStyle::Negative,
            Some("huge") => UsageStyle::Huge,
            Some("missing") => UsageStyle::Missing,
            Some(other) => {
                return Err(BadRequest(format!(
                    "x-demo-usage: `{other}` is not one of valid, nan, negative, huge, missing"
                )))
            }
        };
        let usage_header = match text("x-demo-usage-header").as_deref() {
            None => None,
            Some("header") => Some(UsagePlacement::Header),
            Some("trailer") => Some(UsagePlacement::Trailer),
            Some(other) => {
                return Err(BadRequest(format!(
                    "x-demo-usage-header: `{other}` is not header or trailer"
                )))
            }
        };
        let status = header_u64(headers, "x-demo-status", 400..=599)?
            .map(|code| StatusCode::from_u16(code as u16).unwrap_or(StatusCode::BAD_GATEWAY));
        Ok(Knobs {
            completion_tokens: header_u64(
                headers,
                "x-demo-completion-tokens",
                0..=MAX_COMPLETION_TOKENS,
            )?,
            chunk_tokens: header_u64(headers, "x-demo-chunk-tokens", 1..=100_000)?.unwrap_or(1),
            chunk_delay: Duration::from_millis(
                header_u64(headers, "x-demo-chunk-delay-ms", 0..=MAX_DELAY_MS)?.unwrap_or(0),
            ),
            split_usage: header_u64(headers, "x-demo-split-usage", 2..=64)?.unwrap_or(1) as usize,
            usage,
            status,
            usage_header,
        })
    }
}

/// What one request is answered with, decided before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: &'static str,
    pub stream: bool,
    pub include_usage: bool,
}

impl Completion {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Words in a message's `content`: a string, or a list of text parts.
fn content_words(content: &Value) -> u64 {
    let words = |s: &str| s.split_whitespace().count() as u64;
    match content {
        Value::String(s) => words(s),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(words)
            .sum(),
        _ => 0,
    }
}

/// FNV-1a: a stable id for the same request body.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Decide the answer for a request body and its knobs.
pub fn plan(body: &[u8], knobs: &Knobs, now_unix: u64) -> Result<Completion, BadRequest> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the request body is not JSON: {e}")))?;
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| BadRequest("`messages` (a list) is required".into()))?;
    let prompt_tokens = messages
        .iter()
        .map(|m| m.get("content").map_or(0, content_words))
        .sum();
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k))
        .map(|v| {
            v.as_u64()
                .filter(|n| *n <= MAX_COMPLETION_TOKENS)
                .ok_or_else(|| {
                    BadRequest(format!(
                        "max_tokens: expected a whole number up to {MAX_COMPLETION_TOKENS}"
                    ))
                })
        })
        .transpose()?;
    let (completion_tokens, finish_reason) = match (knobs.completion_tokens, max_tokens) {
        (Some(n), _) => (n, "stop"),
        (None, Some(n)) => (n, "length"),
        (None, None) => (DEFAULT_COMPLETION_TOKENS, "stop"),
    };
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        != Some(false);
    Ok(Completion {
        id: format!("chatcmpl-{:016x}", fnv1a(body)),
        model: request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("turnpike-demo")
            .to_owned(),
        created: now_unix,
        prompt_tokens,
        completion_tokens,
        finish_reason,
        stream,
        include_usage,
    })
}

/// The usage object as JSON text (numbers past u64 cannot be a `serde_json::Value`),
/// or `None` for [`UsageStyle::Missing`].
pub fn usage_json(c: &Completion, style: UsageStyle) -> Option<String> {
    let (p, n, t) = (c.prompt_tokens, c.completion_tokens, c.total_tokens());
    Some(match style {
        UsageStyle::Valid => {
            format!(r#"{{"prompt_tokens":{p},"completion_tokens":{n},"total_tokens":{t}}}"#)
        }
        UsageStyle::NotANumber => {
            format!(r#"{{"prompt_tokens":"{p}","completion_tokens":"{n}","total_tokens":"{t}"}}"#)
        }
        UsageStyle::Negative => {
            format!(r#"{{"prompt_tokens":-{p},"completion_tokens":-{n},"total_tokens":-{t}}}"#)
        }
        UsageStyle::Huge => format!(
            r#"{{"prompt_tokens":{p},"completion_tokens":184467440737095516160000,"total_tokens":184467440737095516160000}}"#
        ),
        UsageStyle::Missing => return None,
    })
}

/// Word `i` of every answer (with its leading space after the first).
fn word(i: u64) -> String {
    let w = WORDS[(i % WORDS.len() as u64) as usize];
    if i == 0 {
        w.to_owned()
    } else {
        format!(" {w}")
    }
}

/// The words `from..to` of the answer.
pub fn words(from: u64, to: u64) -> String {
    (from..to).map(word).collect()
}

/// Put a raw JSON `usage` text into an object serialised without it.
fn with_usage(object: &Value, usage: Option<&str>) -> String {
    let text = object.to_string();
    match usage {
        Some(usage) => format!("{},\"usage\":{usage}}}", &text[..text.len() - 1]),
        None => text,
    }
}

/// The non-streamed answer body.
pub fn completion_body(c: &Completion, knobs: &Knobs) -> String {
    let object = json!({
        "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
        "choices": [{"index": 0, "message": {"role": "assistant",
                      "content": words(0, c.completion_tokens)},
                     "finish_reason": c.finish_reason}],
    });
    with_usage(&object, usage_json(c, knobs.usage).as_deref())
}

/// The error body of `x-demo-status`, with the usage the failed call still consumed.
pub fn error_body(c: &Completion, knobs: &Knobs, status: StatusCode) -> String {
    let object = json!({
        "id": c.id,
        "error": {"message": format!("demo upstream answered {status} as asked (x-demo-status)"),
                  "type": "server_error", "param": null, "code": null},
    });
    with_usage(&object, usage_json(c, knobs.usage).as_deref())
}

fn chunk(c: &Completion, delta: Value, finish: Option<&str>) -> String {
    let mut object = json!({
        "id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    if c.include_usage {
        object["usage"] = Value::Null;
    }
    format!("data: {object}\n\n")
}

/// One streamed event: the text, and whether it is the usage event (sent split).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub text: String,
    pub usage: bool,
}

/// Event `i` of the stream, `None` past the end: the role, the content chunks, the
/// finish, the usage (unless left out), `[DONE]`.
pub fn stream_event(c: &Completion, knobs: &Knobs, i: u64) -> Option<Event> {
    let content_chunks = c.completion_tokens.div_ceil(knobs.chunk_tokens);
    let plain = |text| Some(Event { text, usage: false });
    if i == 0 {
        return plain(chunk(c, json!({"role": "assistant", "content": ""}), None));
    }
    let k = i - 1;
    if k < content_chunks {
        let from = k * knobs.chunk_tokens;
        let to = (from + knobs.chunk_tokens).min(c.completion_tokens);
        return plain(chunk(c, json!({"content": words(from, to)}), None));
    }
    let mut k = k - content_chunks;
    if k == 0 {
        return plain(chunk(c, json!({}), Some(c.finish_reason)));
    }
    k -= 1;
    let usage = if c.include_usage {
        usage_json(c, knobs.usage)
    } else {
        None
    };
    if let Some(usage) = usage {
        if k == 0 {
            let object = json!({"id": c.id, "object": "chat.completion.chunk",
                                "created": c.created, "model": c.model, "choices": []});
            let text = format!("data: {}\n\n", with_usage(&object, Some(&usage)));
            return Some(Event { text, usage: true });
        }
        k -= 1;
    }
    (k == 0).then(|| Event {
        text: "data: [DONE]\n\n".to_owned(),
        usage: false,
    })
}

/// `text` in `n` nearly equal pieces (on char boundaries).
pub fn split(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    let size = chars.len().div_ceil(n);
    chars
        .chunks(size.max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

fn usage_header_value(c: &Completion) -> HeaderValue {
    HeaderValue::from(c.total_tokens())
}

const USAGE_HEADER: HeaderName = HeaderName::from_static("x-usage-tokens");

/// `POST /v1/chat/completions`.
pub async fn chat_completions(headers: HeaderMap, body: Bytes) -> Response {
    match answer(&headers, &body) {
        Ok(response) => response,
        Err(bad) => bad.into_response(),
    }
}

fn answer(headers: &HeaderMap, body: &[u8]) -> Result<Response, BadRequest> {
    let knobs = Knobs::from_headers(headers)?;
    let completion = plan(body, &knobs, crate::token::now_unix())?;
    if let Some(status) = knobs.status {
        let mut response = (
            status,
            [("content-type", "application/json")],
            error_body(&completion, &knobs, status),
        )
            .into_response();
        if knobs.usage_header == Some(UsagePlacement::Header) {
            response
                .headers_mut()
                .insert(USAGE_HEADER, usage_header_value(&completion));
        }
        return Ok(response);
    }
    if !completion.stream && knobs.usage_header != Some(UsagePlacement::Trailer) {
        let mut response = (
            [("content-type", "application/json")],
            completion_body(&completion, &knobs),
        )
            .into_response();
        if knobs.usage_header == Some(UsagePlacement::Header) {
            response
                .headers_mut()
                .insert(USAGE_HEADER, usage_header_value(&completion));
        }
        return Ok(response);
    }
    let trailer = (knobs.usage_header == Some(UsagePlacement::Trailer)).then(|| {
        let mut trailers = HeaderMap::new();
        trailers.insert(USAGE_HEADER, usage_header_value(&completion));
        trailers
    });
    let content_type = if completion.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut response = Response::new(Body::new(StreamBody::new(frames(
        completion.clone(),
        knobs.clone(),
        trailer,
    ))));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    if completion.stream {
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    }
    match knobs.usage_header {
        Some(UsagePlacement::Header) => {
            headers.insert(USAGE_HEADER, usage_header_value(&completion));
        }
        // Announced, as HTTP/1.1 wants (and hyper insists on) for a trailer field.
        Some(UsagePlacement::Trailer) => {
            headers.insert("trailer", HeaderValue::from_static("x-usage-tokens"));
        }
        None => {}
    }
    Ok(response)
}

/// The body as frames, produced lazily (a ten-million-token stream is never held in
/// memory): the events (or the one JSON body), then the trailers, if any.
fn frames(
    completion: Completion,
    knobs: Knobs,
    trailer: Option<HeaderMap>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    struct State {
        completion: Completion,
        knobs: Knobs,
        next: u64,
        pending: std::collections::VecDeque<String>,
        trailer: Option<HeaderMap>,
        done: bool,
    }
    let state = State {
        completion,
        knobs,
        next: 0,
        pending: Default::default(),
        trailer,
        done: false,
    };
    stream::unfold(state, |mut s| async move {
        if let Some(piece) = s.pending.pop_front() {
            tokio::time::sleep(SPLIT_PAUSE).await;
            return Some((Ok(Frame::data(Bytes::from(piece))), s));
        }
        if s.done {
            return None;
        }
        if !s.completion.stream {
            s.done = true;
            let body = completion_body(&s.completion, &s.knobs);
            return Some((Ok(Frame::data(Bytes::from(body))), s));
        }
        match stream_event(&s.completion, &s.knobs, s.next) {
            Some(event) => {
                s.next += 1;
                if !s.knobs.chunk_delay.is_zero() {
                    tokio::time::sleep(s.knobs.chunk_delay).await;
                }
                let mut pieces = if event.usage {
                    split(&event.text, s.knobs.split_usage)
                } else {
                    vec![event.text]
                };
                let first = pieces.remove(0);
                s.pending.extend(pieces);
                Some((Ok(Frame::data(Bytes::from(first))), s))
            }
            None => {
                s.done = true;
                s.trailer
                    .take()
                    .map(|trailers| (Ok(Frame::trailers(trailers)), s))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stream: bool) -> Vec<u8> {
        json!({"model": "demo", "stream": stream, "max_tokens": 5,
               "messages": [{"role": "system", "content": "You count words."},
                            {"role": "user", "content": [{"type": "text", "text": "one two three"}]}]})
        .to_string()
        .into_bytes()
    }

    fn knobs(pairs: &[(&'static str, &str)]) -> Result<Knobs, BadRequest> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        Knobs::from_headers(&headers)
    }

    #[test]
    fn tokens_follow_from_the_request() {
        let c = plan(&request(false), &Knobs::default(), 7).unwrap();
        assert_eq!(
            c.prompt_tokens, 6,
            "3 words of system text + 3 of user text"
        );
        assert_eq!(c.completion_tokens, 5, "max_tokens");
        assert_eq!(c.finish_reason, "length");
        // The same request, the same id; the header knob wins over max_tokens.
        let again = plan(
            &request(false),
            &knobs(&[("x-demo-completion-tokens", "9")]).unwrap(),
            8,
        )
        .unwrap();
        assert_eq!(again.id, c.id);
        assert_eq!(again.completion_tokens, 9);
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(
            plan(body, &Knobs::default(), 0).unwrap().completion_tokens,
            DEFAULT_COMPLETION_TOKENS
        );
    }

    #[test]
    fn the_answer_has_openai_shape_and_as_many_words_as_completion_tokens() {
        let c = plan(&request(false), &Knobs::default(), 7).unwrap();
        let body: Value = serde_json::from_str(&completion_body(&c, &Knobs::default())).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content.split_whitespace().count(), 5);
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11})
        );
    }

    #[test]
    fn the_stream_ends_with_usage_then_done() {
        let k = knobs(&[("x-demo-chunk-tokens", "2")]).unwrap();
        let c = plan(&request(true), &k, 7).unwrap();
        let events: Vec<Event> = (0..).map_while(|i| stream_event(&c, &k, i)).collect();
        // role, ceil(5/2) = 3 content chunks, finish, usage, [DONE]
        assert_eq!(events.len(), 7);
        assert!(events
            .iter()
            .all(|e| e.text.starts_with("data: ") && e.text.ends_with("\n\n")));
        assert_eq!(events.last().unwrap().text, "data: [DONE]\n\n");
        let usage: Value =
            serde_json::from_str(events[5].text.trim_start_matches("data: ").trim()).unwrap();
        assert!(events[5].usage);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 11);
        let text: String = events[1..4]
            .iter()
            .map(|e| {
                let v: Value =
                    serde_json::from_str(e.text.trim_start_matches("data: ").trim()).unwrap();
                assert_eq!(v["usage"], Value::Null);
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(text, words(0, 5));
        let finish: Value =
            serde_json::from_str(events[4].text.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn include_usage_false_leaves_the_usage_event_out() {
        let body = br#"{"stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"a b"}],"max_tokens":1}"#;
        let c = plan(body, &Knobs::default(), 0).unwrap();
        let events: Vec<Event> = (0..)
            .map_while(|i| stream_event(&c, &Knobs::default(), i))
            .collect();
        assert_eq!(events.len(), 4, "role, one chunk, finish, [DONE]");
        assert!(events.iter().all(|e| !e.text.contains("\"usage\"")));
    }

    #[test]
    fn malformed_usage_styles() {
        let c = plan(&request(false), &Knobs::default(), 0).unwrap();
        let nan: Value =
            serde_json::from_str(&usage_json(&c, UsageStyle::NotANumber).unwrap()).unwrap();
        assert_eq!(nan["completion_tokens"], "5");
        let negative: Value =
            serde_json::from_str(&usage_json(&c, UsageStyle::Negative).unwrap()).unwrap();
        assert_eq!(negative["total_tokens"], -11);
        let huge = usage_json(&c, UsageStyle::Huge).unwrap();
        let parsed: Value = serde_json::from_str(&huge).unwrap();
        assert!(
            parsed["completion_tokens"].as_u64().is_none(),
            "past u64: {huge}"
        );
        assert!(usage_json(&c, UsageStyle::Missing).is_none());
        let k = knobs(&[("x-demo-usage", "missing")]).unwrap();
        let body: Value = serde_json::from_str(&completion_body(&c, &k)).unwrap();
        assert!(body.get("usage").is_none());
    }

    #[test]
    fn knobs_out_of_range_are_refused_by_name() {
        for (name, value) in [
            ("x-demo-chunk-tokens", "0"),
            ("x-demo-split-usage", "1"),
            ("x-demo-status", "200"),
            ("x-demo-completion-tokens", "10000001"),
            ("x-demo-usage", "weird"),
            ("x-demo-usage-header", "body"),
        ] {
            let err = knobs(&[(name, value)]).unwrap_err();
            assert!(err.0.starts_with(name), "{name}: {}", err.0);
        }
        assert!(plan(b"not json", &Knobs::default(), 0).is_err());
        assert!(plan(b"{}", &Knobs::default(), 0)
            .unwrap_err()
            .0
            .contains("messages"));
    }

    #[test]
    fn split_keeps_every_byte_in_order() {
        let text = "data: {\"usage\":{\"total_tokens\":11}}\n\n";
        let pieces = split(text, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), text);
        assert_eq!(split("ab", 5).len(), 2);
    }
}
