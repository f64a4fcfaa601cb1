//! Hash banks and matching.
//!
//! A bank is loaded whole or not at all: a bad line is reported as `file:line` and the bank is
//! refused. Matching is exact (every entry within the bank's Hamming distance): small banks
//! are scanned, large ones go through the multi-index or, when `[match]` puts them on a GPU,
//! a scan of their copy in device memory, one dispatch per batch of frames. Every match
//! carries the bank's version and the item id so a receiver can tell which list and entry
//! fired.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{BankFormat, BankSpec, VideoRule};
use crate::decide::{Action, Severity};
use crate::hash::Hash256;
use crate::index::gpu::{GpuBank, GpuScanner};

/// Entries within a bank's distance of one query: (entry, frame number for video banks,
/// distance).
type Hit<'a> = (&'a BankEntry, Option<u32>, u32);

/// One frame to match: its hash and, when the hasher computed them, its 8 orientations.
#[derive(Clone, Copy, Debug)]
pub struct FrameQuery<'a> {
    pub hash: Hash256,
    pub variants: Option<&'a [Hash256; 8]>,
}

/// What one frame matched across all banks.
#[derive(Debug, Default)]
pub struct FrameMatches {
    /// The first allow-list (in configuration order) that matched: it suppresses the rest.
    pub allowed: Option<Match>,
    /// The best match in each image bank that alerts.
    pub found: Vec<Match>,
    /// Items of video banks this frame matches.
    pub video: Vec<VideoHit>,
}

#[derive(Debug, Clone)]
pub struct BankEntry {
    pub hash: Hash256,
    /// The item id from the second column, or `line:N` when the file gives none.
    pub item: Arc<str>,
    /// Optional free text from the third column.
    pub label: Option<Arc<str>>,
}

/// Cloning is cheap: the loaded hashes and their index are shared.
#[derive(Debug, Clone)]
pub struct Bank {
    pub name: Arc<str>,
    pub path: PathBuf,
    /// Changes whenever the bank's content changes.
    pub version: String,
    pub distance: u32,
    pub severity: Severity,
    pub action: Action,
    /// Whether evidence (thumbnails) of this bank's matches may be kept.
    pub store_evidence: bool,
    /// An allow-list: its matches suppress alerts.
    pub negative: bool,
    /// Frames are matched in all 8 orientations.
    pub dihedral: bool,
    pub video_rule: VideoRule,
    /// What was loaded from the files: shared, unchanged, between versions made at run time.
    base: Arc<Base>,
    /// Entries added through the API since the last load (scanned linearly).
    delta: Vec<BankEntry>,
    delta_limbs: Vec<[u64; 4]>,
    /// Items removed through the API since the last load.
    removed: std::collections::HashSet<Arc<str>>,
    /// Entries in force (base and delta, removed items left out).
    live: usize,
}

/// Banks smaller than this are scanned; larger ones get a multi-index.
const INDEX_FROM: usize = 4096;

#[derive(Debug)]
struct Base {
    entries: Vec<BankEntry>,
    limbs: Vec<[u64; 4]>,
    index: Option<crate::index::HammingIndex>,
    /// The hashes in GPU memory, when `[match]` asks for it and the bank is large enough to
    /// be indexed: batches of frames are matched there, the index serves if the GPU fails.
    gpu: Option<GpuBank>,
    /// For video banks: which frame of which item each entry is.
    video: Option<VideoInfo>,
}

/// A video bank's items: entry `i` is frame `frame[i]` of item `entries[i].item`.
#[derive(Debug, Default)]
struct VideoInfo {
    frame: Vec<u32>,
    /// Frames (of quality enough to match) per item.
    frames_per_item: std::collections::HashMap<Arc<str>, usize>,
}

/// One banked video item matched by one frame.
#[derive(Debug, Clone)]
pub struct VideoHit {
    pub bank: Arc<str>,
    pub bank_version: String,
    pub item: Arc<str>,
    pub distance: u32,
    /// The item's frames within the distance.
    pub frames: Vec<u32>,
    pub item_frames: usize,
    pub rule: VideoRule,
    pub severity: Severity,
    pub action: Action,
    pub store_evidence: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    // the cause is in the message, not a `source`: error chains would print it twice
    #[error("{}: cannot read bank: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A frame hash within a bank's threshold of one of its entries.
#[derive(Debug, Clone)]
pub struct Match {
    pub bank: Arc<str>,
    pub bank_version: String,
    pub threshold: u32,
    pub entry: BankEntry,
    pub distance: u32,
    pub severity: Severity,
    pub action: Action,
    pub store_evidence: bool,
}

impl Bank {
    pub fn load(spec: &BankSpec) -> Result<Bank, BankError> {
        Self::load_with(spec, None)
    }

