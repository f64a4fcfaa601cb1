//! The configuration file: TOML, strict, documented field by field.
//!
//! [`RawConfig`] is what the file says; [`RawConfig::validate`] turns it into [`Config`], the
//! only type the pipeline accepts, or into a [`ConfigError`] that names the field and line.
//! Every field is described in `docs/config.md`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::decide::{Action, Policy, Reason, Severity};
use crate::redact::RedactedUrl;

/// A configuration problem, located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {field}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub sampling: SamplingConfig,
    #[serde(default)]
    pub streams: Vec<RawStream>,
    #[serde(default)]
    pub banks: Vec<RawBank>,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    #[serde(default, rename = "match")]
    pub matching: MatchConfig,
    #[serde(default)]
    pub alerts: AlertConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub hash: HashConfig,
    #[serde(default)]
    pub classifier: ClassifierConfig,
    #[serde(default)]
    pub evidence: EvidenceConfig,
}

/// `[evidence]`: thumbnails of triggering frames, kept for banks and models that allow it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Thumbnails older than this are deleted.
    #[serde(default = "default_evidence_hours")]
    pub retention_hours: f64,
    /// The oldest thumbnails are deleted while all of them take more than this.
    #[serde(default = "default_evidence_mb")]
    pub max_mb: u64,
    /// Width of a thumbnail in pixels (height follows the aspect ratio); frames are never enlarged.
    #[serde(default = "default_thumb_width")]
    pub thumbnail_width: u32,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            retention_hours: default_evidence_hours(),
            max_mb: default_evidence_mb(),
            thumbnail_width: default_thumb_width(),
        }
    }
}

fn default_evidence_hours() -> f64 {
    168.0
}
fn default_evidence_mb() -> u64 {
    1024
}
fn default_thumb_width() -> u32 {
    480
}

/// `[hash]`: where PDQ runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashConfig {
    /// `auto` takes a real GPU adapter when there is one, else the CPU; `gpu` insists on a
    /// GPU (start fails without one); `cpu` never touches the GPU.
    #[serde(default)]
    pub backend: HashBackend,
    /// Which GPU adapter: its index in the list `livewatch adapters` prints, or a
    /// case-insensitive part of its name. Default: the first real GPU.
    #[serde(default)]
    pub adapter: Option<AdapterSelector>,
    /// Accept a software adapter (Mesa's lavapipe) for `backend = "gpu"`: the same results,
    /// but slower than the CPU path. For testing the shaders on GPU-less machines.
    #[serde(default)]
    pub allow_software: bool,
    /// Frames hashed per GPU batch, at most.
    #[serde(default = "default_gpu_batch")]
    pub batch: usize,
}

impl Default for HashConfig {
    fn default() -> Self {
        Self {
            backend: HashBackend::Auto,
            adapter: None,
            allow_software: false,
            batch: default_gpu_batch(),
        }
    }
}

fn default_gpu_batch() -> usize {
    64
}

/// `[classifier]`: violence classification with ONNX models. Off while `models` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Folder of model manifests (`*.toml`) and their files.
    #[serde(default = "default_models_dir")]
    pub models_dir: String,
    /// ONNX Runtime's shared library (`libonnxruntime.so.*`); default: `$ORT_DYLIB_PATH`, then
    /// the project's Python environment.
    #[serde(default)]
    pub onnxruntime: Option<String>,
    /// Execution providers, in order of preference: `cpu`, `cuda`, `tensorrt`.
    #[serde(default = "default_providers")]
    pub providers: Vec<crate::classify::runtime::ProviderKind>,
    /// A GPU provider that cannot load falls back to the CPU (with an error in the log and
    /// the provider shown in metrics and status) instead of stopping the start.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// CUDA / TensorRT device.
    #[serde(default)]
    pub device_id: i32,
    /// Where pre-processing runs: like `hash.backend`.
    #[serde(default)]
    pub preprocess: HashBackend,
    #[serde(default)]
    pub adapter: Option<AdapterSelector>,
    #[serde(default)]
    pub allow_software: bool,
    /// Inference workers; each holds its own session of every model.
    #[serde(default = "default_one")]
    pub workers: usize,
    /// Frames per inference batch, at most (frames of many streams go into one batch).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a batch waits for more frames once its first frame is there.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// ONNX Runtime's intra-op threads per session; 0: its default.
    #[serde(default)]
    pub intra_threads: usize,
    /// Frames per second classified per stream (`[[streams]] sampling.classify_fps` overrides).
    #[serde(default = "default_rate")]
    pub fps: f64,
    /// Frames waiting for the classifier, at most (the oldest of a stream is dropped first).
    #[serde(default = "default_classify_queue")]
    pub queue: usize,
    #[serde(default)]
    pub models: Vec<RawModel>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_models_dir() -> String {
    "models".into()
}
fn default_providers() -> Vec<crate::classify::runtime::ProviderKind> {
    vec![crate::classify::runtime::ProviderKind::Cpu]
}
fn default_one() -> usize {
    1
}
fn default_max_batch() -> usize {
    16
}
fn default_max_wait_ms() -> u64 {
    20
}
fn default_classify_queue() -> usize {
    256
}

/// How a model's scores become a decision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WindowRule {
    /// At least `min_frames` of the last `window_frames` scored frames reach the threshold.
    #[default]
    KOfN,
    /// The mean score of the last `window_frames` frames reaches the threshold.
    Mean,
}

