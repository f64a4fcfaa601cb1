//! Alerts: the decision thread, the durable outbox, evidence and webhook delivery.
//!
//! Findings arrive from the hash threads and the classifier on a bounded channel. One thread runs the
//! [`Decider`](crate::decide::Decider), encodes the evidence thumbnail when an incident needs
//! one, commits each incident event to the outbox (synced to disk) and only then hands it to
//! the endpoint workers ([`deliver`]), which sign and POST it with retries. What was committed
//! and not yet delivered survives a crash or restart and is delivered with the same
//! `webhook-id`.

pub mod deliver;
pub mod store;
pub mod thumbnail;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use crossbeam_channel::{select, Receiver, Sender};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::config::{AlertPolicy, Config};
use crate::decide::{
    Actor, Decider, EventKind, Finding, Incident, IncidentError, Outgoing, ShadowLog,
};
use crate::metrics::metrics;
use crate::stream::rfc3339;
pub use deliver::{EndpointHandle, EndpointView};
pub use store::{Outbox, StoredEvent};

/// Version of the webhook body's `data` object; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 2;

/// The `data` of an incident event: which event, then the incident as it stands.
#[derive(Serialize)]
struct EventData<'a> {
    schema_version: u32,
    event_id: &'a str,
    event: EventKind,
    /// 1 for `opened`, counting up per incident.
    sequence: u32,
    #[serde(flatten)]
    incident: &'a Incident,
}

/// The Standard Webhooks body: `{type, timestamp, data}`.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    data: EventData<'a>,
}

/// Requests from the API to the decision thread.
enum Command {
    Acknowledge {
        id: String,
        by: Actor,
        reply: oneshot::Sender<Result<Incident, IncidentError>>,
    },
    Resolve {
        id: String,
        by: Actor,
        reply: oneshot::Sender<Result<Incident, IncidentError>>,
    },
    /// A stream was added or changed: its metadata goes with its future incidents.
    Metadata {
        stream: String,
        metadata: serde_json::Map<String, serde_json::Value>,
    },
}

/// What the API holds: the outbox for reading, the endpoints, and a line to the decider.
#[derive(Clone)]
pub struct AlertsHandle {
    pub store: Arc<Outbox>,
    pub endpoints: Arc<Vec<EndpointHandle>>,
    pub thumbnails: PathBuf,
    pub state_dir: PathBuf,
    /// Would-be incidents of classifier models in shadow mode.
    pub shadow: ShadowLog,
    commands: Sender<Command>,
}

type IncidentReply = oneshot::Sender<Result<Incident, IncidentError>>;

impl AlertsHandle {
    async fn ask(
        &self,
        make: impl FnOnce(IncidentReply) -> Command,
    ) -> anyhow::Result<Result<Incident, IncidentError>> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .context("the decision stage has stopped")?;
        Ok(rx.await?)
    }

    pub async fn acknowledge(
        &self,
        id: &str,
        by: Actor,
    ) -> anyhow::Result<Result<Incident, IncidentError>> {
        let id = id.to_string();
        self.ask(|reply| Command::Acknowledge { id, by, reply })
            .await
    }

    pub async fn resolve(
        &self,
        id: &str,
        by: Actor,
    ) -> anyhow::Result<Result<Incident, IncidentError>> {
        let id = id.to_string();
        self.ask(|reply| Command::Resolve { id, by, reply }).await
    }

    /// Sets the metadata the platform attached to a stream.
    pub fn set_metadata(&self, stream: &str, metadata: serde_json::Map<String, serde_json::Value>) {
        let _ = self.commands.send(Command::Metadata {
            stream: stream.into(),
            metadata,
        });
    }

    pub fn endpoint(&self, name: &str) -> Option<&EndpointHandle> {
        self.endpoints.iter().find(|e| e.spec.name == name)
    }
}

