//! The operator console: server-rendered pages at `/console`, behind the read token.
pub fn routes() -> axum::Router<std::sync::Arc<crate::api::AppState>> {
    axum::Router::new()
}
