//! The HTTP surface: Prometheus metrics, health and readiness, and the read-only stream API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::metrics;
use crate::stream::StreamStatus;

#[derive(Clone)]
pub struct ApiState {
    pub streams: Arc<Vec<Arc<StreamStatus>>>,
    pub ready: Arc<AtomicBool>,
    pub banks: Arc<Vec<serde_json::Value>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/streams", get(list_streams))
        .route("/v1/streams/{id}", get(get_stream))
        .route("/v1/banks", get(list_banks))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn list_streams(State(s): State<ApiState>) -> impl IntoResponse {
    let reports: Vec<_> = s.streams.iter().map(|st| st.report()).collect();
    Json(json!({ "streams": reports }))
}

async fn get_stream(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.streams.iter().find(|st| *st.id == *id) {
        Some(st) => Json(st.report()).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no stream with id {id:?}")),
    }
}

async fn list_banks(State(s): State<ApiState>) -> impl IntoResponse {
    Json(json!({ "banks": *s.banks }))
}
