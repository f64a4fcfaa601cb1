//! livewatch: pulls live video streams, hashes sampled frames with PDQ, matches them against
//! hash banks and sends signed webhook alerts.
//!
//! Stages, each in its own module, with small types between them:
//! source ([`source::AccessUnit`]) → decode ([`decode::Frame`]) → hash + match
//! ([`decide::Detection`]) → decide ([`decide::Alert`]) → alert delivery.

pub mod alert;
pub mod api;
pub mod bank;
pub mod config;
pub mod decide;
pub mod decode;
pub mod demo;
pub mod hash;
pub mod metrics;
pub mod redact;
pub mod source;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bank::Banks;
use crate::config::{Config, SamplingMode};
use crate::decide::Detection;
use crate::decode::FrameQueue;
use crate::hash::PdqHasher;
use crate::metrics::{metrics, stage};
use crate::stream::StreamStatus;

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

    let banks = Arc::new(Banks::load(&config.banks)?);
    for b in &banks.banks {
        m.bank_hashes
            .with_label_values(&[&b.name])
            .set(b.len() as i64);
        if b.is_empty() {
            warn!(bank = %b.name, "bank is empty");
        }
    }
    info!(banks = %banks, "banks loaded");

    let statuses: Vec<Arc<StreamStatus>> = config
        .streams
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mode = match s.sampling.mode {
                SamplingMode::Keyframes => "keyframes",
                SamplingMode::Fps => "fps",
            };
            Arc::new(StreamStatus::new(
                i as u32,
                &s.id,
                s.redacted_url().to_string(),
                mode,
            ))
        })
        .collect();
    let status_map = Arc::new(statuses.iter().map(|s| (s.key, s.clone())).collect());

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

    let frames = Arc::new(FrameQueue::new(config.pipeline.frame_queue));
    let decoders = decode::spawn_decoders(
        decode_threads,
        config.pipeline.decode_queue,
        status_map,
        frames.clone(),
    );

    // The outbox first: a state directory that cannot be used stops the start here.
    let (det_tx, det_rx) = crossbeam_channel::bounded::<Detection>(1024);
    let alerts = alert::AlertService::start(&config, det_rx)?;
    // One thread drives a GPU (it batches across streams); on the CPU, one thread per core.
    let engine = hash::Engine::new(&config.hash)?;
    let backend = engine.info();
    metrics()
        .hash_backend_info
        .with_label_values(&[
            backend.backend,
            &backend.adapter,
            &backend.device_type,
            &backend.driver,
        ])
        .set(1);
    metrics()
        .build_info
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
            let (frames, banks, statuses, tx) = (
                frames.clone(),
                banks.clone(),
                statuses.clone(),
                det_tx.clone(),
            );
            let min_quality = config.matching.min_quality;
            std::thread::Builder::new()
                .name(format!("lw-hash-{i}"))
                .spawn(move || {
                    hash_thread(engine, batch, &frames, &banks, &statuses, min_quality, &tx)
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
    let api_state = api::ApiState {
        streams: Arc::new(statuses.clone()),
        ready: ready.clone(),
        banks: Arc::new(
            banks
                .banks
                .iter()
                .map(|b| serde_json::json!({"name": &*b.name, "version": b.version, "hashes": b.len(), "distance": b.distance}))
                .collect(),
        ),
        alerts: alerts.handle.clone(),
    };
    let server_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(api_state))
            .with_graceful_shutdown(async move { server_cancel.cancelled().await })
            .await
    });

    let stream_cancel = cancel.child_token();
    let mut stream_tasks = Vec::new();
    for (spec, status) in config.streams.iter().zip(&statuses) {
        let tx = decoders[status.key as usize % decoders.len()].0.clone();
        let sink = source::AuSink::new(status.clone(), tx, spec.sampling);
        stream_tasks.push(tokio::spawn(source::supervise(
            spec.clone(),
            config.source.clone(),
            sink,
            stream_cancel.clone(),
        )));
    }
    let decoder_handles: Vec<_> = decoders.into_iter().map(|(_, h)| h).collect();

    ready.store(true, Ordering::Release);
    info!(listen = %local, streams = statuses.len(), decode_threads, hash_threads, "livewatch running");
    if let Some(f) = hooks.on_ready {
        f(local);
    }

    cancel.cancelled().await;
    info!("shutting down: stopping intake");
    ready.store(false, Ordering::Release);
    stream_cancel.cancel();
    for t in stream_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    // decoders end once every stream's sender is gone; then the frame queue drains
    let frames_done = frames.clone();
    let joined = tokio::task::spawn_blocking(move || {
        for h in decoder_handles {
            let _ = h.join();
        }
        frames_done.close();
        for h in hashers {
            let _ = h.join();
        }
    });
    if tokio::time::timeout(Duration::from_secs(10), joined)
        .await
        .is_err()
    {
        warn!("shutdown: decoder or hash threads did not finish in time");
    }
    // the decision stage commits what the hash threads found, then deliveries get a last chance
    let _ = tokio::time::timeout(
        alert::DRAIN + Duration::from_secs(5),
        alerts.shutdown(),
    )
    .await;
    let _ = server.await;
    info!("stopped");
    Ok(())
}

fn hash_thread(
    mut engine: hash::Engine,
    batch_size: usize,
    frames: &FrameQueue,
    banks: &Banks,
    statuses: &[Arc<StreamStatus>],
    min_quality: u8,
    tx: &crossbeam_channel::Sender<Detection>,
) {
    let m = metrics();
    let mut fallback = PdqHasher::new();
    loop {
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
        let hashes = engine.hash_frames(&lumas).unwrap_or_else(|e| {
            // a GPU fault must not lose frames: hash this batch on the CPU
            m.hash_errors.inc();
            warn!("GPU hashing failed, this batch is hashed on the CPU: {e:#}");
            hash::hash_frames_cpu(&mut fallback, &lumas)
        });
        let per_frame = t.elapsed().as_secs_f64() / batch.len() as f64;
        for (f, h) in batch.into_iter().zip(hashes) {
            let status = &statuses[f.stream as usize];
            m.stage_seconds
                .with_label_values(&[stage::HASH])
                .observe(per_frame);
            m.frames_hashed.inc();
            status.frames_hashed.fetch_add(1, Ordering::Relaxed);
            if h.quality < min_quality {
                m.frames_low_quality.inc();
                continue;
            }
            let t = Instant::now();
            let found = banks.matches(&h.hash);
            m.stage_seconds
                .with_label_values(&[stage::MATCH])
                .observe(t.elapsed().as_secs_f64());
            if found.is_empty() {
                continue;
            }
            let (stream, pts_us, arrival) = (f.stream, f.pts_us, f.arrival);
            let frame = Arc::new(f);
            for fm in found {
                m.matches.with_label_values(&[&fm.bank]).inc();
                status.note_match();
                let d = Detection {
                    stream,
                    stream_id: status.id.clone(),
                    found: fm,
                    frame_hash: h.hash,
                    quality: h.quality,
                    pts_us,
                    arrival,
                    frame: Some(frame.clone()),
                };
                if tx.send(d).is_err() {
                    return;
                }
            }
        }
    }
}
