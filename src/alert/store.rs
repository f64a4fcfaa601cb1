//! The durable outbox: incidents, their events and every endpoint's delivery state, in one
//! redb file in the state directory.
//!
//! An event is committed (fsynced) together with its incident and one pending delivery per
//! endpoint before any delivery is attempted, so a crash after the commit loses nothing: on
//! restart the pending deliveries are loaded again and sent with the same `webhook-id`.
//! Delivery bookkeeping (attempts, delivered marks) is committed without a sync: a crash may
//! forget that a delivery succeeded, which means one more delivery of the same `webhook-id`
//! (at-least-once), never a lost one. See `docs/alerts.md` for why redb.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::decide::{EventKind, Incident, Status};

/// seq → [`StoredEvent`] (JSON)
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// incident id → [`Incident`] (JSON); ids are UUIDv7, so key order is opening order.
const INCIDENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("incidents");
/// (incident id, seq) → () : the events of an incident.
const INCIDENT_EVENTS: TableDefinition<(&str, u64), ()> = TableDefinition::new("incident_events");
/// (endpoint, seq) → [`DeliveryState`] (JSON), for every delivery ever queued.
const DELIVERIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("deliveries");
/// (endpoint, seq) → () : deliveries still to make.
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("pending");
/// (endpoint, seq) → () : deliveries that exhausted their retries.
const DEAD: TableDefinition<(&str, u64), ()> = TableDefinition::new("dead_letters");
/// endpoint → [`EndpointState`] (JSON)
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
/// counters: "next_seq"
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One incident event as committed: the exact body every attempt sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    /// The `webhook-id`, stable across attempts and restarts.
    pub event_id: String,
    pub incident_id: String,
    pub stream_id: String,
    pub kind: EventKind,
    pub created_unix_ms: u64,
    /// Arrival of the frame that completed the condition, if this event was caused by one.
    pub trigger_unix_ms: Option<u64>,
    /// The JSON body, `{type, timestamp, data}`.
    pub body: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

/// Where one event stands with one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryState {
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub updated_unix_ms: u64,
}

/// Persistent state of an endpoint: a `410 Gone` disables it until re-enabled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointState {
    pub disabled: bool,
    pub since_unix_ms: u64,
    pub reason: Option<String>,
}

/// A delivery waiting to be made, as loaded at start.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub seq: u64,
    pub stream_id: String,
    pub attempts: u32,
}

fn endpoint_names(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> anyhow::Result<Vec<String>> {
    Ok(t.iter()?
        .map(|r| r.map(|(k, _)| k.value().to_string()))
        .collect::<Result<_, _>>()?)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An event with each endpoint's delivery state.
pub type EventDeliveries = (StoredEvent, Vec<(String, DeliveryState)>);

pub struct Outbox {
    db: Database,
    path: PathBuf,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("outbox records serialise")
}

fn parse<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: &str) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("outbox: unreadable {what} record"))
}

