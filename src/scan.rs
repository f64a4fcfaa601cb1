//! `livewatch scan`: the live matching rules applied to files, for investigations and tuning.
//!
//! Each bank file's format is recognised from its content (a folder, or lines of
//! `frame,quality,hash,timestamp`, are vPDQ video items; a header naming a hash column is a CSV
//! export; anything else is plain PDQ lines). Images are hashed once; videos are decoded and
//! sampled (every frame, or `--fps`), each frame matched against the image banks (one `match`
//! line per matching frame) and fed, on the video's own clock, to the same per-stream window
//! the live pipeline uses (one `video_match` line when the rule first holds for an item).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::bank::{Bank, Banks};
use crate::config::{BankFormat, BankSpec, VideoRule};
use crate::decide::{Action, Decider, Detection, EventKind, Evidence, Policy, Reason, Severity};
use crate::hash::{Hash256, PdqHasher, Pixels};

/// Settings of one `scan` run.
pub struct ScanOptions {
    pub banks: Vec<PathBuf>,
    /// Classifier models (manifest names) whose scores are printed per sampled frame.
    pub models: Vec<String>,
    pub models_dir: PathBuf,
    pub onnxruntime: Option<PathBuf>,
    pub providers: Vec<crate::classify::runtime::ProviderKind>,
    /// Frames per second to sample from videos; `None`: every frame.
    pub fps: Option<f64>,
    pub distance: u32,
    pub min_quality: u8,
    pub video: VideoRule,
    pub dihedral: bool,
}

