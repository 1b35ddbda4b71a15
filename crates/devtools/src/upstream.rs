//! The demo/test API behind Envoy. It echoes what it received so tests can see the
//! headers the filter set (`turnpike-tenant`, `turnpike-consume-id`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
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

async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> Json<Echo> {
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
    })
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
}
