//! Everything libavformat opens: files (replayed in real time and looped, for demos and
//! tests), and the pull URLs platforms use internally (HLS over HTTP, RTMP, SRT, MPEG-TS).
//!
//! libavformat reads block, so each session reads on its own named thread and hands access
//! units to the async side through a small channel; cancellation reaches a blocked read through
//! libavformat's interrupt callback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ffmpeg_next as ff;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;
use url::Url;

use super::nal::{is_random_access, NalCodec};
use super::{AccessUnit, AuSink, CodecConfig, Source, SourceError, SourceErrorKind};
use crate::redact::scrub;
use crate::stream::StreamState;

pub struct FfmpegSource {
    url: Url,
    stall: Duration,
}

enum Event {
    Playing {
        codec: &'static str,
        width: u32,
        height: u32,
    },
    Unit(AccessUnit),
}

impl FfmpegSource {
    pub fn new(url: Url, stall: Duration) -> Self {
        Self { url, stall }
    }

    async fn session(
        &self,
        sink: &mut AuSink,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let (tx, mut rx) = mpsc::channel::<Event>(32);
        let stop = cancel.child_token();
        let reader = {
            let (url, stall, stop, key) = (
                self.url.clone(),
                self.stall,
                stop.clone(),
                sink.status().key,
            );
            std::thread::Builder::new()
                .name("lw-src-av".into())
                .spawn(move || {
                    let r = read_loop(&url, stall, key, &tx, &stop);
                    r.map_err(|e| SourceError {
                        message: scrub(&e.message, &url),
                        ..e
                    })
                })
                .map_err(|e| {
                    SourceError::new(
                        SourceErrorKind::Connect,
                        format!("cannot start reader thread: {e}"),
                    )
                })?
        };
        while let Some(event) = rx.recv().await {
            match event {
                Event::Playing {
                    codec,
                    width,
                    height,
                } => {
                    sink.status().set_state(StreamState::Playing);
                    sink.status().clear_error();
                    sink.status().set_codec(codec, width, height);
                    info!(codec, width, height, "playing");
                }
                Event::Unit(au) => sink.push(au),
            }
        }
        // the reader dropped its sender: it has ended (or was told to stop)
        stop.cancel();
        let result = tokio::task::spawn_blocking(move || reader.join())
            .await
            .map_err(|e| {
                SourceError::new(
                    SourceErrorKind::Protocol,
                    format!("reader task failed: {e}"),
                )
            })?
            .map_err(|_| SourceError::new(SourceErrorKind::Protocol, "reader thread panicked"))?;
        if cancel.is_cancelled() {
            return Ok(());
        }
        result
    }
}

impl Source for FfmpegSource {
    fn run<'a>(
        &'a mut self,
        sink: &'a mut AuSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(self.session(sink, cancel))
    }
}

fn av_err(kind: SourceErrorKind, what: &str, e: ff::Error) -> SourceError {
    SourceError::new(kind, format!("{what}: {e}"))
}

