//! The decision stage: turns matches into alerts, once per stream and bank per cooldown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::info;
use uuid::Uuid;

use crate::bank::Match;
use crate::hash::Hash256;
use crate::metrics::metrics;
use crate::stream::{rfc3339, StreamKey};

/// A frame that matched a bank entry.
#[derive(Debug, Clone)]
pub struct Detection {
    pub stream: StreamKey,
    pub stream_id: Arc<str>,
    pub found: Match,
    pub frame_hash: Hash256,
    pub quality: u8,
    pub pts_us: Option<i64>,
    /// Arrival of the frame's data at the appliance.
    pub arrival: Instant,
}

/// Why an alert was raised.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    HashMatch,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HashMatch => "hash_match",
        }
    }
}

/// Version of the alert body's `data` object; bumped on incompatible changes.
pub const ALERT_SCHEMA_VERSION: u32 = 1;

/// What the webhook receiver gets in `data`.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub schema_version: u32,
    pub alert_id: String,
    pub reason: Reason,
    pub stream_id: String,
    pub bank: String,
    pub bank_version: String,
    pub item_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_label: Option<String>,
    pub distance: u32,
    pub threshold: u32,
    pub frame_hash: String,
    pub matched_hash: String,
    pub quality: u8,
    /// Presentation time of the frame on the stream's clock.
    pub frame_pts_seconds: Option<f64>,
    pub frame_arrived_at: String,
    pub detected_at: String,
    #[serde(skip)]
    pub arrival: Option<Instant>,
}

impl Alert {
    pub fn event_type(&self) -> String {
        format!("livewatch.alert.{}", self.reason.as_str())
    }
}

/// De-duplication state: the last alert per (stream, bank).
pub struct Decider {
    cooldown: Duration,
    last: HashMap<(StreamKey, Arc<str>), Instant>,
}

impl Decider {
    pub fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            last: HashMap::new(),
        }
    }

    /// An alert for this detection, or `None` while its stream and bank are in cooldown.
    pub fn decide(&mut self, d: &Detection, now: Instant) -> Option<Alert> {
        let key = (d.stream, d.found.bank.clone());
        if let Some(prev) = self.last.get(&key) {
            if now.duration_since(*prev) < self.cooldown {
                metrics().alerts_suppressed.inc();
                return None;
            }
        }
        self.last.insert(key, now);
        let arrived_wall = SystemTime::now()
            .checked_sub(now.saturating_duration_since(d.arrival))
            .unwrap_or_else(SystemTime::now);
        metrics()
            .alerts_raised
            .with_label_values(&[Reason::HashMatch.as_str()])
            .inc();
        metrics()
            .detection_delay
            .observe(now.saturating_duration_since(d.arrival).as_secs_f64());
        Some(Alert {
            schema_version: ALERT_SCHEMA_VERSION,
            alert_id: Uuid::now_v7().to_string(),
            reason: Reason::HashMatch,
            stream_id: d.stream_id.to_string(),
            bank: d.found.bank.to_string(),
            bank_version: d.found.bank_version.clone(),
            item_id: d.found.entry.item.to_string(),
            item_label: d.found.entry.label.as_deref().map(str::to_string),
            distance: d.found.distance,
            threshold: d.found.threshold,
            frame_hash: d.frame_hash.to_string(),
            matched_hash: d.found.entry.hash.to_string(),
            quality: d.quality,
            frame_pts_seconds: d.pts_us.map(|p| p as f64 / 1e6),
            frame_arrived_at: rfc3339(arrived_wall),
            detected_at: rfc3339(SystemTime::now()),
            arrival: Some(d.arrival),
        })
    }
}

/// Runs the decision stage until the detection channel closes.
pub async fn run(
    mut rx: mpsc::Receiver<Detection>,
    cooldown: Duration,
    out: mpsc::UnboundedSender<Alert>,
) {
    let mut decider = Decider::new(cooldown);
    while let Some(d) = rx.recv().await {
        if let Some(alert) = decider.decide(&d, Instant::now()) {
            info!(
                stream = %alert.stream_id,
                bank = %alert.bank,
                item = %alert.item_id,
                distance = alert.distance,
                alert_id = %alert.alert_id,
                "ALERT hash match"
            );
            if out.send(alert).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::BankEntry;

    fn detection(stream: StreamKey, bank: &str) -> Detection {
        Detection {
            stream,
            stream_id: format!("s{stream}").into(),
            found: Match {
                bank: bank.into(),
                bank_version: "1-0".into(),
                threshold: 31,
                entry: BankEntry {
                    hash: Hash256::default(),
                    item: "i".into(),
                    label: None,
                },
                distance: 3,
            },
            frame_hash: Hash256::default(),
            quality: 80,
            pts_us: Some(1_500_000),
            arrival: Instant::now(),
        }
    }

    #[test]
    fn cooldown_is_per_stream_and_bank() {
        let mut d = Decider::new(Duration::from_secs(10));
        let t = Instant::now();
        assert!(d.decide(&detection(1, "a"), t).is_some());
        assert!(d
            .decide(&detection(1, "a"), t + Duration::from_secs(5))
            .is_none());
        assert!(d
            .decide(&detection(2, "a"), t + Duration::from_secs(5))
            .is_some());
        assert!(d
            .decide(&detection(1, "b"), t + Duration::from_secs(5))
            .is_some());
        assert!(d
            .decide(&detection(1, "a"), t + Duration::from_secs(11))
            .is_some());
    }

    #[test]
    fn alert_carries_the_evidence() {
        let mut d = Decider::new(Duration::ZERO);
        let a = d.decide(&detection(4, "known"), Instant::now()).unwrap();
        assert_eq!(a.stream_id, "s4");
        assert_eq!(a.bank, "known");
        assert_eq!(a.frame_pts_seconds, Some(1.5));
        assert_eq!(a.event_type(), "livewatch.alert.hash_match");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["reason"], "hash_match");
        assert!(json.get("arrival").is_none());
    }
}