    /// Loads a bank file, plus the items added to it through the API (`extra`, a PDQ file in
    /// the state directory) when there is one.
    pub fn load_with(spec: &BankSpec, extra: Option<&Path>) -> Result<Bank, BankError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|cause| BankError::Io {
                path: p.to_path_buf(),
                cause,
            })
        };
        let mut video = None;
        let (mut entries, mut text) = match spec.format {
            BankFormat::Pdq => {
                let text = read(&spec.path)?;
                (parse_pdq_lines(&text, &spec.path)?, text)
            }
            BankFormat::HmaCsv => {
                let text = read(&spec.path)?;
                (parse_csv(&text, &spec.path)?, text)
            }
            BankFormat::Vpdq => {
                let (e, v, all) = load_vpdq(&spec.path, spec.min_quality)?;
                video = Some(v);
                (e, all)
            }
        };
        if let Some(extra) = extra.filter(|p| p.exists()) {
            let added = std::fs::read_to_string(extra).map_err(|cause| BankError::Io {
                path: extra.to_path_buf(),
                cause,
            })?;
            entries.extend(parse_pdq_lines(&added, extra)?);
            text.push_str(&added);
        }
        // items removed through the API: one id per line beside the added ones
        if let Some(removed) = extra
            .map(|p| p.with_extension("removed"))
            .filter(|p| p.exists())
        {
            let ids = std::fs::read_to_string(&removed).map_err(|cause| BankError::Io {
                path: removed.clone(),
                cause,
            })?;
            let ids: std::collections::HashSet<&str> = ids
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let keep: Vec<bool> = entries.iter().map(|e| !ids.contains(&*e.item)).collect();
            let mut k = keep.iter();
            entries.retain(|_| *k.next().expect("one flag per entry"));
            if let Some(v) = &mut video {
                let mut k = keep.iter();
                v.frame.retain(|_| *k.next().expect("one flag per frame"));
                v.frames_per_item.retain(|item, _| !ids.contains(&**item));
            }
            text.push_str("\nremoved:");
            text.push_str(&ids.iter().copied().collect::<Vec<_>>().join(","));
        }
        let mut bank = Bank::build(
            &spec.name,
            spec.path.clone(),
            spec.distance,
            entries,
            video,
            &text,
        );
        bank.severity = spec.severity;
        bank.action = spec.action;
        bank.store_evidence = spec.store_evidence;
        bank.negative = spec.negative;
        bank.dihedral = spec.dihedral;
        bank.video_rule = spec.video;
        Ok(bank)
    }

    /// A new version of this bank with entries added: the loaded part (and its index) is
    /// shared, so this costs what the additions cost, whatever the bank's size.
    pub fn with_added(&self, added: Vec<BankEntry>, change: &str) -> Bank {
        let mut b = self.derive();
        b.delta_limbs.extend(added.iter().map(|e| e.hash.limbs()));
        b.delta.extend(added);
        b.finish(&self.version, change)
    }

    /// A new version with every hash of `item` left out.
    pub fn with_removed(&self, item: &str) -> Bank {
        let mut b = self.derive();
        b.removed.insert(item.into());
        b.finish(&self.version, &format!("removed:{item}"))
    }

    fn derive(&self) -> Bank {
        Bank {
            name: self.name.clone(),
            path: self.path.clone(),
            version: String::new(),
            distance: self.distance,
            severity: self.severity,
            action: self.action,
            store_evidence: self.store_evidence,
            negative: self.negative,
            dihedral: self.dihedral,
            video_rule: self.video_rule,
            base: self.base.clone(),
            delta: self.delta.clone(),
            delta_limbs: self.delta_limbs.clone(),
            removed: self.removed.clone(),
            live: 0,
        }
    }

    /// Counts the entries in force and names the new version after the old one and the change.
    fn finish(mut self, previous: &str, change: &str) -> Bank {
        let gone = |e: &BankEntry| self.removed.contains(&e.item);
        self.live = if self.removed.is_empty() {
            self.base.entries.len() + self.delta.len()
        } else {
            self.base.entries.iter().filter(|e| !gone(e)).count()
                + self.delta.iter().filter(|e| !gone(e)).count()
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        previous.hash(&mut h);
        change.hash(&mut h);
        self.version = format!("{}-{:016x}", self.live, h.finish());
        self
    }

    fn build(
        name: &str,
        path: PathBuf,
        distance: u32,
        entries: Vec<BankEntry>,
        video: Option<VideoInfo>,
        content: &str,
    ) -> Bank {
        let mut bank = Bank::from_entries(name, path, distance, entries, content);
        if video.is_some() {
            let base = Arc::get_mut(&mut bank.base).expect("just built");
            base.video = video;
        }
        bank
    }

    /// For each query, the entries within the bank's distance (removed items left out): the
    /// loaded ones in load order, then those added at run time.
    fn within_batch(&self, qs: &[[u64; 4]]) -> Vec<Vec<Hit<'_>>> {
        let base = &*self.base;
        let frame = |i: usize| base.video.as_ref().map(|v| v.frame[i]);
        let ids = match &base.gpu {
            Some(gpu) if !qs.is_empty() => gpu.query_batch(qs, self.distance).unwrap_or_else(|e| {
                // a GPU fault must not lose a match: the index answers instead
                crate::metrics::metrics().match_gpu_errors.inc();
                tracing::warn!(bank = %self.name, "GPU scan failed, matching on the CPU: {e:#}");
                self.base_ids(qs)
            }),
            _ => self.base_ids(qs),
        };
        qs.iter()
            .zip(ids)
            .map(|(q, ids)| {
                let mut out: Vec<Hit<'_>> = ids
                    .into_iter()
                    .map(|(i, d)| (&base.entries[i as usize], frame(i as usize), d))
                    .collect();
                for (e, l) in self.delta.iter().zip(&self.delta_limbs) {
                    let d = crate::index::distance(l, q);
                    if d <= self.distance {
                        out.push((e, None, d));
                    }
                }
                if !self.removed.is_empty() {
                    out.retain(|(e, _, _)| !self.removed.contains(&e.item));
                }
                out
            })
            .collect()
    }

    /// The loaded entries within the distance of each query, on the CPU: `(id, distance)` in
    /// ascending id order.
    fn base_ids(&self, qs: &[[u64; 4]]) -> Vec<Vec<(u32, u32)>> {
        let base = &*self.base;
        qs.iter()
            .map(|q| match &base.index {
                Some(index) => index.query(q, self.distance),
                None => base
                    .limbs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let d = crate::index::distance(e, q);
                        (d <= self.distance).then_some((i as u32, d))
                    })
                    .collect(),
            })
            .collect()
    }

    /// Copies the loaded hashes into `scanner`'s GPU memory, so that batches are matched
    /// there; banks too small to be indexed stay on the CPU (false). Only a bank not yet
    /// shared (as loaded) can be attached.
    pub fn attach_gpu(&mut self, scanner: &Arc<GpuScanner>) -> anyhow::Result<bool> {
        if self.base.index.is_none() {
            return Ok(false);
        }
        let copy = scanner.upload(&self.base.limbs)?;
        let base = Arc::get_mut(&mut self.base)
            .ok_or_else(|| anyhow::anyhow!("bank {} is already in use", self.name))?;
        base.gpu = Some(copy);
        Ok(true)
    }

    /// Whether batches are matched on a GPU.
    pub fn on_gpu(&self) -> bool {
        self.base.gpu.is_some()
    }

    pub fn from_entries(
        name: &str,
        path: PathBuf,
        distance: u32,
        entries: Vec<BankEntry>,
        content: &str,
    ) -> Bank {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut h);
        let version = format!("{}-{:016x}", entries.len(), h.finish());
        let limbs: Vec<[u64; 4]> = entries.iter().map(|e| e.hash.limbs()).collect();
        let index = (limbs.len() >= INDEX_FROM).then(|| crate::index::HammingIndex::new(&limbs));
        let live = entries.len();
        Bank {
            name: name.into(),
            path,
            version,
            distance,
            severity: Severity::Critical,
            action: Action::Suspend,
            store_evidence: false,
            negative: false,
            dihedral: false,
            video_rule: VideoRule {
                window: std::time::Duration::from_secs(10),
                min_percent: 80.0,
                min_frames: 5,
            },
            base: Arc::new(Base {
                entries,
                limbs,
                index,
                gpu: None,
                video: None,
            }),
            delta: Vec::new(),
            delta_limbs: Vec::new(),
            removed: Default::default(),
            live,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn is_video(&self) -> bool {
        self.base.video.is_some()
    }

    /// Memory of the loaded hashes and their index, in bytes.
    pub fn bytes(&self) -> usize {
        self.base.limbs.len() * 32
            + self.base.entries.len() * std::mem::size_of::<BankEntry>()
            + self.base.index.as_ref().map_or(0, |i| i.bytes())
    }

    /// The closest entry within the threshold over the frame's hash and, for a dihedral bank,
    /// its 8 orientations (`variants`, when the hasher computed them).
    pub fn best_match_any(&self, hash: &Hash256, variants: Option<&[Hash256; 8]>) -> Option<Match> {
        let (qs, range) = self.queries(&FrameQuery {
            hash: *hash,
            variants,
        });
        self.best_of(&self.within_batch(&qs)[range])
    }

    /// Every item of a video bank with a frame within the threshold of `hash`.
    pub fn video_hits(&self, hash: &Hash256) -> Vec<VideoHit> {
        if !self.is_video() {
            return Vec::new();
        }
        self.hits_of(&self.within_batch(&[hash.limbs()])[0])
    }

    /// The closest entry within the bank's threshold, if any.
    pub fn best_match(&self, hash: &Hash256) -> Option<Match> {
        self.best_of(&self.within_batch(&[hash.limbs()]))
    }

    /// The queries one frame asks of this bank, and which of them its best match is taken
    /// over. The first query is always the frame's own hash (video hits use it); a dihedral
    /// bank takes the best over the 8 orientations (the first of which is normally the hash
    /// itself, then it is not asked twice).
    fn queries(&self, f: &FrameQuery<'_>) -> (Vec<[u64; 4]>, std::ops::Range<usize>) {
        match f.variants {
            Some(v) if self.dihedral && v[0] == f.hash => {
                (v.iter().map(|h| h.limbs()).collect(), 0..8)
            }
            Some(v) if self.dihedral => (
                std::iter::once(&f.hash)
                    .chain(v)
                    .map(|h| h.limbs())
                    .collect(),
                1..9,
            ),
            _ => (vec![f.hash.limbs()], 0..1),
        }
    }

    /// The closest entry over several queries' hits: the first, in query order and then in
    /// entry order, at the smallest distance.
    fn best_of(&self, lists: &[Vec<Hit<'_>>]) -> Option<Match> {
        let mut best: Option<(&BankEntry, u32)> = None;
        for &(e, _, d) in lists.iter().flatten() {
            if best.is_none_or(|(_, bd)| d < bd) {
                best = Some((e, d));
            }
        }
        best.map(|(e, distance)| Match {
            bank: self.name.clone(),
            bank_version: self.version.clone(),
            threshold: self.distance,
            entry: e.clone(),
            distance,
            severity: self.severity,
            action: self.action,
            store_evidence: self.store_evidence,
        })
    }

    /// A video bank's items among one query's hits.
    fn hits_of(&self, within: &[Hit<'_>]) -> Vec<VideoHit> {
        let Some(video) = &self.base.video else {
            return Vec::new();
        };
        let mut hits: Vec<VideoHit> = Vec::new();
        for &(entry, frame, d) in within {
            let item = &entry.item;
            let frame = frame.unwrap_or(0);
            match hits.iter_mut().find(|h| h.item == *item) {
                Some(h) => {
                    h.distance = h.distance.min(d);
                    h.frames.push(frame);
                }
                None => hits.push(VideoHit {
                    bank: self.name.clone(),
                    bank_version: self.version.clone(),
                    item: item.clone(),
                    distance: d,
                    frames: vec![frame],
                    item_frames: video.frames_per_item.get(item).copied().unwrap_or(0),
                    rule: self.video_rule,
                    severity: self.severity,
                    action: self.action,
                    store_evidence: self.store_evidence,
                }),
            }
        }
        hits
    }
}

/// Where the items added to a bank through the API are kept.
pub fn added_items_path(state_dir: &Path, bank: &str) -> PathBuf {
    state_dir.join("bank-items").join(format!("{bank}.pdq"))
}

/// Loads every configured bank with its API-added items, puts the large ones on `gpu` when
/// given (see [`Bank::attach_gpu`]; one that does not fit stays on the CPU, with a warning),
/// and exports their sizes.
pub fn load_banks(
    config: &crate::config::Config,
    gpu: Option<&Arc<GpuScanner>>,
) -> Result<Banks, BankError> {
    let mut banks = Banks {
        banks: config
            .banks
            .iter()
            .map(|spec| {
                Bank::load_with(spec, Some(&added_items_path(&config.state_dir, &spec.name)))
            })
            .collect::<Result<_, _>>()?,
    };
    if let Some(gpu) = gpu {
        for b in &mut banks.banks {
            match b.attach_gpu(gpu) {
                Ok(true) => {
                    tracing::info!(bank = %b.name, hashes = b.len(), "bank matched on the GPU")
                }
                Ok(false) => {}
                Err(e) => {
                    crate::metrics::metrics().match_gpu_errors.inc();
                    tracing::warn!(bank = %b.name, "bank stays on the CPU: {e:#}");
                }
            }
        }
    }
    export_sizes(&banks);
    for b in banks.banks.iter().filter(|b| b.is_empty()) {
        tracing::warn!(bank = %b.name, "bank is empty");
    }
    tracing::info!(banks = %banks, "banks loaded");
    Ok(banks)
}

/// `livewatch_bank_hashes` and `livewatch_bank_bytes` for every bank.
pub fn export_sizes(banks: &Banks) {
    let m = crate::metrics::metrics();
    for b in &banks.banks {
        m.bank_hashes
            .with_label_values(&[&b.name])
            .set(b.len() as i64);
        m.bank_bytes
            .with_label_values(&[&b.name])
            .set(b.bytes() as i64);
    }
}

/// Appends items (PDQ lines, validated first: all or nothing) to a bank's API-added file,
/// synced to disk, and returns them.
pub fn append_items(
    state_dir: &Path,
    bank: &str,
    lines: &str,
) -> Result<Vec<BankEntry>, BankError> {
    let entries = parse_pdq_lines(lines, Path::new("request"))?;
    if !entries.is_empty() {
        append_synced(&added_items_path(state_dir, bank), lines.trim_end())?;
    }
    Ok(entries)
}

/// Appends a line (or lines) to a file of the state directory and syncs it.
fn append_synced(path: &Path, text: &str) -> Result<(), BankError> {
    let io = |cause| BankError::Io {
        path: path.to_path_buf(),
        cause,
    };
    std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    use std::io::Write as _;
    writeln!(f, "{text}").map_err(io)?;
    f.sync_all().map_err(io)
}

/// Column names read from CSV exports, first found wins (compared case-insensitively).
const CSV_HASH: &[&str] = &[
    "signal",
    "signal_value",
    "indicator",
    "hash",
    "pdq",
    "pdq_hash",
];
const CSV_ID: &[&str] = &["id", "signal_id", "indicator_id", "content_id", "item_id"];
const CSV_LABEL: &[&str] = &["label", "tags", "description"];
const CSV_TYPE: &[&str] = &["signal_type", "indicator_type", "type"];

/// Parses a CSV export with a header row: the hash from the first column named in
/// [`CSV_HASH`], the item id from [`CSV_ID`] (else `line:N`), a label from [`CSV_LABEL`];
/// when a type column ([`CSV_TYPE`]) exists, rows whose type is not PDQ are skipped.
pub fn parse_csv(text: &str, path: &Path) -> Result<Vec<BankEntry>, BankError> {
    let line_err = |line: usize, message: String| BankError::Line {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| line_err(1, format!("not a CSV header: {e}")))?
        .clone();
    let find = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.iter().position(|h| h.eq_ignore_ascii_case(n)))
    };
    let hash_col = find(CSV_HASH).ok_or_else(|| {
        line_err(
            1,
            format!(
                "no hash column: the header needs one of {}",
                CSV_HASH.join(", ")
            ),
        )
    })?;
    let (id_col, label_col, type_col) = (find(CSV_ID), find(CSV_LABEL), find(CSV_TYPE));
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            line_err(line, format!("bad CSV: {e}"))
        })?;
        let line = row.position().map(|p| p.line() as usize).unwrap_or(0);
        if let Some(t) = type_col.and_then(|c| row.get(c)) {
            let t = t.to_ascii_lowercase();
            if !t.is_empty() && !t.contains("pdq") {
                continue; // another signal type (video MD5, text, ...)
            }
        }
        let hex = row.get(hash_col).unwrap_or("");
        let hash: Hash256 = hex
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| line_err(line, format!("{e}")))?;
        let item: Arc<str> = match id_col.and_then(|c| row.get(c)).filter(|s| !s.is_empty()) {
            Some(id) => id.into(),
            None => format!("line:{line}").into(),
        };
        let label = label_col
            .and_then(|c| row.get(c))
            .filter(|s| !s.is_empty())
            .map(Arc::from);
        out.push(BankEntry { hash, item, label });
    }
    Ok(out)
}

