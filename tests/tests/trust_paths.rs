//! Trust boundaries at the path and the headers: every spelling of a priced path costs
//! its price, with Envoy's path normalisation (the shipped template) and without it
//! (the filter alone), and no client-sent `turnpike-*` header reaches the upstream.
//!
//! Requests go over a raw socket: an HTTP client library would resolve `.` and `..`
//! and tidy the path before sending it, which is exactly what a client that dodges
//! prices does not do.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use turnpike_devtools::upstream::Echo;
use turnpike_tests::{avoid_window_end, Stack};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [
  { name = "requests-daily", meter = "requests", window = "day", max = 1000 },
  { name = "search-daily", meter = "search_units", window = "day", max = 1000 },
]
"#;

/// Spellings of `GET /v1/search?q=a` (route `search`: 1 `requests` + 5 `search_units`)
/// that an upstream may route to its search handler. Before normalisation, all but
/// `/v1/search/.` fell to the default route (1 `requests`).
const SPELLINGS: &[&[u8]] = &[
    b"//v1/search?q=a",
    b"/v1//search?q=a",
    b"/v1/./search?q=a",
    b"/x/../v1/search?q=a",
    b"/v1/%73earch?q=a",
    b"/v1/%2e/search?q=a",
    b"/x/%2E%2e/v1/search?q=a",
    b"/v1/search/.?q=a",
    b"/v1\\search?q=a",
    b"/v1;jsessionid=1/search?q=a",
    b"/x/..;/v1/search?q=a",
];

/// Template values that turn Envoy's path normalisation off.
fn without_envoy_normalisation(
    builder: turnpike_tests::stack::StackBuilder,
) -> turnpike_tests::stack::StackBuilder {
    builder
        .template_value("NORMALIZE_PATH", "false")
        .template_value("MERGE_SLASHES", "false")
        .template_value("PATH_WITH_ESCAPED_SLASHES_ACTION", "KEEP_UNCHANGED")
}

/// An answer read off a raw socket.
#[derive(Debug)]
struct RawReply {
    status: u16,
    body: String,
}

impl RawReply {
    fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "expected the upstream's echo: {self:?}");
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an upstream echo ({e}): {}", self.body))
    }
}

