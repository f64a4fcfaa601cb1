//! The decision stage: turns detections into incidents.
//!
//! One incident is open per stream and reason. The first detection opens it (event `opened`);
//! further evidence updates it, at most one `updated` event per `update_interval` so a stream
//! that keeps matching produces one incident with updates rather than a flood. An incident
//! resolves when no evidence arrived for `resolve_after`, or through the API; a new incident for
//! the same stream and reason opens only after `cooldown` has passed since the resolution.
//!
//! The [`Decider`] is plain state and logic (it takes the time as an argument) so the policy is
//! tested without a clock; the alert service (`crate::alert`) runs it, persists each event to the
//! outbox and delivers it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bank::{Match, VideoHit};
use crate::decode::Frame;
use crate::hash::Hash256;
use crate::metrics::metrics;
use crate::stream::{rfc3339, StreamKey};

/// What matching found on one sampled frame: image-bank matches, and (when video banks are
/// loaded) the video items it matches — empty too, since video windows count every frame.
#[derive(Debug, Clone)]
pub struct Detection {
    pub stream: StreamKey,
    pub stream_id: Arc<str>,
    pub found: Vec<Match>,
    /// `None` when no video bank is loaded.
    pub video: Option<Vec<VideoHit>>,
    pub frame_hash: Hash256,
    pub quality: u8,
    pub pts_us: Option<i64>,
    /// Arrival of the frame's data at the appliance.
    pub arrival: Instant,
    /// The decoded picture, for the evidence thumbnail.
    pub frame: Option<Arc<Frame>>,
}

/// A model's scores for one sampled frame.
#[derive(Debug, Clone)]
pub struct Scored {
    pub stream: StreamKey,
    pub stream_id: Arc<str>,
    pub model: Arc<ModelPolicy>,
    /// One per label of the model, in the manifest's order.
    pub scores: Vec<f32>,
    pub pts_us: Option<i64>,
    pub arrival: Instant,
    /// The decoded picture, for the evidence thumbnail (models with `store_evidence`).
    pub frame: Option<Arc<Frame>>,
}

/// How one model's scores turn into incidents (from its manifest and `[[classifier.models]]`).
#[derive(Debug, Clone)]
pub struct ModelPolicy {
    pub name: Arc<str>,
    /// Identifies the model file (its sha256, shortened), like a bank's version.
    pub version: String,
    pub labels: Vec<String>,
    /// Violence labels: column and threshold.
    pub thresholds: Vec<(usize, f32)>,
    pub rule: crate::config::WindowRule,
    pub window_frames: usize,
    pub min_frames: usize,
    pub severity: Severity,
    pub action: Action,
    pub store_evidence: bool,
    pub shadow: bool,
}

/// What reaches the decision stage.
#[derive(Debug, Clone)]
pub enum Finding {
    Hashes(Detection),
    Scores(Scored),
}

/// A would-be incident of a model in shadow mode: recorded and counted, never sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ShadowAlert {
    pub stream: String,
    pub at: String,
    pub evidence: Evidence,
}

/// The frame a piece of evidence comes from.
struct Seen<'a> {
    stream_id: &'a Arc<str>,
    pts_us: Option<i64>,
    arrival: Instant,
    frame: &'a Option<Arc<Frame>>,
}

impl<'a> From<&'a Detection> for Seen<'a> {
    fn from(d: &'a Detection) -> Self {
        Seen {
            stream_id: &d.stream_id,
            pts_us: d.pts_us,
            arrival: d.arrival,
            frame: &d.frame,
        }
    }
}

/// Why an incident was opened.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A sampled frame is within a bank's distance of a banked hash.
    HashMatch,
    /// Enough frames of a stream window match one banked video.
    VideoMatch,
    /// A classifier is confident the stream shows violence.
    Classifier,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::HashMatch, Reason::VideoMatch, Reason::Classifier];
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HashMatch => "hash_match",
            Reason::VideoMatch => "video_match",
            Reason::Classifier => "classifier",
        }
    }
}

/// How serious a finding is; banks and models say which.
#[derive(
    Debug,
    Clone,
    Copy,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What the appliance recommends the platform does; ordered from mildest to strongest.
#[derive(
    Debug,
    Clone,
    Copy,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record it; no human needed yet.
    Notify,
    /// A person should look at the broadcast.
    Review,
    /// Take the broadcast down now (known content).
    Suspend,
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Acknowledged,
    Resolved,
}

/// The kind of an incident event; the webhook `type` is `livewatch.incident.<kind>`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Opened,
    Updated,
    Acknowledged,
    Resolved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Updated => "updated",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Resolved => "resolved",
        }
    }
    pub fn webhook_type(self) -> String {
        format!("livewatch.incident.{}", self.as_str())
    }
}

/// A moment of evidence: when its frame arrived, and where it sits on the stream's clock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct EvidenceTime {
    pub at: String,
    pub pts_seconds: Option<f64>,
}