/// Loads vPDQ files (one file, or every `.txt` file of a folder): each file is one video item,
/// its id the file name without extension. Frames below `min_quality` are left out, as they
/// are on live streams. Returns the entries, their frame numbers, and all text (for the
/// bank's version).
fn load_vpdq(
    path: &Path,
    min_quality: u8,
) -> Result<(Vec<BankEntry>, VideoInfo, String), BankError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |cause| BankError::Io { path: p, cause }
    };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt" || x == "vpdq"))
            .collect();
        f.sort();
        f
    } else {
        vec![path.to_path_buf()]
    };
    let mut entries = Vec::new();
    let mut info = VideoInfo::default();
    let mut all = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(io(&file))?;
        let item: Arc<str> = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .into();
        let mut kept = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |m: String| BankError::Line {
                path: file.clone(),
                line: i + 1,
                message: m,
            };
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if cols.len() != 4 {
                return Err(bad(format!(
                    "a vPDQ line is frame,quality,hash,timestamp; this has {} columns",
                    cols.len()
                )));
            }
            let frame: u32 = cols[0]
                .parse()
                .map_err(|_| bad(format!("frame number {:?} is not a number", cols[0])))?;
            let quality: u8 = cols[1]
                .parse()
                .ok()
                .filter(|q| *q <= 100)
                .ok_or_else(|| bad(format!("quality {:?} is not 0 to 100", cols[1])))?;
            let hash: Hash256 = cols[2]
                .to_ascii_lowercase()
                .parse()
                .map_err(|e| bad(format!("{e}")))?;
            cols[3]
                .parse::<f64>()
                .map_err(|_| bad(format!("timestamp {:?} is not a number", cols[3])))?;
            if quality < min_quality {
                continue;
            }
            entries.push(BankEntry {
                hash,
                item: item.clone(),
                label: None,
            });
            info.frame.push(frame);
            kept += 1;
        }
        info.frames_per_item.insert(item, kept);
        all.push_str(&text);
    }
    Ok((entries, info, all))
}

