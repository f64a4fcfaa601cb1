//! Decoding on dedicated threads, and the queue of decoded frames waiting for analysis.
//!
//! Streams are spread over a few decoder threads (stream key modulo thread count); each
//! thread owns the libavcodec decoders of its streams. What leaves this stage is a [`Frame`]:
//! just the luma plane and where and when it came from.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ffmpeg_next as ff;
use parking_lot::{Condvar, Mutex};
use tracing::{debug, warn};

use crate::metrics::{drop_reason, metrics, stage};
use crate::source::{AccessUnit, CodecConfig, DecodeMsg, HashPick, Selection};
use crate::stream::{StreamKey, StreamStatus};

/// A sampled, decoded picture: its luma plane, tightly packed.
#[derive(Debug, Clone)]
pub struct Frame {
    pub stream: StreamKey,
    pub pts_us: Option<i64>,
    /// Arrival of the access unit this picture was decoded from.
    pub arrival: Instant,
    pub width: usize,
    pub height: usize,
    pub luma: Vec<u8>,
    /// Luma uses 0..=255 already (JPEG range) rather than 16..=235.
    pub full_range: bool,
    /// The 4:2:0 chroma planes, when the picture has them: evidence thumbnails and the
    /// classifier use them.
    pub chroma: Option<Chroma>,
    /// The YUV → RGB matrix the stream signals (guessed from the size when it says nothing).
    pub matrix: crate::classify::preprocess::Matrix,
}

impl Frame {
    /// The picture as the classifier's pre-processing takes it.
    pub fn picture(&self) -> crate::classify::preprocess::Picture<'_> {
        use crate::classify::preprocess::{Picture, Yuv420};
        match &self.chroma {
            Some(c) => Picture::Yuv420(Yuv420 {
                y: &self.luma,
                y_stride: self.width,
                u: &c.u,
                v: &c.v,
                c_stride: c.width,
                width: self.width,
                height: self.height,
                full_range: self.full_range,
                matrix: self.matrix,
            }),
            None => Picture::Gray {
                y: &self.luma,
                stride: self.width,
                width: self.width,
                height: self.height,
                full_range: self.full_range,
            },
        }
    }
}

/// The matrix a picture signals; unspecified: BT.709 from 720 lines up, BT.601 below (what
/// encoders assume for HD and SD).
fn matrix_of(picture: &ff::frame::Video) -> crate::classify::preprocess::Matrix {
    use crate::classify::preprocess::Matrix;
    use ff::color::Space;
    match picture.color_space() {
        Space::BT709 => Matrix::Bt709,
        Space::BT470BG | Space::SMPTE170M | Space::FCC | Space::SMPTE240M => Matrix::Bt601,
        _ if picture.height() >= 720 => Matrix::Bt709,
        _ => Matrix::Bt601,
    }
}