/// What a detection found. Tagged by `kind` so later reasons add their own shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    HashMatch {
        bank: String,
        bank_version: String,
        item_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item_label: Option<String>,
        distance: u32,
        threshold: u32,
        frame_hash: String,
        matched_hash: String,
        quality: u8,
    },
    /// Enough of a stream's recent frames match one banked video.
    VideoMatch {
        bank: String,
        bank_version: String,
        item_id: String,
        /// Smallest frame distance in the window.
        distance: u32,
        window_secs: f64,
        /// Sampled frames (of enough quality) in the window, and those matching the item.
        frames_in_window: usize,
        matching_frames: usize,
        match_percent: f64,
        /// How much of the item the window covered (reported; a live stream rarely shows
        /// all of a long item).
        item_frames: usize,
        item_frames_matched: usize,
        coverage_percent: f64,
        frame_hash: String,
        quality: u8,
    },
    /// A model's scores for a violence label crossed its threshold over the stream's window.
    Classifier {
        model: String,
        model_version: String,
        label: String,
        /// The label's score on the latest frame.
        score: f32,
        threshold: f32,
        /// `k_of_n` or `mean`.
        rule: crate::config::WindowRule,
        /// Scored frames in the window, those at or above the threshold, and their mean score.
        window_frames: usize,
        frames_above: usize,
        mean_score: f32,
        min_frames: usize,
    },
}

/// One banked item that matched during an incident.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MatchedItem {
    pub bank: String,
    pub bank_version: String,
    pub item_id: String,
    pub best_distance: u32,
    pub frames: u64,
}

/// Who closed or acknowledged an incident, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Actor {
    pub by: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The stream an incident is about, with whatever the platform attached to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StreamRef {
    pub id: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Distinct items listed in an incident, at most (the count of evidence frames is unbounded).
pub const MAX_ITEMS: usize = 32;

/// An incident: what the API shows as an alert and what every webhook event carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Incident {
    pub incident_id: String,
    pub stream: StreamRef,
    pub reason: Reason,
    pub status: Status,
    pub severity: Severity,
    pub action: Action,
    pub opened_at: String,
    pub updated_at: String,
    pub first_evidence: EvidenceTime,
    pub last_evidence: EvidenceTime,
    pub evidence_count: u64,
    /// The latest evidence.
    pub evidence: Evidence,
    pub items: Vec<MatchedItem>,
    /// API path of the evidence thumbnail, when one may be and was stored.
    pub thumbnail: Option<String>,
    pub acknowledged: Option<Actor>,
    pub resolved: Option<Actor>,
    /// Events emitted so far (the last one's `sequence`).
    pub events: u32,
}

/// What the decision stage hands to the outbox: one event and the incident as it now stands.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub kind: EventKind,
    pub incident: Incident,
    /// Arrival of the frame that completed the condition (for the alert latency).
    pub trigger_arrival: Option<SystemTime>,
    /// Arrival of the first evidence frame (for the detection delay).
    pub first_arrival: Option<SystemTime>,
}

/// The timing rules of incidents.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub update_interval: Duration,
    pub resolve_after: Duration,
    pub cooldown: Duration,
}

struct Open {
    incident: Incident,
    last_evidence: Instant,
    last_sent: Instant,
    /// Evidence arrived since the last event.
    dirty: bool,
    trigger: Option<SystemTime>,
    first_arrival: Option<SystemTime>,
}

type Key = (Arc<str>, Reason);

/// A stream's recent sampled frames and the video items each matched.
type Window = std::collections::VecDeque<(Instant, Vec<VideoHit>)>;

/// Incident state for every stream and reason.
pub struct Decider {
    policy: Policy,
    metadata: HashMap<String, serde_json::Map<String, serde_json::Value>>,
    open: HashMap<Key, Open>,
    /// Resolved recently: no new incident before this instant.
    cooling: HashMap<Key, Instant>,
    windows: HashMap<Arc<str>, Window>,
    /// Frames older than this leave every window.
    max_window: Duration,
    /// The latest scores of each stream and model, newest last.
    scores: HashMap<(Arc<str>, Arc<str>), ScoreWindow>,
    /// Shadow models: when each stream's would-be incident last had evidence.
    shadow_seen: HashMap<(Arc<str>, Arc<str>), Instant>,
    /// The latest would-be incidents of shadow models.
    pub shadow_log: ShadowLog,
}

/// A stream's latest score vectors of one model, oldest first.
type ScoreWindow = std::collections::VecDeque<Vec<f32>>;

/// Shared with the API.
pub type ShadowLog = Arc<parking_lot::Mutex<std::collections::VecDeque<ShadowAlert>>>;

/// Would-be incidents of shadow models kept for the API.
pub const SHADOW_LOG: usize = 100;

/// One banked item as evidence points at it.
struct ItemRef<'a> {
    bank: &'a str,
    bank_version: &'a str,
    item: &'a str,
    distance: u32,
    severity: Severity,
    action: Action,
    store_evidence: bool,
}