/// Records that an item is removed from a bank (all its hashes), synced; the caller reloads.
pub fn remove_item(state_dir: &Path, bank: &str, item: &str) -> Result<(), BankError> {
    append_synced(
        &added_items_path(state_dir, bank).with_extension("removed"),
        item,
    )
}

impl Bank {
    /// How many entries (hashes, or video frames) carry this item id.
    pub fn item_entries(&self, item: &str) -> usize {
        if self.removed.contains(item) {
            return 0;
        }
        self.base
            .entries
            .iter()
            .filter(|e| &*e.item == item)
            .count()
            + self.delta.iter().filter(|e| &*e.item == item).count()
    }
}

/// Parses the plain PDQ format: `hex[,item_id[,label]]` per line, `#` starts a comment.
pub fn parse_pdq_lines(text: &str, path: &Path) -> Result<Vec<BankEntry>, BankError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut cols = line.splitn(3, ',').map(str::trim);
        let hex = cols.next().unwrap_or("");
        let hash: Hash256 = hex
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| BankError::Line {
                path: path.to_path_buf(),
                line: line_no,
                message: format!("{e}"),
            })?;
        let item: Arc<str> = match cols.next().filter(|s| !s.is_empty()) {
            Some(id) => id.into(),
            None => format!("line:{line_no}").into(),
        };
        let label = cols.next().filter(|s| !s.is_empty()).map(Arc::from);
        out.push(BankEntry { hash, item, label });
    }
    Ok(out)
}