/// Sends `method target` over HTTP/1.1 exactly as given, with `headers` (raw lines,
/// `name: value`), and reads the whole answer.
async fn raw_request(
    stack: &Stack,
    method: &str,
    target: &[u8],
    token: &str,
    headers: &[&str],
) -> RawReply {
    let mut request = Vec::new();
    request.extend_from_slice(method.as_bytes());
    request.push(b' ');
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nhost: api.test\r\n");
    request.extend_from_slice(format!("authorization: Bearer {token}\r\n").as_bytes());
    for line in headers {
        request.extend_from_slice(line.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"connection: close\r\n\r\n");
    let port = stack.envoy.port;
    tokio::task::spawn_blocking(move || send_raw(port, &request))
        .await
        .unwrap_or_else(|e| panic!("raw request task: {e}"))
}

fn send_raw(port: u16, request: &[u8]) -> RawReply {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to Envoy: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
    stream
        .write_all(request)
        .unwrap_or_else(|e| panic!("write request: {e}"));
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("read answer: {e}"));
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    RawReply { status, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16)
            .unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// Each spelling, for its own tenant, must cost what `GET /v1/search` costs.
async fn assert_every_spelling_priced_as_search(stack: &Stack) -> Vec<String> {
    let mut seen = Vec::new();
    for (i, spelling) in SPELLINGS.iter().enumerate() {
        let shown = String::from_utf8_lossy(spelling).into_owned();
        let tenant = format!("spelling-{i}");
        let reply = raw_request(stack, "GET", spelling, &stack.token(&tenant), &[]).await;
        let echo = reply.echo();
        let search = stack.counter.used(&tenant, "search-daily").await;
        let requests = stack.counter.used(&tenant, "requests-daily").await;
        assert_eq!(
            (requests, search),
            (1, 5),
            "GET {shown} (upstream saw {}) must cost 1 request + 5 search_units",
            echo.path
        );
        seen.push(echo.path);
    }
    for method in ["GET", "HEAD"] {
        let tenant = format!("plain-{}", method.to_ascii_lowercase());
        let reply = raw_request(stack, method, b"/v1/search?q=a", &stack.token(&tenant), &[]).await;
        assert_eq!(reply.status, 200, "{method} /v1/search: {reply:?}");
        assert_eq!(
            stack.counter.used(&tenant, "search-daily").await,
            5,
            "{method} /v1/search is priced as search"
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_priced_path_costs_its_price_behind_envoy_normalisation() {
    avoid_window_end(86_400, 60).await;
    let stack = Stack::builder(PLANS).start().await;
    let seen = assert_every_spelling_priced_as_search(&stack).await;
    // Envoy's normalisation hands the upstream the very path the filter priced
    // (path parameters aside: Envoy leaves `;` alone, the filter prices as a servlet
    // container routes).
    for (spelling, path) in SPELLINGS.iter().zip(&seen) {
        if !spelling.contains(&b';') {
            assert!(
                path == "/v1/search" || path == "/v1/search/",
                "{} reached the upstream as {path}",
                String::from_utf8_lossy(spelling)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_priced_path_costs_its_price_with_the_filter_alone() {
    avoid_window_end(86_400, 60).await;
    let stack = without_envoy_normalisation(Stack::builder(PLANS))
        .start()
        .await;
    let seen = assert_every_spelling_priced_as_search(&stack).await;
    // Proof that Envoy really was out of the way: the upstream got the raw spellings.
    assert_eq!(seen.first().map(String::as_str), Some("//v1/search"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_refused_by_envoy_and_priced_as_slashes_by_the_filter() {
    avoid_window_end(86_400, 60).await;
    let target: &[u8] = b"/v1%2Fsearch?q=a";

    let stack = Stack::builder(PLANS).start().await;
    let reply = raw_request(&stack, "GET", target, &stack.token("slash-on"), &[]).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(
        stack.counter.consumes_total().await,
        0,
        "a refused request costs nothing"
    );
    drop(stack);

    let stack = without_envoy_normalisation(Stack::builder(PLANS))
        .start()
        .await;
    let reply = raw_request(&stack, "GET", target, &stack.token("slash-off"), &[]).await;
    assert_eq!(reply.echo().path, "/v1%2Fsearch");
    assert_eq!(stack.counter.used("slash-off", "search-daily").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_path_over_http2_is_priced_without_trapping_the_filter() {
    avoid_window_end(86_400, 60).await;
    // Without Envoy's normalisation the octets reach the filter as sent.
    let stack = without_envoy_normalisation(Stack::builder(PLANS))
        .start()
        .await;
    let (port, token) = (stack.envoy.port, stack.token("octets"));
    let status = tokio::task::spawn_blocking(move || {
        h2_get_status(port, b"/v1/search/\xff\xfe?q=a", &token)
    })
    .await
    .unwrap_or_else(|e| panic!("HTTP/2 request task: {e}"));
    // The upstream may refuse the path; the filter must have priced it first...
    assert_eq!(
        stack.counter.used("octets", "search-daily").await,
        5,
        "answer {status}"
    );
    // ...and its VM (one Envoy worker) must go on metering.
    let reply = raw_request(&stack, "GET", b"/v1/search?q=a", &stack.token("after"), &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(stack.counter.used("after", "search-daily").await, 5);
}

/// `GET path` over cleartext HTTP/2 with prior knowledge; the answer's `:status`.
/// HTTP/2 carries any octet in `:path`, where Envoy's HTTP/1 parser refuses them.
fn h2_get_status(port: u16, path: &[u8], token: &str) -> u16 {
    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8], out: &mut Vec<u8>) {
        let len = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.extend_from_slice(&[kind, flags, 0, 0, 0, stream]);
        out.extend_from_slice(payload);
    }
    // HPACK (RFC 7541): a string length as a 7-bit-prefix integer, no Huffman.
    fn length(mut n: usize, out: &mut Vec<u8>) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    // A literal header field without indexing, with a new name.
    fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        out.push(0);
        length(name.len(), out);
        out.extend_from_slice(name);
        length(value.len(), out);
        out.extend_from_slice(value);
    }
    // `:method: GET` and `:scheme: http` from the static table.
    let mut block = vec![0x82, 0x86];
    literal(b":path", path, &mut block);
    literal(b":authority", b"api.test", &mut block);
    literal(
        b"authorization",
        format!("Bearer {token}").as_bytes(),
        &mut block,
    );
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(4, 0, 0, &[], &mut request); // SETTINGS
    frame(1, 0x5, 1, &block, &mut request); // HEADERS, END_STREAM | END_HEADERS

    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to Envoy: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
    stream
        .write_all(&request)
        .unwrap_or_else(|e| panic!("write HTTP/2 request: {e}"));
    loop {
        let mut head = [0u8; 9];
        stream
            .read_exact(&mut head)
            .unwrap_or_else(|e| panic!("read HTTP/2 frame: {e}"));
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        stream
            .read_exact(&mut payload)
            .unwrap_or_else(|e| panic!("read HTTP/2 payload: {e}"));
        let (kind, on_stream_1) = (head[3], head[8] == 1);
        match kind {
            1 if on_stream_1 => return h2_status(&payload),
            3 | 7 => panic!("stream reset or connection closed: {}", hex(&payload)),
            _ => {}
        }
    }
}

/// `:status` from the first field of a response header block: Envoy sends it from the
/// static table, or as a literal with the static name.
fn h2_status(block: &[u8]) -> u16 {
    let indexed = [
        (0x88, 200),
        (0x89, 204),
        (0x8a, 206),
        (0x8b, 304),
        (0x8c, 400),
        (0x8d, 404),
        (0x8e, 500),
    ];
    if let Some((_, status)) = indexed.iter().find(|(b, _)| Some(b) == block.first()) {
        return *status;
    }
    match block {
        [0x48 | 0x08, 3, digits @ ..] if digits.len() >= 3 => std::str::from_utf8(&digits[..3])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("status in {}", hex(block))),
        _ => panic!("cannot read :status from {}", hex(block)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Client-sent headers in the filter's namespace: mixed case, repeated, unknown names.
const FORGED: &[&str] = &[
    "Turnpike-Tenant: forged-tenant",
    "turnpike-tenant: forged-tenant-2",
    "TURNPIKE-CONSUME-ID: forged-id",
    "turnpike-plan: enterprise",
    "Turnpike-Anything: x",
];

fn turnpike_headers(echo: &Echo) -> Vec<(&String, &Vec<String>)> {
    echo.headers
        .iter()
        .filter(|(name, _)| name.starts_with("turnpike-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_and_unmatched_requests_reach_the_upstream_without_client_turnpike_headers() {
    let stack = Stack::builder(PLANS)
        .filter_patch(json!({
            "default_route": null,
            "exempt": [ { "path_exact": "/healthz" }, { "path_prefix": "/public/" } ],
        }))
        .start()
        .await;
    let token = stack.token("acme");
    for (what, target) in [
        ("exempt", b"/public/info".as_slice()),
        ("exempt (spelled otherwise)", b"/x/..//public/info"),
        ("unmatched", b"/v1/things"),
    ] {
        let echo = raw_request(&stack, "GET", target, &token, FORGED)
            .await
            .echo();
        let seen = turnpike_headers(&echo);
        assert!(
            seen.is_empty(),
            "{what} {}: the upstream saw client-sent turnpike headers {seen:?}",
            echo.path
        );
    }
    assert_eq!(
        stack.counter.consumes_total().await,
        0,
        "nothing was metered"
    );
    assert_eq!(stack.envoy.filter_stat("exempt").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_requests_reach_the_upstream_with_only_the_filters_turnpike_headers() {
    let stack = Stack::builder(PLANS).start().await;
    let echo = raw_request(&stack, "GET", b"/v1/things", &stack.token("acme"), FORGED)
        .await
        .echo();
    let ours = turnpike_headers(&echo);
    let names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["turnpike-consume-id", "turnpike-tenant"],
        "{ours:?}"
    );
    assert_eq!(echo.headers["turnpike-tenant"], ["acme"]);
    let id = &echo.headers["turnpike-consume-id"];
    assert_eq!(id.len(), 1, "{id:?}");
    assert_ne!(id[0], "forged-id");
}
