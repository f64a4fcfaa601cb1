//! livewatch: pulls live video streams, hashes sampled frames with PDQ, matches them against
//! hash banks and sends signed webhook alerts.
//!
//! Stages, each in its own module, with small types between them:
//! source ([`source::AccessUnit`]) → decode ([`decode::Frame`]) → hash + match
//! ([`decide::Detection`]) → decide ([`decide::Alert`]) → alert delivery.

pub mod alert;
pub mod api;
pub mod bank;
pub mod classify;
pub mod config;
pub mod decide;
pub mod decode;
pub mod demo;
pub mod hash;
pub mod health;
pub mod index;
pub mod manager;
pub mod metrics;
pub mod redact;
pub mod scan;
pub mod source;
pub mod stream;
pub mod systemd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bank::Banks;
use crate::config::Config;
use crate::decide::{Detection, Finding};
use crate::decode::FrameQueue;
use crate::hash::PdqHasher;
use crate::metrics::{metrics, stage};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Prepares libav once per process: network protocols, and quiet logging (its own log lines
/// could echo URLs with credentials; errors reach us as return values instead).
pub fn init_media() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        ffmpeg_next::init().expect("libav initialises");
        ffmpeg_next::format::network::init();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
    });
}

/// Runs blocking work (outbox reads and writes, file I/O) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
}

/// Hooks for embedding the pipeline.
#[derive(Default)]
pub struct RunHooks {
    /// Called once the pipeline runs and the listener is bound.
    pub on_ready: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
}