/// All loaded banks.
#[derive(Debug, Default)]
pub struct Banks {
    pub banks: Vec<Bank>,
}

impl Banks {
    pub fn load(specs: &[BankSpec]) -> Result<Banks, BankError> {
        Ok(Banks {
            banks: specs.iter().map(Bank::load).collect::<Result<_, _>>()?,
        })
    }

    /// Matches a batch of frames against every bank: one batch of queries per bank (one GPU
    /// dispatch for a bank on a GPU). Per frame, the same answers as [`allowed`](Self::allowed),
    /// [`matches_any`](Self::matches_any) and [`video_hits`](Self::video_hits).
    pub fn match_frames(&self, frames: &[FrameQuery<'_>]) -> Vec<FrameMatches> {
        let mut out: Vec<FrameMatches> = frames.iter().map(|_| FrameMatches::default()).collect();
        for b in &self.banks {
            let mut qs = Vec::new();
            let mut plan = Vec::with_capacity(frames.len());
            for f in frames {
                let (q, range) = b.queries(f);
                plan.push((qs.len(), range));
                qs.extend(q);
            }
            let lists = b.within_batch(&qs);
            for (o, (start, range)) in out.iter_mut().zip(plan) {
                let mine = &lists[start..start + range.end];
                if b.negative {
                    if o.allowed.is_none() {
                        o.allowed = b.best_of(&mine[range]);
                    }
                } else if !b.is_video() {
                    o.found.extend(b.best_of(&mine[range]));
                }
                o.video.extend(b.hits_of(&mine[0]));
            }
        }
        out
    }

    /// The best match in each image bank that alerts (allow-lists and video banks aside).
    pub fn matches(&self, hash: &Hash256) -> Vec<Match> {
        self.matches_any(hash, None)
    }

    /// The same, with the frame's 8 orientations for dihedral banks.
    pub fn matches_any(&self, hash: &Hash256, variants: Option<&[Hash256; 8]>) -> Vec<Match> {
        self.banks
            .iter()
            .filter(|b| !b.negative && !b.is_video())
            .filter_map(|b| b.best_match_any(hash, variants))
            .collect()
    }

    /// A match in an allow-list, which suppresses everything else for this frame.
    pub fn allowed(&self, hash: &Hash256, variants: Option<&[Hash256; 8]>) -> Option<Match> {
        self.banks
            .iter()
            .filter(|b| b.negative)
            .find_map(|b| b.best_match_any(hash, variants))
    }

    /// Items of video banks this frame matches.
    pub fn video_hits(&self, hash: &Hash256) -> Vec<VideoHit> {
        self.banks.iter().flat_map(|b| b.video_hits(hash)).collect()
    }

    pub fn has_video(&self) -> bool {
        self.banks.iter().any(|b| b.is_video())
    }

    pub fn wants_dihedral(&self) -> bool {
        self.banks.iter().any(|b| b.dihedral)
    }
}

impl fmt::Display for Banks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .banks
            .iter()
            .map(|b| format!("{} ({} hashes)", b.name, b.len()))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22";