/// The running alert service.
pub struct AlertService {
    pub handle: AlertsHandle,
    decider: std::thread::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    janitor: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

/// How long shutdown keeps delivering what is pending.
pub const DRAIN: Duration = Duration::from_secs(10);

impl AlertService {
    /// Opens the outbox, restores open incidents, starts the endpoint workers (which resume
    /// pending deliveries) and the decision thread reading `detections`.
    pub fn start(
        config: &Config,
        detections: Receiver<Finding>,
        health: &crate::health::Heartbeats,
    ) -> anyhow::Result<AlertService> {
        let store = Arc::new(Outbox::open(&config.state_dir)?);
        let (incidents, events) = store.sizes()?;
        info!(outbox = %store.path().display(), incidents, events, "outbox open");
        let cancel = CancellationToken::new();
        let mut endpoints = Vec::new();
        let mut workers = Vec::new();
        for spec in &config.webhooks {
            let (h, task) = deliver::spawn(spec.clone(), store.clone(), cancel.clone(), DRAIN)?;
            endpoints.push(h);
            workers.push(task);
        }
        if endpoints.is_empty() {
            warn!("no webhook configured: incidents are recorded and shown in the API only");
        }
        let endpoints = Arc::new(endpoints);

        let mut decider = Decider::new(config.alerts.incidents);
        decider.set_max_window(
            config
                .banks
                .iter()
                .filter(|b| b.format == crate::config::BankFormat::Vpdq)
                .map(|b| b.video.window)
                .max()
                .unwrap_or_default(),
        );
        for s in &config.streams {
            decider.set_metadata(&s.id, s.metadata.clone());
        }
        let now = Instant::now();
        for inc in store.open_incidents()? {
            info!(incident = %inc.incident_id, stream = %inc.stream.id, "incident still open from the last run");
            decider.restore(inc, now);
        }
        metrics()
            .incidents_open
            .set(decider.open_incidents() as i64);

        let thumbnails = config.state_dir.join("thumbnails");
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let ctx = Committer {
            store: store.clone(),
            endpoints: endpoints.clone(),
            thumbnails: thumbnails.clone(),
            policy: config.alerts.clone(),
            backlog: Default::default(),
        };
        let shadow = decider.shadow_log.clone();
        let decider = std::thread::Builder::new()
            .name("lw-decide".into())
            .spawn({
                let beat = health.register("decide");
                move || decide_loop(decider, ctx, detections, command_rx, beat)
            })
            .context("spawn the decision thread")?;

        let janitor = tokio::spawn(janitor(
            store.clone(),
            thumbnails.clone(),
            config.alerts.clone(),
            cancel.clone(),
        ));
        Ok(AlertService {
            handle: AlertsHandle {
                store,
                endpoints,
                thumbnails,
                state_dir: config.state_dir.clone(),
                shadow,
                commands,
            },
            decider,
            workers,
            janitor,
            cancel,
        })
    }

    /// Waits for the decision thread (it ends when the detection channel closes, after
    /// committing everything it received), then lets the workers deliver what is pending for
    /// at most [`DRAIN`]. What is still pending stays in the outbox for the next start.
    pub async fn shutdown(self) {
        let decider = self.decider;
        // the decision thread ends once the hash threads are gone; should they hang, the
        // deliveries still get their drain
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::task::spawn_blocking(move || decider.join()),
        )
        .await;
        drop(self.handle);
        self.cancel.cancel();
        for w in self.workers {
            let _ = w.await;
        }
        let _ = self.janitor.await;
    }
}

struct Committer {
    store: Arc<Outbox>,
    endpoints: Arc<Vec<EndpointHandle>>,
    thumbnails: PathBuf,
    policy: AlertPolicy,
    /// Events whose commit failed, retried in order before any newer one.
    backlog: std::collections::VecDeque<Outgoing>,
}

fn decide_loop(
    mut decider: Decider,
    mut ctx: Committer,
    detections: Receiver<Finding>,
    commands: Receiver<Command>,
    beat: crate::health::Beat,
) {
    let m = metrics();
    // Thumbnails are encoded after the event is committed, off this thread: the alert never
    // waits for its evidence.
    let thumbs: std::cell::RefCell<Vec<(String, Arc<crate::decode::Frame>)>> = Default::default();
    let mut thumb = |incident_id: &str, frame: &Arc<crate::decode::Frame>| -> Option<String> {
        thumbs
            .borrow_mut()
            .push((incident_id.to_string(), frame.clone()));
        Some(format!("/v1/alerts/{incident_id}/thumbnail"))
    };
    loop {
        beat.beat();
        select! {
            recv(detections) -> d => match d {
                Ok(d) => {
                    let now = Instant::now();
                    let outs = match &d {
                        Finding::Hashes(d) => decider.detect(d, now, &mut thumb),
                        Finding::Scores(s) => decider.classify(s, now, &mut thumb),
                    };
                    for out in outs {
                        ctx.commit(out);
                    }
                    for (id, frame) in thumbs.borrow_mut().drain(..) {
                        ctx.write_thumbnail(id, frame);
                    }
                }
                Err(_) => break,
            },
            recv(commands) -> c => if let Ok(c) = c {
                let now = Instant::now();
                let (result, reply) = match c {
                    Command::Acknowledge { id, by, reply } => (decider.acknowledge(&id, by, now), reply),
                    Command::Resolve { id, by, reply } => (decider.resolve(&id, by, now), reply),
                    Command::Metadata { stream, metadata } => {
                        // a stream (re)started: its video window starts afresh
                        decider.forget_stream(&stream);
                        decider.set_metadata(&stream, metadata);
                        continue;
                    }
                };
                let _ = reply.send(result.map(|out| {
                    let incident = out.incident.clone();
                    ctx.commit(out);
                    incident
                }));
            },
            default(Duration::from_millis(200)) => {}
        }
        for out in decider.tick(Instant::now()) {
            ctx.commit(out);
        }
        ctx.retry_backlog();
        m.incidents_open.set(decider.open_incidents() as i64);
    }
    ctx.retry_backlog();
    if !ctx.backlog.is_empty() {
        error!(
            events = ctx.backlog.len(),
            "stopping with events the outbox could not take: they are lost"
        );
    }
    info!("decision stage stopped; open incidents stay open for the next start");
}