/// Runs the appliance until `cancel` fires, then shuts down in bounded time.
pub async fn run(config: Config, cancel: CancellationToken, hooks: RunHooks) -> anyhow::Result<()> {
    init_media();
    let m = metrics();

    let (scanner, match_backend) = index::gpu::from_config(&config.matching)?;
    m.match_backend_info
        .with_label_values(&[
            match_backend.backend,
            &match_backend.adapter,
            &match_backend.device_type,
            &match_backend.driver,
        ])
        .set(1);
    info!(backend = %match_backend, "matching large banks");
    let banks = Arc::new(ArcSwap::from_pointee(bank::load_banks(
        &config,
        scanner.as_ref(),
    )?));

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let decode_threads = match config.pipeline.decode_threads {
        0 => cpus.min(8),
        n => n,
    };
    let hash_threads = match config.pipeline.hash_threads {
        0 => (cpus / 2).max(1),
        n => n,
    };
    let health = Arc::new(health::Heartbeats::default());

    // The outbox first: a state directory that cannot be used stops the start here.
    let (det_tx, det_rx) = crossbeam_channel::bounded::<Finding>(1024);
    let alerts = alert::AlertService::start(&config, det_rx, &health)?;

    let frames = Arc::new(FrameQueue::new(config.pipeline.frame_queue));
    let registry = Arc::new(manager::Registry::default());
    // models load (and are checked) before any stream starts
    let classifier = match &config.classifier {
        Some(spec) => Some(classify::service::Classifier::start(
            spec,
            &config.state_dir,
            registry.clone(),
            det_tx.clone(),
            &health,
        )?),
        None => None,
    };
    let registry_decoders;
    let manager = {
        let decoders = decode::spawn_decoders(
            decode_threads,
            config.pipeline.decode_queue,
            registry.clone(),
            decode::Outputs {
                hash: frames.clone(),
                classify: classifier.as_ref().map(|c| c.queue.clone()),
            },
            &health,
        );
        let (txs, handles): (Vec<_>, Vec<_>) = decoders.into_iter().unzip();
        registry_decoders = handles;
        manager::Manager::new(
            registry,
            txs,
            config.source.clone(),
            config.sampling,
            config.base.clone(),
            config.max_streams,
            &config.state_dir,
            cancel.child_token(),
            alerts.handle.clone(),
        )
    };

    // One thread drives a GPU (it batches across streams); on the CPU, one thread per core.
    let engine = hash::Engine::new(&config.hash)?;
    let backend = engine.info();
    m.hash_backend_info
        .with_label_values(&[
            backend.backend,
            &backend.adapter,
            &backend.device_type,
            &backend.driver,
        ])
        .set(1);
    m.build_info
        .with_label_values(&[VERSION, backend.backend])
        .set(1);
    info!(backend = %backend, "hashing PDQ");
    let (engines, batch) = match engine {
        hash::Engine::Gpu(_) => (vec![engine], config.hash.batch),
        hash::Engine::Cpu(_) => (
            (0..hash_threads)
                .map(|_| hash::Engine::Cpu(PdqHasher::new()))
                .collect(),
            32,
        ),
    };
    let hashers: Vec<_> = engines
        .into_iter()
        .enumerate()
        .map(|(i, engine)| {
            let (frames, banks, registry, tx) = (
                frames.clone(),
                banks.clone(),
                manager.registry.clone(),
                det_tx.clone(),
            );
            let min_quality = config.matching.min_quality;
            let beat = health.register(format!("hash-{i}"));
            std::thread::Builder::new()
                .name(format!("lw-hash-{i}"))
                .spawn(move || {
                    hash_thread(
                        engine,
                        batch,
                        &frames,
                        &banks,
                        &registry,
                        min_quality,
                        &tx,
                        &beat,
                    )
                })
                .context("spawn hash thread")
        })
        .collect::<anyhow::Result<_>>()?;
    drop(det_tx);

    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.listen))?;
    let local = listener.local_addr()?;
    let reload = Arc::new(Reloader {
        path: config.path.clone(),
        banks: banks.clone(),
        manager: manager.clone(),
        state_dir: config.state_dir.clone(),
        scanner,
        lock: tokio::sync::Mutex::new(()),
    });
    let api_state = api::ApiState {
        manager: manager.clone(),
        ready: ready.clone(),
        banks: banks.clone(),
        alerts: alerts.handle.clone(),
        reload: reload.clone(),
        tokens: Arc::new(config.api_tokens.clone()),
        auth_exempt: Arc::new(config.auth_exempt.clone()),
        status: Arc::new(api::StaticStatus {
            version: VERSION,
            hash_backend: backend.clone(),
            match_backend,
            decode_threads,
            hash_threads,
            classifier: classifier.as_ref().map(|c| api::ClassifierStatus {
                onnxruntime: c.runtime.display().to_string(),
                models: c.models.clone(),
            }),
        }),
        frames: frames.clone(),
    };
    let server_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(api_state))
            .with_graceful_shutdown(async move { server_cancel.cancelled().await })
            .await
    });

    manager.start_all(&config.streams)?;
    tokio::spawn(manager.clone().measure_rates());

    // SIGHUP's default action ends the process: take it over before telling systemd we run
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let hup = tokio::spawn(reload.clone().on_sighup(hup, cancel.clone()));
    ready.store(true, Ordering::Release);
    info!(listen = %local, streams = config.streams.len(), decode_threads, hash_threads, "livewatch running");
    systemd::notify_ready();
    let watchdog = tokio::spawn(systemd::watchdog(health.clone(), cancel.clone()));
    if let Some(f) = hooks.on_ready {
        f(local);
    }

    cancel.cancelled().await;
    info!("shutting down: stopping intake");
    systemd::notify_stopping();
    ready.store(false, Ordering::Release);
    health.clear();
    manager.stop_all(Duration::from_secs(5)).await;
    // decoders end once every stream's sender is gone; then the frame queue drains
    let frames_done = frames.clone();
    let joined = tokio::task::spawn_blocking(move || {
        for h in registry_decoders {
            let _ = h.join();
        }
        frames_done.close();
        if let Some(c) = &classifier {
            c.queue.close();
        }
        for h in hashers {
            let _ = h.join();
        }
        if let Some(c) = classifier {
            c.join();
        }
    });
    if tokio::time::timeout(Duration::from_secs(10), joined)
        .await
        .is_err()
    {
        warn!("shutdown: decoder or hash threads did not finish in time");
    }
    // the decision stage commits what the hash threads found, then deliveries get a last chance
    let _ = tokio::time::timeout(alert::DRAIN + Duration::from_secs(5), alerts.shutdown()).await;
    let _ = server.await;
    watchdog.abort();
    hup.abort();
    info!("stopped");
    Ok(())
}

/// Reloads banks and the config file's streams: on SIGHUP and through the API. API streams
/// and API-added bank items are kept; other settings need a restart.
pub struct Reloader {
    path: Option<std::path::PathBuf>,
    pub banks: Arc<ArcSwap<Banks>>,
    manager: Arc<manager::Manager>,
    state_dir: std::path::PathBuf,
    /// Where reloaded banks go when they are matched on a GPU.
    scanner: Option<Arc<index::gpu::GpuScanner>>,
    lock: tokio::sync::Mutex<()>,
}