    #[test]
    fn parses_hashes_ids_labels_and_comments() {
        let text = format!(
            "# known items\n\n{A},item-7,attack clip\n{} # trailing\n",
            A.to_uppercase()
        );
        let e = parse_pdq_lines(&text, Path::new("b.pdq")).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(&*e[0].item, "item-7");
        assert_eq!(e[0].label.as_deref(), Some("attack clip"));
        assert_eq!(&*e[1].item, "line:4");
        assert_eq!(e[1].hash.to_string(), A);
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        let text = format!("{A}\nnot-a-hash\n");
        let err = parse_pdq_lines(&text, Path::new("banks/k.pdq")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "banks/k.pdq:2: a PDQ hash has 64 hex digits, this has 10"
        );
    }

    #[test]
    fn best_match_respects_the_threshold() {
        let base: Hash256 = A.parse().unwrap();
        let mut near = base;
        for k in 0..10 {
            near.words[k] ^= 1;
        }
        let mut far = base;
        for w in far.words.iter_mut() {
            *w = !*w;
        }
        let entries = vec![
            BankEntry {
                hash: far,
                item: "far".into(),
                label: None,
            },
            BankEntry {
                hash: near,
                item: "near".into(),
                label: None,
            },
        ];
        let bank = Bank::from_entries("b", PathBuf::from("b"), 31, entries, "x");
        let m = bank.best_match(&base).unwrap();
        assert_eq!((&*m.entry.item, m.distance), ("near", 10));
        let strict = Bank::from_entries("b", PathBuf::from("b"), 9, bank.base.entries.clone(), "x");
        assert!(strict.best_match(&base).is_none());
    }

    fn spec(dir: &Path, name: &str, format: BankFormat, negative: bool) -> BankSpec {
        BankSpec {
            name: name.into(),
            path: dir.join(name),
            format,
            distance: 31,
            severity: Severity::High,
            action: Action::Review,
            store_evidence: false,
            negative,
            dihedral: false,
            video: VideoRule {
                window: std::time::Duration::from_secs(10),
                min_percent: 80.0,
                min_frames: 5,
            },
            min_quality: 50,
        }
    }

    #[test]
    fn csv_exports_read_the_named_columns_and_skip_other_signal_types() {
        let text = format!(
            "Signal_Type,signal,id,tags\nvideo_md5,abc,1,x\npdq,{A},item-9,\"a,b\"\n,{A},,\n"
        );
        let e = parse_csv(&text, Path::new("x.csv")).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(&*e[0].item, "item-9");
        assert_eq!(e[0].label.as_deref(), Some("a,b"));
        assert_eq!(&*e[1].item, "line:4");
        let err = parse_csv("id,tags\n1,x\n", Path::new("x.csv")).unwrap_err();
        assert!(
            err.to_string().starts_with("x.csv:1: no hash column"),
            "{err}"
        );
        let err = parse_csv(&format!("hash,id\n{A},1\nnope,2\n"), Path::new("x.csv")).unwrap_err();
        assert!(err.to_string().starts_with("x.csv:3:"), "{err}");
    }

