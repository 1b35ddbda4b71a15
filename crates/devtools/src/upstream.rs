//! The demo/test API behind Envoy. It echoes what it received so tests can see the
//! headers the filter set (`turnpike-tenant`, `turnpike-consume-id`), answers a chosen
//! status on `/status/{code}`, and plays an LLM API on `POST /v1/chat/completions`
//! ([`crate::llm`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The body of every echoed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Header name (lower case) → values in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// How many body bytes arrived.
    #[serde(default)]
    pub body_bytes: u64,
}

impl Echo {
    /// The first value of a header, if the upstream received it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

pub fn router() -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/status/{code}", axum::routing::any(status))
        .route(
            "/v1/chat/completions",
            axum::routing::post(crate::llm::chat_completions),
        )
        .fallback(echo)
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    /// Answer only after this many milliseconds (a slow upstream, for tests).
    delay_ms: Option<u64>,
}

async fn status(Path(code): Path<u16>, Query(query): Query<StatusQuery>) -> Response {
    if let Some(ms) = query.delay_ms {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    match StatusCode::from_u16(code) {
        Ok(status) => (status, Json(serde_json::json!({"status": code}))).into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            format!("`{code}` is not an HTTP status"),
        )
            .into_response(),
    }
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    // Read the whole body before answering. A server that answers early and closes a
    // connection with unread bytes in it makes the kernel send RST, which can destroy
    // the answer before the proxy reads it: under load that turned uploads into 503s.
    let mut body = body.into_data_stream();
    let mut body_bytes = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => body_bytes += chunk.len() as u64,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("request body: {e}")).into_response()
            }
        }
    }
    let mut echoed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        echoed
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Json(Echo {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: echoed,
        body_bytes,
    })
    .into_response()
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (port 0 for any free port) and returns the listener and its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn raw_get(addr: SocketAddr, path: &str, extra: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn echoes_method_path_and_headers_and_answers_chosen_status() {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = rx.await;
        }));

        let resp = raw_get(addr, "/v1/things?x=1", "turnpike-tenant: acme\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let echo: Echo = serde_json::from_str(body).unwrap();
        assert_eq!(echo.method, "GET");
        assert_eq!(echo.path, "/v1/things");
        assert_eq!(echo.query.as_deref(), Some("x=1"));
        assert_eq!(echo.header("Turnpike-Tenant"), Some("acme"));

        assert!(raw_get(addr, "/status/503", "")
            .await
            .starts_with("HTTP/1.1 503"));
        assert!(raw_get(addr, "/healthz", "")
            .await
            .starts_with("HTTP/1.1 200"));

        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    async fn raw_post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    /// A chunked HTTP/1.1 response: its head, its chunks as sent, its trailer lines.
    fn dechunk(resp: &str) -> (String, Vec<String>, Vec<String>) {
        let (head, mut rest) = resp.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        let mut chunks = Vec::new();
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                let trailers = after
                    .split("\r\n")
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                return (head.to_owned(), chunks, trailers);
            }
            chunks.push(after[..size].to_owned());
            rest = &after[size + 2..];
        }
    }

    async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"count these four words"}],"max_tokens":3}"#;

    #[tokio::test]
    async fn chat_completion_answers_with_usage_and_the_usage_header() {
        let (addr, _stop) = start().await;
        let resp = raw_post(
            addr,
            "/v1/chat/completions",
            "x-demo-usage-header: header\r\n",
            CHAT,
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("x-usage-tokens: 7\r\n"), "{resp}");
        let body: serde_json::Value =
            serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(
            body["usage"],
            serde_json::json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
        );

        let resp = raw_post(addr, "/v1/chat/completions", "x-demo-status: 503\r\n", CHAT).await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(
            resp.contains(r#""usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}"#),
            "{resp}"
        );

        let resp = raw_post(addr, "/v1/chat/completions", "", "{").await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert!(resp.contains("invalid_request_error"), "{resp}");
    }

    #[tokio::test]
    async fn streamed_usage_can_arrive_split_and_the_total_as_a_trailer() {
        let (addr, _stop) = start().await;
        let stream_chat = CHAT.replace("\"max_tokens\":3", "\"max_tokens\":3,\"stream\":true");
        let resp = raw_post(
            addr,
            "/v1/chat/completions",
            "x-demo-split-usage: 3\r\nx-demo-usage-header: trailer\r\nte: trailers\r\n",
            &stream_chat,
        )
        .await;
        let (head, chunks, trailers) = dechunk(&resp);
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        // role, 3 one-token chunks, finish, the usage event in 3 writes, [DONE]
        assert_eq!(chunks.len(), 9, "{chunks:#?}");
        let usage_event = chunks[5..8].concat();
        assert!(
            !chunks[5].ends_with("\n\n") && !chunks[6].ends_with("\n\n"),
            "the usage event was not split: {chunks:#?}"
        );
        assert!(usage_event.starts_with("data: {") && usage_event.ends_with("}\n\n"));
        assert!(usage_event
            .contains(r#""usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}"#));
        assert_eq!(chunks[8], "data: [DONE]\n\n");
        assert_eq!(trailers, ["x-usage-tokens: 7"]);
    }

    #[tokio::test]
    async fn a_long_stream_is_produced_lazily_in_chunks_of_the_asked_size() {
        let (addr, _stop) = start().await;
        let stream_chat = CHAT.replace("\"max_tokens\":3", "\"stream\":true");
        let resp = raw_post(
            addr,
            "/v1/chat/completions",
            "x-demo-completion-tokens: 200000\r\nx-demo-chunk-tokens: 1000\r\n",
            &stream_chat,
        )
        .await;
        let (_, chunks, _) = dechunk(&resp);
        // role, 200 content chunks, finish, usage, [DONE]
        assert_eq!(chunks.len(), 204);
        assert!(
            chunks[202].contains(r#""completion_tokens":200000"#),
            "{}",
            chunks[202]
        );
        let words: usize = chunks[1..201]
            .iter()
            .map(|c| {
                let v: serde_json::Value =
                    serde_json::from_str(c.trim_start_matches("data: ").trim()).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .split_whitespace()
                    .count()
            })
            .sum();
        assert_eq!(words, 200_000);
    }
}
