//! The HTTP surface: Prometheus metrics, health and readiness, streams, banks, alerts
//! (incidents, their events and deliveries, evidence) and webhook endpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq as _;

use crate::alert::EndpointView;
use crate::alert::{AlertsHandle, StoredEvent};
use crate::bank::Banks;
use crate::blocking;
use crate::decide::{Actor, Incident};
use crate::hash::BackendInfo;
use crate::manager::StreamView;
use crate::manager::{Manager, StreamError, StreamRequest};
use crate::metrics::metrics;
use crate::Reloaded;

/// Facts fixed at start, for `/v1/status`.
#[derive(Debug, Serialize)]
pub struct StaticStatus {
    pub version: &'static str,
    pub hash_backend: BackendInfo,
    /// Where large banks are matched.
    pub match_backend: BackendInfo,
    pub decode_threads: usize,
    pub hash_threads: usize,
    /// `None` when no classifier model is configured.
    pub classifier: Option<ClassifierStatus>,
}

/// The classifier as `/v1/status` and `/v1/classifier` show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ClassifierStatus {
    /// The ONNX Runtime library loaded.
    pub onnxruntime: String,
    pub models: Vec<crate::classify::service::ModelView>,
}

#[derive(Clone)]
pub struct ApiState {
    pub manager: Arc<Manager>,
    pub ready: Arc<AtomicBool>,
    pub banks: Arc<ArcSwap<Banks>>,
    pub alerts: AlertsHandle,
    pub reload: Arc<crate::Reloader>,
    /// Accepted bearer tokens; empty: no authentication (loopback listeners only).
    pub tokens: Arc<Vec<String>>,
    /// Paths served without a token.
    pub auth_exempt: Arc<Vec<String>>,
    pub status: Arc<StaticStatus>,
    pub frames: Arc<crate::decode::FrameQueue>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/classifier", get(classifier))
        .route("/v1/streams", get(list_streams))
        .route(
            "/v1/streams/{id}",
            get(get_stream).put(put_stream).delete(delete_stream),
        )
        .route("/v1/banks", get(list_banks))
        .route("/v1/banks/reload", post(reload_banks))
        .route("/v1/reload", post(reload_all))
        .route("/v1/banks/{name}/items", post(add_bank_items))
        .route(
            "/v1/banks/{name}/items/{item}",
            axum::routing::delete(remove_bank_item),
        )
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/{id}", get(get_alert))
        .route("/v1/alerts/{id}/thumbnail", get(get_thumbnail))
        .route("/v1/alerts/{id}/acknowledge", post(acknowledge))
        .route("/v1/alerts/{id}/resolve", post(resolve))
        .route("/v1/webhooks", get(list_webhooks))
        .route("/v1/webhooks/{name}/enable", post(enable_webhook))
        .route("/v1/webhooks/{name}/dead-letters", get(dead_letters))
        .route(
            "/v1/webhooks/{name}/dead-letters/redeliver",
            post(redeliver_all),
        )
        .route(
            "/v1/webhooks/{name}/dead-letters/{event_id}/redeliver",
            post(redeliver_one),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// Bearer-token check, in constant time per token, for every path not exempt.
async fn authenticate(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    if s.tokens.is_empty() || s.auth_exempt.iter().any(|p| p == req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "this path needs an Authorization: Bearer <token> header" })),
        )
            .into_response();
    };
    // every token is compared, so the time taken says nothing about which one came close
    let ok = s.tokens.iter().fold(0u8, |acc, t| {
        acc | t.as_bytes().ct_eq(given.as_bytes()).unwrap_u8()
    });
    if ok == 1 {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            Json(json!({ "error": "the token is not valid" })),
        )
            .into_response()
    }
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process answers")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Every error body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong, in words.
    pub error: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StreamList {
    pub streams: Vec<crate::manager::StreamView>,
    pub capacity: crate::manager::Load,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Incident>,
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The OpenAPI document, generated from the handlers' annotations above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "livewatch", description = "Control API of the livewatch appliance"),
    paths(metrics_text, healthz, readyz, openapi, status, classifier, reload_all, list_streams, get_stream,
        put_stream, delete_stream, list_banks, reload_banks, add_bank_items, remove_bank_item, list_alerts,
        get_alert, get_thumbnail, acknowledge, resolve, list_webhooks, enable_webhook,
        dead_letters, redeliver_all, redeliver_one),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

pub fn openapi_document() -> serde_json::Value {
    let mut doc = <ApiDoc as utoipa::OpenApi>::openapi();
    doc.info.version = crate::VERSION.to_string();
    serde_json::to_value(doc).expect("the document serialises")
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition of every livewatch_ metric", content_type = "text/plain")))]
async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "running"), (status = 503, description = "starting or stopping")))]
async fn readyz(State(s): State<ApiState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

#[utoipa::path(get, path = "/v1/status", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "version, hash and bank-matching backends with their GPU adapters, ONNX providers, queue depths, capacity, banks", body = serde_json::Value), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn status(State(s): State<ApiState>) -> impl IntoResponse {
    let webhooks: Vec<_> = s
        .alerts
        .endpoints
        .iter()
        .map(|e| {
            let v = e.view.lock();
            json!({ "name": v.name, "pending": v.pending, "dead_letters": v.dead_letters, "disabled": v.disabled })
        })
        .collect();
    Json(json!({
        "version": s.status.version,
        "ready": s.ready.load(Ordering::Acquire),
        "hash": s.status.hash_backend,
        "match": s.status.match_backend,
        "onnx_providers": s.status.classifier.as_ref().map(|c| {
            let mut p: Vec<&str> = c.models.iter().map(|m| m.provider.as_str()).collect();
            p.sort_unstable();
            p.dedup();
            p
        }).unwrap_or_default(),
        "classifier": s.status.classifier.as_ref().map(|c| json!({
            "onnxruntime": c.onnxruntime,
            "models": c.models.iter().map(|m| json!({"name": m.name, "provider": m.provider, "mode": m.mode, "preprocess": m.preprocess})).collect::<Vec<_>>(),
            "shadow_alerts": s.alerts.shadow.lock().len(),
        })),
        "threads": { "decode": s.status.decode_threads, "hash": s.status.hash_threads },
        "queues": { "frames": s.frames.len(), "frames_capacity": s.frames.capacity(), "webhooks": webhooks },
        "capacity": s.manager.load(),
        "banks": s.banks.load().banks.iter().map(|b| json!({"name": &*b.name, "version": b.version, "hashes": b.len()})).collect::<Vec<_>>(),
    }))
}

