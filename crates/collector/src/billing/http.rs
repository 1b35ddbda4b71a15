//! `GET /v1/billing/status` and `POST /v1/billing/sync` (both with the read token).
//!
//! The trigger runs what the periodic loop runs, now, and waits for it: for demos,
//! tests and an operator who just fixed a key. It cannot send anything the loop
//! would not, so the read token is enough.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::status::BillingStatus;
use super::store::BillingStore;
use super::sync::{SyncError, SyncReport};
use crate::api::{require_read, unavailable, AppState};
use crate::problem::ApiError;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/billing/status", get(status))
        .route("/v1/billing/sync", post(sync))
}

async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<BillingStatus>, ApiError> {
    require_read(&state, &headers)?;
    Ok(Json(billing_status(&state).await?))
}

/// What `GET /v1/billing/status` answers (the console's billing panel shows it too).
pub async fn billing_status(state: &AppState) -> Result<BillingStatus, ApiError> {
    let mut status = BillingStatus::load(&BillingStore::new(state.ledger.clone()))
        .await
        .map_err(unavailable)?;
    status.enabled = Some(state.billing.is_some());
    Ok(status)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SyncAnswer {
    pub sync: SyncReport,
    /// Customer, event name and period groups compared with Stripe afterwards.
    pub reconciled: usize,
}

async fn sync(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<SyncAnswer>, ApiError> {
    require_read(&state, &headers)?;
    let Some(syncer) = &state.billing else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "billing-off",
            "Billing sync is off",
            "configure a Stripe secret key (--stripe-key-file or TURNPIKE_STRIPE_KEY)",
        ));
    };
    let plans = || state.plans.as_ref().map(|p| p.load_full());
    let report = syncer.run_once(plans()).await.map_err(problem)?;
    let reconciled = syncer.reconcile(plans()).await.map_err(problem)?.len();
    Ok(Json(SyncAnswer {
        sync: report,
        reconciled,
    }))
}

fn problem(err: SyncError) -> ApiError {
    let (status, slug, title) = match &err {
        SyncError::Auth(_) => (
            StatusCode::BAD_GATEWAY,
            "stripe-auth",
            "Stripe refused the API key",
        ),
        SyncError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "stripe-unavailable",
            "Stripe unavailable",
        ),
        SyncError::Stripe(_) => (StatusCode::BAD_GATEWAY, "stripe-error", "Stripe refused"),
        SyncError::Busy { .. } => (
            StatusCode::CONFLICT,
            "billing-busy",
            "Another collector is syncing",
        ),
        SyncError::Ledger(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger-unavailable",
            "Ledger unavailable",
        ),
    };
    ApiError::new(status, slug, title, err.to_string())
}