impl Committer {
    /// Commits an event (after any held back by a failing disk, to keep their order).
    fn commit(&mut self, out: Outgoing) {
        self.backlog.push_back(out);
        self.retry_backlog();
    }

    fn retry_backlog(&mut self) {
        while let Some(out) = self.backlog.front() {
            if !self.try_commit(out) {
                return;
            }
            self.backlog.pop_front();
        }
    }

    fn write_thumbnail(&self, incident_id: String, frame: Arc<crate::decode::Frame>) {
        let (dir, width) = (self.thumbnails.clone(), self.policy.thumbnail_width);
        let spawned = std::thread::Builder::new()
            .name("lw-thumbnail".into())
            .spawn(move || {
                let made = thumbnail::encode(&frame, width)
                    .map_err(anyhow::Error::from)
                    .and_then(|jpeg| Ok(thumbnail::write(&dir, &incident_id, &jpeg)?));
                if let Err(e) = made {
                    warn!(incident = %incident_id, "evidence thumbnail not stored: {e:#}");
                }
            });
        if let Err(e) = spawned {
            warn!("evidence thumbnail not stored: {e}");
        }
    }

    /// Commits an event durably, then queues it for every endpoint that wants it. False when
    /// the outbox refused it (the caller keeps it and tries again).
    fn try_commit(&self, out: &Outgoing) -> bool {
        let m = metrics();
        let inc = &out.incident;
        let wanted: Vec<&EndpointHandle> = self
            .endpoints
            .iter()
            .filter(|e| e.spec.wants(inc.reason, inc.severity))
            .collect();
        let names: Vec<&str> = wanted.iter().map(|e| e.spec.name.as_str()).collect();
        let now = SystemTime::now();
        let make = |seq: u64| {
            let event_id = format!("msg_{}", Uuid::now_v7().simple());
            let body = serde_json::to_string(&Envelope {
                kind: out.kind.webhook_type(),
                timestamp: rfc3339(now),
                data: EventData {
                    schema_version: SCHEMA_VERSION,
                    event_id: &event_id,
                    event: out.kind,
                    sequence: inc.events,
                    incident: inc,
                },
            })
            .expect("event serialises");
            StoredEvent {
                seq,
                event_id,
                incident_id: inc.incident_id.clone(),
                stream_id: inc.stream.id.clone(),
                kind: out.kind,
                created_unix_ms: store::unix_ms(now),
                trigger_unix_ms: out.trigger_arrival.map(store::unix_ms),
                body,
            }
        };
        // The event is never sent uncommitted: on a failing disk it waits, in order.
        let event = match self.store.commit(inc, &names, make) {
            Ok(e) => e,
            Err(e) => {
                m.outbox_errors.inc();
                error!(incident = %inc.incident_id, event = out.kind.as_str(), "outbox commit failed; held in memory and retried: {e:#}");
                return false;
            }
        };
        m.incident_events
            .with_label_values(&[inc.reason.as_str(), out.kind.as_str()])
            .inc();
        if out.kind == EventKind::Opened {
            if let Some(first) = out.first_arrival {
                m.detection_delay
                    .observe(now.duration_since(first).unwrap_or_default().as_secs_f64());
            }
        }
        info!(
            incident = %inc.incident_id,
            event = out.kind.as_str(),
            stream = %inc.stream.id,
            reason = inc.reason.as_str(),
            severity = inc.severity.as_str(),
            evidence = inc.evidence_count,
            webhook_id = %event.event_id,
            "INCIDENT {}",
            out.kind.as_str()
        );
        let stream: Arc<str> = inc.stream.id.as_str().into();
        for e in wanted {
            let _ = e.tx.send(deliver::Control::New {
                seq: event.seq,
                stream_id: stream.clone(),
            });
        }
        true
    }
}

/// Every few minutes: resolved incidents past their history, and thumbnails past retention.
async fn janitor(
    store: Arc<Outbox>,
    thumbs: PathBuf,
    policy: AlertPolicy,
    cancel: CancellationToken,
) {
    loop {
        let (s, t, p) = (store.clone(), thumbs.clone(), policy.clone());
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<(usize, usize)> {
            let cutoff = SystemTime::now()
                .checked_sub(p.history)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let incidents = s.prune(cutoff)?;
            let files = store::prune_thumbnails(&t, p.evidence_retention, p.evidence_max_bytes)?;
            Ok((incidents, files))
        })
        .await;
        match r {
            Ok(Ok((i, f))) if i + f > 0 => {
                info!(
                    incidents = i,
                    thumbnails = f,
                    "old incidents and evidence removed"
                )
            }
            Ok(Err(e)) => warn!("outbox clean-up failed: {e:#}"),
            Err(e) => warn!("outbox clean-up failed: {e}"),
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
    }
}