/// What `GET /v1/classifier` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ClassifierView {
    pub enabled: bool,
    pub onnxruntime: Option<String>,
    pub models: Vec<crate::classify::service::ModelView>,
    /// The latest would-be incidents of models in shadow mode (at most 100), oldest first.
    pub shadow_alerts: Vec<crate::decide::ShadowAlert>,
}

#[utoipa::path(get, path = "/v1/classifier", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "models in use (provider, mode, thresholds, window) and the latest would-be incidents of shadow models", body = ClassifierView), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn classifier(State(s): State<ApiState>) -> impl IntoResponse {
    let c = s.status.classifier.as_ref();
    Json(ClassifierView {
        enabled: c.is_some(),
        onnxruntime: c.map(|c| c.onnxruntime.clone()),
        models: c.map(|c| c.models.clone()).unwrap_or_default(),
        shadow_alerts: s.alerts.shadow.lock().iter().cloned().collect(),
    })
}

#[utoipa::path(get, path = "/v1/streams", tag = "streams", security(("bearer" = [])),
    responses((status = 200, description = "every stream with its state and counters, and the load figure", body = StreamList), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn list_streams(State(s): State<ApiState>) -> impl IntoResponse {
    Json(json!({ "streams": s.manager.list(), "capacity": s.manager.load() }))
}

#[utoipa::path(get, path = "/v1/streams/{id}", tag = "streams", security(("bearer" = [])),
    params(("id" = String, Path, description = "stream id")),
    responses((status = 200, description = "success", body = StreamView), (status = 404, description = "no such resource", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn get_stream(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.manager.get(&id) {
        Some(v) => Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no stream with id {id:?}")),
    }
}

#[utoipa::path(put, path = "/v1/streams/{id}", tag = "streams", security(("bearer" = [])),
    params(("id" = String, Path, description = "stream id: letters, digits, - _ . : (at most 128)")),
    request_body = StreamRequest,
    responses(
        (status = 201, description = "created and started", body = StreamView),
        (status = 200, description = "updated (restarted) or unchanged; `applied` says which", body = StreamView),
        (status = 400, description = "body is not valid JSON of this shape", body = ErrorBody),
        (status = 409, description = "the stream is defined in the config file", body = ErrorBody),
        (status = 422, description = "invalid id, URL or sampling", body = ErrorBody),
        (status = 429, description = "at capacity (server.max_streams)", body = ErrorBody),
        (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn put_stream(State(s): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    let req: StreamRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("body must be JSON {{\"url\": string, \"metadata\": object, \"sampling\": {{\"mode\", \"rate\"}}}}: {e}"),
            )
        }
    };
    let m = s.manager.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || m.put(&id2, req)).await {
        Ok(Ok(applied)) => {
            let code = if applied == crate::manager::Applied::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut v = serde_json::to_value(s.manager.get(&id)).unwrap_or_default();
            v["applied"] = json!(applied);
            (code, Json(v)).into_response()
        }
        Ok(Err(e)) => stream_error(e),
        Err(e) => internal(e.into()),
    }
}

fn stream_error(e: StreamError) -> Response {
    let code = match &e {
        StreamError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        StreamError::FromConfig(_) => StatusCode::CONFLICT,
        StreamError::Capacity(_) => StatusCode::TOO_MANY_REQUESTS,
        StreamError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, &e.to_string())
}

#[utoipa::path(delete, path = "/v1/streams/{id}", tag = "streams", security(("bearer" = [])),
    params(("id" = String, Path, description = "stream id")),
    responses((status = 204, description = "stopped and forgotten"), (status = 404, description = "no such resource", body = ErrorBody),
        (status = 409, description = "the stream is defined in the config file", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn delete_stream(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let m = s.manager.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || m.delete(&id2)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, &format!("no stream with id {id:?}")),
        Ok(Err(e)) => stream_error(e),
        Err(e) => internal(e.into()),
    }
}

#[utoipa::path(get, path = "/v1/banks", tag = "banks", security(("bearer" = [])),
    responses((status = 200, description = "banks with version, size, threshold, severity, action", body = serde_json::Value), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn list_banks(State(s): State<ApiState>) -> impl IntoResponse {
    let banks = s.banks.load();
    let list: Vec<_> = banks
        .banks
        .iter()
        .map(|b| json!({"name": &*b.name, "version": b.version, "hashes": b.len(), "distance": b.distance, "severity": b.severity, "action": b.action, "store_evidence": b.store_evidence}))
        .collect();
    Json(json!({ "banks": list }))
}

#[utoipa::path(post, path = "/v1/banks/reload", tag = "banks", security(("bearer" = [])),
    responses((status = 200, description = "success", body = Reloaded), (status = 422, description = "a bank or the config is invalid; nothing changed", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn reload_banks(State(s): State<ApiState>) -> Response {
    match s.reload.reload(true).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{e:#} (nothing changed)"),
        ),
    }
}

#[utoipa::path(post, path = "/v1/reload", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "banks and the config file's streams reloaded (as SIGHUP does)", body = Reloaded),
        (status = 422, description = "invalid config or bank; nothing changed", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn reload_all(State(s): State<ApiState>) -> Response {
    match s.reload.reload(false).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{e:#} (nothing changed)"),
        ),
    }
}

/// Adds items to a bank: a body of PDQ lines (`hex[,item_id[,label]]`, as in bank files),
/// validated whole, kept in the state directory and matched after the bank reloads.
#[utoipa::path(post, path = "/v1/banks/{name}/items", tag = "banks", security(("bearer" = [])),
    params(("name" = String, Path, description = "bank name")),
    request_body(content = String, content_type = "text/plain", description = "PDQ lines: hex[,item_id[,label]]"),
    responses((status = 200, description = "items added, persisted and matched from now on", body = serde_json::Value),
        (status = 400, description = "malformed request", body = ErrorBody), (status = 404, description = "no such resource", body = ErrorBody),
        (status = 422, description = "a bad line (named); nothing added", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn add_bank_items(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be UTF-8 text: one PDQ hex per line, optionally ,item_id,label",
        );
    };
    match s.reload.add_items(&name, text).await {
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no bank named {name:?}")),
        Ok(Some((0, _))) => error(StatusCode::BAD_REQUEST, "no PDQ lines in the body"),
        Ok(Some((n, version))) => {
            Json(json!({ "added": n, "bank_version": version })).into_response()
        }
        Err(e) => match e.downcast_ref::<crate::bank::BankError>() {
            Some(crate::bank::BankError::Line { .. }) => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{e} (nothing added)"),
            ),
            Some(_) => internal(e),
            None if e.to_string().contains("holds videos") => {
                error(StatusCode::CONFLICT, &e.to_string())
            }
            None => internal(e),
        },
    }
}

#[utoipa::path(delete, path = "/v1/banks/{name}/items/{item}", tag = "banks", security(("bearer" = [])),
    params(("name" = String, Path, description = "bank name"), ("item" = String, Path, description = "item id")),
    responses((status = 200, description = "the item's hashes are no longer matched (kept across reloads and restarts)", body = serde_json::Value),
        (status = 404, description = "no such bank or item", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn remove_bank_item(
    State(s): State<ApiState>,
    Path((name, item)): Path<(String, String)>,
) -> Response {
    match s.reload.remove_item(&name, &item).await {
        Ok(Some((n, version))) => {
            Json(json!({ "removed_hashes": n, "bank_version": version })).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &format!("no bank {name:?} with an item {item:?}"),
        ),
        Err(e) => internal(e),
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", body = serde_json::Value)))]
async fn openapi() -> impl IntoResponse {
    Json(openapi_document())
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("API: {e:#}");
    error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    stream: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", security(("bearer" = [])),
    params(("stream" = Option<String>, Query, description = "only this stream's"), ("limit" = Option<usize>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, description = "incidents, newest first", body = AlertList), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn list_alerts(
    State(s): State<ApiState>,
    q: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: stream=<id> and limit=<1..1000> only",
        );
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be 1 to 1000");
    }
    let store = s.alerts.store.clone();
    match blocking(move || store.incidents(q.stream.as_deref(), limit)).await {
        Ok(list) => Json(json!({ "alerts": list })).into_response(),
        Err(e) => internal(e),
    }
}

fn event_json(ev: &StoredEvent) -> serde_json::Value {
    json!({
        "webhook_id": ev.event_id,
        "event": ev.kind,
        "created_at": crate::stream::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ev.created_unix_ms)
        ),
    })
}

#[utoipa::path(get, path = "/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "incident id")),
    responses((status = 200, description = "the incident, with `event_log`: its events and each endpoint's delivery", body = Incident),
        (status = 404, description = "no such resource", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn get_alert(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let (store, id2) = (s.alerts.store.clone(), id.clone());
    let found = blocking(move || {
        Ok(match store.incident(&id2)? {
            Some(i) => Some((i, store.incident_events(&id2)?)),
            None => None,
        })
    })
    .await;
    let (incident, events) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return error(StatusCode::NOT_FOUND, &format!("no alert with id {id:?}")),
        Err(e) => return internal(e),
    };
    let events: Vec<_> = events
        .iter()
        .map(|(ev, deliveries)| {
            let mut v = event_json(ev);
            v["deliveries"] = json!(deliveries
                .iter()
                .map(|(endpoint, d)| json!({
                    "endpoint": endpoint,
                    "status": d.status,
                    "attempts": d.attempts,
                    "last_status": d.last_status,
                    "last_error": d.last_error,
                }))
                .collect::<Vec<_>>());
            v
        })
        .collect();
    let mut body = serde_json::to_value(&incident).expect("incident serialises");
    body["event_log"] = json!(events);
    Json(body).into_response()
}

#[utoipa::path(get, path = "/v1/alerts/{id}/thumbnail", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "incident id")),
    responses((status = 200, description = "the evidence JPEG", content_type = "image/jpeg"),
        (status = 404, description = "not stored (bank forbids it) or expired", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn get_thumbnail(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    // ids are UUIDs: anything else cannot name a file of ours
    if uuid::Uuid::parse_str(&id).is_err() {
        return error(StatusCode::NOT_FOUND, &format!("no alert with id {id:?}"));
    }
    match std::fs::read(crate::alert::thumbnail::path(&s.alerts.thumbnails, &id)) {
        Ok(jpeg) => ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            "no thumbnail for this alert (its bank does not allow storing evidence, or it has expired)",
        ),
    }
}

/// Who acknowledges or resolves, and why (both optional).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorRequest {
    by: Option<String>,
    note: Option<String>,
}

fn actor(body: &Bytes) -> Result<Actor, Response> {
    let req: ActorRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ActorRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "body must be JSON {{\"by\": string, \"note\": string}} (both optional): {e}"
                ),
            )
        })?
    };
    Ok(Actor {
        by: req.by.unwrap_or_else(|| "api".into()),
        at: crate::stream::rfc3339(std::time::SystemTime::now()),
        note: req.note,
    })
}

