//! The set of streams the appliance watches, as the config file and the API define it.
//!
//! Streams come from two places: the config file (`[[streams]]`, replaced on reload) and the
//! API (`PUT /v1/streams/{id}` and `DELETE`), which is how a platform attaches the box to
//! broadcasts as they start and stop. API streams are persisted in the state directory
//! (`streams.json`) and survive reloads and restarts. An id belongs to one of the two: the
//! API cannot change a stream the config file defines.
//!
//! Each running stream has a key, a [`StreamStatus`] in the [`Registry`] (where decoders and
//! hash threads look it up) and a supervised source task. Changing a stream restarts it under
//! a new key; removing it cancels the task and, once the task ended, drops its status.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alert::AlertsHandle;
use crate::config::{Sampling, SamplingMode, SourceConfig, StreamSpec};
use crate::source;
use crate::source::DecodeMsg;
use crate::stream::{StreamKey, StreamReport, StreamStatus};

/// Key → status, for the decode and hash threads.
#[derive(Default)]
pub struct Registry {
    map: RwLock<HashMap<StreamKey, Arc<StreamStatus>>>,
}

impl Registry {
    pub fn get(&self, key: StreamKey) -> Option<Arc<StreamStatus>> {
        self.map.read().get(&key).cloned()
    }
    fn insert(&self, s: Arc<StreamStatus>) {
        self.map.write().insert(s.key, s);
    }
    fn remove(&self, key: StreamKey) -> Option<Arc<StreamStatus>> {
        self.map.write().remove(&key)
    }
    pub fn all(&self) -> Vec<Arc<StreamStatus>> {
        self.map.read().values().cloned().collect()
    }
}

/// Where a stream was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Api,
}

/// What `PUT /v1/streams/{id}` takes, and what `streams.json` keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    /// Any URL a `[[streams]]` entry accepts.
    pub url: String,
    /// Whatever the platform attaches: account, title, risk tier, ...
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Overrides of the default sampling.
    #[serde(default)]
    pub sampling: Option<SamplingRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingRequest {
    pub mode: Option<SamplingMode>,
    pub rate: Option<f64>,
    /// Frames per second for the classifier (when one is configured); 0 leaves the stream out.
    #[serde(default)]
    pub classify_fps: Option<f64>,
}

/// A stream as the API lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamView {
    #[serde(flatten)]
    pub report: StreamReport,
    pub origin: Origin,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Why a stream could not be added.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Invalid(String),
    #[error("stream {0:?} is defined in the config file; change it there")]
    FromConfig(String),
    #[error("at capacity: {0}")]
    Capacity(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// What a PUT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

struct Running {
    key: StreamKey,
    spec: StreamSpec,
    origin: Origin,
    request: Option<StreamRequest>,
    cancel: CancellationToken,
}

pub struct Manager {
    pub registry: Arc<Registry>,
    running: Mutex<BTreeMap<String, Running>>,
    next_key: AtomicU32,
    /// Emptied at shutdown, so the decoder threads see their channels close.
    decoders: Mutex<Vec<Sender<DecodeMsg>>>,
    source: SourceConfig,
    default_sampling: Sampling,
    base: PathBuf,
    max_streams: usize,
    persist: PathBuf,
    cancel: CancellationToken,
    alerts: AlertsHandle,
    tasks: tokio_util::task::TaskTracker,
}

/// The load figure for schedulers: streams over capacity (1.0 = full).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Load {
    pub streams: usize,
    pub max_streams: usize,
    pub load: f64,
}