/// Reads one session. Files loop forever, paced to their timestamps, with timestamps that keep
/// increasing across loops like a live stream's; anything else ends when the peer ends it.
fn read_loop(
    url: &Url,
    stall: Duration,
    key: crate::stream::StreamKey,
    tx: &mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> Result<(), SourceError> {
    let is_file = url.scheme() == "file";
    let location = if is_file {
        url.to_file_path()
            .map_err(|_| SourceError::new(SourceErrorKind::Connect, "bad file URL"))?
            .to_string_lossy()
            .into_owned()
    } else {
        url.as_str().to_string()
    };
    let mut loop_offset_us = 0i64;
    let mut first_open = true;
    loop {
        let mut opts = ff::Dictionary::new();
        if !is_file {
            let us = stall.as_micros().to_string();
            opts.set("rw_timeout", &us);
            opts.set("reconnect", "0");
        }
        let interrupt = stop.clone();
        let mut input = ff::format::input_with_interrupt_and_dictionary(
            &location,
            move || interrupt.is_cancelled(),
            opts,
        )
        .map_err(|e| av_err(SourceErrorKind::Connect, "cannot open", e))?;
        let (index, time_base, config, width, height) = {
            let stream = input
                .streams()
                .best(ff::media::Type::Video)
                .ok_or_else(|| SourceError::new(SourceErrorKind::Unsupported, "no video stream"))?;
            let params = stream.parameters();
            let id = params.id();
            if ff::decoder::find(id).is_none() {
                return Err(SourceError::new(
                    SourceErrorKind::Unsupported,
                    format!("no decoder for {id:?}"),
                ));
            }
            // SAFETY: the parameters belong to the open input and outlive this block; the
            // extradata pointer/size pair is maintained by libavformat.
            let (extradata, width, height) = unsafe {
                let p = params.as_ptr();
                let extra = if (*p).extradata.is_null() || (*p).extradata_size <= 0 {
                    None
                } else {
                    Some(Bytes::copy_from_slice(std::slice::from_raw_parts(
                        (*p).extradata,
                        (*p).extradata_size as usize,
                    )))
                };
                (extra, (*p).width.max(0) as u32, (*p).height.max(0) as u32)
            };
            (
                stream.index(),
                stream.time_base(),
                Arc::new(CodecConfig { id, extradata }),
                width,
                height,
            )
        };
        // Annex B streams (MPEG-TS, raw) may mark keyframes only loosely; check the NALs too.
        let nal_codec = match (config.id, config.extradata.is_none()) {
            (ff::codec::Id::H264, true) => Some(NalCodec::H264),
            (ff::codec::Id::HEVC, true) => Some(NalCodec::H265),
            _ => None,
        };
        if first_open || !is_file {
            if tx
                .blocking_send(Event::Playing {
                    codec: config.name(),
                    width,
                    height,
                })
                .is_err()
            {
                return Ok(());
            }
            first_open = false;
        }

        let started = Instant::now();
        let mut first_pts: Option<i64> = None;
        let mut last_pts_us = loop_offset_us;
        let mut frame_us = 33_333i64;
        let mut packet = ff::Packet::empty();
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            match packet.read(&mut input) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                Err(ff::Error::InvalidData) => continue,
                Err(ff::Error::Exit) if stop.is_cancelled() => return Ok(()),
                Err(e) => {
                    let kind = if matches!(e, ff::Error::Other { errno } if errno == libc_etimedout())
                    {
                        SourceErrorKind::Stalled
                    } else {
                        SourceErrorKind::Protocol
                    };
                    return Err(av_err(kind, "read failed", e));
                }
            }
            if packet.stream() != index {
                continue;
            }
            let Some(data) = packet.data() else { continue };
            let ts = packet.pts().or(packet.dts());
            let pts_us = ts.map(|t| rescale_us(t, time_base));
            if let Some(p) = pts_us {
                let rel = p - *first_pts.get_or_insert(p);
                if is_file {
                    // replay in real time, like a camera would deliver it
                    let due = started + Duration::from_micros(rel.max(0) as u64);
                    while let Some(wait) = due.checked_duration_since(Instant::now()) {
                        if stop.is_cancelled() {
                            return Ok(());
                        }
                        std::thread::sleep(wait.min(Duration::from_millis(100)));
                    }
                }
                let d = packet.duration();
                if d > 0 {
                    frame_us = rescale_us(d, time_base).max(1);
                }
                last_pts_us = loop_offset_us + rel;
            }
            let data = Bytes::copy_from_slice(data);
            let keyframe = packet.is_key() || nal_codec.is_some_and(|c| is_random_access(c, &data));
            let au = AccessUnit {
                stream: key,
                data,
                pts_us: pts_us.map(|_| last_pts_us),
                keyframe,
                arrival: Instant::now(),
                codec: config.clone(),
                discontinuity: false,
            };
            if tx.blocking_send(Event::Unit(au)).is_err() {
                return Ok(());
            }
        }
        if !is_file {
            return Err(SourceError::new(SourceErrorKind::Ended, "end of stream"));
        }
        if first_pts.is_none() {
            return Err(SourceError::new(
                SourceErrorKind::Protocol,
                "file has no video packets",
            ));
        }
        loop_offset_us = last_pts_us + frame_us;
    }
}

fn rescale_us(t: i64, tb: ff::Rational) -> i64 {
    use ff::Rescale;
    t.rescale(tb, ff::Rational::new(1, 1_000_000))
}

fn libc_etimedout() -> i32 {
    110 // ETIMEDOUT on Linux
}
