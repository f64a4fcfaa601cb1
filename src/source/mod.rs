//! Sources: where compressed video comes from.
//!
//! One supervised tokio task per stream runs a [`Source`] session after session, with jittered
//! exponential backoff between failures. A session hands each access unit to an [`AuSink`],
//! which applies the stream's sampling policy and the decode queue's overload policy without
//! ever blocking the reader.

pub mod ffmpeg;
pub mod nal;
pub mod rtsp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use futures::future::BoxFuture;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::config::{Sampling, SamplingMode, SourceConfig, StreamSpec};
use crate::metrics::{drop_reason, metrics};
use crate::stream::{StreamKey, StreamState, StreamStatus};

/// How a decoder must be set up for a stream's access units.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecConfig {
    pub id: ::ffmpeg_next::codec::Id,
    /// Out-of-band parameter sets (e.g. `avcC` from an MP4 file); `None` when they travel
    /// in-band in Annex B, as RTSP delivers them.
    pub extradata: Option<Bytes>,
}

impl CodecConfig {
    pub fn name(&self) -> &'static str {
        match self.id {
            ::ffmpeg_next::codec::Id::H264 => "h264",
            ::ffmpeg_next::codec::Id::HEVC => "h265",
            _ => "other",
        }
    }
}

/// One compressed picture of one stream.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    pub stream: StreamKey,
    pub data: Bytes,
    /// Presentation time in microseconds on the stream's own clock.
    pub pts_us: Option<i64>,
    /// Decoding can start here (IDR, CRA/BLA, recovery point).
    pub keyframe: bool,
    /// When the last byte of it arrived.
    pub arrival: Instant,
    pub codec: Arc<CodecConfig>,
    /// First unit of a new session: the decoder must drop its state first.
    pub discontinuity: bool,
}

/// Which decoded pictures the decoder passes on, to hashing and to the classifier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    pub hash: HashPick,
    /// At most this many pictures per second of stream time go to the classifier.
    pub classify: Option<f64>,
}

/// Which decoded pictures are hashed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HashPick {
    /// Every decoded picture (keyframes mode, where only keyframes are fed).
    Every,
    /// Pictures decoded from keyframes (keyframes mode while the classifier needs every unit).
    Keyframes,
    /// At most this many pictures per second of stream time.
    Rate(f64),
}

impl Selection {
    /// Only keyframes are fed: every picture can leave the decoder at once.
    pub fn low_delay(&self) -> bool {
        self.hash == HashPick::Every && self.classify.is_none()
    }
}

/// Messages to a decoder thread.
#[derive(Debug)]
pub enum DecodeMsg {
    Unit(AccessUnit, Selection),
    Close(StreamKey),
}

/// Why a source session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// Could not connect or open.
    Connect,
    /// The server or container said something unusable.
    Protocol,
    /// No data for longer than the stall timeout.
    Stalled,
    /// The stream has no video we can decode.
    Unsupported,
    /// The peer ended the stream.
    Ended,
}

impl SourceErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Protocol => "protocol",
            Self::Stalled => "stalled",
            Self::Unsupported => "unsupported",
            Self::Ended => "ended",
        }
    }
}

/// A session failure, its message already free of credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct SourceError {
    pub kind: SourceErrorKind,
    pub message: String,
}