/// `[[classifier.models]]`: one model in use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The manifest's `name` (or its file stem) in `models_dir`.
    pub name: Spanned<String>,
    /// Scores and would-be alerts are recorded and counted; nothing is sent.
    #[serde(default)]
    pub shadow: bool,
    /// Thresholds per label, replacing the manifest's defaults (labels listed here and not in
    /// the manifest's `[violence]` table are added).
    #[serde(default)]
    pub thresholds: std::collections::BTreeMap<String, f32>,
    #[serde(default)]
    pub rule: WindowRule,
    #[serde(default = "default_window_frames")]
    pub window_frames: usize,
    #[serde(default = "default_min_frames")]
    pub min_frames: usize,
    #[serde(default = "default_model_severity")]
    pub severity: Severity,
    #[serde(default = "default_model_action")]
    pub action: Action,
    #[serde(default)]
    pub store_evidence: bool,
}

fn default_window_frames() -> usize {
    5
}
fn default_min_frames() -> usize {
    3
}
fn default_model_severity() -> Severity {
    Severity::High
}
fn default_model_action() -> Action {
    Action::Review
}

/// A model in use, validated (its manifest is checked when the classifier starts).
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub shadow: bool,
    pub thresholds: std::collections::BTreeMap<String, f32>,
    pub rule: WindowRule,
    pub window_frames: usize,
    pub min_frames: usize,
    pub severity: Severity,
    pub action: Action,
    pub store_evidence: bool,
}

/// `[classifier]`, validated.
#[derive(Debug, Clone)]
pub struct ClassifierSpec {
    pub models_dir: PathBuf,
    pub onnxruntime: Option<PathBuf>,
    pub providers: Vec<crate::classify::runtime::ProviderKind>,
    pub allow_cpu_fallback: bool,
    pub device_id: i32,
    pub preprocess: HashBackend,
    pub adapter: Option<AdapterSelector>,
    pub allow_software: bool,
    pub workers: usize,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub intra_threads: usize,
    /// Default frames per second classified per stream.
    pub fps: f64,
    pub queue: usize,
    pub models: Vec<ModelSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HashBackend {
    #[default]
    Auto,
    Gpu,
    Cpu,
}

/// A GPU adapter by index or by (part of) its name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AdapterSelector {
    Index(usize),
    Name(String),
}

impl std::str::FromStr for AdapterSelector {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(s.parse::<usize>()
            .map(AdapterSelector::Index)
            .unwrap_or_else(|_| AdapterSelector::Name(s.to_string())))
    }
}

/// `[server]`: the HTTP listener for /metrics, /healthz, /readyz and the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Where the outbox and evidence live; defaults to systemd's `$STATE_DIRECTORY`.
    pub state_dir: Option<Spanned<String>>,
    /// Streams this appliance accepts at most; 0 = 16 per CPU.
    #[serde(default)]
    pub max_streams: usize,
    /// Bearer tokens accepted by the API.
    #[serde(default)]
    pub api_tokens: Vec<Spanned<String>>,
    /// A file holding one token per line (relative: from `$CREDENTIALS_DIRECTORY` when set).
    pub api_token_file: Option<Spanned<String>>,
    /// Paths served without a token.
    #[serde(default = "default_auth_exempt")]
    pub auth_exempt: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            state_dir: None,
            max_streams: 0,
            api_tokens: Vec::new(),
            api_token_file: None,
            auth_exempt: default_auth_exempt(),
        }
    }
}

fn default_auth_exempt() -> Vec<String> {
    ["/metrics", "/healthz", "/readyz"]
        .map(String::from)
        .to_vec()
}

/// Where a secret file named in the config lives: absolute as given; relative, in systemd's
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`) when set, else beside the config file.
pub fn secret_path(base: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => Path::new(&dir).join(p),
        None => base.join(p),
    }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9750".to_string())
}

/// How frames are chosen for analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    /// Decode and analyse keyframes only (IDR, CRA, recovery points): cheapest.
    Keyframes,
    /// Decode every frame and analyse `rate` frames per second.
    Fps,
}

/// `[sampling]`, and the optional per-stream override.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    #[serde(default = "default_mode")]
    pub mode: SamplingMode,
    /// Frames per second analysed in `fps` mode, and in the keyframe fallback.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// A stream in `keyframes` mode that sends no keyframe for this many seconds falls back to
    /// `fps` sampling until keyframes come again.
    #[serde(default = "default_keyframe_timeout")]
    pub keyframe_timeout_secs: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            rate: default_rate(),
            keyframe_timeout_secs: default_keyframe_timeout(),
        }
    }
}

fn default_mode() -> SamplingMode {
    SamplingMode::Keyframes
}
fn default_rate() -> f64 {
    2.0
}
fn default_keyframe_timeout() -> f64 {
    10.0
}

/// Per-stream override of `[sampling]`: fields left out keep the global value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverride {
    pub mode: Option<SamplingMode>,
    pub rate: Option<f64>,
    pub keyframe_timeout_secs: Option<f64>,
    /// Frames per second for the classifier; 0 leaves this stream out of classification.
    pub classify_fps: Option<f64>,
}

/// `[[streams]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub id: Spanned<String>,
    pub url: Spanned<String>,
    pub sampling: Option<SamplingOverride>,
    /// Anything the platform attaches (account, title, ...): carried by the stream's incidents.
    pub metadata: Option<toml::Table>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankFormat {
    /// One PDQ hex per line, optional further comma-separated columns, `#` comments.
    Pdq,
    /// A CSV export with a header row (ThreatExchange / HMA style): see `docs/banks.md`.
    HmaCsv,
    /// vPDQ files (`frame,quality,hex,timestamp`), one file per video item: `path` is one
    /// such file or a folder of them.
    Vpdq,
}

/// `[[banks]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBank {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    #[serde(default = "default_bank_format")]
    pub format: BankFormat,
    /// Overrides `[match].distance` for this bank.
    pub distance: Option<Spanned<u32>>,
    #[serde(default = "default_bank_severity")]
    pub severity: Severity,
    #[serde(default = "default_bank_action")]
    pub action: Action,
    /// Whether thumbnails of this bank's matches may be stored (some lists cover material that
    /// must never be kept).
    #[serde(default)]
    pub store_evidence: bool,
    /// An allow-list: a frame matching it raises nothing, whatever else it matches.
    #[serde(default)]
    pub negative: bool,
    /// Match the frame's 8 rotations and flips too (costs a little more hashing).
    #[serde(default)]
    pub dihedral: bool,
    /// Video banks: overrides of `[match]` `video_window_secs`, `video_min_percent`,
    /// `video_min_frames`.
    pub window_secs: Option<f64>,
    pub min_percent: Option<f64>,
    pub min_frames: Option<usize>,
}

