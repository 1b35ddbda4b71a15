//! The HTTP side: one pipeline for every Stripe route (request id, authentication,
//! form decoding, injected faults, idempotency, dispatch, persistence) and the
//! `/_fake/*` admin routes. Served with a connection loop of its own so a fault can
//! close a connection without answering.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::error::ApiError;
use super::faults::{FaultAction, FaultRule, Faults};
use super::form::{decode, Form, FormValue};
use super::handlers::dispatch;
use super::idempotency::{Begin, StoredResponse, MAX_KEY_LEN};
use super::ids::IdGen;
use super::store::Store;
use super::{auth, FakeConfig};

/// How many requests `/_fake/requests` remembers.
const LOG_CAPACITY: usize = 10_000;

/// One request as `/_fake/requests` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The status answered; 0 when the connection was dropped instead.
    pub status: u16,
    /// Answered from the idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// The injected fault's kind, if one hit this request.
    pub fault: Option<String>,
    pub at: i64,
}

/// State shared by all connections.
pub struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    log: Mutex<VecDeque<LoggedRequest>>,
    clock_offset: AtomicI64,
    ids: IdGen,
    keys: Vec<String>,
    state_file: Option<PathBuf>,
}

/// A poisoned lock only means a panic elsewhere; the data is still usable for a fake.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: FakeConfig) -> std::io::Result<Shared> {
        let store = match &config.state_file {
            Some(path) if path.exists() => Store::load(path)?,
            _ => Store::default(),
        };
        Ok(Shared {
            store: Mutex::new(store),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(VecDeque::new()),
            clock_offset: AtomicI64::new(0),
            ids: IdGen::from_entropy(),
            keys: config.api_keys,
            state_file: config.state_file,
        })
    }

    /// The fake's notion of now: the system clock shifted by `/_fake/clock`.
    pub fn now(&self) -> i64 {
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        system + self.clock_offset.load(Ordering::Relaxed)
    }

    fn persist(&self, store: &Store) {
        if let Some(path) = &self.state_file {
            if let Err(err) = store.save(path) {
                tracing::warn!(path = %path.display(), %err, "stripe-fake: could not save state");
            }
        }
    }

    fn record(&self, entry: LoggedRequest) {
        tracing::debug!(
            request_id = %entry.request_id,
            method = %entry.method,
            path = %entry.path,
            status = entry.status,
            replayed = entry.replayed,
            fault = ?entry.fault,
            "stripe-fake request"
        );
        let mut log = lock(&self.log);
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
    }
}

/// Lets a handler close its own connection (see [`serve`]).
#[derive(Clone)]
struct ConnKill(Arc<Notify>);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/events", get(admin_dump))
        .route(
            "/_fake/faults",
            get(admin_faults)
                .post(admin_add_faults)
                .delete(admin_clear_faults),
        )
        .route("/_fake/clock", get(admin_clock).post(admin_set_clock))
        .route(
            "/_fake/requests",
            get(admin_requests).delete(admin_clear_requests),
        )
        .route("/_fake/reset", post(admin_reset))
        .fallback(stripe_entry)
        .with_state(shared)
}

/// Serves `router` until `shutdown` resolves. Each connection watches for a
/// [`ConnKill`] so a `drop` fault can close it mid-request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, router.clone()));
                }
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%err, "stripe-fake: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn serve_connection(stream: TcpStream, router: Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;

    let kill = ConnKill(Arc::new(Notify::new()));
    let notified = kill.0.clone();
    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(kill.clone());
            router.clone().oneshot(req)
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(err) = result {
                tracing::debug!(%err, "stripe-fake: connection ended with an error");
            }
        }
        () = notified.notified() => {}
    }
}

fn json_response(status: u16, body: &Value, request_id: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn error_response(err: &ApiError, request_id: &str, now: i64) -> Response {
    let mut response = json_response(err.status, &err.body(request_id, now), request_id);
    if let Some(retry) = err.should_retry {
        set_header(
            &mut response,
            "stripe-should-retry",
            if retry { "true" } else { "false" },
        );
    }
    if err.status == 401 {
        set_header(&mut response, "www-authenticate", "Basic realm=\"Stripe\"");
    }
    response
}

/// A canonical text of the parameters, to compare idempotent retries.
fn fingerprint(form: &Form) -> String {
    fn to_json(value: &FormValue) -> Value {
        match value {
            FormValue::Str(s) => Value::String(s.clone()),
            FormValue::Map(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
            }
            FormValue::List(l) => Value::Array(l.iter().map(to_json).collect()),
        }
    }
    let map: serde_json::Map<String, Value> =
        form.iter().map(|(k, v)| (k.clone(), to_json(v))).collect();
    Value::Object(map).to_string()
}

/// Forgets an idempotency key whose request never finished (validation failure, or
/// the request future was dropped with its connection).
struct PendingKey {
    shared: Arc<Shared>,
    key: Option<String>,
}

impl PendingKey {
    fn finish(mut self, response: Option<StoredResponse>) {
        if let Some(key) = self.key.take() {
            let mut store = lock(&self.shared.store);
            match response {
                Some(r) => store.idempotency.finish(&key, r),
                None => store.idempotency.abandon(&key),
            }
        }
    }
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.shared.store).idempotency.abandon(&key);
        }
    }
}