#[utoipa::path(post, path = "/v1/alerts/{id}/acknowledge", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "incident id")), request_body(content = Option<ActorRequest>),
    responses((status = 200, description = "success", body = Incident), (status = 400, description = "malformed request", body = ErrorBody), (status = 404, description = "no such resource", body = ErrorBody),
        (status = 409, description = "already resolved", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn acknowledge(State(s): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    let by = match actor(&body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    incident_change(&s, &id, s.alerts.acknowledge(&id, by).await)
}

#[utoipa::path(post, path = "/v1/alerts/{id}/resolve", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "incident id")), request_body(content = Option<ActorRequest>),
    responses((status = 200, description = "success", body = Incident), (status = 400, description = "malformed request", body = ErrorBody), (status = 404, description = "no such resource", body = ErrorBody),
        (status = 409, description = "already resolved", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn resolve(State(s): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    let by = match actor(&body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    incident_change(&s, &id, s.alerts.resolve(&id, by).await)
}

fn incident_change(
    s: &ApiState,
    id: &str,
    r: anyhow::Result<Result<crate::decide::Incident, crate::decide::IncidentError>>,
) -> Response {
    match r {
        Ok(Ok(incident)) => Json(incident).into_response(),
        Ok(Err(e)) => match s.alerts.store.incident(id) {
            Ok(Some(_)) => error(
                StatusCode::CONFLICT,
                &format!("{e} (it is already resolved)"),
            ),
            _ => error(StatusCode::NOT_FOUND, &format!("no alert with id {id:?}")),
        },
        Err(e) => internal(e),
    }
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, description = "every endpoint's queue and state", body = serde_json::Value), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn list_webhooks(State(s): State<ApiState>) -> impl IntoResponse {
    let list: Vec<_> = s
        .alerts
        .endpoints
        .iter()
        .map(|e| e.view.lock().clone())
        .collect();
    Json(json!({ "webhooks": list }))
}

fn endpoint<'a>(s: &'a ApiState, name: &str) -> Result<&'a crate::alert::EndpointHandle, Response> {
    s.alerts
        .endpoint(name)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, &format!("no webhook named {name:?}")))
}

#[utoipa::path(post, path = "/v1/webhooks/{name}/enable", tag = "webhooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "webhook name")),
    responses((status = 200, description = "success", body = EndpointView), (status = 404, description = "no such resource", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn enable_webhook(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let ep = match endpoint(&s, &name) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if ep
        .tx
        .send(crate::alert::deliver::Control::Enable(tx))
        .is_err()
        || rx.await.is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the delivery worker has stopped",
        );
    }
    Json(ep.view.lock().clone()).into_response()
}

#[utoipa::path(get, path = "/v1/webhooks/{name}/dead-letters", tag = "webhooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "webhook name")),
    responses((status = 200, description = "success", body = serde_json::Value), (status = 404, description = "no such resource", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn dead_letters(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    if let Err(r) = endpoint(&s, &name) {
        return r;
    }
    let (store, n) = (s.alerts.store.clone(), name.clone());
    match blocking(move || store.dead_letters(&n)).await {
        Ok(list) => {
            let items: Vec<_> = list
                .iter()
                .map(|(ev, d)| {
                    let mut v = event_json(ev);
                    v["incident_id"] = json!(ev.incident_id);
                    v["stream_id"] = json!(ev.stream_id);
                    v["attempts"] = json!(d.attempts);
                    v["last_status"] = json!(d.last_status);
                    v["last_error"] = json!(d.last_error);
                    v
                })
                .collect();
            Json(json!({ "dead_letters": items })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn redeliver(s: &ApiState, name: &str, event_id: Option<&str>) -> Response {
    let ep = match endpoint(s, name) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let (store, n) = (s.alerts.store.clone(), name.to_string());
    let seq = match event_id {
        None => None,
        Some(id) => match blocking(move || store.dead_letters(&n)).await {
            Ok(list) => match list.iter().find(|(ev, _)| ev.event_id == id) {
                Some((ev, _)) => Some(ev.seq),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        &format!("no dead letter {id:?} for webhook {name:?}"),
                    )
                }
            },
            Err(e) => return internal(e),
        },
    };
    let (reply, rx) = tokio::sync::oneshot::channel();
    if ep
        .tx
        .send(crate::alert::deliver::Control::Redeliver { seq, reply })
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the delivery worker has stopped",
        );
    }
    match rx.await {
        Ok(Ok(n)) => Json(json!({ "requeued": n })).into_response(),
        Ok(Err(e)) => internal(e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the delivery worker has stopped",
        ),
    }
}

#[utoipa::path(post, path = "/v1/webhooks/{name}/dead-letters/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "webhook name")),
    responses((status = 200, description = "`requeued`: how many", body = serde_json::Value), (status = 404, description = "no such resource", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn redeliver_all(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    redeliver(&s, &name, None).await
}

#[utoipa::path(post, path = "/v1/webhooks/{name}/dead-letters/{event_id}/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "webhook name"), ("event_id" = String, Path, description = "the webhook-id")),
    responses((status = 200, description = "success", body = serde_json::Value), (status = 404, description = "no such resource", body = ErrorBody), (status = 401, description = "missing or invalid bearer token", body = ErrorBody)))]
async fn redeliver_one(
    State(s): State<ApiState>,
    Path((name, event_id)): Path<(String, String)>,
) -> Response {
    redeliver(&s, &name, Some(&event_id)).await
}