impl Outbox {
    /// Opens (or creates) `outbox.redb` in `dir`. A second process on the same file is refused.
    pub fn open(dir: &Path) -> anyhow::Result<Outbox> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let path = dir.join("outbox.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open the outbox {}", path.display()))?;
        let tx = db.begin_write()?;
        {
            // create every table so readers never meet a missing one
            tx.open_table(EVENTS)?;
            tx.open_table(INCIDENTS)?;
            tx.open_table(INCIDENT_EVENTS)?;
            tx.open_table(DELIVERIES)?;
            tx.open_table(PENDING)?;
            tx.open_table(DEAD)?;
            tx.open_table(ENDPOINTS)?;
            tx.open_table(META)?;
        }
        tx.commit()?;
        Ok(Outbox { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits one event with its incident and a pending delivery per endpoint, durably.
    /// `make` builds the event from the sequence number it is given.
    pub fn commit(
        &self,
        incident: &Incident,
        endpoints: &[&str],
        make: impl FnOnce(u64) -> StoredEvent,
    ) -> anyhow::Result<StoredEvent> {
        let tx = self.db.begin_write()?;
        let event;
        {
            let mut meta = tx.open_table(META)?;
            let seq = meta.get("next_seq")?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_seq", seq + 1)?;
            event = make(seq);
            tx.open_table(EVENTS)?
                .insert(seq, json(&event).as_slice())?;
            tx.open_table(INCIDENTS)?
                .insert(incident.incident_id.as_str(), json(incident).as_slice())?;
            tx.open_table(INCIDENT_EVENTS)?
                .insert((incident.incident_id.as_str(), seq), ())?;
            let mut deliveries = tx.open_table(DELIVERIES)?;
            let mut pending = tx.open_table(PENDING)?;
            let state = json(&DeliveryState {
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_status: None,
                last_error: None,
                updated_unix_ms: event.created_unix_ms,
            });
            for ep in endpoints {
                deliveries.insert((*ep, seq), state.as_slice())?;
                pending.insert((*ep, seq), ())?;
            }
        }
        tx.commit()?;
        Ok(event)
    }

    /// Records the outcome of an attempt. Not synced (see the module note).
    pub fn record(&self, endpoint: &str, seq: u64, state: &DeliveryState) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        {
            tx.open_table(DELIVERIES)?
                .insert((endpoint, seq), json(state).as_slice())?;
            let mut pending = tx.open_table(PENDING)?;
            let mut dead = tx.open_table(DEAD)?;
            match state.status {
                DeliveryStatus::Pending => {
                    pending.insert((endpoint, seq), ())?;
                    dead.remove((endpoint, seq))?;
                }
                DeliveryStatus::Delivered => {
                    pending.remove((endpoint, seq))?;
                    dead.remove((endpoint, seq))?;
                }
                DeliveryStatus::Dead => {
                    pending.remove((endpoint, seq))?;
                    dead.insert((endpoint, seq), ())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Pending deliveries of an endpoint, oldest first.
    pub fn pending(&self, endpoint: &str) -> anyhow::Result<Vec<PendingDelivery>> {
        let tx = self.db.begin_read()?;
        let pending = tx.open_table(PENDING)?;
        let events = tx.open_table(EVENTS)?;
        let deliveries = tx.open_table(DELIVERIES)?;
        let mut out = Vec::new();
        for row in pending.range((endpoint, 0)..=(endpoint, u64::MAX))? {
            let (k, _) = row?;
            let seq = k.value().1;
            let Some(ev) = events.get(seq)? else { continue };
            let ev: StoredEvent = parse(ev.value(), "event")?;
            let attempts = match deliveries.get((endpoint, seq))? {
                Some(d) => parse::<DeliveryState>(d.value(), "delivery")?.attempts,
                None => 0,
            };
            out.push(PendingDelivery {
                seq,
                stream_id: ev.stream_id,
                attempts,
            });
        }
        Ok(out)
    }

    /// Dead letters of an endpoint, oldest first.
    pub fn dead_letters(
        &self,
        endpoint: &str,
    ) -> anyhow::Result<Vec<(StoredEvent, DeliveryState)>> {
        let tx = self.db.begin_read()?;
        let dead = tx.open_table(DEAD)?;
        let events = tx.open_table(EVENTS)?;
        let deliveries = tx.open_table(DELIVERIES)?;
        let mut out = Vec::new();
        for row in dead.range((endpoint, 0)..=(endpoint, u64::MAX))? {
            let seq = row?.0.value().1;
            if let (Some(e), Some(d)) = (events.get(seq)?, deliveries.get((endpoint, seq))?) {
                out.push((parse(e.value(), "event")?, parse(d.value(), "delivery")?));
            }
        }
        Ok(out)
    }

    /// Moves dead letters of an endpoint (one, or all) back to pending with a fresh schedule,
    /// in one transaction. Returns the (seq, stream) of those moved.
    pub fn requeue_dead(
        &self,
        endpoint: &str,
        only: Option<u64>,
    ) -> anyhow::Result<Vec<(u64, String)>> {
        let tx = self.db.begin_write()?;
        let mut moved = Vec::new();
        {
            let mut dead = tx.open_table(DEAD)?;
            let mut pending = tx.open_table(PENDING)?;
            let mut deliveries = tx.open_table(DELIVERIES)?;
            let events = tx.open_table(EVENTS)?;
            let seqs: Vec<u64> = dead
                .range((endpoint, 0)..=(endpoint, u64::MAX))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for seq in seqs.into_iter().filter(|s| only.is_none_or(|o| o == *s)) {
                let Some(ev) = events.get(seq)? else { continue };
                let ev: StoredEvent = parse(ev.value(), "event")?;
                let state = DeliveryState {
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    last_status: None,
                    last_error: None,
                    updated_unix_ms: unix_ms(SystemTime::now()),
                };
                deliveries.insert((endpoint, seq), json(&state).as_slice())?;
                dead.remove((endpoint, seq))?;
                pending.insert((endpoint, seq), ())?;
                moved.push((seq, ev.stream_id));
            }
        }
        tx.commit()?;
        Ok(moved)
    }

    pub fn dead_count(&self, endpoint: &str) -> anyhow::Result<usize> {
        let tx = self.db.begin_read()?;
        let dead = tx.open_table(DEAD)?;
        let mut n = 0;
        for row in dead.range((endpoint, 0)..=(endpoint, u64::MAX))? {
            row?;
            n += 1;
        }
        Ok(n)
    }

    pub fn event(&self, seq: u64) -> anyhow::Result<Option<StoredEvent>> {
        let tx = self.db.begin_read()?;
        let events = tx.open_table(EVENTS)?;
        events
            .get(seq)?
            .map(|v| parse(v.value(), "event"))
            .transpose()
    }

    pub fn endpoint(&self, name: &str) -> anyhow::Result<EndpointState> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ENDPOINTS)?;
        Ok(match t.get(name)? {
            Some(v) => parse(v.value(), "endpoint")?,
            None => EndpointState::default(),
        })
    }

    /// Persists an endpoint's state (synced: a disabled endpoint stays disabled after a crash).
    pub fn set_endpoint(&self, name: &str, state: &EndpointState) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(ENDPOINTS)?
            .insert(name, json(state).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn incident(&self, id: &str) -> anyhow::Result<Option<Incident>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INCIDENTS)?;
        t.get(id)?.map(|v| parse(v.value(), "incident")).transpose()
    }

    /// Incidents, newest first, optionally of one stream, at most `limit`.
    pub fn incidents(&self, stream: Option<&str>, limit: usize) -> anyhow::Result<Vec<Incident>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INCIDENTS)?;
        let mut out = Vec::new();
        for row in t.iter()?.rev() {
            let inc: Incident = parse(row?.1.value(), "incident")?;
            if stream.is_none_or(|s| inc.stream.id == s) {
                out.push(inc);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Incidents that were open (or acknowledged) when the appliance stopped.
    pub fn open_incidents(&self) -> anyhow::Result<Vec<Incident>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INCIDENTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let inc: Incident = parse(row?.1.value(), "incident")?;
            if inc.status != Status::Resolved {
                out.push(inc);
            }
        }
        Ok(out)
    }

    /// The events of an incident with each endpoint's delivery state.
    pub fn incident_events(&self, id: &str) -> anyhow::Result<Vec<EventDeliveries>> {
        let tx = self.db.begin_read()?;
        let ie = tx.open_table(INCIDENT_EVENTS)?;
        let events = tx.open_table(EVENTS)?;
        let deliveries = tx.open_table(DELIVERIES)?;
        let endpoints = endpoint_names(&tx.open_table(ENDPOINTS)?)?;
        let mut out = Vec::new();
        for row in ie.range((id, 0)..=(id, u64::MAX))? {
            let seq = row?.0.value().1;
            let Some(e) = events.get(seq)? else { continue };
            let ev: StoredEvent = parse(e.value(), "event")?;
            let mut states = Vec::new();
            for name in &endpoints {
                if let Some(d) = deliveries.get((name.as_str(), seq))? {
                    states.push((name.clone(), parse(d.value(), "delivery")?));
                }
            }
            out.push((ev, states));
        }
        Ok(out)
    }

    /// Makes sure an endpoint is listed (so its deliveries show in the API).
    pub fn register_endpoint(&self, name: &str) -> anyhow::Result<EndpointState> {
        let known = {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(ENDPOINTS)?;
            let v = t.get(name)?;
            v.map(|v| parse::<EndpointState>(v.value(), "endpoint"))
                .transpose()?
        };
        match known {
            Some(state) => Ok(state),
            None => {
                let state = EndpointState::default();
                self.set_endpoint(name, &state)?;
                Ok(state)
            }
        }
    }

    /// Deletes resolved incidents last updated before `cutoff`, with their events and delivery
    /// records, unless one of their deliveries is still pending or dead-lettered.
    /// Returns how many incidents went.
    pub fn prune(&self, cutoff: SystemTime) -> anyhow::Result<usize> {
        let cutoff = time::OffsetDateTime::from(cutoff);
        let tx = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut incidents = tx.open_table(INCIDENTS)?;
            let mut ie = tx.open_table(INCIDENT_EVENTS)?;
            let mut events = tx.open_table(EVENTS)?;
            let mut deliveries = tx.open_table(DELIVERIES)?;
            let pending = tx.open_table(PENDING)?;
            let dead = tx.open_table(DEAD)?;
            let endpoints = endpoint_names(&tx.open_table(ENDPOINTS)?)?;
            let mut doomed = Vec::new();
            for row in incidents.iter()? {
                let (k, v) = row?;
                let inc: Incident = parse(v.value(), "incident")?;
                let old = time::OffsetDateTime::parse(
                    &inc.updated_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|t| t < cutoff);
                if inc.status == Status::Resolved && old {
                    doomed.push(k.value().to_string());
                }
            }
            'incident: for id in doomed {
                let seqs: Vec<u64> = ie
                    .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))?
                    .map(|r| r.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()?;
                for &seq in &seqs {
                    for ep in &endpoints {
                        if pending.get((ep.as_str(), seq))?.is_some()
                            || dead.get((ep.as_str(), seq))?.is_some()
                        {
                            continue 'incident;
                        }
                    }
                }
                for &seq in &seqs {
                    events.remove(seq)?;
                    ie.remove((id.as_str(), seq))?;
                    for ep in &endpoints {
                        deliveries.remove((ep.as_str(), seq))?;
                    }
                }
                incidents.remove(id.as_str())?;
                removed += 1;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Number of incidents and events held.
    pub fn sizes(&self) -> anyhow::Result<(u64, u64)> {
        let tx = self.db.begin_read()?;
        Ok((
            tx.open_table(INCIDENTS)?.len()?,
            tx.open_table(EVENTS)?.len()?,
        ))
    }
}

/// Retention of thumbnails: older than `max_age`, or beyond `max_bytes` (oldest first), go.
pub fn prune_thumbnails(dir: &Path, max_age: Duration, max_bytes: u64) -> std::io::Result<usize> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((meta.modified()?, meta.len(), entry.path()));
        }
    }
    files.sort();
    let now = SystemTime::now();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut removed = 0;
    for (modified, len, path) in files {
        let too_old = now.duration_since(modified).unwrap_or_default() > max_age;
        if too_old || total > max_bytes {
            std::fs::remove_file(&path)?;
            total -= len;
            removed += 1;
        }
    }
    Ok(removed)
}
