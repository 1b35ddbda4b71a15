//! RFC 9457 problem responses (`application/problem+json`) for every error answer.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use turnpike_wire::Problem;

use crate::metrics::RejectReason;

const PROBLEM_BASE: &str = "https://turnpike.dev/problems/";

/// An error answer: status, problem type slug, title and a detail naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            slug,
            title,
            detail: detail.into(),
        }
    }

    /// The problem for a refused ingest request.
    pub fn rejected(reason: RejectReason, detail: impl Into<String>) -> Self {
        let (status, title) = match reason {
            RejectReason::Unauthorized => {
                (StatusCode::UNAUTHORIZED, "Missing or wrong ingest secret")
            }
            RejectReason::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported content type",
            ),
            RejectReason::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
            RejectReason::BatchTooLong => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too many events in one batch",
            ),
            RejectReason::MalformedJson => (StatusCode::BAD_REQUEST, "Malformed JSON"),
            RejectReason::InvalidEvent => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid usage event"),
            RejectReason::StorageUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "Ledger unavailable")
            }
        };
        let slug = match reason {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::UnsupportedMediaType => "unsupported-media-type",
            RejectReason::BodyTooLarge => "body-too-large",
            RejectReason::BatchTooLong => "batch-too-long",
            RejectReason::MalformedJson => "malformed-json",
            RejectReason::InvalidEvent => "invalid-event",
            RejectReason::StorageUnavailable => "ledger-unavailable",
        };
        ApiError::new(status, slug, title, detail)
    }

    pub fn bad_query(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query parameter",
            detail,
        )
    }

    pub fn ledger_unavailable(detail: impl Into<String>) -> Self {
        ApiError::rejected(RejectReason::StorageUnavailable, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("{PROBLEM_BASE}{}", self.slug),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: Some(self.detail),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