/// Quarter-size U and V planes of a 4:2:0 picture, tightly packed.
#[derive(Debug, Clone)]
pub struct Chroma {
    pub width: usize,
    pub height: usize,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

fn extract_chroma(picture: &ff::frame::Video) -> Option<Chroma> {
    use ff::format::Pixel;
    if !matches!(picture.format(), Pixel::YUV420P | Pixel::YUVJ420P) {
        return None;
    }
    let (w, h) = (
        (picture.width() as usize).div_ceil(2),
        (picture.height() as usize).div_ceil(2),
    );
    Some(Chroma {
        width: w,
        height: h,
        u: copy_plane(picture, 1, w, h),
        v: copy_plane(picture, 2, w, h),
    })
}

/// Bounded queue of decoded frames (one feeds hashing, one the classifier). When full, the oldest frame *of the same stream* is
/// dropped (or the oldest overall if that stream has none queued): for live video the newest
/// picture is the one worth analysing, and one busy stream must not starve the others.
pub struct FrameQueue {
    inner: Mutex<QueueInner>,
    ready: Condvar,
    capacity: usize,
}

struct QueueInner {
    frames: VecDeque<Arc<Frame>>,
    closed: bool,
}

impl FrameQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(QueueInner {
                frames: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    /// Adds a frame; returns the stream of a frame dropped to make room, if any.
    pub fn push(&self, frame: Arc<Frame>) -> Option<StreamKey> {
        let mut g = self.inner.lock();
        let mut dropped = None;
        if g.frames.len() >= self.capacity {
            let victim = g
                .frames
                .iter()
                .position(|f| f.stream == frame.stream)
                .unwrap_or(0);
            dropped = g.frames.remove(victim).map(|f| f.stream);
        }
        g.frames.push_back(frame);
        drop(g);
        self.ready.notify_one();
        dropped
    }

    /// Takes up to `max` frames, waiting up to `wait` for the first. Empty when closed.
    pub fn pop_batch(&self, max: usize, wait: Duration) -> Vec<Arc<Frame>> {
        let mut g = self.inner.lock();
        if g.frames.is_empty() && !g.closed {
            self.ready.wait_for(&mut g, wait);
        }
        let n = g.frames.len().min(max);
        g.frames.drain(..n).collect()
    }

    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        let g = self.inner.lock();
        g.closed && g.frames.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.inner.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One stream's decoder and sampling state.
struct StreamDecoder {
    config: Arc<CodecConfig>,
    low_delay: bool,
    decoder: ff::decoder::Video,
    /// Arrival instants of units sent, by pts, to date the pictures that come out.
    arrivals: VecDeque<(Option<i64>, Instant)>,
    next_due_us: Option<i64>,
    next_classify_us: Option<i64>,
    scaler: Option<(ff::format::Pixel, u32, u32, ff::software::scaling::Context)>,
}

fn open_decoder(config: &CodecConfig, low_delay: bool) -> Result<ff::decoder::Video, ff::Error> {
    let codec = ff::decoder::find(config.id).ok_or(ff::Error::DecoderNotFound)?;
    let mut ctx = ff::codec::context::Context::new_with_codec(codec);
    // SAFETY: the context is freshly allocated and not yet opened; extradata is allocated with
    // av_mallocz plus the padding libavcodec requires, and ownership passes to the context.
    unsafe {
        let p = ctx.as_mut_ptr();
        if let Some(extra) = &config.extradata {
            let pad = ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
            let buf = ff::ffi::av_mallocz(extra.len() + pad) as *mut u8;
            if buf.is_null() {
                return Err(ff::Error::Other { errno: 12 });
            }
            std::ptr::copy_nonoverlapping(extra.as_ptr(), buf, extra.len());
            (*p).extradata = buf;
            (*p).extradata_size = extra.len() as i32;
        }
        if low_delay {
            // keyframes only: every picture is output at once, none held back for reordering
            (*p).flags |= ff::ffi::AV_CODEC_FLAG_LOW_DELAY as i32;
        }
        (*p).thread_count = 1;
    }
    ctx.decoder().video()
}

/// Where decoded frames go: hashing, and the classifier when one runs.
#[derive(Clone)]
pub struct Outputs {
    pub hash: Arc<FrameQueue>,
    pub classify: Option<Arc<FrameQueue>>,
}

/// Whether a picture is due under a rate: at most `rate` per second of stream time. A jump
/// of more than 10 periods (a seek, a new clock) starts over.
fn due(next: &mut Option<i64>, pts: Option<i64>, rate: f64) -> bool {
    let Some(p) = pts else { return true };
    let period = (1_000_000.0 / rate) as i64;
    match *next {
        Some(due) if p < due && due - p <= 10 * period => false,
        _ => {
            *next = Some(p + period);
            true
        }
    }
}

/// Spawns `threads` decoder threads; returns their input channels.
pub fn spawn_decoders(
    threads: usize,
    queue: usize,
    statuses: Arc<crate::manager::Registry>,
    out: Outputs,
    health: &crate::health::Heartbeats,
) -> Vec<(Sender<DecodeMsg>, std::thread::JoinHandle<()>)> {
    (0..threads)
        .map(|i| {
            let (tx, rx) = crossbeam_channel::bounded(queue);
            let (statuses, out) = (statuses.clone(), out.clone());
            let beat = health.register(format!("decode-{i}"));
            let handle = std::thread::Builder::new()
                .name(format!("lw-decode-{i}"))
                .spawn(move || decode_thread(rx, statuses, out, beat))
                .expect("spawn decoder thread");
            (tx, handle)
        })
        .collect()
}

fn decode_thread(
    rx: Receiver<DecodeMsg>,
    statuses: Arc<crate::manager::Registry>,
    out: Outputs,
    beat: crate::health::Beat,
) {
    let mut decoders: HashMap<StreamKey, StreamDecoder> = HashMap::new();
    let mut picture = ff::frame::Video::empty();
    loop {
        beat.beat();
        let msg = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(m) => m,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            DecodeMsg::Close(key) => {
                decoders.remove(&key);
            }
            DecodeMsg::Unit(au, selection) => {
                let Some(status) = statuses.get(au.stream) else {
                    continue;
                };
                let started = Instant::now();
                decode_unit(&mut decoders, au, selection, &status, &out, &mut picture);
                metrics()
                    .stage_seconds
                    .with_label_values(&[stage::DECODE])
                    .observe(started.elapsed().as_secs_f64());
            }
        }
    }
}

fn decode_unit(
    decoders: &mut HashMap<StreamKey, StreamDecoder>,
    au: AccessUnit,
    selection: Selection,
    status: &StreamStatus,
    out: &Outputs,
    picture: &mut ff::frame::Video,
) {
    let key = au.stream;
    let low_delay = selection.low_delay();
    let stale = decoders
        .get(&key)
        .is_none_or(|d| au.discontinuity || *d.config != *au.codec || d.low_delay != low_delay);
    if stale {
        match open_decoder(&au.codec, low_delay) {
            Ok(decoder) => {
                debug!(stream = %status.id, codec = au.codec.name(), low_delay, "decoder opened");
                decoders.insert(
                    key,
                    StreamDecoder {
                        config: au.codec.clone(),
                        low_delay,
                        decoder,
                        arrivals: VecDeque::new(),
                        next_due_us: None,
                        next_classify_us: None,
                        scaler: None,
                    },
                );
            }
            Err(e) => {
                warn!(stream = %status.id, error = %e, "cannot open decoder");
                count_drop(status);
                return;
            }
        }
    }
    let d = decoders.get_mut(&key).expect("decoder present");
    let mut packet = ff::Packet::copy(&au.data);
    packet.set_pts(au.pts_us);
    packet.set_dts(None);
    if au.keyframe {
        packet.set_flags(ff::packet::Flags::KEY);
    }
    d.arrivals.push_back((au.pts_us, au.arrival));
    while d.arrivals.len() > 64 {
        d.arrivals.pop_front();
    }
    if let Err(e) = d.decoder.send_packet(&packet) {
        debug!(stream = %status.id, error = %e, "decoder rejected a unit");
        count_drop(status);
        return;
    }
    while d.decoder.receive_frame(picture).is_ok() {
        metrics().frames_decoded.inc();
        status
            .frames_decoded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pts = picture.pts();
        let hash = match selection.hash {
            HashPick::Every => true,
            HashPick::Keyframes => picture.is_key(),
            HashPick::Rate(rate) => due(&mut d.next_due_us, pts, rate),
        };
        let classify = match (&out.classify, selection.classify) {
            (Some(_), Some(rate)) => due(&mut d.next_classify_us, pts, rate),
            _ => false,
        };
        if !hash {
            if selection.hash == HashPick::Keyframes {
                // decoded only because the classifier samples between keyframes
                metrics().classifier_extra_decoded.inc();
            }
            if !classify {
                continue;
            }
        }
        let arrival = d
            .arrivals
            .iter()
            .find(|(p, _)| *p == pts && pts.is_some())
            .or(d.arrivals.back())
            .map(|(_, a)| *a)
            .unwrap_or(au.arrival);
        let Some((luma, full_range)) = extract_luma(picture, &mut d.scaler) else {
            count_drop(status);
            continue;
        };
        let frame = Arc::new(Frame {
            stream: key,
            pts_us: pts,
            arrival,
            width: picture.width() as usize,
            height: picture.height() as usize,
            luma,
            full_range,
            chroma: extract_chroma(picture),
            matrix: matrix_of(picture),
        });
        if classify {
            let q = out.classify.as_ref().expect("checked above");
            if q.push(frame.clone()).is_some() {
                metrics()
                    .frames_dropped
                    .with_label_values(&[drop_reason::CLASSIFY_QUEUE_FULL])
                    .inc();
            }
        }
        if hash {
            if let Some(victim) = out.hash.push(frame) {
                metrics()
                    .frames_dropped
                    .with_label_values(&[drop_reason::HASH_QUEUE_FULL])
                    .inc();
                if victim == key {
                    status
                        .frames_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

fn count_drop(status: &StreamStatus) {
    metrics()
        .frames_dropped
        .with_label_values(&[drop_reason::DECODE_ERROR])
        .inc();
    status
        .frames_dropped
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Copies the 8-bit luma plane out of a decoded picture, converting formats whose plane 0 is
/// not 8-bit luma (high bit depth, packed RGB) through swscale.
fn extract_luma(
    picture: &ff::frame::Video,
    scaler: &mut Option<(ff::format::Pixel, u32, u32, ff::software::scaling::Context)>,
) -> Option<(Vec<u8>, bool)> {
    use ff::format::Pixel;
    let (w, h) = (picture.width(), picture.height());
    if w == 0 || h == 0 {
        return None;
    }
    let format = picture.format();
    let jpeg_range = picture.color_range() == ff::color::Range::JPEG;
    let direct = match format {
        Pixel::YUV420P
        | Pixel::YUV422P
        | Pixel::YUV444P
        | Pixel::NV12
        | Pixel::NV21
        | Pixel::GRAY8 => Some(jpeg_range),
        Pixel::YUVJ420P | Pixel::YUVJ422P | Pixel::YUVJ444P => Some(true),
        _ => None,
    };
    if let Some(full_range) = direct {
        return Some((copy_plane(picture, 0, w as usize, h as usize), full_range));
    }
    let needs_new = scaler
        .as_ref()
        .is_none_or(|(f, sw, sh, _)| *f != format || *sw != w || *sh != h);
    if needs_new {
        let ctx = ff::software::scaling::Context::get(
            format,
            w,
            h,
            Pixel::GRAY8,
            w,
            h,
            ff::software::scaling::Flags::POINT,
        )
        .ok()?;
        *scaler = Some((format, w, h, ctx));
    }
    let (_, _, _, ctx) = scaler.as_mut()?;
    let mut gray = ff::frame::Video::empty();
    ctx.run(picture, &mut gray).ok()?;
    // swscale's GRAY8 output is full range
    Some((copy_plane(&gray, 0, w as usize, h as usize), true))
}

fn copy_plane(picture: &ff::frame::Video, plane: usize, w: usize, h: usize) -> Vec<u8> {
    let stride = picture.stride(plane);
    let data = picture.data(plane);
    let mut out = Vec::with_capacity(w * h);
    for row in 0..h {
        out.extend_from_slice(&data[row * stride..row * stride + w]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: StreamKey, tag: u8) -> Arc<Frame> {
        Arc::new(Frame {
            stream,
            pts_us: Some(tag as i64),
            arrival: Instant::now(),
            width: 1,
            height: 1,
            luma: vec![tag],
            full_range: true,
            chroma: None,
            matrix: crate::classify::preprocess::Matrix::Bt601,
        })
    }

    #[test]
    fn full_queue_drops_the_oldest_frame_of_the_same_stream() {
        let q = FrameQueue::new(3);
        assert_eq!(q.push(frame(1, 10)), None);
        assert_eq!(q.push(frame(2, 20)), None);
        assert_eq!(q.push(frame(1, 11)), None);
        assert_eq!(q.push(frame(2, 21)), Some(2)); // drops (2, 20), not stream 1's oldest
        let tags: Vec<u8> = q
            .pop_batch(10, Duration::ZERO)
            .iter()
            .map(|f| f.luma[0])
            .collect();
        assert_eq!(tags, vec![10, 11, 21]);
    }

    #[test]
    fn full_queue_without_frames_of_that_stream_drops_the_oldest() {
        let q = FrameQueue::new(2);
        q.push(frame(1, 10));
        q.push(frame(1, 11));
        assert_eq!(q.push(frame(3, 30)), Some(1));
        let tags: Vec<u8> = q
            .pop_batch(10, Duration::ZERO)
            .iter()
            .map(|f| f.luma[0])
            .collect();
        assert_eq!(tags, vec![11, 30]);
    }

    #[test]
    fn closed_queue_wakes_waiters() {
        let q = Arc::new(FrameQueue::new(2));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop_batch(4, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        q.close();
        assert!(t.join().unwrap().is_empty());
        assert!(q.is_closed());
    }
}

/// One hashed frame of a video file, in vPDQ's terms.
#[derive(Debug, Clone)]
pub struct VideoFrameHash {
    /// Index of the frame among the frames the decoder returned (presentation order), from 0.
    pub frame_number: u64,
    pub hash: crate::hash::PdqHash,
    /// `frame_number / average frame rate` as vPDQ computes it: a single-precision quotient
    /// (held here widened to `f64`, exactly), so that it prints as vPDQ prints it.
    pub timestamp: f64,
}

/// One line as Meta's vpdq writes it: `frame_number,quality,pdq_hex,timestamp_seconds`. The
/// quality is an integer, the hash 64 lowercase hex digits, the timestamp fixed-point with three
/// decimals (C++ `std::fixed << std::setprecision(3)` of the single-precision value, which
/// rounds the exact binary value as Rust's `{:.3}` does).
pub fn vpdq_line(l: &VideoFrameHash) -> String {
    format!(
        "{},{},{},{:.3}",
        l.frame_number, l.hash.quality, l.hash.hash, l.timestamp
    )
}

/// The pixels [`hash_video_file_with`] hands to PDQ for each decoded frame. Every choice hashes
/// with the one PDQ implementation (`crate::hash::PdqHasher`); they differ only in how a decoded
/// YUV frame becomes the image PDQ sees.
///
/// Measured on every frame of the nine ThreatExchange videos (3935 frames; libswscale 6 from
/// FFmpeg 5.1 on x86-64; tests/vpdq_reference.rs prints these figures), as the share of frames
/// whose hash is identical / within 10 bits:
///
/// | choice         | vs the published reference files | vs PyPI vpdq 0.2.5 on the same libav |
/// | -------------- | -------------------------------- | ------------------------------------ |
/// | `Luma`         | 56.9 % / 98.9 % (worst 66 bits)  | 53.9 % / 98.7 % (worst 78 bits)      |
/// | `RgbVpdq`      | 47.2 % / 98.8 % (worst 76 bits)  | 100 % identical                      |
/// | `RgbReference` | 98.0 % / 100 % (worst 2 bits)    | 47.2 % / 98.8 % (worst 76 bits)      |
///
/// The large distances are all on one flat, low-quality video (`doorknob-hd-no-bar`), where a
/// rounding difference of one code value moves many DCT coefficients across the median.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VideoPixels {
    /// The Y plane, expanded from limited to full range: what the live pipeline hashes (cheapest,
    /// no colour conversion).
    Luma,
    /// RGB24 as vpdq 0.2.5 makes it: one swscale context from the decoder's pixel format to
    /// RGB24 at the same size with `SWS_AREA` and no other flag (so libswscale's unscaled,
    /// possibly SIMD, YUV-to-RGB converter, BT.601 coefficients, range from the pixel format),
    /// then PDQ's luma from RGB. Identical pixels to vpdq on the same libswscale and CPU (vpdq's
    /// C++ sums the luma in `f32` where `PdqHasher` sums in `f64` like `pdqhash`: no measured
    /// frame's hash differed for it).
    RgbVpdq,
    /// RGB24 from swscale with `SWS_BICUBIC | SWS_ACCURATE_RND`: the generic scaler path
    /// (bicubic chroma upsampling, exact rounding, no CPU-dependent shortcut). This reproduces
    /// Meta's published vPDQ reference hashes (`vpdq/sample-hashes` in ThreatExchange), which
    /// were evidently not made with the unscaled fast converter; the default.
    #[default]
    RgbReference,
}

impl VideoPixels {
    fn scaler_flags(self) -> Option<ff::software::scaling::Flags> {
        use ff::software::scaling::Flags;
        match self {
            VideoPixels::Luma => None,
            VideoPixels::RgbVpdq => Some(Flags::AREA),
            VideoPixels::RgbReference => Some(Flags::BICUBIC | Flags::ACCURATE_RND),
        }
    }
}

/// Hashes the frames of a video file the way Meta's vPDQ does, with the default
/// [`VideoPixels`]. See [`hash_video_file_with`].
pub fn hash_video_file(
    path: &std::path::Path,
    seconds_per_hash: f64,
) -> anyhow::Result<Vec<VideoFrameHash>> {
    hash_video_file_with(path, seconds_per_hash, VideoPixels::default())
}

/// Hashes the frames of a video file the way Meta's vPDQ (0.2.5, `hashVideoFile`) does:
///
/// - the first video stream of the file is decoded (slice threads, as vpdq asks for);
/// - frames are numbered in the order the decoder returns them (presentation order, so B-frames
///   are already in place), from 0;
/// - the frame rate is the stream's average frame rate, or its real base frame rate when that is
///   unknown; a file with neither is refused, as vpdq refuses it;
/// - frame `n` is hashed when `n % every == 0`, `every` being `seconds_per_hash * rate`
///   truncated to an integer, or 1 when that is 0 (so `seconds_per_hash` 0 hashes every frame);
/// - its timestamp is `(n as f32) / (rate as f32)`, in single precision as vpdq computes it;
/// - at the end of the file vpdq flushes the decoder by sending it an emptied packet, whose
///   stream index is 0: when the video stream is not stream 0, that packet is ignored and the
///   frames still held in the decoder (its reordering delay: two for typical H.264 with
///   B-frames) are never returned. This is reproduced, so that the same files give the same
///   lines.
///
/// Unlike vpdq, a packet the demuxer or the decoder rejects is skipped rather than ending the
/// run (vpdq stops reading at the first error), and a frame smaller than PDQ's minimum gets
/// quality 0 and the zero hash rather than an error.
pub fn hash_video_file_with(
    path: &std::path::Path,
    seconds_per_hash: f64,
    pixels: VideoPixels,
) -> anyhow::Result<Vec<VideoFrameHash>> {
    use anyhow::Context as _;
    let VideoInput {
        mut input,
        index,
        fps,
        parameters,
    } = open_video(path)?;
    let mut ctx = ff::codec::context::Context::from_parameters(parameters)?;
    // slice threads, as many as libavcodec chooses (count 0); the output is the same
    ctx.set_threading(ff::codec::threading::Config::kind(
        ff::codec::threading::Type::Slice,
    ));
    let mut decoder = ctx
        .decoder()
        .video()
        .with_context(|| format!("{}: cannot decode its video", path.display()))?;
    let every = vpdq_frame_interval(seconds_per_hash, fps);
    let mut converter = FrameConverter::new(pixels, &decoder);
    let mut hasher = crate::hash::PdqHasher::new();
    let mut out = Vec::new();
    let mut frame_number = 0u64;
    let mut picture = ff::frame::Video::empty();
    let mut drain = |decoder: &mut ff::decoder::Video, out: &mut Vec<VideoFrameHash>| {
        while decoder.receive_frame(&mut picture).is_ok() {
            let n = frame_number;
            frame_number += 1;
            if !n.is_multiple_of(every) {
                continue;
            }
            if let Some(hash) = converter.hash(&picture, &mut hasher) {
                out.push(VideoFrameHash {
                    frame_number: n,
                    hash,
                    timestamp: vpdq_timestamp(n, fps),
                });
            }
        }
    };
    for (s, packet) in input.packets() {
        if s.index() != index {
            continue;
        }
        // a corrupt packet is skipped; the decoder resynchronises at the next keyframe
        if decoder.send_packet(&packet).is_ok() {
            drain(&mut decoder, &mut out);
        }
    }
    // vpdq's end-of-file flush only reaches the decoder of stream 0 (see above)
    if index == 0 {
        decoder.send_eof()?;
        drain(&mut decoder, &mut out);
    }
    Ok(out)
}

/// vpdq's frame rate: the average frame rate, else the real base frame rate; `None` if zero.
fn vpdq_frame_rate(avg: ff::Rational, base: ff::Rational) -> Option<f64> {
    let usable = |r: ff::Rational| r.numerator() != 0 && r.denominator() != 0;
    let rate = if usable(avg) { avg } else { base };
    let fps = f64::from(rate.numerator()) / f64::from(rate.denominator());
    (fps.is_finite() && fps != 0.0).then_some(fps)
}

/// vpdq's sampling interval in frames: `seconds_per_hash * fps` truncated, at least 1.
fn vpdq_frame_interval(seconds_per_hash: f64, fps: f64) -> u64 {
    // vpdq truncates to a C int; a negative or absurd product means "every frame" here
    let every = (seconds_per_hash * fps).trunc();
    if every >= 1.0 {
        every.min(i32::MAX as f64) as u64
    } else {
        1
    }
}

/// vpdq's timestamp: `(float)frame_number / (float)fps`, in single precision.
fn vpdq_timestamp(frame_number: u64, fps: f64) -> f64 {
    f64::from(frame_number as f32 / fps as f32)
}

/// Turns decoded frames into the pixels [`VideoPixels`] names and hashes them.
struct FrameConverter {
    pixels: VideoPixels,
    /// For the RGB choices: the source format and size the context was made for, the context,
    /// and the tightly packed RGB24 copy handed to PDQ.
    rgb: Option<(
        (ff::format::Pixel, u32, u32),
        ff::software::scaling::Context,
    )>,
    rgb_frame: ff::frame::Video,
    packed: Vec<u8>,
    /// For `Luma`: the scaler of pixel formats whose Y plane is not directly usable.
    luma_scaler: Option<(ff::format::Pixel, u32, u32, ff::software::scaling::Context)>,
}

impl FrameConverter {
    fn new(pixels: VideoPixels, decoder: &ff::decoder::Video) -> Self {
        let mut c = FrameConverter {
            pixels,
            rgb: None,
            rgb_frame: ff::frame::Video::empty(),
            packed: Vec::new(),
            luma_scaler: None,
        };
        // vpdq makes its one context from the opened decoder's format and the stream's size
        c.rgb_context(decoder.format(), decoder.width(), decoder.height());
        c
    }

    /// The RGB24 context for frames of this format and size, made when first needed. vpdq
    /// keeps the context of the decoder's initial format for the whole file; a frame that does
    /// not fit it (a mid-stream change) gets a context of its own here.
    fn rgb_context(
        &mut self,
        format: ff::format::Pixel,
        w: u32,
        h: u32,
    ) -> Option<&mut ff::software::scaling::Context> {
        let flags = self.pixels.scaler_flags()?;
        if format == ff::format::Pixel::None || w == 0 || h == 0 {
            return None;
        }
        let key = (format, w, h);
        if self.rgb.as_ref().is_none_or(|(k, _)| *k != key) {
            let ctx = ff::software::scaling::Context::get(
                format,
                w,
                h,
                ff::format::Pixel::RGB24,
                w,
                h,
                flags,
            )
            .ok()?;
            self.rgb = Some((key, ctx));
            self.rgb_frame = ff::frame::Video::empty();
        }
        self.rgb.as_mut().map(|(_, c)| c)
    }

    fn hash(
        &mut self,
        picture: &ff::frame::Video,
        hasher: &mut crate::hash::PdqHasher,
    ) -> Option<crate::hash::PdqHash> {
        let (w, h) = (picture.width(), picture.height());
        if self.pixels == VideoPixels::Luma {
            let (luma, full) = extract_luma(picture, &mut self.luma_scaler)?;
            let (w, h) = (w as usize, h as usize);
            return Some(if full {
                hasher.hash_gray(&luma, w, h, w)
            } else {
                hasher.hash_video_luma(&luma, w, h, w)
            });
        }
        self.rgb_context(picture.format(), w, h)?;
        let (_, ctx) = self.rgb.as_mut()?;
        ctx.run(picture, &mut self.rgb_frame).ok()?;
        let (w, h) = (w as usize, h as usize);
        let stride = self.rgb_frame.stride(0);
        let data = self.rgb_frame.data(0);
        self.packed.clear();
        for row in 0..h {
            self.packed
                .extend_from_slice(&data[row * stride..row * stride + w * 3]);
        }
        Some(hasher.hash(crate::hash::Pixels::Rgb(&self.packed), w, h))
    }
}

#[cfg(test)]
mod vpdq_rules {
    use super::*;

    #[test]
    fn frame_rate_falls_back_to_the_base_rate_and_refuses_zero() {
        let r = ff::Rational::new;
        assert_eq!(vpdq_frame_rate(r(30, 1), r(60, 1)), Some(30.0));
        assert_eq!(vpdq_frame_rate(r(0, 1), r(25, 1)), Some(25.0));
        assert_eq!(vpdq_frame_rate(r(0, 0), r(0, 0)), None);
    }

    #[test]
    fn interval_truncates_like_a_c_int() {
        assert_eq!(vpdq_frame_interval(0.0, 30.0), 1);
        assert_eq!(vpdq_frame_interval(1.0, 30.0), 30);
        assert_eq!(vpdq_frame_interval(1.0, 30000.0 / 1001.0), 29);
        assert_eq!(vpdq_frame_interval(0.5, 25.0), 12);
        assert_eq!(vpdq_frame_interval(1.0, 0.5), 1);
    }

    #[test]
    fn timestamps_are_single_precision_and_print_with_three_decimals() {
        let line = |n: u64, fps: f64| VideoFrameHash {
            frame_number: n,
            hash: crate::hash::PdqHash {
                hash: Default::default(),
                quality: 100,
            },
            timestamp: vpdq_timestamp(n, fps),
        };
        assert_eq!(vpdq_timestamp(1, 30.0), f64::from(1f32 / 30f32));
        assert_eq!(
            vpdq_line(&line(2, 30.0)),
            format!("2,100,{},0.067", "0".repeat(64))
        );
        assert!(vpdq_line(&line(563, 30.0)).ends_with(",18.767"));
        // an exact tie rounds to even, as C++ iostreams do
        assert!(vpdq_line(&line(1, 16.0)).ends_with(",0.062"));
    }
}

/// Decodes the first video stream of a file and calls `each(frame_number, timestamp, frame)`
/// for every sampled frame: one every `seconds_per_frame` (0: every frame), numbered and dated
/// as [`hash_video_file_with`] does. Pictures come as 4:2:0 (other formats are converted).
pub fn for_each_video_frame(
    path: &std::path::Path,
    seconds_per_frame: f64,
    mut each: impl FnMut(u64, f64, Frame) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use ff::format::Pixel;
    let VideoInput {
        mut input,
        index,
        fps,
        parameters,
    } = open_video(path)?;
    let ctx = ff::codec::context::Context::from_parameters(parameters)?;
    let mut decoder = ctx
        .decoder()
        .video()
        .with_context(|| format!("{}: cannot decode its video", path.display()))?;
    let every = vpdq_frame_interval(seconds_per_frame, fps);
    let mut frame_number = 0u64;
    let mut picture = ff::frame::Video::empty();
    let mut converted = ff::frame::Video::empty();
    let mut scaler: Option<ff::software::scaling::Context> = None;
    let mut drain = |decoder: &mut ff::decoder::Video| -> anyhow::Result<()> {
        while decoder.receive_frame(&mut picture).is_ok() {
            let n = frame_number;
            frame_number += 1;
            if !n.is_multiple_of(every) {
                continue;
            }
            let full_range = picture.color_range() == ff::color::Range::JPEG
                || matches!(picture.format(), Pixel::YUVJ420P);
            let src = if matches!(picture.format(), Pixel::YUV420P | Pixel::YUVJ420P) {
                &picture
            } else {
                let (w, h) = (picture.width(), picture.height());
                let fresh = scaler.as_ref().is_none_or(|s| {
                    s.input().format != picture.format()
                        || s.input().width != w
                        || s.input().height != h
                });
                if fresh {
                    scaler = Some(ff::software::scaling::Context::get(
                        picture.format(),
                        w,
                        h,
                        Pixel::YUV420P,
                        w,
                        h,
                        ff::software::scaling::Flags::BICUBIC
                            | ff::software::scaling::Flags::ACCURATE_RND,
                    )?);
                }
                scaler
                    .as_mut()
                    .expect("made above")
                    .run(&picture, &mut converted)?;
                &converted
            };
            let (w, h) = (src.width() as usize, src.height() as usize);
            let frame = Frame {
                stream: 0,
                pts_us: None,
                arrival: Instant::now(),
                width: w,
                height: h,
                luma: copy_plane(src, 0, w, h),
                // swscale's YUV output keeps limited range for non-JPEG input
                full_range: full_range && std::ptr::eq(src, &picture),
                chroma: extract_chroma(src),
                matrix: matrix_of(&picture),
            };
            each(n, vpdq_timestamp(n, fps), frame)?;
        }
        Ok(())
    };
    for (s, packet) in input.packets() {
        if s.index() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_ok() {
            drain(&mut decoder)?;
        }
    }
    decoder.send_eof()?;
    drain(&mut decoder)
}

/// The first video stream of a file, opened for decoding, with vpdq's frame rate.
struct VideoInput {
    input: ff::format::context::Input,
    index: usize,
    fps: f64,
    parameters: ff::codec::Parameters,
}

fn open_video(path: &std::path::Path) -> anyhow::Result<VideoInput> {
    use anyhow::Context as _;
    crate::init_media();
    let input =
        ff::format::input(path).with_context(|| format!("cannot open {}", path.display()))?;
    let stream = input
        .streams()
        .find(|s| s.parameters().medium() == ff::media::Type::Video)
        .with_context(|| format!("{}: no video stream", path.display()))?;
    let index = stream.index();
    let fps = vpdq_frame_rate(stream.avg_frame_rate(), stream.rate())
        .with_context(|| format!("{}: the video's frame rate is unknown", path.display()))?;
    let parameters = stream.parameters();
    Ok(VideoInput {
        input,
        index,
        fps,
        parameters,
    })
}