/// Why an API request on an incident was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IncidentError {
    #[error("no open incident with id {0:?}")]
    NotOpen(String),
}

fn wall(now: Instant, then: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(now.saturating_duration_since(then))
        .unwrap_or_else(SystemTime::now)
}

impl Decider {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            metadata: HashMap::new(),
            open: HashMap::new(),
            cooling: HashMap::new(),
            windows: HashMap::new(),
            max_window: Duration::from_secs(10),
            scores: HashMap::new(),
            shadow_seen: HashMap::new(),
            shadow_log: ShadowLog::default(),
        }
    }

    /// The longest video window of any bank (frames older than this are forgotten).
    pub fn set_max_window(&mut self, window: Duration) {
        self.max_window = window.max(Duration::from_secs(1));
    }

    /// Forgets a stream's video window (it was removed or restarted).
    pub fn forget_stream(&mut self, stream: &str) {
        self.windows.remove(stream);
        self.scores.retain(|(s, _), _| &**s != stream);
    }

    /// Sets the metadata the platform attached to a stream (carried by its incidents).
    pub fn set_metadata(&mut self, stream: &str, meta: serde_json::Map<String, serde_json::Value>) {
        self.metadata.insert(stream.to_string(), meta);
    }

    /// Takes back incidents that were open when the appliance stopped, so new evidence updates
    /// them instead of opening duplicates; without evidence they resolve as usual.
    pub fn restore(&mut self, incident: Incident, now: Instant) {
        let key = (Arc::from(incident.stream.id.as_str()), incident.reason);
        self.open.insert(
            key,
            Open {
                incident,
                last_evidence: now,
                last_sent: now,
                dirty: false,
                trigger: None,
                first_arrival: None,
            },
        );
    }

    pub fn open_incidents(&self) -> usize {
        self.open.len()
    }

    /// Applies what matching found on one frame. `thumbnail` is asked for an evidence image
    /// when an incident has none and the bank allows storing one; it returns the image's API
    /// path.
    pub fn detect(
        &mut self,
        d: &Detection,
        now: Instant,
        thumbnail: &mut dyn FnMut(&str, &Arc<Frame>) -> Option<String>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for m in &d.found {
            let evidence = Evidence::HashMatch {
                bank: m.bank.to_string(),
                bank_version: m.bank_version.clone(),
                item_id: m.entry.item.to_string(),
                item_label: m.entry.label.as_deref().map(str::to_string),
                distance: m.distance,
                threshold: m.threshold,
                frame_hash: d.frame_hash.to_string(),
                matched_hash: m.entry.hash.to_string(),
                quality: d.quality,
            };
            let item = ItemRef {
                bank: &m.bank,
                bank_version: &m.bank_version,
                item: &m.entry.item,
                distance: m.distance,
                severity: m.severity,
                action: m.action,
                store_evidence: m.store_evidence,
            };
            out.extend(self.apply(&d.into(), Reason::HashMatch, evidence, item, now, thumbnail));
        }
        if let Some(hits) = &d.video {
            out.extend(self.video(d, hits, now, thumbnail));
        }
        out
    }

    /// Adds the frame to its stream's window and applies the video rule of every item it hits.
    fn video(
        &mut self,
        d: &Detection,
        hits: &[VideoHit],
        now: Instant,
        thumbnail: &mut dyn FnMut(&str, &Arc<Frame>) -> Option<String>,
    ) -> Vec<Outgoing> {
        let max_window = self.max_window;
        let window = self.windows.entry(d.stream_id.clone()).or_default();
        window.push_back((now, hits.to_vec()));
        while window
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > max_window)
        {
            window.pop_front();
        }
        let mut fired = Vec::new();
        for hit in hits {
            let recent = window
                .iter()
                .filter(|(t, _)| now.saturating_duration_since(*t) <= hit.rule.window);
            let (mut n, mut k, mut best) = (0usize, 0usize, u32::MAX);
            let mut covered = std::collections::HashSet::new();
            for (_, frame_hits) in recent {
                n += 1;
                if let Some(h) = frame_hits
                    .iter()
                    .find(|h| h.bank == hit.bank && h.item == hit.item)
                {
                    k += 1;
                    best = best.min(h.distance);
                    covered.extend(h.frames.iter().copied());
                }
            }
            let percent = 100.0 * k as f64 / n.max(1) as f64;
            if k >= hit.rule.min_frames && percent >= hit.rule.min_percent {
                let evidence = Evidence::VideoMatch {
                    bank: hit.bank.to_string(),
                    bank_version: hit.bank_version.clone(),
                    item_id: hit.item.to_string(),
                    distance: best,
                    window_secs: hit.rule.window.as_secs_f64(),
                    frames_in_window: n,
                    matching_frames: k,
                    match_percent: (percent * 10.0).round() / 10.0,
                    item_frames: hit.item_frames,
                    item_frames_matched: covered.len(),
                    coverage_percent: (1000.0 * covered.len() as f64
                        / hit.item_frames.max(1) as f64)
                        .round()
                        / 10.0,
                    frame_hash: d.frame_hash.to_string(),
                    quality: d.quality,
                };
                fired.push((hit.clone(), evidence, best));
            }
        }
        let mut out = Vec::new();
        for (hit, evidence, best) in fired {
            let item = ItemRef {
                bank: &hit.bank,
                bank_version: &hit.bank_version,
                item: &hit.item,
                distance: best,
                severity: hit.severity,
                action: hit.action,
                store_evidence: hit.store_evidence,
            };
            out.extend(self.apply(
                &d.into(),
                Reason::VideoMatch,
                evidence,
                item,
                now,
                thumbnail,
            ));
        }
        out
    }

    /// Applies a model's scores for one frame: the stream's window of the model's last
    /// `window_frames` scores decides, per violence label, whether the frame is evidence.
    /// Shadow models record and count what would have opened, and send nothing.
    pub fn classify(
        &mut self,
        s: &Scored,
        now: Instant,
        thumbnail: &mut dyn FnMut(&str, &Arc<Frame>) -> Option<String>,
    ) -> Vec<Outgoing> {
        let p = &s.model;
        let key = (s.stream_id.clone(), p.name.clone());
        let window = self.scores.entry(key.clone()).or_default();
        window.push_back(s.scores.clone());
        while window.len() > p.window_frames {
            window.pop_front();
        }
        // the label that fired with the highest latest score
        let mut fired: Option<Evidence> = None;
        let mut best = f32::MIN;
        for &(col, threshold) in &p.thresholds {
            let n = window.len();
            let above = window.iter().filter(|w| w[col] >= threshold).count();
            let mean = window.iter().map(|w| w[col]).sum::<f32>() / n as f32;
            let hit = match p.rule {
                crate::config::WindowRule::KOfN => above >= p.min_frames,
                crate::config::WindowRule::Mean => n >= p.min_frames && mean >= threshold,
            };
            let score = s.scores[col];
            if hit && score > best {
                best = score;
                fired = Some(Evidence::Classifier {
                    model: p.name.to_string(),
                    model_version: p.version.clone(),
                    label: p.labels[col].clone(),
                    score,
                    threshold,
                    rule: p.rule,
                    window_frames: n,
                    frames_above: above,
                    mean_score: mean,
                    min_frames: p.min_frames,
                });
            }
        }
        let Some(evidence) = fired else {
            return Vec::new();
        };
        let Evidence::Classifier { label, .. } = &evidence else {
            unreachable!("built above")
        };
        let label = label.clone();
        if p.shadow {
            let quiet = self
                .shadow_seen
                .insert(key, now)
                .is_none_or(|t| now.saturating_duration_since(t) >= self.policy.resolve_after);
            if quiet {
                metrics()
                    .classifier_triggers
                    .with_label_values(&[&*p.name, label.as_str(), "shadow"])
                    .inc();
                tracing::info!(stream = %s.stream_id, model = %p.name, label = %label, "shadow model would open an incident");
                let mut log = self.shadow_log.lock();
                if log.len() >= SHADOW_LOG {
                    log.pop_front();
                }
                log.push_back(ShadowAlert {
                    stream: s.stream_id.to_string(),
                    at: rfc3339(wall(now, s.arrival)),
                    evidence,
                });
            }
            return Vec::new();
        }
        let item = ItemRef {
            bank: &p.name,
            bank_version: &p.version,
            item: &label,
            distance: 0,
            severity: p.severity,
            action: p.action,
            store_evidence: p.store_evidence,
        };
        let seen = Seen {
            stream_id: &s.stream_id,
            pts_us: s.pts_us,
            arrival: s.arrival,
            frame: &s.frame,
        };
        let out: Vec<Outgoing> = self
            .apply(&seen, Reason::Classifier, evidence, item, now, thumbnail)
            .into_iter()
            .collect();
        for o in &out {
            if o.kind == EventKind::Opened {
                metrics()
                    .classifier_triggers
                    .with_label_values(&[&*p.name, label.as_str(), "enforce"])
                    .inc();
            }
        }
        out
    }

    /// Opens or updates the incident of `d`'s stream for `reason` with one piece of evidence.
    fn apply(
        &mut self,
        d: &Seen<'_>,
        reason: Reason,
        evidence: Evidence,
        found: ItemRef<'_>,
        now: Instant,
        thumbnail: &mut dyn FnMut(&str, &Arc<Frame>) -> Option<String>,
    ) -> Option<Outgoing> {
        let key: Key = (d.stream_id.clone(), reason);
        let arrived = wall(now, d.arrival);
        let at = EvidenceTime {
            at: rfc3339(arrived),
            pts_seconds: d.pts_us.map(|p| p as f64 / 1e6),
        };
        let want_thumb =
            |inc: &Incident, t: &mut dyn FnMut(&str, &Arc<Frame>) -> Option<String>| match (
                d.frame,
                inc.thumbnail.is_none() && found.store_evidence,
            ) {
                (Some(f), true) => t(&inc.incident_id, f),
                _ => None,
            };

        if let Some(open) = self.open.get_mut(&key) {
            let inc = &mut open.incident;
            inc.evidence_count += 1;
            inc.last_evidence = at;
            inc.evidence = evidence;
            inc.severity = inc.severity.max(found.severity);
            inc.action = inc.action.max(found.action);
            note_item(&mut inc.items, &found);
            if let Some(t) = want_thumb(inc, thumbnail) {
                inc.thumbnail = Some(t);
            }
            open.last_evidence = now;
            open.trigger = Some(arrived);
            open.dirty = true;
            if now.saturating_duration_since(open.last_sent) >= self.policy.update_interval {
                return Some(self.emit(&key, EventKind::Updated, now));
            }
            return None;
        }

        if let Some(until) = self.cooling.get(&key) {
            if now < *until {
                metrics().alerts_suppressed.inc();
                return None;
            }
            self.cooling.remove(&key);
        }

        let stamp = rfc3339(SystemTime::now());
        let mut incident = Incident {
            incident_id: Uuid::now_v7().to_string(),
            stream: StreamRef {
                id: d.stream_id.to_string(),
                metadata: self
                    .metadata
                    .get(&**d.stream_id)
                    .cloned()
                    .unwrap_or_default(),
            },
            reason,
            status: Status::Open,
            severity: found.severity,
            action: found.action,
            opened_at: stamp.clone(),
            updated_at: stamp,
            first_evidence: at.clone(),
            last_evidence: at,
            evidence_count: 1,
            evidence,
            items: Vec::new(),
            thumbnail: None,
            acknowledged: None,
            resolved: None,
            events: 0,
        };
        note_item(&mut incident.items, &found);
        incident.thumbnail = want_thumb(&incident, thumbnail);
        metrics()
            .alerts_raised
            .with_label_values(&[reason.as_str()])
            .inc();
        self.open.insert(
            key.clone(),
            Open {
                incident,
                last_evidence: now,
                last_sent: now,
                dirty: true,
                trigger: Some(arrived),
                first_arrival: Some(arrived),
            },
        );
        Some(self.emit(&key, EventKind::Opened, now))
    }

    /// Time-driven changes: coalesced updates that are due, and incidents without evidence
    /// for `resolve_after`. Call it a few times per second.
    pub fn tick(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let keys: Vec<Key> = self.open.keys().cloned().collect();
        for key in keys {
            let open = &self.open[&key];
            if now.saturating_duration_since(open.last_evidence) >= self.policy.resolve_after {
                let by = Actor {
                    by: "livewatch".into(),
                    at: rfc3339(SystemTime::now()),
                    note: Some(format!(
                        "no evidence for {} s",
                        self.policy.resolve_after.as_secs_f64()
                    )),
                };
                out.push(self.close(&key, by, now));
            } else if open.dirty
                && now.saturating_duration_since(open.last_sent) >= self.policy.update_interval
            {
                out.push(self.emit(&key, EventKind::Updated, now));
            }
        }
        out
    }

    /// Acknowledges an open incident: it stays open and keeps collecting evidence.
    pub fn acknowledge(
        &mut self,
        incident_id: &str,
        by: Actor,
        now: Instant,
    ) -> Result<Outgoing, IncidentError> {
        let key = self
            .find(incident_id)
            .ok_or_else(|| IncidentError::NotOpen(incident_id.into()))?;
        let open = self.open.get_mut(&key).expect("found above");
        open.incident.status = Status::Acknowledged;
        open.incident.acknowledged = Some(by);
        Ok(self.emit(&key, EventKind::Acknowledged, now))
    }

    /// Resolves an open incident; a new one for its stream and reason waits for the cooldown.
    pub fn resolve(
        &mut self,
        incident_id: &str,
        by: Actor,
        now: Instant,
    ) -> Result<Outgoing, IncidentError> {
        let key = self
            .find(incident_id)
            .ok_or_else(|| IncidentError::NotOpen(incident_id.into()))?;
        Ok(self.close(&key, by, now))
    }

    fn find(&self, incident_id: &str) -> Option<Key> {
        self.open
            .iter()
            .find(|(_, o)| o.incident.incident_id == incident_id)
            .map(|(k, _)| k.clone())
    }

    fn close(&mut self, key: &Key, by: Actor, now: Instant) -> Outgoing {
        let mut open = self.open.remove(key).expect("open incident");
        open.incident.status = Status::Resolved;
        open.incident.resolved = Some(by);
        self.cooling.insert(key.clone(), now + self.policy.cooldown);
        self.cooling.retain(|_, until| *until > now);
        finish(&mut open, EventKind::Resolved, now)
    }

    fn emit(&mut self, key: &Key, kind: EventKind, now: Instant) -> Outgoing {
        let open = self.open.get_mut(key).expect("open incident");
        finish(open, kind, now)
    }
}