/// Media time in seconds, to the millisecond (vPDQ timestamps are single precision).
fn seconds(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// Recognises a bank file's format from what it holds.
pub fn sniff_format(path: &Path) -> anyhow::Result<BankFormat> {
    if path.is_dir() {
        return Ok(BankFormat::Vpdq);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read bank {}", path.display()))?;
    let first = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let cols: Vec<&str> = first.split(',').map(str::trim).collect();
    let is_hex = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
    Ok(
        if cols.len() == 4 && cols[0].parse::<u64>().is_ok() && is_hex(cols[2]) {
            BankFormat::Vpdq
        } else if !is_hex(cols[0]) && cols.len() > 1 {
            BankFormat::HmaCsv
        } else {
            BankFormat::Pdq
        },
    )
}

fn load_banks(o: &ScanOptions) -> anyhow::Result<Banks> {
    let mut banks = Vec::new();
    for path in &o.banks {
        let format = sniff_format(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bank".into());
        let spec = BankSpec {
            name,
            path: path.clone(),
            format,
            distance: o.distance,
            severity: Severity::Critical,
            action: Action::Suspend,
            store_evidence: false,
            negative: false,
            dihedral: o.dihedral,
            video: o.video,
            min_quality: o.min_quality,
        };
        banks.push(Bank::load(&spec)?);
    }
    Ok(Banks { banks })
}

/// Scans every medium, writing JSON lines to `out`. Returns how many media could not be read
/// (each is reported as a `{"type":"error"}` line; the others are still scanned).
pub fn run(o: &ScanOptions, media: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<usize> {
    let banks = load_banks(o)?;
    let mut models = load_models(o)?;
    let mut failed = 0;
    let mut hasher = PdqHasher::new();
    for m in media {
        let is_image = m
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        let r = if is_image {
            scan_image(&banks, o, &mut hasher, m, out)
                .and_then(|()| score_image(&mut models, m, out))
        } else {
            (if o.banks.is_empty() {
                Ok(())
            } else {
                scan_video(&banks, o, m, out)
            })
            .and_then(|()| score_video(&mut models, o, m, out))
        };
        if let Err(e) = r {
            failed += 1;
            writeln!(
                out,
                "{}",
                json!({"type": "error", "media": m, "error": format!("{e:#}")})
            )?;
        }
    }
    Ok(failed)
}

fn match_line(
    out: &mut dyn Write,
    media: &Path,
    m: &crate::bank::Match,
    frame: u64,
    time: f64,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{}",
        json!({
            "type": "match", "media": media, "bank": &*m.bank, "bank_version": m.bank_version,
            "item": &*m.entry.item, "label": m.entry.label.as_deref(), "distance": m.distance,
            "frame": frame, "time": time,
        })
    )
}

fn scan_image(
    banks: &Banks,
    o: &ScanOptions,
    hasher: &mut PdqHasher,
    path: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (rgb, w, h) = crate::hash::load_rgb(path)?;
    let d = hasher.hash_dihedral(Pixels::Rgb(&rgb), w, h);
    if d.quality < o.min_quality {
        return Ok(());
    }
    let variants = o.dihedral.then_some(&d.hashes);
    for m in banks.matches_any(&d.hashes[0], variants) {
        match_line(out, path, &m, 0, 0.0)?;
    }
    Ok(())
}

fn scan_video(
    banks: &Banks,
    o: &ScanOptions,
    path: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let every = o.fps.map_or(0.0, |f| 1.0 / f);
    let frames =
        crate::decode::hash_video_file_with(path, every, crate::decode::VideoPixels::Luma)?;
    let mut decider = Decider::new(Policy {
        // every firing comes back as an event, so each item's first one is seen
        update_interval: Duration::ZERO,
        resolve_after: Duration::from_secs(u32::MAX as u64),
        cooldown: Duration::ZERO,
    });
    decider.set_max_window(o.video.window);
    let t0 = Instant::now();
    let stream: Arc<str> = path.to_string_lossy().into();
    let mut no_thumb = |_: &str, _: &Arc<crate::decode::Frame>| None;
    let mut reported = std::collections::HashSet::new();
    for f in frames {
        if f.hash.quality < o.min_quality {
            continue;
        }
        let hash: Hash256 = f.hash.hash;
        let found = banks.matches(&hash);
        for m in &found {
            match_line(out, path, m, f.frame_number, seconds(f.timestamp))?;
        }
        if !banks.has_video() {
            continue;
        }
        let hits = banks.video_hits(&hash);
        for h in &hits {
            writeln!(
                out,
                "{}",
                json!({
                    "type": "match", "media": path, "bank": &*h.bank,
                    "bank_version": h.bank_version, "item": &*h.item, "distance": h.distance,
                    "frame": f.frame_number, "time": seconds(f.timestamp),
                    "item_frames_matched": h.frames,
                })
            )?;
        }
        // the video's own clock drives the window
        let now = t0 + Duration::from_secs_f64(f.timestamp.max(0.0));
        let d = Detection {
            stream: 0,
            stream_id: stream.clone(),
            found: Vec::new(),
            video: Some(hits),
            frame_hash: hash,
            quality: f.hash.quality,
            pts_us: None,
            arrival: now,
            frame: None,
        };
        for ev in decider.detect(&d, now, &mut no_thumb) {
            if ev.incident.reason != Reason::VideoMatch || ev.kind == EventKind::Resolved {
                continue;
            }
            if let Evidence::VideoMatch {
                bank,
                bank_version,
                item_id,
                distance,
                window_secs,
                frames_in_window,
                matching_frames,
                match_percent,
                item_frames,
                item_frames_matched,
                coverage_percent,
                ..
            } = &ev.incident.evidence
            {
                if !reported.insert((bank.clone(), item_id.clone())) {
                    continue;
                }
                writeln!(
                    out,
                    "{}",
                    json!({
                        "type": "video_match", "media": path, "bank": bank,
                        "bank_version": bank_version, "item": item_id, "distance": distance,
                        "frame": f.frame_number, "time": seconds(f.timestamp),
                        "window_secs": window_secs, "frames_in_window": frames_in_window,
                        "matching_frames": matching_frames, "match_percent": match_percent,
                        "item_frames": item_frames, "item_frames_matched": item_frames_matched,
                        "coverage_percent": coverage_percent,
                    })
                )?;
            }
        }
    }
    Ok(())
}

/// A model as `scan` runs it: on the CPU twin of the pre-processing, one frame at a time.
struct ScanModel {
    model: crate::classify::model::Model,
    prep: crate::classify::preprocess::Preprocessor,
    tensor: Vec<f32>,
    /// Clip models: the last frames, pre-processed.
    clip: std::collections::VecDeque<Vec<f32>>,
}

fn load_models(o: &ScanOptions) -> anyhow::Result<Vec<ScanModel>> {
    use crate::classify::{model, runtime};
    if o.models.is_empty() {
        return Ok(Vec::new());
    }
    runtime::init(o.onnxruntime.as_deref())?;
    let opts = model::SessionOptions {
        providers: o.providers.clone(),
        allow_cpu_fallback: false,
        intra_threads: 0,
        device_id: 0,
        trt_cache_dir: None,
        max_batch: 1,
    };
    o.models
        .iter()
        .map(|name| {
            let manifest = model::find_manifest(&o.models_dir, name)?;
            Ok(ScanModel {
                prep: crate::classify::preprocess::Preprocessor::new(&manifest.input),
                tensor: vec![0.0; manifest.input.frame_len()],
                model: model::Model::load(&manifest, &opts)?,
                clip: Default::default(),
            })
        })
        .collect()
}

/// Scores one picture with every model, writing a `scores` line per model that has a result
/// (a clip model once it has seen enough frames).
fn score_picture(
    models: &mut [ScanModel],
    pic: &crate::classify::preprocess::Picture<'_>,
    media: &Path,
    frame: u64,
    time: f64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::classify::manifest::Layout;
    for sm in models.iter_mut() {
        sm.prep.run(pic, &mut sm.tensor)?;
        let input = &sm.model.manifest.input;
        let row = if input.layout == Layout::Ncthw {
            sm.clip.push_back(sm.tensor.clone());
            while sm.clip.len() > input.clip_frames() {
                sm.clip.pop_front();
            }
            if sm.clip.len() < input.clip_frames() {
                continue;
            }
            let mut clip = Vec::with_capacity(input.frame_len() * input.clip_frames());
            crate::classify::service::append_clip(
                &mut clip,
                &sm.clip,
                input.width as usize * input.height as usize,
            );
            sm.model.run(&clip, 1)?
        } else {
            sm.model.run(&sm.tensor, 1)?
        };
        let labels = &sm.model.manifest.output.labels;
        let scores: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .zip(&row[0])
            .map(|(l, v)| (l.clone(), json!(v)))
            .collect();
        writeln!(
            out,
            "{}",
            json!({
                "type": "scores", "media": media, "frame": frame, "time": time,
                "model": sm.model.manifest.name, "scores": scores,
            })
        )?;
    }
    Ok(())
}

fn score_image(models: &mut [ScanModel], path: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    if models.is_empty() {
        return Ok(());
    }
    let (rgb, width, height) = crate::hash::load_rgb(path)?;
    let pic = crate::classify::preprocess::Picture::Rgb {
        data: &rgb,
        width,
        height,
    };
    score_picture(models, &pic, path, 0, 0.0, out)
}

fn score_video(
    models: &mut [ScanModel],
    o: &ScanOptions,
    path: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if models.is_empty() {
        return Ok(());
    }
    for m in models.iter_mut() {
        m.clip.clear();
    }
    let every = o.fps.map_or(0.0, |f| 1.0 / f);
    crate::decode::for_each_video_frame(path, every, |n, t, frame| {
        score_picture(models, &frame.picture(), path, n, seconds(t), out)
    })
}