fn default_bank_severity() -> Severity {
    Severity::Critical
}
fn default_bank_action() -> Action {
    Action::Suspend
}

fn default_bank_format() -> BankFormat {
    BankFormat::Pdq
}

/// `[[webhooks]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Names the endpoint in metrics, the API and the outbox; defaults to `webhook-<index>`.
    pub name: Option<Spanned<String>>,
    pub url: Spanned<String>,
    /// Standard Webhooks secret: `whsec_` followed by base64.
    pub secret: Option<Spanned<String>>,
    /// A file holding the secret(s), one per line (relative: from `$CREDENTIALS_DIRECTORY`).
    pub secret_file: Option<Spanned<String>>,
    /// Further secrets, all of which sign every message (for rotation).
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    /// Seconds to wait for the receiver's answer to one attempt.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: f64,
    /// Delays before the retries, in seconds (the first attempt is immediate).
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule_secs: Spanned<Vec<f64>>,
    /// Deliveries in flight at once to this endpoint.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Only incidents with these reasons (all when absent).
    pub reasons: Option<Vec<Reason>>,
    /// Only incidents at least this severe.
    pub min_severity: Option<Severity>,
    /// PEM file of the CA certificates to trust for this endpoint (instead of the system's).
    pub ca_file: Option<Spanned<String>>,
    /// PEM client certificate (chain) and key, for receivers that require mutual TLS.
    pub client_cert_file: Option<Spanned<String>>,
    pub client_key_file: Option<Spanned<String>>,
}

fn default_webhook_timeout() -> f64 {
    5.0
}
/// The Standard Webhooks example schedule's shape (immediately, seconds, minutes), cut off
/// after about 20 minutes: a takedown alert hours late is of no use to a live broadcast.
fn default_retry_schedule() -> Spanned<Vec<f64>> {
    Spanned::new(0..0, vec![5.0, 30.0, 120.0, 300.0, 600.0])
}
fn default_concurrency() -> usize {
    8
}

/// `[match]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Largest Hamming distance (of 256 bits) that counts as a match.
    #[serde(default = "default_distance")]
    pub distance: u32,
    /// Frames whose PDQ quality is below this are not matched (too flat to be trusted).
    #[serde(default = "default_min_quality")]
    pub min_quality: u8,
    /// Video banks: the window of a stream's recent sampled frames looked at, in seconds.
    #[serde(default = "default_video_window")]
    pub video_window_secs: f64,
    /// Video banks: share of the window's frames that must match one item, in percent.
    #[serde(default = "default_video_percent")]
    pub video_min_percent: f64,
    /// Video banks: and at least this many frames.
    #[serde(default = "default_video_frames")]
    pub video_min_frames: usize,
    /// Where large banks (4096 hashes and more) are matched: `auto` copies them into a real
    /// GPU's memory when there is one and scans them there, a batch of frames per dispatch;
    /// `gpu` insists (start fails without one); `cpu` keeps them in the multi-index.
    #[serde(default)]
    pub backend: HashBackend,
    /// Which GPU adapter, as for `hash.adapter`.
    #[serde(default)]
    pub adapter: Option<AdapterSelector>,
    /// Accept a software adapter (Mesa's lavapipe) for `backend = "gpu"`: exact, but much
    /// slower than the index. For testing the kernel on GPU-less machines.
    #[serde(default)]
    pub allow_software: bool,
}

impl Default for MatchConfig {
    fn default() -> Self {
        Self {
            distance: default_distance(),
            min_quality: default_min_quality(),
            video_window_secs: default_video_window(),
            video_min_percent: default_video_percent(),
            video_min_frames: default_video_frames(),
            backend: HashBackend::Auto,
            adapter: None,
            allow_software: false,
        }
    }
}

fn default_video_window() -> f64 {
    10.0
}
fn default_video_percent() -> f64 {
    80.0
}
fn default_video_frames() -> usize {
    5
}

fn default_distance() -> u32 {
    31
}
fn default_min_quality() -> u8 {
    50
}

/// `[alerts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// After an incident resolves, no new incident opens for its stream and reason for this
    /// many seconds (matches meanwhile are counted, not sent).
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: f64,
    /// At most one `updated` event per incident per this many seconds.
    #[serde(default = "default_update_interval")]
    pub update_interval_secs: f64,
    /// An incident without new evidence for this long resolves by itself.
    #[serde(default = "default_resolve_after")]
    pub resolve_after_secs: f64,
    /// Resolved incidents, and their delivered events, are kept this many days.
    #[serde(default = "default_history_days")]
    pub history_days: f64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            cooldown_secs: default_cooldown(),
            update_interval_secs: default_update_interval(),
            resolve_after_secs: default_resolve_after(),
            history_days: default_history_days(),
        }
    }
}

fn default_cooldown() -> f64 {
    60.0
}
fn default_update_interval() -> f64 {
    10.0
}
fn default_resolve_after() -> f64 {
    120.0
}
fn default_history_days() -> f64 {
    30.0
}

/// `[source]`: connection behaviour shared by all streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// First reconnect delay; doubles per failure (with jitter) up to `reconnect_max_secs`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_secs: f64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: f64,
    /// A stream that delivers no data for this long is treated as dead and reconnected.
    #[serde(default = "default_stall")]
    pub stall_timeout_secs: f64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            reconnect_min_secs: default_reconnect_min(),
            reconnect_max_secs: default_reconnect_max(),
            stall_timeout_secs: default_stall(),
        }
    }
}