fn finish(open: &mut Open, kind: EventKind, now: Instant) -> Outgoing {
    open.incident.events += 1;
    open.incident.updated_at = rfc3339(SystemTime::now());
    open.last_sent = now;
    let trigger = if open.dirty { open.trigger } else { None };
    open.dirty = false;
    Outgoing {
        kind,
        incident: open.incident.clone(),
        trigger_arrival: trigger,
        first_arrival: open.first_arrival.take(),
    }
}

fn note_item(items: &mut Vec<MatchedItem>, m: &ItemRef<'_>) {
    if let Some(it) = items
        .iter_mut()
        .find(|i| i.bank == m.bank && i.item_id == m.item)
    {
        it.frames += 1;
        it.best_distance = it.best_distance.min(m.distance);
        return;
    }
    if items.len() < MAX_ITEMS {
        items.push(MatchedItem {
            bank: m.bank.to_string(),
            bank_version: m.bank_version.to_string(),
            item_id: m.item.to_string(),
            best_distance: m.distance,
            frames: 1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::BankEntry;

    fn detection(stream: &str, bank: &str, item: &str, at: Instant) -> Detection {
        Detection {
            stream: 0,
            stream_id: stream.into(),
            found: vec![Match {
                bank: bank.into(),
                bank_version: "1-0".into(),
                threshold: 31,
                entry: BankEntry {
                    hash: Hash256::default(),
                    item: item.into(),
                    label: None,
                },
                distance: 3,
                severity: Severity::High,
                action: Action::Suspend,
                store_evidence: false,
            }],
            video: None,
            frame_hash: Hash256::default(),
            quality: 80,
            pts_us: Some(1_500_000),
            arrival: at,
            frame: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            update_interval: Duration::from_secs(10),
            resolve_after: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
        }
    }

    fn no_thumb(_: &str, _: &Arc<Frame>) -> Option<String> {
        None
    }

    /// Drives a decider with one detection per second for `secs` seconds, ticking in between.
    fn run(d: &mut Decider, t0: Instant, from: u64, secs: u64, stream: &str) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for s in from..from + secs {
            let now = t0 + Duration::from_secs(s);
            out.extend(d.tick(now));
            out.extend(d.detect(&detection(stream, "known", "v1", now), now, &mut no_thumb));
        }
        out
    }

    #[test]
    fn a_minute_of_matches_is_one_incident_with_updates() {
        let mut d = Decider::new(policy());
        let t0 = Instant::now();
        let mut events = run(&mut d, t0, 0, 60, "cam");
        // the stream goes quiet: the incident resolves after 30 s without evidence
        for s in 60..100 {
            events.extend(d.tick(t0 + Duration::from_secs(s)));
        }
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[0], EventKind::Opened);
        assert_eq!(*kinds.last().unwrap(), EventKind::Resolved);
        let updates = kinds.iter().filter(|k| **k == EventKind::Updated).count();
        // evidence every second for 60 s, at most one update per 10 s
        assert_eq!(updates, 6, "{kinds:?}");
        let ids: std::collections::HashSet<_> = events
            .iter()
            .map(|e| e.incident.incident_id.clone())
            .collect();
        assert_eq!(ids.len(), 1, "one incident");
        let last = &events.last().unwrap().incident;
        assert_eq!(last.evidence_count, 60);
        assert_eq!(last.events as usize, events.len());
        assert_eq!(last.items[0].frames, 60);
        assert_eq!(last.status, Status::Resolved);
        // sequence numbers count up
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.incident.events as usize, i + 1);
        }
    }

    #[test]
    fn cooldown_after_resolution_then_a_new_incident() {
        let mut d = Decider::new(policy());
        let t0 = Instant::now();
        let first = run(&mut d, t0, 0, 1, "cam");
        let id = first[0].incident.incident_id.clone();
        let by = Actor {
            by: "ops".into(),
            at: String::new(),
            note: None,
        };
        let r = d
            .resolve(&id, by.clone(), t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(r.kind, EventKind::Resolved);
        assert_eq!(
            d.resolve(&id, by, t0 + Duration::from_secs(3)).err(),
            Some(IncidentError::NotOpen(id.clone()))
        );
        // within the cooldown: nothing
        assert!(run(&mut d, t0, 10, 40, "cam").is_empty());
        // after it: a new incident with a new id
        let again = run(&mut d, t0, 63, 1, "cam");
        assert_eq!(again[0].kind, EventKind::Opened);
        assert_ne!(again[0].incident.incident_id, id);
    }

    #[test]
    fn incidents_are_per_stream_and_acknowledgement_keeps_them_open() {
        let mut d = Decider::new(policy());
        let t0 = Instant::now();
        let a = run(&mut d, t0, 0, 1, "a");
        let b = run(&mut d, t0, 0, 1, "b");
        assert_eq!(a[0].kind, EventKind::Opened);
        assert_eq!(b[0].kind, EventKind::Opened);
        assert_ne!(a[0].incident.incident_id, b[0].incident.incident_id);
        let ack = d
            .acknowledge(
                &a[0].incident.incident_id,
                Actor {
                    by: "ops".into(),
                    at: String::new(),
                    note: Some("looking".into()),
                },
                t0 + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(ack.kind, EventKind::Acknowledged);
        assert_eq!(ack.incident.status, Status::Acknowledged);
        // evidence after the acknowledgement updates the same incident
        let more = run(&mut d, t0, 20, 1, "a");
        assert_eq!(more[0].kind, EventKind::Updated);
        assert_eq!(more[0].incident.incident_id, a[0].incident.incident_id);
        assert_eq!(d.open_incidents(), 2);
    }

    #[test]
    fn a_pending_update_is_sent_by_the_tick() {
        let mut d = Decider::new(policy());
        let t0 = Instant::now();
        run(&mut d, t0, 0, 3, "cam"); // opened at 0, evidence at 1 and 2 held back
        assert!(d.tick(t0 + Duration::from_secs(5)).is_empty());
        let due = d.tick(t0 + Duration::from_secs(10));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].kind, EventKind::Updated);
        assert_eq!(due[0].incident.evidence_count, 3);
        assert!(due[0].trigger_arrival.is_some());
        // nothing new: no further update
        assert!(d.tick(t0 + Duration::from_secs(21)).is_empty());
    }

    fn frame(stream: &str, hits: Vec<VideoHit>, at: Instant) -> Detection {
        let mut d = detection(stream, "x", "x", at);
        d.found.clear();
        d.video = Some(hits);
        d
    }

    fn hit(item: &str, frames: Vec<u32>) -> VideoHit {
        VideoHit {
            bank: "videos".into(),
            bank_version: "v".into(),
            item: item.into(),
            distance: 4,
            frames,
            item_frames: 20,
            rule: crate::config::VideoRule {
                window: Duration::from_secs(10),
                min_percent: 80.0,
                min_frames: 5,
            },
            severity: Severity::Critical,
            action: Action::Suspend,
            store_evidence: false,
        }
    }

    #[test]
    fn a_video_match_needs_enough_frames_and_share_of_the_window() {
        let mut d = Decider::new(policy());
        d.set_max_window(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // 4 matching frames: too few (5 needed)
        for s in 0..4 {
            assert!(d
                .detect(
                    &frame("cam", vec![hit("clip", vec![s as u32])], at(s)),
                    at(s),
                    &mut no_thumb
                )
                .is_empty());
        }
        // the 5th fires: 5 of 5 frames in the window
        let out = d.detect(
            &frame("cam", vec![hit("clip", vec![4])], at(4)),
            at(4),
            &mut no_thumb,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].incident.reason, Reason::VideoMatch);
        match &out[0].incident.evidence {
            Evidence::VideoMatch {
                matching_frames,
                frames_in_window,
                item_frames_matched,
                coverage_percent,
                ..
            } => {
                assert_eq!(
                    (*matching_frames, *frames_in_window, *item_frames_matched),
                    (5, 5, 5)
                );
                assert_eq!(*coverage_percent, 25.0);
            }
            e => panic!("{e:?}"),
        }
        // another stream: 5 matching frames among 5 unmatched ones is 50 %: nothing
        for s in 0..10 {
            let hits = if s % 2 == 0 {
                vec![hit("clip", vec![s as u32])]
            } else {
                vec![]
            };
            assert!(
                d.detect(&frame("other", hits, at(s)), at(s), &mut no_thumb)
                    .is_empty(),
                "{s}"
            );
        }
        // frames leave the window: after 10 quiet-but-unmatched seconds the share drops
        let mut d = Decider::new(policy());
        d.set_max_window(Duration::from_secs(10));
        for s in 0..6 {
            d.detect(
                &frame("c", vec![hit("clip", vec![1])], at(s)),
                at(s),
                &mut no_thumb,
            );
        }
        for s in 6..30 {
            d.detect(&frame("c", vec![], at(s)), at(s), &mut no_thumb);
        }
        // one matching frame among ten unmatched: the rule does not hold, no evidence added
        assert!(d
            .detect(
                &frame("c", vec![hit("clip", vec![2])], at(30)),
                at(30),
                &mut no_thumb
            )
            .is_empty());
    }

    #[test]
    fn the_body_carries_the_evidence_and_metadata() {
        let mut d = Decider::new(policy());
        let mut meta = serde_json::Map::new();
        meta.insert("account_id".into(), "acct-9".into());
        d.set_metadata("cam", meta);
        let t0 = Instant::now();
        let e = run(&mut d, t0, 0, 1, "cam").remove(0);
        let json = serde_json::to_value(&e.incident).unwrap();
        assert_eq!(json["reason"], "hash_match");
        assert_eq!(json["severity"], "high");
        assert_eq!(json["action"], "suspend");
        assert_eq!(json["stream"]["metadata"]["account_id"], "acct-9");
        assert_eq!(json["evidence"]["kind"], "hash_match");
        assert_eq!(json["evidence"]["bank"], "known");
        assert_eq!(json["first_evidence"]["pts_seconds"], 1.5);
        let back: Incident = serde_json::from_value(json).unwrap();
        assert_eq!(back, e.incident);
    }

    fn model(rule: crate::config::WindowRule, shadow: bool) -> Arc<ModelPolicy> {
        Arc::new(ModelPolicy {
            name: "m".into(),
            version: "abc".into(),
            labels: vec!["violence".into(), "calm".into()],
            thresholds: vec![(0, 0.8)],
            rule,
            window_frames: 4,
            min_frames: 3,
            severity: Severity::High,
            action: Action::Review,
            store_evidence: false,
            shadow,
        })
    }

    fn scored(m: &Arc<ModelPolicy>, stream: &str, v: f32, at: Instant) -> Scored {
        Scored {
            stream: 0,
            stream_id: stream.into(),
            model: m.clone(),
            scores: vec![v, 1.0 - v],
            pts_us: None,
            arrival: at,
            frame: None,
        }
    }

    /// Feeds scores one per second; returns the events and the second each came at.
    fn feed(
        d: &mut Decider,
        m: &Arc<ModelPolicy>,
        t0: Instant,
        scores: &[f32],
    ) -> Vec<(usize, Outgoing)> {
        let mut out = Vec::new();
        for (i, v) in scores.iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            for o in d.classify(&scored(m, "cam", *v, now), now, &mut no_thumb) {
                out.push((i, o));
            }
        }
        out
    }

    #[test]
    fn k_of_n_opens_on_the_kth_frame_above_the_threshold_in_the_window() {
        use crate::config::WindowRule;
        let mut d = Decider::new(policy());
        let m = model(WindowRule::KOfN, false);
        let t0 = Instant::now();
        // 2 of the last 4 above, then a low frame pushes one out: never 3 in a window of 4
        let quiet = feed(&mut d, &m, t0, &[0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9, 0.1]);
        assert!(quiet.is_empty(), "{:?}", quiet.len());
        // 3 of the last 4: opens on the third
        let mut d = Decider::new(policy());
        let ev = feed(&mut d, &m, t0, &[0.9, 0.1, 0.85, 0.95, 0.99]);
        assert_eq!(ev.len(), 1);
        let (at, o) = &ev[0];
        assert_eq!(*at, 3);
        assert_eq!(o.kind, EventKind::Opened);
        assert_eq!(o.incident.reason, Reason::Classifier);
        match &o.incident.evidence {
            Evidence::Classifier {
                model,
                label,
                score,
                threshold,
                frames_above,
                window_frames,
                ..
            } => {
                assert_eq!((model.as_str(), label.as_str()), ("m", "violence"));
                assert_eq!((*score, *threshold), (0.95, 0.8));
                assert_eq!((*frames_above, *window_frames), (3, 4));
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(o.incident.items[0].bank, "m");
        assert_eq!(o.incident.items[0].item_id, "violence");
    }

    #[test]
    fn the_mean_rule_smooths_single_spikes() {
        use crate::config::WindowRule;
        let m = model(WindowRule::Mean, false);
        let t0 = Instant::now();
        // one very high frame among low ones: the mean stays below
        let mut d = Decider::new(policy());
        assert!(feed(&mut d, &m, t0, &[0.1, 1.0, 0.1, 0.2, 1.0, 0.1]).is_empty());
        // a sustained high score opens once 3 frames are in (min_frames)
        let mut d = Decider::new(policy());
        let ev = feed(&mut d, &m, t0, &[0.85, 0.9, 0.8, 0.9]);
        assert_eq!(ev.first().map(|(i, _)| *i), Some(2));
    }

    #[test]
    fn a_shadow_model_sends_nothing_and_logs_each_would_be_incident_once() {
        use crate::config::WindowRule;
        let mut d = Decider::new(policy());
        let m = model(WindowRule::KOfN, true);
        let t0 = Instant::now();
        let ev = feed(&mut d, &m, t0, &[0.9; 20]);
        assert!(ev.is_empty());
        assert_eq!(d.open_incidents(), 0);
        // firing every second from the third frame on is one would-be incident
        let log = d.shadow_log.lock().clone();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].stream, "cam");
        // quiet for longer than resolve_after (30 s), then firing again: a second one
        let later = t0 + Duration::from_secs(60);
        for i in 0..3 {
            let now = later + Duration::from_secs(i);
            d.classify(&scored(&m, "cam", 0.9, now), now, &mut no_thumb);
        }
        assert_eq!(d.shadow_log.lock().len(), 2);
    }
}
