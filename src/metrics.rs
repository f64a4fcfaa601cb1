//! Every Prometheus metric of the appliance, defined once.
//!
//! Conventions: `livewatch_` prefix, base units (seconds), `_total` for counters, and only
//! bounded labels (stage names, drop reasons, states, bank names from the config). Per-stream
//! detail lives in `GET /v1/streams`, not in label values.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec_with_registry, register_histogram_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry, Encoder, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub hash_backend_info: IntGaugeVec,
    pub hash_errors: IntCounter,
    pub match_backend_info: IntGaugeVec,
    pub match_gpu_errors: IntCounter,
    pub streams: IntGaugeVec,
    pub sampling_fallback_streams: IntGaugeVec,
    pub frames_received: IntCounter,
    pub frames_decoded: IntCounter,
    pub frames_hashed: IntCounter,
    pub frames_low_quality: IntCounter,
    pub frames_dropped: IntCounterVec,
    pub source_errors: IntCounterVec,
    pub reconnects: IntCounter,
    pub matches: IntCounterVec,
    pub bank_hashes: IntGaugeVec,
    pub bank_bytes: IntGaugeVec,
    pub alerts_raised: IntCounterVec,
    pub alerts_suppressed: IntCounter,
    pub incident_events: IntCounterVec,
    pub incidents_open: IntGauge,
    pub outbox_pending: IntGaugeVec,
    pub outbox_errors: IntCounter,
    pub webhook_attempts: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_dead_letters: IntGaugeVec,
    pub webhook_endpoint_disabled: IntGaugeVec,
    pub stage_seconds: HistogramVec,
    pub alert_latency: Histogram,
    pub detection_delay: Histogram,
    pub classifier_extra_decoded: IntCounter,
    pub classifier_info: IntGaugeVec,
    pub classifier_frames: IntCounterVec,
    pub classifier_errors: IntCounterVec,
    pub classifier_batch: Histogram,
    pub classifier_seconds: HistogramVec,
    pub classifier_score: HistogramVec,
    pub classifier_triggers: IntCounterVec,
    pub classifier_queue: IntGauge,
}

/// Frame drop reasons (the only values of `livewatch_frames_dropped_total{reason}`).
pub mod drop_reason {
    /// The decoder's queue was full: the access unit and the rest of its GOP are dropped.
    pub const DECODE_QUEUE_FULL: &str = "decode_queue_full";
    /// A non-key access unit after a drop, skipped until the next keyframe.
    pub const AWAITING_KEYFRAME: &str = "awaiting_keyframe";
    /// The hashing queue was full: the stream's oldest decoded frame was dropped.
    pub const HASH_QUEUE_FULL: &str = "hash_queue_full";
    /// The classifier's queue was full: the stream's oldest frame waiting for it was dropped
    /// (the frame may still have been hashed).
    pub const CLASSIFY_QUEUE_FULL: &str = "classify_queue_full";
    /// The decoder rejected the data (corrupt or unsupported bitstream).
    pub const DECODE_ERROR: &str = "decode_error";
    /// Not needed by the stream's sampling policy (non-key frames in keyframes mode).
    pub const NOT_SAMPLED: &str = "not_sampled";
}

/// Pipeline stages (the values of `livewatch_stage_seconds{stage}`).
pub mod stage {
    pub const DECODE: &str = "decode";
    pub const HASH: &str = "hash";
    pub const MATCH: &str = "match";
    pub const QUEUE: &str = "queue";
    pub const DELIVER: &str = "deliver";
}