/// Logs the request as dropped (status 0) and closes its connection.
async fn close_connection(
    shared: &Shared,
    entry: &mut LoggedRequest,
    kill: Option<Extension<ConnKill>>,
) -> Response {
    shared.record(entry.clone());
    entry.status = 503;
    if let Some(Extension(kill)) = kill {
        kill.0.notify_one();
        // The connection task drops this future with the connection.
        std::future::pending::<()>().await;
    }
    // Not served by `serve` (e.g. `Router::oneshot` in a test): nothing to close.
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

async fn stripe_entry(
    State(shared): State<Arc<Shared>>,
    kill: Option<Extension<ConnKill>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut entry = LoggedRequest {
        request_id: shared.ids.make("req_", 14),
        method: method.to_string(),
        path: uri.path().to_owned(),
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        status: 0,
        replayed: false,
        fault: None,
        at: shared.now(),
    };
    let response = handle(&shared, kill, &method, &uri, &headers, &body, &mut entry).await;
    if entry.status == 0 {
        entry.status = response.status().as_u16();
        shared.record(entry);
    }
    response
}

async fn handle(
    shared: &Arc<Shared>,
    kill: Option<Extension<ConnKill>>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    entry: &mut LoggedRequest,
) -> Response {
    let request_id = entry.request_id.clone();
    let path = uri.path();
    let now = shared.now();
    let fail = |err: ApiError| error_response(&err, &request_id, now);

    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(err) = auth::check(&shared.keys, authorization) {
        return fail(err);
    }

    // GET parameters come in the query; POST parameters in the body (Stripe also
    // reads the query of a POST, so both are merged).
    let mut raw = uri.query().unwrap_or_default().as_bytes().to_vec();
    if *method != Method::GET && !body.is_empty() {
        if !raw.is_empty() {
            raw.push(b'&');
        }
        raw.extend_from_slice(body);
    }
    let form = match decode(&raw) {
        Ok(form) => form,
        Err(err) => return fail(ApiError::bad_form(&err)),
    };

    let fault = lock(&shared.faults).take(method.as_str(), path);
    entry.fault = fault.as_ref().map(|f| {
        match f {
            FaultAction::RateLimit { .. } => "rate_limit",
            FaultAction::ServerError { .. } => "server_error",
            FaultAction::Delay { .. } => "delay",
            FaultAction::Drop { .. } => "drop",
        }
        .to_owned()
    });
    match &fault {
        Some(FaultAction::RateLimit {
            retry_after_secs,
            should_retry,
        }) => {
            let mut err = ApiError::rate_limited();
            err.should_retry = *should_retry;
            let mut response = error_response(&err, &request_id, now);
            if let Some(secs) = retry_after_secs {
                set_header(&mut response, "retry-after", &secs.to_string());
            }
            return response;
        }
        Some(FaultAction::ServerError {
            status,
            should_retry,
        }) => {
            let mut err = ApiError::server_error(*status);
            err.should_retry = *should_retry;
            return fail(err);
        }
        Some(FaultAction::Drop {
            after_processing: false,
        }) => return close_connection(shared, entry, kill).await,
        _ => {}
    }

    // Idempotency applies to POSTs that carry a key.
    let key = idempotency_key_of(method, headers);
    let mut pending = PendingKey {
        shared: shared.clone(),
        key: None,
    };
    if let Some(key) = &key {
        if key.chars().count() > MAX_KEY_LEN {
            return fail(ApiError::invalid_value(
                "idempotency_key",
                format!(
                    "Idempotency-Key must be at most {MAX_KEY_LEN} characters long, got {}.",
                    key.chars().count()
                ),
            ));
        }
        let endpoint = format!("{method} {path}");
        let begun = lock(&shared.store)
            .idempotency
            .begin(key, &endpoint, &fingerprint(&form), now);
        match begun {
            Begin::Fresh => pending.key = Some(key.clone()),
            Begin::Replay(stored) => {
                entry.replayed = true;
                let mut response = json_response(stored.status, &stored.body, &request_id);
                set_header(&mut response, "idempotent-replayed", "true");
                set_header(&mut response, "original-request", &stored.request_id);
                set_header(&mut response, "idempotency-key", key);
                if let Some(retry) = stored.should_retry {
                    set_header(
                        &mut response,
                        "stripe-should-retry",
                        if retry { "true" } else { "false" },
                    );
                }
                return response;
            }
            Begin::InUse => return fail(ApiError::idempotency_in_use(key)),
            Begin::ParamsMismatch => return fail(ApiError::idempotency_params_mismatch(key)),
            Begin::EndpointMismatch { first } => {
                let first_path = first.split_once(' ').map_or(first.as_str(), |(_, p)| p);
                return fail(ApiError::idempotency_endpoint_mismatch(
                    key, first_path, path,
                ));
            }
        }
    }

    if let Some(FaultAction::Delay { ms }) = fault {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let now = shared.now();
    let result = {
        let mut store = lock(&shared.store);
        let result = dispatch(&mut store, &shared.ids, method.as_str(), path, &form, now);
        if matches!(&result, Ok(answer) if answer.mutated) {
            shared.persist(&store);
        }
        result
    };
    let (mut response, stored) = match result {
        Ok(answer) => {
            let stored = StoredResponse {
                status: 200,
                body: answer.body,
                request_id: request_id.clone(),
                should_retry: None,
            };
            (json_response(200, &stored.body, &request_id), Some(stored))
        }
        Err(err) => {
            let stored = err.storable.then(|| StoredResponse {
                status: err.status,
                body: err.body(&request_id, now),
                request_id: request_id.clone(),
                should_retry: err.should_retry,
            });
            (error_response(&err, &request_id, now), stored)
        }
    };
    let stored_any = stored.is_some() && pending.key.is_some();
    pending.finish(stored);
    if stored_any {
        shared.persist(&lock(&shared.store));
    }
    if let Some(key) = &key {
        set_header(&mut response, "idempotency-key", key);
    }

    if let Some(FaultAction::Drop {
        after_processing: true,
    }) = fault
    {
        return close_connection(shared, entry, kill).await;
    }
    response
}

fn idempotency_key_of(method: &Method, headers: &HeaderMap) -> Option<String> {
    if *method != Method::POST {
        return None;
    }
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

// --- Admin routes -----------------------------------------------------------

async fn admin_dump(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let store = lock(&shared.store);
    let events: Vec<Value> = store
        .events
        .iter()
        .map(|e| {
            let mut v = e.to_json();
            v["meter"] = json!(e.meter);
            v["cancelled_at"] = json!(e.cancelled_at);
            v
        })
        .collect();
    let adjustments: Vec<Value> = store
        .adjustments
        .iter()
        .map(|a| {
            let mut v = a.to_json();
            v["created"] = json!(a.created);
            v
        })
        .collect();
    Json(json!({
        "now": shared.now(),
        "meters": store.meters.iter().map(|m| m.to_json()).collect::<Vec<_>>(),
        "events": events,
        "adjustments": adjustments,
    }))
}

/// One rule or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum FaultRules {
    One(FaultRule),
    Many(Vec<FaultRule>),
}

async fn admin_faults(State(shared): State<Arc<Shared>>) -> Json<Vec<FaultRule>> {
    Json(lock(&shared.faults).pending().to_vec())
}

async fn admin_add_faults(
    State(shared): State<Arc<Shared>>,
    Json(rules): Json<FaultRules>,
) -> Json<Vec<FaultRule>> {
    let rules = match rules {
        FaultRules::One(rule) => vec![rule],
        FaultRules::Many(rules) => rules,
    };
    let mut faults = lock(&shared.faults);
    for rule in rules {
        faults.add(rule);
    }
    Json(faults.pending().to_vec())
}

async fn admin_clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.faults).clear();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockChange {
    /// Move the clock forward (or back, if negative) by this much.
    #[serde(default)]
    advance_secs: Option<i64>,
    /// Set now to this unix time.
    #[serde(default)]
    now: Option<i64>,
    /// Set the offset from the system clock.
    #[serde(default)]
    offset_secs: Option<i64>,
}

fn clock_json(shared: &Shared) -> Json<Value> {
    Json(json!({
        "now": shared.now(),
        "offset_secs": shared.clock_offset.load(Ordering::Relaxed),
    }))
}

async fn admin_clock(State(shared): State<Arc<Shared>>) -> Json<Value> {
    clock_json(&shared)
}

async fn admin_set_clock(
    State(shared): State<Arc<Shared>>,
    Json(change): Json<ClockChange>,
) -> Json<Value> {
    if let Some(offset) = change.offset_secs {
        shared.clock_offset.store(offset, Ordering::Relaxed);
    }
    if let Some(now) = change.now {
        let delta = now - shared.now();
        shared.clock_offset.fetch_add(delta, Ordering::Relaxed);
    }
    if let Some(advance) = change.advance_secs {
        shared.clock_offset.fetch_add(advance, Ordering::Relaxed);
    }
    clock_json(&shared)
}

async fn admin_requests(State(shared): State<Arc<Shared>>) -> Json<Vec<LoggedRequest>> {
    Json(lock(&shared.log).iter().cloned().collect())
}

async fn admin_clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.log).clear();
    StatusCode::NO_CONTENT
}

async fn admin_reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    {
        let mut store = lock(&shared.store);
        *store = Store::default();
        shared.persist(&store);
    }
    lock(&shared.faults).clear();
    lock(&shared.log).clear();
    shared.clock_offset.store(0, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}