impl Manager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        registry: Arc<Registry>,
        decoders: Vec<Sender<DecodeMsg>>,
        source: SourceConfig,
        default_sampling: Sampling,
        base: PathBuf,
        max_streams: usize,
        state_dir: &std::path::Path,
        cancel: CancellationToken,
        alerts: AlertsHandle,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            registry,
            running: Mutex::new(BTreeMap::new()),
            next_key: AtomicU32::new(0),
            decoders: Mutex::new(decoders),
            source,
            default_sampling,
            base,
            max_streams,
            persist: state_dir.join("streams.json"),
            cancel,
            alerts,
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    fn start(&self, spec: StreamSpec, origin: Origin, request: Option<StreamRequest>) -> Running {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mode = match spec.sampling.mode {
            SamplingMode::Keyframes => "keyframes",
            SamplingMode::Fps => "fps",
        };
        let status = Arc::new(StreamStatus::new(
            key,
            &spec.id,
            spec.redacted_url().to_string(),
            mode,
        ));
        let cancel = self.cancel.child_token();
        let tx = {
            let d = self.decoders.lock();
            if d.is_empty() {
                // shutting down: nothing may start any more
                cancel.cancel();
                return Running {
                    key,
                    spec,
                    origin,
                    request,
                    cancel,
                };
            }
            d[key as usize % d.len()].clone()
        };
        self.registry.insert(status.clone());
        self.alerts.set_metadata(&spec.id, spec.metadata.clone());
        let sink = source::AuSink::new(status, tx, spec.sampling);
        let registry = self.registry.clone();
        let task = source::supervise(spec.clone(), self.source.clone(), sink, cancel.clone());
        self.tasks.spawn(async move {
            task.await;
            if let Some(s) = registry.remove(key) {
                s.retire();
            }
        });
        Running {
            key,
            spec,
            origin,
            request,
            cancel,
        }
    }

    /// Starts the config file's streams and the API's persisted ones.
    pub fn start_all(&self, config_streams: &[StreamSpec]) -> anyhow::Result<()> {
        let saved = self.load_saved()?;
        let mut running = self.running.lock();
        for spec in config_streams {
            running.insert(
                spec.id.clone(),
                self.start(spec.clone(), Origin::Config, None),
            );
        }
        for (id, req) in saved {
            if running.contains_key(&id) {
                warn!(stream = %id, "a stream saved through the API is now in the config file; the config file's wins");
                continue;
            }
            match self.spec_from(&id, &req) {
                Ok(spec) => {
                    running.insert(id, self.start(spec, Origin::Api, Some(req)));
                }
                Err(e) => warn!(stream = %id, "saved stream not started: {e}"),
            }
        }
        Ok(())
    }

    fn spec_from(&self, id: &str, req: &StreamRequest) -> Result<StreamSpec, StreamError> {
        crate::config::validate_id(id).map_err(|e| StreamError::Invalid(format!("id: {e}")))?;
        let url = crate::config::parse_stream_url(&req.url, &self.base)
            .map_err(|e| StreamError::Invalid(format!("url: {e}")))?;
        let mut sampling = self.default_sampling;
        if let Some(o) = req.sampling {
            sampling.mode = o.mode.unwrap_or(sampling.mode);
            sampling.rate = o.rate.unwrap_or(sampling.rate);
            match o.classify_fps {
                Some(0.0) => sampling.classify = None,
                Some(v) if sampling.classify.is_some() => {
                    if !(v.is_finite() && v > 0.0 && v <= 240.0) {
                        return Err(StreamError::Invalid(
                            "sampling.classify_fps: must be 0 (off) or in (0, 240]".into(),
                        ));
                    }
                    sampling.classify = Some(v);
                }
                Some(_) => {
                    return Err(StreamError::Invalid(
                        "sampling.classify_fps: no classifier model is configured".into(),
                    ))
                }
                None => {}
            }
        }
        if !(sampling.rate.is_finite() && sampling.rate > 0.0 && sampling.rate <= 240.0) {
            return Err(StreamError::Invalid(
                "sampling.rate: must be in (0, 240]".into(),
            ));
        }
        Ok(StreamSpec {
            id: id.to_string(),
            url,
            sampling,
            metadata: req.metadata.clone(),
        })
    }

    /// `PUT /v1/streams/{id}`: creates the stream, or changes it (restarting it) if its URL,
    /// sampling or metadata differ; the same request twice changes nothing.
    pub fn put(&self, id: &str, req: StreamRequest) -> Result<Applied, StreamError> {
        let spec = self.spec_from(id, &req)?;
        let applied = {
            let mut running = self.running.lock();
            match running.get(id) {
                Some(r) if r.origin == Origin::Config => {
                    return Err(StreamError::FromConfig(id.into()))
                }
                Some(r) if r.request.as_ref() == Some(&req) => return Ok(Applied::Unchanged),
                Some(_) => {
                    let old = running.remove(id).expect("present");
                    old.cancel.cancel();
                    running.insert(id.into(), self.start(spec, Origin::Api, Some(req)));
                    Applied::Updated
                }
                None => {
                    if running.len() >= self.max_streams {
                        return Err(StreamError::Capacity(format!(
                            "{} streams running, at most {} (server.max_streams)",
                            running.len(),
                            self.max_streams
                        )));
                    }
                    running.insert(id.into(), self.start(spec, Origin::Api, Some(req)));
                    Applied::Created
                }
            }
        };
        self.save().map_err(StreamError::Internal)?;
        info!(stream = %id, change = ?applied, "stream set through the API");
        Ok(applied)
    }

    /// `DELETE /v1/streams/{id}`: `Ok(false)` when there was no such stream.
    pub fn delete(&self, id: &str) -> Result<bool, StreamError> {
        {
            let mut running = self.running.lock();
            match running.get(id) {
                None => return Ok(false),
                Some(r) if r.origin == Origin::Config => {
                    return Err(StreamError::FromConfig(id.into()))
                }
                Some(_) => running.remove(id).expect("present").cancel.cancel(),
            }
        }
        self.save().map_err(StreamError::Internal)?;
        info!(stream = %id, "stream removed through the API");
        Ok(true)
    }

    /// Applies a reloaded config file's streams: new ones start, removed ones stop, changed
    /// ones restart; API streams stay as they are. Returns (started, stopped, restarted).
    pub fn reload(&self, config_streams: &[StreamSpec]) -> (usize, usize, usize) {
        let mut running = self.running.lock();
        let wanted: HashMap<&str, &StreamSpec> =
            config_streams.iter().map(|s| (s.id.as_str(), s)).collect();
        let (mut started, mut stopped, mut restarted) = (0, 0, 0);
        let gone: Vec<String> = running
            .iter()
            .filter(|(id, r)| r.origin == Origin::Config && !wanted.contains_key(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            running.remove(&id).expect("present").cancel.cancel();
            stopped += 1;
        }
        for spec in config_streams {
            let same = running.get(&spec.id).map(|r| {
                r.origin == Origin::Config
                    && r.spec.url == spec.url
                    && r.spec.sampling == spec.sampling
                    && r.spec.metadata == spec.metadata
            });
            match same {
                Some(true) => continue,
                Some(false) => {
                    let old = running.remove(&spec.id).expect("present");
                    if old.origin == Origin::Api {
                        warn!(stream = %spec.id, "the config file now defines this API stream; the config file's wins");
                    }
                    old.cancel.cancel();
                    restarted += 1;
                }
                None => started += 1,
            }
            running.insert(
                spec.id.clone(),
                self.start(spec.clone(), Origin::Config, None),
            );
        }
        drop(running);
        if let Err(e) = self.save() {
            warn!("cannot save the API streams: {e:#}");
        }
        (started, stopped, restarted)
    }

    pub fn list(&self) -> Vec<StreamView> {
        let running = self.running.lock();
        running
            .values()
            .filter_map(|r| {
                self.registry.get(r.key).map(|s| StreamView {
                    report: s.report(),
                    origin: r.origin,
                    metadata: r.spec.metadata.clone(),
                })
            })
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<StreamView> {
        let running = self.running.lock();
        let r = running.get(id)?;
        self.registry.get(r.key).map(|s| StreamView {
            report: s.report(),
            origin: r.origin,
            metadata: r.spec.metadata.clone(),
        })
    }

    pub fn load(&self) -> Load {
        let streams = self.running.lock().len();
        Load {
            streams,
            max_streams: self.max_streams,
            load: streams as f64 / self.max_streams.max(1) as f64,
        }
    }

    /// Refreshes every stream's frame rates every 2 s until cancelled.
    pub async fn measure_rates(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let now = Instant::now();
            for s in self.registry.all() {
                s.update_rates(now);
            }
        }
    }

    /// Stops every stream, waits (up to `limit`) for their tasks, and lets go of the decoder
    /// channels so the decoder threads finish.
    pub async fn stop_all(&self, limit: Duration) {
        self.decoders.lock().clear();
        for r in self.running.lock().values() {
            r.cancel.cancel();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }

    fn load_saved(&self) -> anyhow::Result<BTreeMap<String, StreamRequest>> {
        match std::fs::read(&self.persist) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid stream list", self.persist.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.persist.display())),
        }
    }

    /// Writes the API streams atomically (temporary file, sync, rename).
    fn save(&self) -> anyhow::Result<()> {
        let list: BTreeMap<String, StreamRequest> = self
            .running
            .lock()
            .iter()
            .filter_map(|(id, r)| r.request.clone().map(|q| (id.clone(), q)))
            .collect();
        let tmp = self.persist.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(&list)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.persist)
            .with_context(|| format!("cannot write {}", self.persist.display()))?;
        Ok(())
    }
}
