//! The operator console at `/console`: server-rendered pages over the same query
//! functions as the JSON API ([`data`]), behind the read token.
//!
//! Browsers cannot add a bearer header to a page load, so the console also accepts
//! HTTP Basic authentication (realm "turnpike") with any user name and a read token
//! as the password; `Authorization: Bearer` works as everywhere else.

pub mod assets;
pub mod data;
pub mod pages;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::anomalies::http::ListParams;
use crate::api::{now_ms, AppState};
use crate::problem::ApiError;
use data::{RecentParams, SeriesParams, TenantsParams};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/tenants") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/tenants") }),
        )
        .route("/console/tenants", get(tenants_page))
        .route("/console/tenants/{tenant}", get(tenant_page))
        .route("/console/anomalies", get(anomalies_page))
        .route("/console/pipeline", get(pipeline_page))
        .route("/console/assets/{*file}", get(assets::serve))
        .route("/v1/tenants", get(data::tenants_json))
        .route("/v1/tenants/{tenant}/series", get(data::series_json))
        .route("/v1/tenants/{tenant}/recent", get(data::recent_json))
        .route("/v1/pipeline", get(data::pipeline_json))
}

/// `Authorization: Basic` with a read token as the password, as a bearer header.
fn basic_as_bearer(headers: &HeaderMap) -> Option<HeaderMap> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    let mut bearer = HeaderMap::new();
    bearer.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {password}")).ok()?,
    );
    Some(bearer)
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    state.read_tokens.allow(headers)
        || basic_as_bearer(headers).is_some_and(|h| state.read_tokens.allow(&h))
}

fn challenge() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Html(
            pages::error(
                401,
                "Sign in with any user name and a read token as the password.",
            )
            .into_string(),
        ),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"turnpike\", charset=\"UTF-8\""),
    );
    response
}

fn page(markup: maud::Markup) -> Response {
    let mut response = Html(markup.into_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn failed(err: ApiError) -> Response {
    let status = err.status;
    let mut response = page(pages::error(status.as_u16(), &err.detail));
    *response.status_mut() = status;
    response
}

async fn tenants_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<TenantsParams>,
) -> Response {
    if !authorized(&state, &headers) {
        return challenge();
    }
    match data::tenants_page(&state, &p).await {
        Ok(list) => page(pages::tenants(
            &list,
            p.q.as_deref().unwrap_or(""),
            p.after.as_deref().unwrap_or(""),
        )),
        Err(e) => failed(e),
    }
}

async fn tenant_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(p): Query<SeriesParams>,
) -> Response {
    if !authorized(&state, &headers) {
        return challenge();
    }
    let result = async {
        let series = data::tenant_series(&state, &tenant, &p).await?;
        let usage = data::tenant_usage(&state, &tenant, now_ms())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "console: tenant usage");
                ApiError::ledger_unavailable("the ledger could not be queried; retry")
            })?;
        let recent = data::recent_events(&state, &tenant, &RecentParams::default()).await?;
        Ok::<_, ApiError>(pages::tenant(&usage, &series, &recent))
    }
    .await;
    match result {
        Ok(markup) => page(markup),
        Err(e) => failed(e),
    }
}

async fn anomalies_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(mut p): Query<ListParams>,
) -> Response {
    if !authorized(&state, &headers) {
        return challenge();
    }
    p.order = Some("desc".into());
    if p.limit.as_deref().unwrap_or("").is_empty() {
        p.limit = Some("50".into());
    }
    match crate::anomalies::http::page(&state, &p).await {
        Ok(list) => page(pages::anomalies(&list, &p)),
        Err(e) => failed(e),
    }
}

async fn pipeline_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return challenge();
    }
    let result = async {
        let pipeline = data::pipeline(&state).await?;
        let billing = crate::billing::http::billing_status(&state).await?;
        Ok::<_, ApiError>((pipeline, billing))
    }
    .await;
    match result {
        Ok((p, billing)) => page(pages::pipeline(&p, &billing)),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_become_a_bearer_token() {
        let mut h = HeaderMap::new();
        let encoded = STANDARD.encode("ops:read-token-0123456789");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let bearer = basic_as_bearer(&h).unwrap();
        assert_eq!(
            bearer.get(header::AUTHORIZATION).unwrap(),
            "Bearer read-token-0123456789"
        );
        let mut not_basic = HeaderMap::new();
        not_basic.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_as_bearer(&not_basic).is_none());
    }
}