    #[test]
    fn video_banks_load_items_per_file_and_report_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let videos = dir.path().join("v");
        std::fs::create_dir(&videos).unwrap();
        std::fs::write(
            videos.join("clip-a.txt"),
            format!("0,90,{A},0.000\n1,10,{A},0.033\n"),
        )
        .unwrap();
        std::fs::write(videos.join("clip-b.txt"), format!("0,90,{A},0.000\n")).unwrap();
        let bank = Bank::load(&spec(dir.path(), "v", BankFormat::Vpdq, false)).unwrap();
        assert!(bank.is_video());
        // the low-quality frame is left out, as on live streams
        assert_eq!(bank.len(), 2);
        let hits = bank.video_hits(&A.parse().unwrap());
        let items: Vec<_> = hits
            .iter()
            .map(|h| (&*h.item, h.item_frames, h.frames.clone()))
            .collect();
        assert_eq!(items, [("clip-a", 1, vec![0]), ("clip-b", 1, vec![0])]);
        std::fs::write(videos.join("clip-c.txt"), format!("0,90,{A}\n")).unwrap();
        let err = Bank::load(&spec(dir.path(), "v", BankFormat::Vpdq, false)).unwrap_err();
        assert!(
            err.to_string().contains("clip-c.txt:1: a vPDQ line is"),
            "{err}"
        );
    }

    #[test]
    fn allow_lists_and_video_banks_stay_out_of_image_matches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("known"), format!("{A},k\n")).unwrap();
        std::fs::write(dir.path().join("allowed"), format!("{A},ok\n")).unwrap();
        let banks = Banks {
            banks: vec![
                Bank::load(&spec(dir.path(), "known", BankFormat::Pdq, false)).unwrap(),
                Bank::load(&spec(dir.path(), "allowed", BankFormat::Pdq, true)).unwrap(),
            ],
        };
        let h: Hash256 = A.parse().unwrap();
        let found = banks.matches(&h);
        assert_eq!(found.len(), 1);
        assert_eq!(&*found[0].bank, "known");
        assert_eq!(found[0].action, Action::Review);
        assert_eq!(&*banks.allowed(&h, None).unwrap().bank, "allowed");
    }

    #[test]
    fn large_banks_use_the_index_and_run_time_changes_share_it() {
        // a bank big enough to be indexed, with planted near-duplicates
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut entries = Vec::new();
        for i in 0..6000 {
            let mut h = Hash256::default();
            for w in h.words.iter_mut() {
                *w = next() as u16;
            }
            entries.push(BankEntry {
                hash: h,
                item: format!("i{i}").into(),
                label: None,
            });
        }
        let bank = Bank::from_entries("big", PathBuf::from("b"), 31, entries.clone(), "x");
        assert!(bank.base.index.is_some());
        let brute = |entries: &[BankEntry], q: &Hash256| {
            entries
                .iter()
                .map(|e| {
                    (
                        crate::index::distance(&e.hash.limbs(), &q.limbs()),
                        e.item.clone(),
                    )
                })
                .filter(|(d, _)| *d <= 31)
                .min_by_key(|(d, _)| *d)
        };
        for k in [0usize, 5, 17, 30, 31, 32, 45] {
            let mut q = entries[(k * 97) % entries.len()].hash;
            for b in 0..k {
                q.words[b % 16] ^= 1 << (b / 16);
            }
            let got = bank
                .best_match(&q)
                .map(|m| (m.distance, m.entry.item.clone()));
            assert_eq!(
                got.map(|g| g.0),
                brute(&entries, &q).map(|b| b.0),
                "{k} flipped bits"
            );
        }
        // an added hash is matched by the next version; the original is untouched
        let mut fresh = Hash256::default();
        fresh.words[0] = 0xbeef;
        let added = bank.with_added(
            vec![BankEntry {
                hash: fresh,
                item: "new".into(),
                label: None,
            }],
            "new",
        );
        assert!(
            Arc::ptr_eq(&added.base, &bank.base),
            "the index is shared, not rebuilt"
        );
        assert_eq!(added.len(), 6001);
        assert_ne!(added.version, bank.version);
        assert_eq!(&*added.best_match(&fresh).unwrap().entry.item, "new");
        // a removed item stops matching
        let target = entries[10].hash;
        assert_eq!(&*added.best_match(&target).unwrap().entry.item, "i10");
        let removed = added.with_removed("i10");
        assert_eq!(removed.len(), 6000);
        assert!(removed
            .best_match(&target)
            .is_none_or(|m| &*m.entry.item != "i10"));
        assert_eq!(removed.item_entries("i10"), 0);
    }

    fn from_limbs(l: [u64; 4]) -> Hash256 {
        Hash256 {
            words: std::array::from_fn(|k| (l[k / 4] >> (16 * (k % 4))) as u16),
        }
    }

    /// What a frame's matches say, comparable.
    type Summary = (
        Option<(String, String, u32)>,
        Vec<(String, String, u32)>,
        Vec<(String, String, u32, Vec<u32>)>,
    );

    fn summary(fm: &FrameMatches) -> Summary {
        let m = |m: &Match| (m.bank.to_string(), m.entry.item.to_string(), m.distance);
        (
            fm.allowed.as_ref().map(m),
            fm.found.iter().map(m).collect(),
            fm.video
                .iter()
                .map(|v| {
                    (
                        v.bank.to_string(),
                        v.item.to_string(),
                        v.distance,
                        v.frames.clone(),
                    )
                })
                .collect(),
        )
    }

    /// Three large banks (a dihedral image bank with run-time changes, an allow-list, a
    /// video bank), the same each call, so one copy can go onto a GPU and one stay on the CPU.
    fn large_banks(gpu: Option<&Arc<GpuScanner>>) -> (Banks, Vec<[u64; 4]>) {
        use crate::index::tests::Rng;
        let mut rng = Rng(0x5eed);
        let mut stored = Vec::new();
        let mut entries = |n: usize, prefix: &str, items: usize| -> Vec<BankEntry> {
            (0..n)
                .map(|i| {
                    let h = rng.hash();
                    stored.push(h);
                    BankEntry {
                        hash: from_limbs(h),
                        item: format!("{prefix}{}", i % items).into(),
                        label: None,
                    }
                })
                .collect()
        };
        let img = entries(6000, "i", 6000);
        let allow = entries(4500, "a", 4500);
        let vid = entries(5000, "v", 50);
        let mut image = Bank::from_entries("img", PathBuf::from("img"), 31, img, "img");
        image.dihedral = true;
        let mut allowed = Bank::from_entries("allow", PathBuf::from("allow"), 20, allow, "allow");
        allowed.negative = true;
        let video = VideoInfo {
            frame: (0..5000).map(|i| (i / 50) as u32).collect(),
            frames_per_item: (0..50).map(|i| (format!("v{i}").into(), 100)).collect(),
        };
        let mut vbank = Bank::build("vid", PathBuf::from("vid"), 31, vid, Some(video), "vid");
        for b in [&mut image, &mut allowed, &mut vbank] {
            if let Some(g) = gpu {
                assert!(b.attach_gpu(g).unwrap(), "{} is large enough", b.name);
            }
        }
        // run-time changes share the GPU copy: an added hash, a removed item
        let added = rng.hash();
        stored.push(added);
        let image = image
            .with_added(
                vec![BankEntry {
                    hash: from_limbs(added),
                    item: "added".into(),
                    label: None,
                }],
                "added",
            )
            .with_removed("i7");
        assert_eq!(image.on_gpu(), gpu.is_some());
        (
            Banks {
                banks: vec![image, allowed, vbank],
            },
            stored,
        )
    }

    #[test]
    fn batches_match_as_single_frames_do_and_on_a_gpu_as_on_the_cpu() {
        use crate::index::tests::{flip, Rng};
        let (cpu, stored) = large_banks(None);
        // frames: near-duplicates of stored hashes (0..=40 bits off) and random ones; with
        // orientations whose first is the hash, whose first is not, or none
        let mut rng = Rng(77);
        let mut variants: Vec<[Hash256; 8]> = Vec::new();
        let mut hashes = Vec::new();
        for i in 0..240usize {
            let h = if i % 4 == 3 {
                rng.hash()
            } else {
                let src = stored[rng.below(stored.len() as u64) as usize];
                let k = rng.below(41) as u32;
                flip(&mut rng, &src, k)
            };
            let hash = from_limbs(h);
            let mut v: [Hash256; 8] = std::array::from_fn(|_| from_limbs(flip(&mut rng, &h, 60)));
            // a rotation that is itself a near-duplicate of something stored
            v[3] = from_limbs(flip(&mut rng, &stored[i * 37 % stored.len()], 9));
            if i % 3 != 1 {
                v[0] = hash;
            }
            hashes.push(hash);
            variants.push(v);
        }
        let frames: Vec<FrameQuery<'_>> = (0..hashes.len())
            .map(|i| FrameQuery {
                hash: hashes[i],
                variants: (i % 5 != 4).then_some(&variants[i]),
            })
            .collect();
        let batch = cpu.match_frames(&frames);
        let mut seen = [0usize; 3];
        for (f, got) in frames.iter().zip(&batch) {
            let single = FrameMatches {
                allowed: cpu.allowed(&f.hash, f.variants),
                found: cpu.matches_any(&f.hash, f.variants),
                video: cpu.video_hits(&f.hash),
            };
            assert_eq!(summary(got), summary(&single));
            seen[0] += usize::from(got.allowed.is_some());
            seen[1] += got.found.len();
            seen[2] += got.video.len();
        }
        // the corpus reaches every kind of answer
        assert!(seen.iter().all(|&n| n >= 10), "{seen:?}");

        if crate::hash::gpu::list_adapters().is_empty() {
            eprintln!("SKIPPED (GPU half): no wgpu adapter");
            return;
        }
        let scanner = GpuScanner::new(crate::hash::gpu::AdapterChoice::Auto, true).unwrap();
        let (gpu, _) = large_banks(Some(&scanner));
        let on_gpu = gpu.match_frames(&frames);
        for (a, b) in batch.iter().zip(&on_gpu) {
            assert_eq!(summary(a), summary(b));
        }
    }
}