/// What a reload changed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    pub banks: Vec<String>,
    pub streams_started: usize,
    pub streams_stopped: usize,
    pub streams_restarted: usize,
}

impl Reloader {
    /// Re-reads the config file (banks and streams) or only the bank files when `banks_only`.
    /// Anything invalid leaves everything as it was and says why.
    pub async fn reload(&self, banks_only: bool) -> anyhow::Result<Reloaded> {
        let _one_at_a_time = self.lock.lock().await;
        let path = self
            .path
            .clone()
            .context("this instance was not started from a config file")?;
        let state_dir = self.state_dir.clone();
        let scanner = self.scanner.clone();
        let (config, banks) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut config = config::load(&path)?;
            // the state directory is fixed for the process's life
            config.state_dir = state_dir;
            let banks = bank::load_banks(&config, scanner.as_ref())?;
            Ok((config, banks))
        })
        .await??;
        let names = banks
            .banks
            .iter()
            .map(|b| format!("{} {}", b.name, b.version))
            .collect();
        self.banks.store(Arc::new(banks));
        let (started, stopped, restarted) = if banks_only {
            (0, 0, 0)
        } else {
            self.manager.reload(&config.streams)
        };
        let r = Reloaded {
            banks: names,
            streams_started: started,
            streams_stopped: stopped,
            streams_restarted: restarted,
        };
        info!(?r, "reloaded");
        Ok(r)
    }

    /// Adds items to an image bank: written (synced) to the state directory, then a new
    /// version of the bank, sharing the loaded part and its index, is swapped in — matched
    /// from the next frame on, whatever the bank's size. `Ok(None)`: no such bank.
    pub async fn add_items(
        &self,
        bank: &str,
        lines: &str,
    ) -> anyhow::Result<Option<(usize, String)>> {
        let _one_at_a_time = self.lock.lock().await;
        let current = self.banks.load_full();
        let Some(b) = current.banks.iter().find(|b| *b.name == *bank) else {
            return Ok(None);
        };
        anyhow::ensure!(
            !b.is_video(),
            "bank {bank:?} holds videos: add vPDQ files to its folder and reload it"
        );
        let (dir, name, text) = (self.state_dir.clone(), bank.to_string(), lines.to_string());
        let added = blocking(move || Ok(bank::append_items(&dir, &name, &text)?)).await?;
        let n = added.len();
        let version = self.swap_bank(&current, bank, |b| b.with_added(added, lines));
        info!(bank, added = n, version = %version, "bank items added");
        Ok(Some((n, version)))
    }

    /// Removes every hash of an item from a bank (recorded in the state directory).
    /// `Ok(None)`: no such bank or item.
    pub async fn remove_item(
        &self,
        bank: &str,
        item: &str,
    ) -> anyhow::Result<Option<(usize, String)>> {
        let _one_at_a_time = self.lock.lock().await;
        let current = self.banks.load_full();
        let Some(b) = current.banks.iter().find(|b| *b.name == *bank) else {
            return Ok(None);
        };
        let n = b.item_entries(item);
        if n == 0 {
            return Ok(None);
        }
        let (dir, name, it) = (self.state_dir.clone(), bank.to_string(), item.to_string());
        blocking(move || Ok(bank::remove_item(&dir, &name, &it)?)).await?;
        let version = self.swap_bank(&current, bank, |b| b.with_removed(item));
        info!(bank, item, hashes = n, version = %version, "bank item removed");
        Ok(Some((n, version)))
    }

    /// Swaps in a new set of banks where `bank` is replaced by `change(bank)` and the others
    /// are shared; returns the changed bank's new version.
    fn swap_bank(
        &self,
        current: &Banks,
        bank: &str,
        change: impl FnOnce(&bank::Bank) -> bank::Bank,
    ) -> String {
        let mut change = Some(change);
        let next = Banks {
            banks: current
                .banks
                .iter()
                .map(|x| match change.take_if(|_| *x.name == *bank) {
                    Some(f) => f(x),
                    None => x.clone(),
                })
                .collect(),
        };
        let version = next
            .banks
            .iter()
            .find(|b| *b.name == *bank)
            .map(|b| b.version.clone())
            .unwrap_or_default();
        bank::export_sizes(&next);
        self.banks.store(Arc::new(next));
        version
    }

    /// Reloads on every SIGHUP, telling systemd around it.
    async fn on_sighup(
        self: Arc<Self>,
        mut hup: tokio::signal::unix::Signal,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            info!("SIGHUP: reloading banks and streams");
            systemd::notify_reloading();
            if let Err(e) = self.reload(false).await {
                tracing::error!("reload failed, everything stays as it was: {e:#}");
            }
            systemd::notify_ready();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn hash_thread(
    mut engine: hash::Engine,
    batch_size: usize,
    frames: &FrameQueue,
    banks: &ArcSwap<Banks>,
    registry: &manager::Registry,
    min_quality: u8,
    tx: &crossbeam_channel::Sender<Finding>,
    beat: &health::Beat,
) {
    let m = metrics();
    let mut fallback = PdqHasher::new();
    loop {
        beat.beat();
        let batch = frames.pop_batch(batch_size, Duration::from_millis(200));
        if batch.is_empty() {
            if frames.is_closed() {
                return;
            }
            continue;
        }
        for f in &batch {
            m.stage_seconds
                .with_label_values(&[stage::QUEUE])
                .observe(f.arrival.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        let lumas: Vec<_> = batch
            .iter()
            .map(|f| hash::Luma {
                data: &f.luma,
                width: f.width,
                height: f.height,
                stride: f.width,
                full_range: f.full_range,
            })
            .collect();
        let banks = banks.load();
        let dihedral = banks.wants_dihedral();
        let hashes = engine
            .hash_frames_with(&lumas, dihedral)
            .unwrap_or_else(|e| {
                // a GPU fault must not lose frames: hash this batch on the CPU
                m.hash_errors.inc();
                warn!("GPU hashing failed, this batch is hashed on the CPU: {e:#}");
                hash::hash_frames_cpu_with(&mut fallback, &lumas, dihedral)
            });
        let per_frame = t.elapsed().as_secs_f64() / batch.len() as f64;
        let with_video = banks.has_video();
        // the frames good enough to match, matched together: one batch per bank
        let t = Instant::now();
        let queries: Vec<bank::FrameQuery<'_>> = hashes
            .iter()
            .filter(|h| h.quality >= min_quality)
            .map(|h| bank::FrameQuery {
                hash: h.hashes[0],
                variants: dihedral.then_some(&h.hashes),
            })
            .collect();
        let mut matched = banks.match_frames(&queries).into_iter();
        if !queries.is_empty() {
            let per_query = t.elapsed().as_secs_f64() / queries.len() as f64;
            for _ in 0..queries.len() {
                m.stage_seconds
                    .with_label_values(&[stage::MATCH])
                    .observe(per_query);
            }
        }
        for (f, h) in batch.into_iter().zip(&hashes) {
            // a stream removed meanwhile: its frames go unmatched
            let Some(status) = registry.get(f.stream) else {
                if h.quality >= min_quality {
                    matched.next();
                }
                continue;
            };
            m.stage_seconds
                .with_label_values(&[stage::HASH])
                .observe(per_frame);
            m.frames_hashed.inc();
            status.frames_hashed.fetch_add(1, Ordering::Relaxed);
            if h.quality < min_quality {
                m.frames_low_quality.inc();
                continue;
            }
            let hash = h.hashes[0];
            let fm = matched.next().expect("one answer per matched frame");
            let (found, video) = match fm.allowed {
                Some(a) => {
                    // an allow-listed frame raises nothing (its video window sees no hit)
                    m.matches.with_label_values(&[&a.bank]).inc();
                    (Vec::new(), with_video.then(Vec::new))
                }
                None => (fm.found, with_video.then_some(fm.video)),
            };
            let hits = video.as_ref().map_or(0, Vec::len);
            if found.is_empty() && video.is_none() {
                continue;
            }
            for fm in &found {
                m.matches.with_label_values(&[&fm.bank]).inc();
            }
            for v in video.iter().flatten() {
                m.matches.with_label_values(&[&v.bank]).inc();
            }
            if !found.is_empty() || hits > 0 {
                status.note_match();
            }
            let store = found.iter().any(|x| x.store_evidence)
                || video.iter().flatten().any(|x| x.store_evidence);
            let d = Detection {
                stream: f.stream,
                stream_id: status.id.clone(),
                pts_us: f.pts_us,
                arrival: f.arrival,
                found,
                video,
                frame_hash: hash,
                quality: h.quality,
                frame: store.then(|| f.clone()),
            };
            if tx.send(Finding::Hashes(d)).is_err() {
                return;
            }
        }
    }
}