impl SourceError {
    pub fn new(kind: SourceErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A way to receive one stream; `run` is one session, returning when it ends.
pub trait Source: Send {
    fn run<'a>(
        &'a mut self,
        sink: &'a mut AuSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), SourceError>>;
}

/// Picks the source implementation for a URL scheme.
pub fn open(spec: &StreamSpec, cfg: &SourceConfig) -> Box<dyn Source> {
    let stall = Duration::from_secs_f64(cfg.stall_timeout_secs);
    match spec.url.scheme() {
        "rtsp" | "rtsps" => Box::new(rtsp::RtspSource::new(spec.url.clone(), stall)),
        _ => Box::new(ffmpeg::FfmpegSource::new(spec.url.clone(), stall)),
    }
}

/// The per-stream entry to the decode stage: sampling admission and the drop policy.
pub struct AuSink {
    status: Arc<StreamStatus>,
    tx: Sender<DecodeMsg>,
    sampling: Sampling,
    /// After a full queue, skip until the next keyframe (the GOP's references are gone).
    awaiting_keyframe: bool,
    /// Keyframes mode, but no keyframe for `keyframe_timeout`: decoding every frame.
    fallback: bool,
    last_keyframe: Instant,
    new_session: bool,
}

impl AuSink {
    pub fn new(status: Arc<StreamStatus>, tx: Sender<DecodeMsg>, sampling: Sampling) -> Self {
        Self {
            status,
            tx,
            sampling,
            awaiting_keyframe: true,
            fallback: false,
            last_keyframe: Instant::now(),
            new_session: true,
        }
    }

    pub fn status(&self) -> &StreamStatus {
        &self.status
    }

    /// Called when a new session starts: decoding restarts at the next keyframe.
    pub fn begin_session(&mut self) {
        self.awaiting_keyframe = true;
        self.last_keyframe = Instant::now();
        self.new_session = true;
    }

    /// Takes one access unit. Never blocks.
    pub fn push(&mut self, au: AccessUnit) {
        let m = metrics();
        m.frames_received.inc();
        self.status
            .frames_received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.status.note_frame();
        let now = au.arrival;

        if au.keyframe {
            self.last_keyframe = now;
            self.awaiting_keyframe = false;
            if self.fallback {
                self.fallback = false;
                self.status.set_sampling_fallback(false);
                info!("keyframes are back; sampling keyframes again");
            }
        } else {
            let waited =
                now.saturating_duration_since(self.last_keyframe) >= self.sampling.keyframe_timeout;
            if self.sampling.mode == SamplingMode::Keyframes && !self.fallback {
                if !waited {
                    if self.sampling.classify.is_none() {
                        return; // not sampled: only keyframes are decoded
                    }
                    // the classifier samples between keyframes: every unit is decoded
                    if self.awaiting_keyframe {
                        self.count_drop(drop_reason::AWAITING_KEYFRAME);
                        return;
                    }
                    return self.send(au, HashPick::Keyframes);
                }
                self.fallback = true;
                self.awaiting_keyframe = false;
                self.status.set_sampling_fallback(true);
                warn!(
                    timeout_secs = self.sampling.keyframe_timeout.as_secs_f64(),
                    rate = self.sampling.rate,
                    "no keyframe within the timeout; falling back to fps sampling"
                );
            } else if self.awaiting_keyframe {
                if !waited {
                    self.count_drop(drop_reason::AWAITING_KEYFRAME);
                    return;
                }
                // a stream without keyframes at all: decode what comes rather than nothing
                self.awaiting_keyframe = false;
            }
        }

        let hash = if self.sampling.mode == SamplingMode::Keyframes && !self.fallback {
            if self.sampling.classify.is_some() {
                HashPick::Keyframes
            } else {
                HashPick::Every
            }
        } else {
            HashPick::Rate(self.sampling.rate)
        };
        self.send(au, hash)
    }

    fn send(&mut self, mut au: AccessUnit, hash: HashPick) {
        let selection = Selection {
            hash,
            classify: self.sampling.classify,
        };
        au.discontinuity = std::mem::take(&mut self.new_session);
        match self.tx.try_send(DecodeMsg::Unit(au, selection)) {
            Ok(()) => {}
            Err(TrySendError::Full(DecodeMsg::Unit(au, _))) => {
                self.count_drop(drop_reason::DECODE_QUEUE_FULL);
                // the discontinuity must reach the decoder with a later unit
                self.new_session |= au.discontinuity;
                if !self.fallback {
                    self.awaiting_keyframe = true;
                }
            }
            Err(_) => {} // decoder gone: shutting down
        }
    }

    fn count_drop(&self, reason: &'static str) {
        metrics().frames_dropped.with_label_values(&[reason]).inc();
        self.status
            .frames_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Delay before reconnect attempt `n` (0-based): doubling from `min`, capped at `max`, with
/// ±25 % jitter so that many streams failing together do not reconnect in lockstep.
pub fn backoff_delay(n: u32, min: Duration, max: Duration) -> Duration {
    let base = min.as_secs_f64() * 2f64.powi(n.min(30) as i32);
    let capped = base.min(max.as_secs_f64());
    let jitter = rand::rng().random_range(0.75..=1.25);
    Duration::from_secs_f64((capped * jitter).min(max.as_secs_f64()))
}

/// Runs one stream until cancelled: session after session, backing off between failures.
pub async fn supervise(
    spec: StreamSpec,
    cfg: SourceConfig,
    mut sink: AuSink,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("stream", stream = %spec.id);
    async move {
        let status = sink.status.clone();
        let mut source = open(&spec, &cfg);
        let (min, max) =
            (Duration::from_secs_f64(cfg.reconnect_min_secs), Duration::from_secs_f64(cfg.reconnect_max_secs));
        let mut failures = 0u32;
        info!(url = %spec.redacted_url(), "stream starting");
        while !cancel.is_cancelled() {
            status.set_state(StreamState::Connecting);
            sink.begin_session();
            let started = Instant::now();
            let received_before = status.frames_received.load(std::sync::atomic::Ordering::Relaxed);
            let result = source.run(&mut sink, &cancel).await;
            if cancel.is_cancelled() {
                break;
            }
            let err = match result {
                Ok(()) => SourceError::new(SourceErrorKind::Ended, "stream ended"),
                Err(e) => e,
            };
            let got_media =
                status.frames_received.load(std::sync::atomic::Ordering::Relaxed) > received_before;
            // a session that delivered media for a while resets the backoff
            if got_media && started.elapsed() > max.min(Duration::from_secs(10)) {
                failures = 0;
            }
            metrics().source_errors.with_label_values(&[err.kind.as_str()]).inc();
            status.set_error(err.kind.as_str(), err.message.clone());
            status.set_state(StreamState::Backoff);
            let delay = backoff_delay(failures, min, max);
            failures = failures.saturating_add(1);
            warn!(error = %err, retry_in_secs = format!("{:.1}", delay.as_secs_f64()), "stream session ended");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            metrics().reconnects.inc();
            status.reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        status.set_state(StreamState::Stopped);
        let _ = sink.tx.send_timeout(DecodeMsg::Close(status.key), Duration::from_millis(200));
        info!("stream stopped");
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let d0 = backoff_delay(0, min, max);
        assert!(
            d0 >= Duration::from_millis(375) && d0 <= Duration::from_millis(625),
            "{d0:?}"
        );
        let d3 = backoff_delay(3, min, max);
        assert!(
            d3 >= Duration::from_secs(3) && d3 <= Duration::from_secs(5),
            "{d3:?}"
        );
        for n in [10, 20, 100, u32::MAX] {
            assert!(backoff_delay(n, min, max) <= max);
        }
    }

    fn sink(mode: SamplingMode, cap: usize) -> (AuSink, crossbeam_channel::Receiver<DecodeMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(cap);
        let status = Arc::new(StreamStatus::new(0, "t", "rtsp://h/x".into(), "keyframes"));
        let sampling = Sampling {
            mode,
            rate: 2.0,
            keyframe_timeout: Duration::from_secs(5),
            classify: None,
        };
        (AuSink::new(status, tx, sampling), rx)
    }

    fn au(keyframe: bool, arrival: Instant) -> AccessUnit {
        AccessUnit {
            stream: 0,
            data: Bytes::from_static(&[0, 0, 1, 0x41]),
            pts_us: None,
            keyframe,
            arrival,
            codec: Arc::new(CodecConfig {
                id: ::ffmpeg_next::codec::Id::H264,
                extradata: None,
            }),
            discontinuity: false,
        }
    }

    #[test]
    fn keyframes_mode_passes_only_keyframes() {
        let (mut s, rx) = sink(SamplingMode::Keyframes, 16);
        let t = Instant::now();
        s.push(au(true, t));
        s.push(au(false, t));
        s.push(au(false, t));
        s.push(au(true, t));
        assert_eq!(rx.len(), 2);
        match rx.try_recv().unwrap() {
            DecodeMsg::Unit(
                u,
                Selection {
                    hash: HashPick::Every,
                    classify: None,
                },
            ) => assert!(u.keyframe && u.discontinuity),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keyframes_mode_with_a_classifier_feeds_every_unit_and_hashes_keyframes() {
        let (mut s, rx) = sink(SamplingMode::Keyframes, 16);
        s.sampling.classify = Some(2.0);
        let t = Instant::now();
        s.push(au(false, t)); // before the first keyframe: nothing to decode from
        s.push(au(true, t));
        s.push(au(false, t));
        assert_eq!(rx.len(), 2);
        for _ in 0..2 {
            match rx.try_recv().unwrap() {
                DecodeMsg::Unit(
                    _,
                    Selection {
                        hash: HashPick::Keyframes,
                        classify: Some(r),
                    },
                ) => assert_eq!(r, 2.0),
                other => panic!("{other:?}"),
            }
        }
        assert!(!s.status().report().sampling_fallback);
    }

    #[test]
    fn keyframes_mode_falls_back_to_fps_without_keyframes() {
        let (mut s, rx) = sink(SamplingMode::Keyframes, 16);
        let t = Instant::now();
        s.push(au(false, t));
        assert_eq!(rx.len(), 0);
        s.push(au(false, t + Duration::from_secs(6)));
        assert_eq!(rx.len(), 1);
        assert!(s.status().report().sampling_fallback);
        assert!(
            matches!(rx.try_recv().unwrap(), DecodeMsg::Unit(_, Selection { hash: HashPick::Rate(r), .. }) if r == 2.0)
        );
        s.push(au(true, t + Duration::from_secs(7)));
        assert!(!s.status().report().sampling_fallback);
    }

    /// A full decode queue must drop the rest of the GOP, not just one unit: a decoder fed a
    /// P-frame whose reference was dropped shows corrupt pictures until the next keyframe.
    #[test]
    fn full_queue_drops_until_next_keyframe() {
        let (mut s, rx) = sink(SamplingMode::Fps, 2);
        let t = Instant::now();
        s.push(au(true, t));
        s.push(au(false, t));
        s.push(au(false, t)); // queue full: dropped
        let _ = rx.try_recv();
        let _ = rx.try_recv();
        s.push(au(false, t)); // room again, but still awaiting a keyframe
        assert_eq!(rx.len(), 0);
        s.push(au(true, t));
        assert_eq!(rx.len(), 1);
        let r = s.status().report();
        assert_eq!(r.frames_dropped, 2);
    }
}