fn default_reconnect_min() -> f64 {
    0.5
}
fn default_reconnect_max() -> f64 {
    30.0
}
fn default_stall() -> f64 {
    10.0
}

/// `[pipeline]`: threads and queue sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Decoder threads (streams are spread over them). 0 = number of CPUs, at most 8.
    #[serde(default)]
    pub decode_threads: usize,
    /// Hashing threads. 0 = half the CPUs, at least 1.
    #[serde(default)]
    pub hash_threads: usize,
    /// Compressed access units queued per decoder thread before the stream drops to its next
    /// keyframe.
    #[serde(default = "default_au_queue")]
    pub decode_queue: usize,
    /// Decoded frames queued for hashing before the oldest frame of the same stream is dropped.
    #[serde(default = "default_frame_queue")]
    pub frame_queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            decode_threads: 0,
            hash_threads: 0,
            decode_queue: default_au_queue(),
            frame_queue: default_frame_queue(),
        }
    }
}

fn default_au_queue() -> usize {
    256
}
fn default_frame_queue() -> usize {
    64
}

/// Sampling in force for one stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub mode: SamplingMode,
    pub rate: f64,
    pub keyframe_timeout: Duration,
    /// Frames per second for the classifier; `None`: not classified.
    pub classify: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub id: String,
    pub url: Url,
    pub sampling: Sampling,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl StreamSpec {
    pub fn redacted_url(&self) -> RedactedUrl<'_> {
        RedactedUrl(&self.url)
    }
}

#[derive(Debug, Clone)]
pub struct BankSpec {
    pub name: String,
    pub path: PathBuf,
    pub format: BankFormat,
    pub distance: u32,
    pub severity: Severity,
    pub action: Action,
    pub store_evidence: bool,
    pub negative: bool,
    pub dihedral: bool,
    pub video: VideoRule,
    /// Frames of banked videos below this quality are left out (as live frames are).
    pub min_quality: u8,
}

/// When a window of a stream's frames counts as showing a banked video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoRule {
    pub window: Duration,
    pub min_percent: f64,
    pub min_frames: usize,
}

#[derive(Clone)]
pub struct WebhookSpec {
    pub name: String,
    pub url: Url,
    /// One or more `whsec_` secrets; every message is signed with each.
    pub secrets: Vec<String>,
    pub timeout: Duration,
    /// Delays before each retry; after the last one fails the message is dead-lettered.
    pub retry_schedule: Vec<Duration>,
    pub concurrency: usize,
    pub reasons: Option<Vec<Reason>>,
    pub min_severity: Option<Severity>,
    /// PEM bytes of the CA bundle to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM bytes of the client certificate chain followed by its key.
    pub identity_pem: Option<Vec<u8>>,
}

impl WebhookSpec {
    /// Whether this endpoint takes incidents of this reason and severity.
    pub fn wants(&self, reason: Reason, severity: Severity) -> bool {
        self.reasons.as_ref().is_none_or(|r| r.contains(&reason))
            && self.min_severity.is_none_or(|m| severity >= m)
    }
}

impl std::fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSpec")
            .field("name", &self.name)
            .field("url", &RedactedUrl(&self.url).to_string())
            .field("secrets", &format!("<{} redacted>", self.secrets.len()))
            .finish()
    }
}

/// `[alerts]` and `[evidence]`, validated.
#[derive(Debug, Clone)]
pub struct AlertPolicy {
    pub incidents: Policy,
    pub history: Duration,
    pub evidence_retention: Duration,
    pub evidence_max_bytes: u64,
    pub thumbnail_width: u32,
}

/// A validated configuration: the only form the pipeline accepts.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The configuration file, when loaded from one (for reloads).
    pub path: Option<PathBuf>,
    /// Folder relative paths are taken from.
    pub base: PathBuf,
    /// Sampling of streams that do not say otherwise (API streams included).
    pub sampling: Sampling,
    pub max_streams: usize,
    /// Bearer tokens the API accepts; empty: the API is open (loopback listeners only).
    pub api_tokens: Vec<String>,
    pub auth_exempt: Vec<String>,
    pub streams: Vec<StreamSpec>,
    pub banks: Vec<BankSpec>,
    pub webhooks: Vec<WebhookSpec>,
    pub matching: MatchConfig,
    pub alerts: AlertPolicy,
    pub state_dir: PathBuf,
    pub source: SourceConfig,
    pub pipeline: PipelineConfig,
    pub hash: HashConfig,
    /// `None` when no model is configured.
    pub classifier: Option<ClassifierSpec>,
}

/// URL schemes a stream may use: RTSP through retina, everything else through libavformat.
pub const STREAM_SCHEMES: &[&str] = &[
    "rtsp", "rtsps", "file", "http", "https", "rtmp", "rtmps", "srt", "udp", "tcp", "rtp",
];

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        field: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut c = parse(&text, path, base)?;
    c.path = Some(path.to_path_buf());
    Ok(c)
}

/// Parses and validates configuration text; relative paths are taken from `base`.
pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        ConfigError {
            file: file.to_path_buf(),
            line,
            field: "(syntax)".into(),
            message: e.message().trim().to_string(),
        }
    })?;
    raw.validate(text, file, base)
}

/// The line of `section.key` in the file, for values that carry no position: the first
/// `key = ...` after the `[section]` header and before the next header.
fn line_of_key(text: &str, field: &str) -> Option<usize> {
    let (section, key) = field.rsplit_once('.')?;
    let mut inside = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            inside = line.trim_matches(|c| c == '[' || c == ']').trim() == section;
            continue;
        }
        if inside {
            if let Some(rest) = line.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Seconds to a duration; out-of-range values saturate (validation then refuses them).
fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX)
}

