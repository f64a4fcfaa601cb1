//! Per-stream state shared between the stages and the HTTP API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::metrics;

/// Index of a stream inside the pipeline (cheap to copy, unlike its id).
pub type StreamKey = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Configured, its task not yet started.
    Starting,
    /// Opening the connection or file.
    Connecting,
    /// Receiving media.
    Playing,
    /// The last session failed; waiting before the next attempt (`last_error` says why).
    Backoff,
    /// Shut down.
    Stopped,
}

impl StreamState {
    pub const ALL: [StreamState; 5] = [
        Self::Starting,
        Self::Connecting,
        Self::Playing,
        Self::Backoff,
        Self::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Connecting => "connecting",
            Self::Playing => "playing",
            Self::Backoff => "backoff",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamError {
    #[schema(value_type = String)]
    pub kind: &'static str,
    pub message: String,
    pub at: String,
}

#[derive(Debug)]
struct Inner {
    state: StreamState,
    last_error: Option<StreamError>,
    sampling_fallback: bool,
    codec: Option<String>,
    resolution: Option<(u32, u32)>,
    last_frame_at: Option<SystemTime>,
    last_match_at: Option<SystemTime>,
    /// Counters at the last rate update, and the rates then measured.
    rate_mark: Option<(Instant, u64, u64)>,
    fps_in: Option<f64>,
    fps_sampled: Option<f64>,
    /// The latest scores of each classifier model: label → score.
    scores: std::collections::BTreeMap<Arc<str>, ModelScores>,
}

/// A model's scores for a stream's latest classified frame.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelScores {
    pub at: String,
    pub pts_seconds: Option<f64>,
    #[schema(value_type = Object)]
    pub scores: std::collections::BTreeMap<String, f32>,
}

/// What the appliance knows about one stream right now.
#[derive(Debug)]
pub struct StreamStatus {
    pub key: StreamKey,
    pub id: Arc<str>,
    /// The URL without credentials.
    pub url: String,
    pub sampling_mode: &'static str,
    inner: Mutex<Inner>,
    pub frames_received: AtomicU64,
    pub frames_decoded: AtomicU64,
    pub frames_hashed: AtomicU64,
    pub frames_classified: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub reconnects: AtomicU64,
    pub matches: AtomicU64,
}

/// A snapshot for the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamReport {
    pub id: String,
    pub url: String,
    pub state: StreamState,
    #[schema(value_type = String)]
    pub sampling_mode: &'static str,
    pub sampling_fallback: bool,
    pub codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frames_received: u64,
    pub frames_decoded: u64,
    pub frames_hashed: u64,
    /// Frames scored by the classifier (each model counts).
    pub frames_classified: u64,
    pub frames_dropped: u64,
    pub reconnects: u64,
    pub matches: u64,
    pub last_frame_age_seconds: Option<f64>,
    pub last_match_at: Option<String>,
    /// Access units received per second, over the last few seconds.
    pub fps_in: Option<f64>,
    /// Frames hashed per second (the sampled rate), over the last few seconds.
    pub fps_sampled: Option<f64>,
    pub last_error: Option<StreamError>,
    /// The latest classifier scores, per model.
    #[schema(value_type = Object)]
    pub classifier: std::collections::BTreeMap<String, ModelScores>,
}

pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl StreamStatus {
    pub fn new(key: StreamKey, id: &str, url: String, sampling_mode: &'static str) -> Self {
        metrics()
            .streams
            .with_label_values(&[StreamState::Starting.as_str()])
            .inc();
        Self {
            key,
            id: id.into(),
            url,
            sampling_mode,
            inner: Mutex::new(Inner {
                state: StreamState::Starting,
                last_error: None,
                sampling_fallback: false,
                codec: None,
                resolution: None,
                last_frame_at: None,
                last_match_at: None,
                rate_mark: None,
                fps_in: None,
                fps_sampled: None,
                scores: Default::default(),
            }),
            frames_received: AtomicU64::new(0),
            frames_decoded: AtomicU64::new(0),
            frames_hashed: AtomicU64::new(0),
            frames_classified: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            matches: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> StreamState {
        self.inner.lock().state
    }

    /// Moves to a new state, keeping `livewatch_streams{state}` in step. Returns the old state.
    pub fn set_state(&self, new: StreamState) -> StreamState {
        let mut g = self.inner.lock();
        let old = g.state;
        if old != new {
            let m = metrics();
            m.streams.with_label_values(&[old.as_str()]).dec();
            m.streams.with_label_values(&[new.as_str()]).inc();
            g.state = new;
        }
        old
    }

    pub fn set_error(&self, kind: &'static str, message: String) {
        self.inner.lock().last_error = Some(StreamError {
            kind,
            message,
            at: rfc3339(SystemTime::now()),
        });
    }

    pub fn clear_error(&self) {
        self.inner.lock().last_error = None;
    }

    pub fn last_error(&self) -> Option<StreamError> {
        self.inner.lock().last_error.clone()
    }

    /// Records whether a keyframes-mode stream has fallen back to fps sampling.
    pub fn set_sampling_fallback(&self, on: bool) {
        let mut g = self.inner.lock();
        if g.sampling_fallback != on {
            g.sampling_fallback = on;
            let gauge = metrics()
                .sampling_fallback_streams
                .with_label_values(&["fps"]);
            if on {
                gauge.inc()
            } else {
                gauge.dec()
            }
        }
    }

    pub fn set_codec(&self, codec: &str, width: u32, height: u32) {
        let mut g = self.inner.lock();
        if g.codec.as_deref() != Some(codec) {
            g.codec = Some(codec.to_string());
        }
        g.resolution = Some((width, height));
    }

    pub fn note_frame(&self) {
        self.inner.lock().last_frame_at = Some(SystemTime::now());
    }

    pub fn note_match(&self) {
        self.matches.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().last_match_at = Some(SystemTime::now());
    }

    /// Records a model's scores for the stream's latest classified frame.
    pub fn set_scores(
        &self,
        model: &Arc<str>,
        labels: &[String],
        scores: &[f32],
        pts_us: Option<i64>,
    ) {
        self.frames_classified.fetch_add(1, Ordering::Relaxed);
        let entry = ModelScores {
            at: rfc3339(SystemTime::now()),
            pts_seconds: pts_us.map(|p| p as f64 / 1e6),
            scores: labels.iter().cloned().zip(scores.iter().copied()).collect(),
        };
        self.inner.lock().scores.insert(model.clone(), entry);
    }

    /// Measures the input and sampled frame rates since the previous call.
    pub fn update_rates(&self, now: Instant) {
        let (recv, hashed) = (
            self.frames_received.load(Ordering::Relaxed),
            self.frames_hashed.load(Ordering::Relaxed),
        );
        let mut g = self.inner.lock();
        if let Some((t, r0, h0)) = g.rate_mark {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                g.fps_in = Some((recv - r0) as f64 / dt);
                g.fps_sampled = Some((hashed - h0) as f64 / dt);
            }
        }
        g.rate_mark = Some((now, recv, hashed));
    }

    /// Takes the stream out of `livewatch_streams` when it is removed for good.
    pub fn retire(&self) {
        let g = self.inner.lock();
        metrics()
            .streams
            .with_label_values(&[g.state.as_str()])
            .dec();
        if g.sampling_fallback {
            metrics()
                .sampling_fallback_streams
                .with_label_values(&["fps"])
                .dec();
        }
    }

    pub fn report(&self) -> StreamReport {
        let g = self.inner.lock();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamReport {
            id: self.id.to_string(),
            url: self.url.clone(),
            state: g.state,
            sampling_mode: self.sampling_mode,
            sampling_fallback: g.sampling_fallback,
            codec: g.codec.clone(),
            width: g.resolution.map(|r| r.0),
            height: g.resolution.map(|r| r.1),
            frames_received: get(&self.frames_received),
            frames_decoded: get(&self.frames_decoded),
            frames_hashed: get(&self.frames_hashed),
            frames_classified: get(&self.frames_classified),
            frames_dropped: get(&self.frames_dropped),
            reconnects: get(&self.reconnects),
            matches: get(&self.matches),
            last_frame_age_seconds: g
                .last_frame_at
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs_f64()),
            last_match_at: g.last_match_at.map(rfc3339),
            fps_in: g.fps_in,
            fps_sampled: g.fps_sampled,
            last_error: g.last_error.clone(),
            classifier: g
                .scores
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }
}