/// Steps of the classifier (values of `livewatch_classifier_seconds{stage}`).
pub mod classifier_stage {
    /// Arrival of the frame's data to the start of its batch.
    pub const QUEUE: &str = "queue";
    /// Pre-processing of a batch (on the GPU: upload, kernels and readback together).
    pub const PREPROCESS: &str = "preprocess";
    /// GPU pre-processing: copying the planes to the GPU.
    pub const UPLOAD: &str = "upload";
    /// GPU pre-processing: copying the tensor back to the host.
    pub const READBACK: &str = "readback";
    /// ONNX Runtime's run of a batch.
    pub const INFERENCE: &str = "inference";
    pub const ALL: [&str; 5] = [QUEUE, PREPROCESS, UPLOAD, READBACK, INFERENCE];
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const ALERT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let m = Metrics {
            build_info: register_int_gauge_vec_with_registry!(
                "livewatch_build_info",
                "Always 1; labels say which build and hash backend run",
                &["version", "hash_backend"],
                r
            )
            .unwrap(),
            hash_backend_info: register_int_gauge_vec_with_registry!(
                "livewatch_hash_backend_info",
                "Always 1; labels say where PDQ runs: backend (gpu or cpu), adapter (GPU name, or the CPU path's instruction set), device type and driver",
                &["backend", "adapter", "device_type", "driver"],
                r
            )
            .unwrap(),
            match_backend_info: register_int_gauge_vec_with_registry!(
                "livewatch_match_backend_info",
                "Always 1; labels say where large banks are matched: backend (gpu: scanned in GPU memory, or cpu: the multi-index), adapter, device type and driver",
                &["backend", "adapter", "device_type", "driver"],
                r
            )
            .unwrap(),
            match_gpu_errors: register_int_counter_with_registry!(
                "livewatch_match_gpu_errors_total",
                "GPU scans that failed and were matched on the CPU instead, and banks that could not be copied onto the GPU",
                r
            )
            .unwrap(),
            hash_errors: register_int_counter_with_registry!(
                "livewatch_hash_gpu_errors_total",
                "GPU batches that failed and were hashed on the CPU instead",
                r
            )
            .unwrap(),
            streams: register_int_gauge_vec_with_registry!(
                "livewatch_streams",
                "Configured streams by connection state",
                &["state"],
                r
            )
            .unwrap(),
            sampling_fallback_streams: register_int_gauge_vec_with_registry!(
                "livewatch_sampling_fallback_streams",
                "Streams in keyframes mode that fell back to fps sampling for lack of keyframes",
                &["mode"],
                r
            )
            .unwrap(),
            frames_received: register_int_counter_with_registry!(
                "livewatch_frames_received_total",
                "Compressed access units received from all sources",
                r
            )
            .unwrap(),
            frames_decoded: register_int_counter_with_registry!(
                "livewatch_frames_decoded_total",
                "Pictures produced by the decoders",
                r
            )
            .unwrap(),
            frames_hashed: register_int_counter_with_registry!(
                "livewatch_frames_hashed_total",
                "Sampled frames hashed with PDQ",
                r
            )
            .unwrap(),
            frames_low_quality: register_int_counter_with_registry!(
                "livewatch_frames_low_quality_total",
                "Hashed frames below the minimum PDQ quality, not matched",
                r
            )
            .unwrap(),
            frames_dropped: register_int_counter_vec_with_registry!(
                "livewatch_frames_dropped_total",
                "Frames dropped before analysis, by reason",
                &["reason"],
                r
            )
            .unwrap(),
            source_errors: register_int_counter_vec_with_registry!(
                "livewatch_source_errors_total",
                "Source sessions that ended in an error, by kind",
                &["kind"],
                r
            )
            .unwrap(),
            reconnects: register_int_counter_with_registry!(
                "livewatch_source_reconnects_total",
                "Reconnection attempts after a source session ended",
                r
            )
            .unwrap(),
            matches: register_int_counter_vec_with_registry!(
                "livewatch_matches_total",
                "Frames matching a bank entry within the distance threshold",
                &["bank"],
                r
            )
            .unwrap(),
            bank_hashes: register_int_gauge_vec_with_registry!(
                "livewatch_bank_hashes",
                "Hashes loaded per bank",
                &["bank"],
                r
            )
            .unwrap(),
            bank_bytes: register_int_gauge_vec_with_registry!(
                "livewatch_bank_bytes",
                "Memory of each bank's loaded hashes and their index",
                &["bank"],
                r
            )
            .unwrap(),
            alerts_raised: register_int_counter_vec_with_registry!(
                "livewatch_alerts_raised_total",
                "Incidents opened by the decision stage, by reason",
                &["reason"],
                r
            )
            .unwrap(),
            alerts_suppressed: register_int_counter_with_registry!(
                "livewatch_alerts_suppressed_total",
                "Detections ignored because their stream and reason are in cooldown after an incident",
                r
            )
            .unwrap(),
            incident_events: register_int_counter_vec_with_registry!(
                "livewatch_incident_events_total",
                "Incident events committed to the outbox, by reason and event (opened, updated, acknowledged, resolved)",
                &["reason", "event"],
                r
            )
            .unwrap(),
            incidents_open: register_int_gauge_with_registry!(
                "livewatch_incidents_open",
                "Incidents open or acknowledged, not yet resolved",
                r
            )
            .unwrap(),
            outbox_pending: register_int_gauge_vec_with_registry!(
                "livewatch_outbox_pending",
                "Events committed and not yet delivered, per webhook endpoint",
                &["endpoint"],
                r
            )
            .unwrap(),
            outbox_errors: register_int_counter_with_registry!(
                "livewatch_outbox_errors_total",
                "Events that could not be committed to the outbox (disk failure)",
                r
            )
            .unwrap(),
            webhook_attempts: register_int_counter_vec_with_registry!(
                "livewatch_webhook_attempts_total",
                "Webhook HTTP attempts by endpoint and result (2xx, 4xx, 5xx, 410, 429, timeout, error)",
                &["endpoint", "result"],
                r
            )
            .unwrap(),
            webhook_deliveries: register_int_counter_vec_with_registry!(
                "livewatch_webhook_deliveries_total",
                "Finished deliveries by endpoint and outcome (delivered, dead_letter)",
                &["endpoint", "outcome"],
                r
            )
            .unwrap(),
            webhook_dead_letters: register_int_gauge_vec_with_registry!(
                "livewatch_webhook_dead_letters",
                "Events whose retries ran out, waiting in the dead-letter list, per endpoint",
                &["endpoint"],
                r
            )
            .unwrap(),
            webhook_endpoint_disabled: register_int_gauge_vec_with_registry!(
                "livewatch_webhook_endpoint_disabled",
                "1 while an endpoint is disabled (it answered 410 Gone) until re-enabled",
                &["endpoint"],
                r
            )
            .unwrap(),
            stage_seconds: register_histogram_vec_with_registry!(
                "livewatch_stage_seconds",
                "Time spent per frame in each pipeline stage",
                &["stage"],
                LATENCY_BUCKETS.to_vec(),
                r
            )
            .unwrap(),
            alert_latency: register_histogram_with_registry!(
                "livewatch_alert_latency_seconds",
                "From the arrival of the frame that opened an incident to a receiver's 2xx for its opened event",
                ALERT_BUCKETS.to_vec(),
                r
            )
            .unwrap(),
            detection_delay: register_histogram_with_registry!(
                "livewatch_detection_delay_seconds",
                "From the arrival of the first evidence frame to the opened event being committed",
                ALERT_BUCKETS.to_vec(),
                r
            )
            .unwrap(),
            classifier_extra_decoded: register_int_counter_with_registry!(
                "livewatch_classifier_extra_decoded_total",
                "Pictures decoded only because the classifier samples keyframes-mode streams between keyframes",
                r
            )
            .unwrap(),
            classifier_info: register_int_gauge_vec_with_registry!(
                "livewatch_classifier_info",
                "Models in use: the execution provider running each, its mode and where pre-processing runs",
                &["model", "provider", "mode", "preprocess"],
                r
            )
            .unwrap(),
            classifier_frames: register_int_counter_vec_with_registry!(
                "livewatch_classifier_frames_total",
                "Frames scored by each model",
                &["model"],
                r
            )
            .unwrap(),
            classifier_errors: register_int_counter_vec_with_registry!(
                "livewatch_classifier_errors_total",
                "Batches a model failed to score (their frames go unscored)",
                &["model"],
                r
            )
            .unwrap(),
            classifier_batch: register_histogram_with_registry!(
                "livewatch_classifier_batch_size",
                "Frames per inference batch",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
                r
            )
            .unwrap(),
            classifier_seconds: register_histogram_vec_with_registry!(
                "livewatch_classifier_seconds",
                "Time per batch in each classifier step (queue: per frame)",
                &["stage"],
                LATENCY_BUCKETS.to_vec(),
                r
            )
            .unwrap(),
            classifier_score: register_histogram_vec_with_registry!(
                "livewatch_classifier_score",
                "Scores of the violence labels, for choosing thresholds",
                &["model", "label"],
                vec![0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
                r
            )
            .unwrap(),
            classifier_triggers: register_int_counter_vec_with_registry!(
                "livewatch_classifier_triggers_total",
                "Classifier incidents opened (mode enforce) or that would have opened (mode shadow)",
                &["model", "label", "mode"],
                r
            )
            .unwrap(),
            classifier_queue: register_int_gauge_with_registry!(
                "livewatch_classifier_queue_frames",
                "Frames waiting for the classifier",
                r
            )
            .unwrap(),
            registry: r,
        };
        for s in classifier_stage::ALL {
            m.classifier_seconds.with_label_values(&[s]);
        }
        for reason in [
            drop_reason::DECODE_QUEUE_FULL,
            drop_reason::AWAITING_KEYFRAME,
            drop_reason::HASH_QUEUE_FULL,
            drop_reason::CLASSIFY_QUEUE_FULL,
            drop_reason::DECODE_ERROR,
            drop_reason::NOT_SAMPLED,
        ] {
            m.frames_dropped.with_label_values(&[reason]);
        }
        for s in crate::stream::StreamState::ALL {
            m.streams.with_label_values(&[s.as_str()]);
        }
        for s in [
            stage::DECODE,
            stage::HASH,
            stage::MATCH,
            stage::QUEUE,
            stage::DELIVER,
        ] {
            m.stage_seconds.with_label_values(&[s]);
        }
        m
    }

    /// The text exposition format served at `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn metrics() -> &'static Metrics {
    &METRICS
}
