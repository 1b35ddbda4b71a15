//! Sending requests and looking at answers.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;
use turnpike_devtools::upstream::Echo;

/// A plain HTTP/1.1 client for 127.0.0.1 (no proxy from the environment).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(128)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the HTTP client: {e}"))
}

/// A received answer, read completely.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// From sending the request to having the whole body.
    pub elapsed: Duration,
}

impl Reply {
    pub async fn from_request(request: reqwest::RequestBuilder) -> Reply {
        let started = Instant::now();
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading the body failed: {e}"));
        Reply {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header that must be there.
    pub fn required_header(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "no `{name}` header in {} answer: {:?}\n{}",
                self.status, self.headers, self.body
            )
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {} answer is not JSON ({e}): {}",
                self.status, self.body
            )
        })
    }

    /// The upstream's echo of the request it received.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status, 200,
            "expected the upstream's echo, got: {self:?}"
        );
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an upstream echo ({e}): {}", self.body))
    }

    /// Asserts an RFC 9457 problem answer of `status` and `problem_type`; returns the body.
    pub fn assert_problem(&self, status: u16, problem_type: &str) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {self:?}");
        let content_type = self.required_header("content-type");
        assert!(
            content_type.starts_with("application/problem+json"),
            "content-type {content_type:?} is not problem+json: {self:?}"
        );
        let body = self.json();
        assert_eq!(body["type"], problem_type, "problem type: {body}");
        assert_eq!(body["status"], status, "problem status: {body}");
        body
    }
}
