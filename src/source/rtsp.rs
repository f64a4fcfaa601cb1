//! RTSP through retina, interleaved over the RTSP TCP connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use retina::client::{
    Credentials, PlayOptions, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
};
use retina::codec::{CodecItem, FrameFormat};
use tokio_util::sync::CancellationToken;
use tracing::info;
use url::Url;

use super::nal::{is_random_access, NalCodec};
use super::{AccessUnit, AuSink, CodecConfig, Source, SourceError, SourceErrorKind};
use crate::redact::scrub;
use crate::stream::StreamState;

pub struct RtspSource {
    /// The URL as configured, credentials included (never logged).
    url: Url,
    stall: Duration,
}

impl RtspSource {
    pub fn new(url: Url, stall: Duration) -> Self {
        Self { url, stall }
    }

    /// The URL retina sees carries no credentials: they go through `Credentials`, so that no
    /// retina error message can echo them.
    fn split_credentials(&self) -> (Url, Option<Credentials>) {
        let mut bare = self.url.clone();
        let creds = if self.url.username().is_empty() && self.url.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some(Credentials {
                username: decode(self.url.username()),
                password: decode(self.url.password().unwrap_or("")),
            })
        };
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        (bare, creds)
    }

    async fn session(
        &self,
        sink: &mut AuSink,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let err = |kind, e: &dyn std::fmt::Display| {
            SourceError::new(kind, scrub(&e.to_string(), &self.url))
        };
        let (url, creds) = self.split_credentials();
        let options = SessionOptions::default()
            .creds(creds)
            .user_agent(format!("livewatch/{}", env!("CARGO_PKG_VERSION")));
        let mut session =
            tokio::time::timeout(self.stall, retina::client::Session::describe(url, options))
                .await
                .map_err(|_| SourceError::new(SourceErrorKind::Connect, "no answer to DESCRIBE"))?
                .map_err(|e| err(SourceErrorKind::Connect, &e))?;

        let (index, codec) = session
            .streams()
            .iter()
            .enumerate()
            .find_map(|(i, s)| match (s.media(), s.encoding_name()) {
                ("video", "h264") => Some((i, NalCodec::H264)),
                ("video", "h265") => Some((i, NalCodec::H265)),
                _ => None,
            })
            .ok_or_else(|| {
                let found: Vec<String> = session
                    .streams()
                    .iter()
                    .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
                    .collect();
                SourceError::new(
                    SourceErrorKind::Unsupported,
                    format!(
                        "no H.264 or H.265 video in the presentation (found: {})",
                        found.join(", ")
                    ),
                )
            })?;
        let setup = SetupOptions::default()
            .transport(Transport::Tcp(TcpTransportOptions::default()))
            .frame_format(FrameFormat::SIMPLE);
        tokio::time::timeout(self.stall, session.setup(index, setup))
            .await
            .map_err(|_| SourceError::new(SourceErrorKind::Connect, "no answer to SETUP"))?
            .map_err(|e| err(SourceErrorKind::Protocol, &e))?;
        let playing = tokio::time::timeout(self.stall, session.play(PlayOptions::default()))
            .await
            .map_err(|_| SourceError::new(SourceErrorKind::Connect, "no answer to PLAY"))?
            .map_err(|e| err(SourceErrorKind::Protocol, &e))?;
        let mut demuxed = playing
            .demuxed()
            .map_err(|e| err(SourceErrorKind::Protocol, &e))?;

        let config = Arc::new(CodecConfig {
            id: match codec {
                NalCodec::H264 => ffmpeg_next::codec::Id::H264,
                NalCodec::H265 => ffmpeg_next::codec::Id::HEVC,
            },
            extradata: None,
        });
        let key = sink.status().key;
        let mut announced = false;
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                item = tokio::time::timeout(self.stall, demuxed.next()) => item,
            };
            let item = match item {
                Err(_) => {
                    return Err(SourceError::new(
                        SourceErrorKind::Stalled,
                        format!("no media for {:.1} s", self.stall.as_secs_f64()),
                    ))
                }
                Ok(None) => {
                    return Err(SourceError::new(
                        SourceErrorKind::Ended,
                        "server closed the session",
                    ))
                }
                Ok(Some(Err(e))) => return Err(err(SourceErrorKind::Protocol, &e)),
                Ok(Some(Ok(item))) => item,
            };
            let CodecItem::VideoFrame(frame) = item else {
                continue;
            };
            if !announced {
                announced = true;
                sink.status().set_state(StreamState::Playing);
                sink.status().clear_error();
                info!(codec = config.name(), "playing");
            }
            if let Some(retina::codec::ParametersRef::Video(v)) =
                demuxed.streams()[index].parameters()
            {
                let (w, h) = v.pixel_dimensions();
                sink.status().set_codec(config.name(), w, h);
            }
            let ts = frame.timestamp();
            let pts_us = ts
                .elapsed()
                .checked_mul(1_000_000)
                .map(|v| v / i64::from(ts.clock_rate().get()));
            let data = Bytes::from(frame.into_data());
            let keyframe = is_random_access(codec, &data);
            sink.push(AccessUnit {
                stream: key,
                data,
                pts_us,
                keyframe,
                arrival: Instant::now(),
                codec: config.clone(),
                discontinuity: false,
            });
        }
    }
}

impl Source for RtspSource {
    fn run<'a>(
        &'a mut self,
        sink: &'a mut AuSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(self.session(sink, cancel))
    }
}