impl RawConfig {
    pub fn validate(self, text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
        let err =
            |span: Option<std::ops::Range<usize>>, field: String, message: String| ConfigError {
                file: file.to_path_buf(),
                line: span
                    .filter(|s| s.end > 0)
                    .map(|s| line_of(text, s.start))
                    .or_else(|| line_of_key(text, &field)),
                field,
                message,
            };

        let listen = self
            .server
            .listen
            .get_ref()
            .parse::<SocketAddr>()
            .map_err(|e| {
                err(
                    Some(self.server.listen.span()),
                    "server.listen".into(),
                    format!("not an address:port ({e})"),
                )
            })?;

        // every duration is bounded, so no later arithmetic on it can overflow
        const MAX_SECS: f64 = 10.0 * 365.0 * 86400.0;
        let positive = |v: f64, field: &str| {
            if v.is_finite() && v > 0.0 && v <= MAX_SECS {
                Ok(())
            } else {
                Err(err(
                    None,
                    field.to_string(),
                    format!("must be a positive duration of at most 10 years, got {v}"),
                ))
            }
        };
        positive(
            self.sampling.keyframe_timeout_secs,
            "sampling.keyframe_timeout_secs",
        )?;
        if !(self.sampling.rate.is_finite()
            && self.sampling.rate > 0.0
            && self.sampling.rate <= 240.0)
        {
            return Err(err(
                None,
                "sampling.rate".into(),
                format!(
                    "must be in (0, 240] frames per second, got {}",
                    self.sampling.rate
                ),
            ));
        }
        positive(self.alerts.cooldown_secs, "alerts.cooldown_secs").or_else(|e| {
            if self.alerts.cooldown_secs == 0.0 {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        positive(self.source.reconnect_min_secs, "source.reconnect_min_secs")?;
        positive(self.source.reconnect_max_secs, "source.reconnect_max_secs")?;
        positive(self.source.stall_timeout_secs, "source.stall_timeout_secs")?;
        if self.source.reconnect_max_secs < self.source.reconnect_min_secs {
            return Err(err(
                None,
                "source.reconnect_max_secs".into(),
                "must not be below reconnect_min_secs".into(),
            ));
        }
        if self.matching.distance > 256 {
            return Err(err(
                None,
                "match.distance".into(),
                "a PDQ hash has 256 bits".into(),
            ));
        }
        if self.matching.min_quality > 100 {
            return Err(err(
                None,
                "match.min_quality".into(),
                "quality is 0..=100".into(),
            ));
        }
        if self.hash.batch == 0 || self.hash.batch > 4096 {
            return Err(err(
                None,
                "hash.batch".into(),
                "must be 1 to 4096 frames".into(),
            ));
        }
        if self.pipeline.decode_queue == 0 || self.pipeline.frame_queue == 0 {
            return Err(err(
                None,
                "pipeline".into(),
                "queue sizes must be at least 1".into(),
            ));
        }

        let classifier = self.classifier.validate(base, &err)?;
        let classify_rate = |o: Option<f64>, field: String| -> Result<Option<f64>, ConfigError> {
            let Some(c) = &classifier else {
                return Ok(None);
            };
            match o {
                None => Ok(Some(c.fps)),
                Some(0.0) => Ok(None),
                Some(v) if v.is_finite() && v > 0.0 && v <= 240.0 => Ok(Some(v)),
                Some(v) => Err(err(
                    None,
                    field,
                    format!("must be 0 (off) or in (0, 240] frames per second, got {v}"),
                )),
            }
        };

        let mut ids = HashSet::new();
        let mut streams = Vec::with_capacity(self.streams.len());
        for (i, s) in self.streams.iter().enumerate() {
            let id = s.id.get_ref();
            validate_id(id).map_err(|m| err(Some(s.id.span()), format!("streams[{i}].id"), m))?;
            if !ids.insert(id.clone()) {
                return Err(err(
                    Some(s.id.span()),
                    format!("streams[{i}].id"),
                    format!("duplicate stream id {id:?}"),
                ));
            }
            let url = parse_stream_url(s.url.get_ref(), base)
                .map_err(|m| err(Some(s.url.span()), format!("streams[{i}].url"), m))?;
            let o = s.sampling.as_ref();
            let sampling = Sampling {
                mode: o.and_then(|o| o.mode).unwrap_or(self.sampling.mode),
                rate: o.and_then(|o| o.rate).unwrap_or(self.sampling.rate),
                keyframe_timeout: secs(
                    o.and_then(|o| o.keyframe_timeout_secs)
                        .unwrap_or(self.sampling.keyframe_timeout_secs),
                ),
                classify: classify_rate(
                    o.and_then(|o| o.classify_fps),
                    format!("streams[{i}].sampling.classify_fps"),
                )?,
            };
            if !(sampling.rate.is_finite() && sampling.rate > 0.0 && sampling.rate <= 240.0) {
                return Err(err(
                    Some(s.id.span()),
                    format!("streams[{i}].sampling.rate"),
                    "must be in (0, 240]".into(),
                ));
            }
            if let Some(t) = o.and_then(|o| o.keyframe_timeout_secs) {
                positive(t, &format!("streams[{i}].sampling.keyframe_timeout_secs"))?;
            }
            let metadata = match &s.metadata {
                Some(t) => match serde_json::to_value(t) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => {
                        return Err(err(
                            Some(s.id.span()),
                            format!("streams[{i}].metadata"),
                            "must be a table of plain values".into(),
                        ))
                    }
                },
                None => serde_json::Map::new(),
            };
            streams.push(StreamSpec {
                id: id.clone(),
                url,
                sampling,
                metadata,
            });
        }

        let mut names = HashSet::new();
        let mut banks = Vec::with_capacity(self.banks.len());
        for (i, b) in self.banks.iter().enumerate() {
            let name = b.name.get_ref();
            validate_id(name)
                .map_err(|m| err(Some(b.name.span()), format!("banks[{i}].name"), m))?;
            if !names.insert(name.clone()) {
                return Err(err(
                    Some(b.name.span()),
                    format!("banks[{i}].name"),
                    format!("duplicate bank name {name:?}"),
                ));
            }
            let path = base.join(b.path.get_ref());
            let ok = path.is_file() || (b.format == BankFormat::Vpdq && path.is_dir());
            if !ok {
                return Err(err(
                    Some(b.path.span()),
                    format!("banks[{i}].path"),
                    format!(
                        "bank file {} does not exist or is not a file{}",
                        path.display(),
                        if b.format == BankFormat::Vpdq {
                            " or folder"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            let video = VideoRule {
                window: secs(b.window_secs.unwrap_or(self.matching.video_window_secs)),
                min_percent: b.min_percent.unwrap_or(self.matching.video_min_percent),
                min_frames: b.min_frames.unwrap_or(self.matching.video_min_frames),
            };
            let window_ok =
                (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&video.window);
            let percent_ok = video.min_percent > 0.0 && video.min_percent <= 100.0;
            if !window_ok || !percent_ok || video.min_frames == 0 {
                return Err(err(
                    Some(b.name.span()),
                    format!("banks[{i}]"),
                    "video rule: window 1 to 3600 s, min_percent in (0, 100], min_frames at least 1".into(),
                ));
            }
            if b.negative && b.format == BankFormat::Vpdq {
                return Err(err(
                    Some(b.name.span()),
                    format!("banks[{i}].negative"),
                    "allow-lists are image banks (pdq or hma_csv)".into(),
                ));
            }
            let distance = match &b.distance {
                Some(d) if *d.get_ref() > 256 => {
                    return Err(err(
                        Some(d.span()),
                        format!("banks[{i}].distance"),
                        "a PDQ hash has 256 bits".into(),
                    ))
                }
                Some(d) => *d.get_ref(),
                None => self.matching.distance,
            };
            banks.push(BankSpec {
                name: name.clone(),
                path,
                format: b.format,
                distance,
                severity: b.severity,
                action: b.action,
                store_evidence: b.store_evidence,
                negative: b.negative,
                dihedral: b.dihedral,
                video,
                min_quality: self.matching.min_quality,
            });
        }

        let mut webhooks: Vec<WebhookSpec> = Vec::with_capacity(self.webhooks.len());
        for (i, w) in self.webhooks.iter().enumerate() {
            let field = |f: &str| format!("webhooks[{i}].{f}");
            let name = match &w.name {
                Some(n) => {
                    validate_id(n.get_ref()).map_err(|m| err(Some(n.span()), field("name"), m))?;
                    n.get_ref().clone()
                }
                // pending deliveries are kept under the name: with several endpoints, a name
                // from the position would move them to another receiver when the list changes
                None if self.webhooks.len() > 1 => {
                    return Err(err(
                        Some(w.url.span()),
                        field("name"),
                        "with more than one webhook, each needs a name".into(),
                    ))
                }
                None => format!("webhook-{i}"),
            };
            if webhooks.iter().any(|o| o.name == name) {
                return Err(err(
                    w.name.as_ref().map(|n| n.span()).or(Some(w.url.span())),
                    field("name"),
                    format!("duplicate webhook name {name:?}"),
                ));
            }
            let url = Url::parse(w.url.get_ref())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                .ok_or_else(|| {
                    err(
                        Some(w.url.span()),
                        field("url"),
                        "must be an http:// or https:// URL".into(),
                    )
                })?;
            let mut secrets = Vec::new();
            for (f, s) in w.secret.iter().map(|s| ("secret".to_string(), s)).chain(
                w.secrets
                    .iter()
                    .enumerate()
                    .map(|(k, s)| (format!("secrets[{k}]"), s)),
            ) {
                valid_secret(s.get_ref()).then_some(()).ok_or_else(|| {
                    err(
                        Some(s.span()),
                        field(&f),
                        "must be \"whsec_\" followed by base64".into(),
                    )
                })?;
                secrets.push(s.get_ref().clone());
            }
            if let Some(f) = &w.secret_file {
                let path = secret_path(base, f.get_ref());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        Some(f.span()),
                        field("secret_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    if !valid_secret(line) {
                        return Err(err(
                            Some(f.span()),
                            field("secret_file"),
                            format!(
                                "{}: every line must be \"whsec_\" followed by base64",
                                path.display()
                            ),
                        ));
                    }
                    secrets.push(line.to_string());
                }
            }
            if secrets.is_empty() {
                return Err(err(
                    Some(w.url.span()),
                    field("secret"),
                    "a webhook needs `secret`, `secrets` or `secret_file`".into(),
                ));
            }
            positive(w.timeout_secs, &field("timeout_secs"))?;
            let schedule = w.retry_schedule_secs.get_ref();
            if schedule.len() > 20
                || schedule
                    .iter()
                    .any(|d| !(d.is_finite() && *d >= 0.0 && *d <= 86400.0))
            {
                return Err(err(
                    Some(w.retry_schedule_secs.span()),
                    field("retry_schedule_secs"),
                    "at most 20 delays, each 0 to 86400 seconds".into(),
                ));
            }
            if w.concurrency == 0 || w.concurrency > 1024 {
                return Err(err(
                    Some(w.url.span()),
                    field("concurrency"),
                    "must be 1 to 1024".into(),
                ));
            }
            let read = |f: &str, p: &Spanned<String>| {
                std::fs::read(base.join(p.get_ref())).map_err(|e| {
                    err(
                        Some(p.span()),
                        field(f),
                        format!("cannot read {}: {e}", base.join(p.get_ref()).display()),
                    )
                })
            };
            let ca_pem = match &w.ca_file {
                Some(p) => {
                    let pem = read("ca_file", p)?;
                    if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
                        return Err(err(
                            Some(p.span()),
                            field("ca_file"),
                            "holds no PEM certificate".into(),
                        ));
                    }
                    Some(pem)
                }
                None => None,
            };
            let identity_pem = match (&w.client_cert_file, &w.client_key_file) {
                (Some(c), Some(k)) => {
                    let mut pem = read("client_cert_file", c)?;
                    pem.push(b'\n');
                    pem.extend(read("client_key_file", k)?);
                    reqwest::Identity::from_pem(&pem).map_err(|e| {
                        err(
                            Some(c.span()),
                            field("client_cert_file"),
                            format!("not a PEM certificate and key pair: {e}"),
                        )
                    })?;
                    Some(pem)
                }
                (None, None) => None,
                (Some(c), None) | (None, Some(c)) => {
                    return Err(err(
                        Some(c.span()),
                        field("client_cert_file"),
                        "client_cert_file and client_key_file go together".into(),
                    ))
                }
            };
            webhooks.push(WebhookSpec {
                name,
                url,
                secrets,
                timeout: secs(w.timeout_secs),
                retry_schedule: schedule.iter().map(|d| secs(*d)).collect(),
                concurrency: w.concurrency,
                reasons: w.reasons.clone(),
                min_severity: w.min_severity,
                ca_pem,
                identity_pem,
            });
        }

        for (v, f) in [
            (
                self.alerts.update_interval_secs,
                "alerts.update_interval_secs",
            ),
            (self.alerts.resolve_after_secs, "alerts.resolve_after_secs"),
            (self.alerts.history_days * 86400.0, "alerts.history_days"),
            (
                self.evidence.retention_hours * 3600.0,
                "evidence.retention_hours",
            ),
        ] {
            positive(v, f)?;
        }
        if !(16..=4096).contains(&self.evidence.thumbnail_width) {
            return Err(err(
                None,
                "evidence.thumbnail_width".into(),
                "must be 16 to 4096 pixels".into(),
            ));
        }
        let state_dir = match &self.server.state_dir {
            Some(d) => base.join(d.get_ref()),
            None => match std::env::var_os("STATE_DIRECTORY") {
                // systemd may list several, separated by ':'; the first is ours
                Some(v) => PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or_default()),
                None => PathBuf::from("/var/lib/livewatch"),
            },
        };

        let mut api_tokens: Vec<String> = self
            .server
            .api_tokens
            .iter()
            .map(|t| t.get_ref().clone())
            .collect();
        if let Some(f) = &self.server.api_token_file {
            let path = secret_path(base, f.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    Some(f.span()),
                    "server.api_token_file".into(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            api_tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        if let Some(t) = api_tokens.iter().find(|t| t.len() < 16) {
            return Err(err(
                self.server.api_tokens.first().map(|t| t.span()),
                "server.api_tokens".into(),
                format!(
                    "tokens must have at least 16 characters (one has {})",
                    t.len()
                ),
            ));
        }
        if api_tokens.is_empty() && !listen.ip().is_loopback() {
            return Err(err(
                Some(self.server.listen.span()),
                "server.api_tokens".into(),
                "the API listens beyond loopback: set api_tokens or api_token_file".into(),
            ));
        }
        let max_streams = match self.server.max_streams {
            0 => {
                16 * std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            }
            n => n,
        };

        Ok(Config {
            listen,
            path: None,
            base: base.to_path_buf(),
            sampling: Sampling {
                mode: self.sampling.mode,
                rate: self.sampling.rate,
                keyframe_timeout: secs(self.sampling.keyframe_timeout_secs),
                classify: classifier.as_ref().map(|c| c.fps),
            },
            max_streams,
            api_tokens,
            auth_exempt: self.server.auth_exempt.clone(),
            streams,
            banks,
            webhooks,
            matching: self.matching,
            alerts: AlertPolicy {
                incidents: Policy {
                    update_interval: secs(self.alerts.update_interval_secs),
                    resolve_after: secs(self.alerts.resolve_after_secs),
                    cooldown: secs(self.alerts.cooldown_secs),
                },
                history: secs(self.alerts.history_days * 86400.0),
                evidence_retention: secs(self.evidence.retention_hours * 3600.0),
                evidence_max_bytes: self.evidence.max_mb.saturating_mul(1 << 20),
                thumbnail_width: self.evidence.thumbnail_width,
            },
            state_dir,
            source: self.source,
            pipeline: self.pipeline,
            hash: self.hash,
            classifier,
        })
    }
}

impl ClassifierConfig {
    /// Checks `[classifier]`; `None` when no model is configured.
    fn validate(
        &self,
        base: &Path,
        err: &dyn Fn(Option<std::ops::Range<usize>>, String, String) -> ConfigError,
    ) -> Result<Option<ClassifierSpec>, ConfigError> {
        if self.models.is_empty() {
            return Ok(None);
        }
        let f = |k: &str| format!("classifier.{k}");
        if !(self.fps.is_finite() && self.fps > 0.0 && self.fps <= 240.0) {
            return Err(err(
                None,
                f("fps"),
                format!("must be in (0, 240] frames per second, got {}", self.fps),
            ));
        }
        if self.providers.is_empty() {
            return Err(err(
                None,
                f("providers"),
                "name at least one: \"cpu\", \"cuda\" or \"tensorrt\"".into(),
            ));
        }
        for (v, k, max) in [
            (self.workers, "workers", 64),
            (self.max_batch, "max_batch", 1024),
            (self.queue, "queue", 1 << 20),
        ] {
            if v == 0 || v > max {
                return Err(err(None, f(k), format!("must be 1 to {max}, got {v}")));
            }
        }
        if self.max_wait_ms > 10_000 {
            return Err(err(
                None,
                f("max_wait_ms"),
                "must be at most 10000 ms".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut models = Vec::new();
        for (i, m) in self.models.iter().enumerate() {
            let field = |k: &str| format!("classifier.models[{i}].{k}");
            let name = m.name.get_ref();
            if !names.insert(name.clone()) {
                return Err(err(
                    Some(m.name.span()),
                    field("name"),
                    format!("model {name:?} is listed twice"),
                ));
            }
            if m.window_frames == 0 || m.window_frames > 1000 {
                return Err(err(
                    Some(m.name.span()),
                    field("window_frames"),
                    "must be 1 to 1000 frames".into(),
                ));
            }
            if m.min_frames == 0 || m.min_frames > m.window_frames {
                return Err(err(
                    Some(m.name.span()),
                    field("min_frames"),
                    format!("must be 1 to window_frames ({})", m.window_frames),
                ));
            }
            if let Some((label, t)) = m.thresholds.iter().find(|(_, t)| !(0.0..=1.0).contains(*t)) {
                return Err(err(
                    Some(m.name.span()),
                    field("thresholds"),
                    format!("threshold {t} for {label:?} is outside 0..=1"),
                ));
            }
            models.push(ModelSpec {
                name: name.clone(),
                shadow: m.shadow,
                thresholds: m.thresholds.clone(),
                rule: m.rule,
                window_frames: m.window_frames,
                min_frames: m.min_frames,
                severity: m.severity,
                action: m.action,
                store_evidence: m.store_evidence,
            });
        }
        Ok(Some(ClassifierSpec {
            models_dir: base.join(&self.models_dir),
            onnxruntime: self.onnxruntime.as_ref().map(|p| base.join(p)),
            providers: self.providers.clone(),
            allow_cpu_fallback: self.allow_cpu_fallback,
            device_id: self.device_id,
            preprocess: self.preprocess,
            adapter: self.adapter.clone(),
            allow_software: self.allow_software,
            workers: self.workers,
            max_batch: self.max_batch,
            max_wait: Duration::from_millis(self.max_wait_ms),
            intra_threads: self.intra_threads,
            fps: self.fps,
            queue: self.queue,
            models,
        }))
    }
}

/// Ids appear in logs, API paths and alert bodies: keep them printable and short.
/// A Standard Webhooks secret: `whsec_` and non-empty base64.
fn valid_secret(s: &str) -> bool {
    s.starts_with("whsec_") && s.len() > 6 && standardwebhooks::Webhook::new(s).is_ok()
}

pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(format!(
            "{id:?}: use letters, digits, '-', '_', '.', ':' only"
        ));
    }
    Ok(())
}

/// Parses a stream URL; a relative `file:` path is taken from `base`.
pub fn parse_stream_url(text: &str, base: &Path) -> Result<Url, String> {
    if let Some(rest) = text.strip_prefix("file://").filter(|r| !r.starts_with('/')) {
        let abs =
            std::path::absolute(base.join(rest)).map_err(|e| format!("bad file path: {e}"))?;
        return Url::from_file_path(&abs).map_err(|_| format!("bad file path {}", abs.display()));
    }
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !STREAM_SCHEMES.contains(&url.scheme()) {
        return Err(format!(
            "unsupported scheme {:?} (supported: {})",
            url.scheme(),
            STREAM_SCHEMES.join(", ")
        ));
    }
    if url.scheme() != "file" && !url.has_host() {
        return Err(format!("{} has no host", RedactedUrl(&url)));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("test.toml"), Path::new("."))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = check("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9750");
        assert_eq!(c.matching.distance, 31);
        assert_eq!(c.matching.min_quality, 50);
        assert!(c.streams.is_empty());
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = check("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("listne"), "{e}");
    }

    #[test]
    fn bad_stream_scheme_names_field_and_line() {
        let e = check("[[streams]]\nid = \"a\"\nurl = \"gopher://h/x\"\n").unwrap_err();
        assert_eq!(e.field, "streams[0].url");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("gopher"));
    }

    #[test]
    fn missing_bank_file_is_an_error() {
        let e = check("[[banks]]\nname = \"b\"\npath = \"no/such/file.pdq\"\n").unwrap_err();
        assert_eq!(e.field, "banks[0].path");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn bad_secret_is_rejected_without_echoing_it() {
        let e = check("[[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"hunter2\"\n")
            .unwrap_err();
        assert_eq!(e.field, "webhooks[0].secret");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn stream_sampling_override_keeps_other_global_values() {
        let c = check(
            "[sampling]\nmode = \"keyframes\"\nrate = 3.0\n[[streams]]\nid = \"a\"\nurl = \"rtsp://h/x\"\nsampling = { mode = \"fps\" }\n",
        )
        .unwrap();
        assert_eq!(c.streams[0].sampling.mode, SamplingMode::Fps);
        assert_eq!(c.streams[0].sampling.rate, 3.0);
    }

    #[test]
    fn duplicate_stream_ids_are_rejected() {
        let e = check("[[streams]]\nid = \"a\"\nurl = \"rtsp://h/x\"\n[[streams]]\nid = \"a\"\nurl = \"rtsp://h/y\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5));
    }

    #[test]
    fn relative_file_url_is_resolved_against_the_config_folder() {
        let u = parse_stream_url("file://clips/a.mp4", Path::new("/etc/livewatch")).unwrap();
        assert_eq!(u.as_str(), "file:///etc/livewatch/clips/a.mp4");
    }

    #[test]
    fn range_errors_name_the_line_of_their_key() {
        let e = check(
            "[server]\nlisten = \"127.0.0.1:9\"\n\n[alerts]\n# quiet\nupdate_interval_secs = -1\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "alerts.update_interval_secs");
        assert_eq!(e.line, Some(6), "{e}");
    }
}
