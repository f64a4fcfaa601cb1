//! Webhook delivery: one worker per endpoint, each with its own queue, so a dead or slow
//! receiver never delays another.
//!
//! Within an endpoint, events of different streams are delivered concurrently (up to the
//! endpoint's `concurrency`), and the events of one stream strictly in order: a stream's next
//! event waits until the previous one was delivered or dead-lettered. Every attempt is signed
//! afresh (Standard Webhooks, one signature per configured secret) with its own
//! `webhook-timestamp`; the `webhook-id` is the event's and never changes.
//!
//! Outcomes: 2xx delivers (and makes every waiting retry of the endpoint due at once, since the
//! receiver is evidently back); `410 Gone` disables the endpoint until the API re-enables it
//! (its deliveries stay pending); 429, 502, 503 and 504 throttle the whole endpoint, for
//! `Retry-After` when given (at most the schedule's longest delay or 5 minutes, whichever is
//! longer), else for the schedule's next delay; anything else is retried on the endpoint's schedule with ±20 %
//! jitter, and after the last retry the event becomes a dead letter.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rand::Rng as _;
use serde::Serialize;
use standardwebhooks::Webhook;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::store::{unix_ms, DeliveryState, DeliveryStatus, EndpointState, Outbox, StoredEvent};
use crate::blocking;
use crate::config::WebhookSpec;
use crate::decide::EventKind;
use crate::metrics::{metrics, stage};
use crate::redact::RedactedUrl;

/// What an endpoint's worker is told.
pub enum Control {
    /// An event committed for this endpoint.
    New { seq: u64, stream_id: Arc<str> },
    /// Re-enable after a `410 Gone`.
    Enable(oneshot::Sender<()>),
    /// Move dead letters (one, or all when `None`) back into the queue; replies how many.
    Redeliver {
        seq: Option<u64>,
        reply: oneshot::Sender<anyhow::Result<usize>>,
    },
}

/// An endpoint as the API shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    pub name: String,
    pub url: String,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub pending: usize,
    pub in_flight: usize,
    pub dead_letters: usize,
    pub delivered: u64,
    pub throttled_for_secs: Option<f64>,
    pub last_error: Option<String>,
}

/// The handle the rest of the appliance holds on an endpoint's worker.
#[derive(Clone)]
pub struct EndpointHandle {
    pub spec: Arc<WebhookSpec>,
    pub tx: mpsc::UnboundedSender<Control>,
    pub view: Arc<Mutex<EndpointView>>,
}

struct Endpoint {
    spec: Arc<WebhookSpec>,
    signers: Vec<Webhook>,
    client: reqwest::Client,
    url: String,
}

struct Item {
    stream: Arc<str>,
    attempts: u32,
    due: Instant,
    in_flight: bool,
    /// The last attempt failed in a way a recovered receiver fixes (network, timeout,
    /// throttling): such retries are brought forward when the endpoint answers 2xx again.
    transient: bool,
}

impl Item {
    fn new(stream: Arc<str>, attempts: u32) -> Item {
        Item {
            stream,
            attempts,
            due: Instant::now(),
            in_flight: false,
            transient: true,
        }
    }
}

enum Outcome {
    Delivered(u16),
    Gone,
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    Failed {
        status: Option<u16>,
        error: String,
        label: &'static str,
    },
    /// The event could not be read from the outbox: not the receiver's fault, not an attempt.
    Internal(String),
}

/// Builds the HTTP client of an endpoint: its timeout, CA and client certificate.
fn client(spec: &WebhookSpec) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        // a redirect would turn the POST into a GET and carry the signature elsewhere
        .redirect(reqwest::redirect::Policy::none())
        .timeout(spec.timeout)
        .connect_timeout(spec.timeout)
        .user_agent(concat!("livewatch/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &spec.ca_pem {
        b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem)?);
    }
    if let Some(pem) = &spec.identity_pem {
        b = b.identity(reqwest::Identity::from_pem(pem)?);
    }
    Ok(b.build()?)
}

/// Starts the worker of one endpoint. It loads the endpoint's pending deliveries from the
/// outbox, then delivers until `cancel` fires, and after that for at most `drain` while
/// anything is still pending.
pub fn spawn(
    spec: WebhookSpec,
    store: Arc<Outbox>,
    cancel: CancellationToken,
    drain: Duration,
) -> anyhow::Result<(EndpointHandle, tokio::task::JoinHandle<()>)> {
    let spec = Arc::new(spec);
    let signers = spec
        .secrets
        .iter()
        .map(|s| Webhook::new(s).map_err(|e| anyhow::anyhow!("webhook {}: secret: {e}", spec.name)))
        .collect::<anyhow::Result<_>>()?;
    let ep = Arc::new(Endpoint {
        client: client(&spec)?,
        url: RedactedUrl(&spec.url).to_string(),
        spec: spec.clone(),
        signers,
    });
    let state = store.register_endpoint(&spec.name)?;
    let pending = store.pending(&spec.name)?;
    let dead = store.dead_count(&spec.name)?;
    let view = Arc::new(Mutex::new(EndpointView {
        name: spec.name.clone(),
        url: ep.url.clone(),
        disabled: state.disabled,
        disabled_reason: state.reason.clone(),
        dead_letters: dead,
        ..Default::default()
    }));
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = pending
        .into_iter()
        .map(|p| (p.seq, Item::new(p.stream_id.into(), p.attempts)))
        .collect::<BTreeMap<_, _>>();
    if !queue.is_empty() {
        info!(endpoint = %spec.name, pending = queue.len(), "resuming deliveries left from the last run");
    }
    let worker = Worker {
        ep,
        store,
        queue,
        disabled: state.disabled,
        throttled_until: None,
        view: view.clone(),
        inflight: JoinSet::new(),
        dead,
        epoch: 0,
    };
    let task = tokio::spawn(worker.run(rx, cancel, drain));
    Ok((EndpointHandle { spec, tx, view }, task))
}

struct Worker {
    ep: Arc<Endpoint>,
    store: Arc<Outbox>,
    queue: BTreeMap<u64, Item>,
    disabled: bool,
    throttled_until: Option<Instant>,
    view: Arc<Mutex<EndpointView>>,
    inflight: JoinSet<(u64, u64, Outcome, Option<StoredEvent>)>,
    dead: usize,
    /// Bumped by re-enabling: answers to attempts started before it are not held against
    /// the endpoint.
    epoch: u64,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Control>,
        cancel: CancellationToken,
        drain: Duration,
    ) {
        let mut deadline: Option<Instant> = None;
        let mut open = true;
        loop {
            let next_due = self.start_due();
            self.publish();
            if deadline.is_some() && self.queue.is_empty() {
                break;
            }
            let wake = match (next_due, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                c = rx.recv(), if open => match c {
                    Some(c) => self.control(c).await,
                    None => open = false,
                },
                Some(done) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    match done {
                        Ok((seq, epoch, outcome, event)) => self.finish(seq, epoch, outcome, event).await,
                        Err(e) => error!(endpoint = %self.ep.spec.name, "delivery task failed: {e}"),
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {}
                _ = cancel.cancelled(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + drain);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        let left = self.queue.len();
        self.inflight.abort_all();
        if left > 0 {
            warn!(endpoint = %self.ep.spec.name, pending = left, "stopping with deliveries pending; they resume at the next start");
        }
        self.publish();
    }

    /// Starts every delivery that may start now; returns when the next waiting one is due.
    fn start_due(&mut self) -> Option<Instant> {
        if self.disabled {
            return None;
        }
        let now = Instant::now();
        if let Some(t) = self.throttled_until {
            if now < t {
                return Some(t);
            }
            self.throttled_until = None;
        }
        // one event per stream at a time, and only its oldest pending one
        let mut heads: HashSet<Arc<str>> = self
            .queue
            .values()
            .filter(|i| i.in_flight)
            .map(|i| i.stream.clone())
            .collect();
        let mut next: Option<Instant> = None;
        let mut starts = Vec::new();
        let mut slots = self.ep.spec.concurrency.saturating_sub(self.inflight.len());
        for (seq, item) in &self.queue {
            if !heads.insert(item.stream.clone()) {
                continue;
            }
            if item.due <= now {
                if slots > 0 {
                    slots -= 1;
                    starts.push(*seq);
                }
            } else {
                next = Some(next.map_or(item.due, |n| n.min(item.due)));
            }
        }
        let epoch = self.epoch;
        for seq in starts {
            self.queue.get_mut(&seq).expect("queued").in_flight = true;
            let (ep, store) = (self.ep.clone(), self.store.clone());
            self.inflight.spawn(async move {
                let (event, outcome) = match blocking(move || store.event(seq)).await {
                    Ok(Some(ev)) => {
                        let o = attempt(&ep, &ev).await;
                        (Some(ev), o)
                    }
                    Ok(None) => (
                        None,
                        Outcome::Internal("event missing from the outbox".into()),
                    ),
                    Err(e) => (
                        None,
                        Outcome::Internal(format!("outbox read failed: {e:#}")),
                    ),
                };
                (seq, epoch, outcome, event)
            });
        }
        next
    }

    async fn finish(&mut self, seq: u64, epoch: u64, outcome: Outcome, event: Option<StoredEvent>) {
        let m = metrics();
        let name = self.ep.spec.name.clone();
        let Some(item) = self.queue.get_mut(&seq) else {
            return;
        };
        item.in_flight = false;
        let now = Instant::now();
        if let Outcome::Internal(e) = &outcome {
            error!(endpoint = %name, seq, "{e}; trying again in 5 s");
            item.due = now + Duration::from_secs(5);
            return;
        }
        let stale = epoch != self.epoch;
        if !matches!(outcome, Outcome::Delivered(_)) && (self.disabled || stale) {
            // the endpoint was disabled (or re-enabled) meanwhile: this answer does not count
            item.due = now;
            return;
        }
        let label = match &outcome {
            Outcome::Delivered(_) => "2xx",
            Outcome::Gone => "410",
            Outcome::Throttled { status: 429, .. } => "429",
            Outcome::Throttled { .. } => "5xx",
            Outcome::Failed { label, .. } => label,
            Outcome::Internal(_) => unreachable!("handled above"),
        };
        m.webhook_attempts.with_label_values(&[&name, label]).inc();
        let (status, last_status, last_error) = match outcome {
            Outcome::Delivered(code) => {
                let item = self.queue.remove(&seq).expect("queued");
                m.webhook_deliveries
                    .with_label_values(&[&name, "delivered"])
                    .inc();
                self.view.lock().delivered += 1;
                if let Some(ev) = &event {
                    if ev.kind == EventKind::Opened {
                        if let Some(t) = ev.trigger_unix_ms {
                            let latency = unix_ms(SystemTime::now()).saturating_sub(t);
                            m.alert_latency.observe(latency as f64 / 1000.0);
                        }
                    }
                    info!(endpoint = %name, incident = %ev.incident_id, event = %ev.event_id, kind = ev.kind.as_str(), attempts = item.attempts + 1, "webhook delivered");
                }
                // the receiver answers again: retries that waited for it go now (not those it
                // refused on their merits)
                for it in self.queue.values_mut().filter(|i| i.transient) {
                    it.due = it.due.min(now);
                }
                self.save(
                    seq,
                    DeliveryStatus::Delivered,
                    item.attempts + 1,
                    Some(code),
                    None,
                )
                .await;
                return;
            }
            Outcome::Gone => {
                self.disabled = true;
                let reason = "the receiver answered 410 Gone".to_string();
                error!(endpoint = %name, "webhook endpoint disabled: {reason}; re-enable it through the API");
                let store = self.store.clone();
                let st = EndpointState {
                    disabled: true,
                    since_unix_ms: unix_ms(SystemTime::now()),
                    reason: Some(reason.clone()),
                };
                let n = name.clone();
                if let Err(e) = blocking(move || store.set_endpoint(&n, &st)).await {
                    error!(endpoint = %name, "cannot persist the disabled endpoint: {e:#}");
                }
                {
                    let mut v = self.view.lock();
                    v.disabled = true;
                    v.disabled_reason = Some(reason);
                }
                m.webhook_endpoint_disabled
                    .with_label_values(&[&name])
                    .set(1);
                // not an attempt against the schedule: it waits for re-enabling
                let attempts = self.queue[&seq].attempts;
                self.save(
                    seq,
                    DeliveryStatus::Pending,
                    attempts,
                    Some(410),
                    Some("410 Gone: endpoint disabled".into()),
                )
                .await;
                return;
            }
            Outcome::Throttled {
                status,
                retry_after,
            } => {
                let attempts = {
                    let item = self.queue.get_mut(&seq).expect("queued");
                    item.attempts += 1;
                    item.transient = true;
                    item.attempts
                };
                let wait = retry_after
                    .map(|r| r.min(self.max_delay()))
                    .unwrap_or_else(|| self.delay(attempts));
                self.throttled_until = Some(now + wait);
                self.queue.get_mut(&seq).expect("queued").due = now + wait;
                warn!(endpoint = %name, status, wait_secs = wait.as_secs_f64(), "receiver throttles; pausing this endpoint");
                (
                    self.next_status(seq),
                    Some(status),
                    Some(format!("HTTP {status}")),
                )
            }
            Outcome::Failed { status, error, .. } => {
                let attempts = {
                    let item = self.queue.get_mut(&seq).expect("queued");
                    item.attempts += 1;
                    // no answer at all: a receiver coming back fixes it
                    item.transient = status.is_none();
                    item.attempts
                };
                let delay = self.delay(attempts);
                self.queue.get_mut(&seq).expect("queued").due = now + delay;
                warn!(endpoint = %name, seq, attempts, error = %error, "webhook attempt failed");
                (self.next_status(seq), status, Some(error))
            }
            Outcome::Internal(_) => unreachable!("handled above"),
        };
        self.view.lock().last_error = last_error.clone();
        let attempts = self.queue[&seq].attempts;
        if status == DeliveryStatus::Dead {
            self.queue.remove(&seq);
            self.dead += 1;
            m.webhook_deliveries
                .with_label_values(&[&name, "dead_letter"])
                .inc();
            error!(endpoint = %name, seq, attempts, "webhook delivery gave up: event moved to the dead letters");
        }
        self.save(seq, status, attempts, last_status, last_error)
            .await;
    }

    /// Pending while retries remain on the schedule, dead after the last.
    fn next_status(&self, seq: u64) -> DeliveryStatus {
        if self.queue[&seq].attempts as usize > self.ep.spec.retry_schedule.len() {
            DeliveryStatus::Dead
        } else {
            DeliveryStatus::Pending
        }
    }

    /// Delay before the retry that follows attempt number `attempts`, with ±20 % jitter.
    fn delay(&self, attempts: u32) -> Duration {
        let s = &self.ep.spec.retry_schedule;
        let base = s
            .get(attempts.saturating_sub(1) as usize)
            .or(s.last())
            .copied()
            .unwrap_or(Duration::from_secs(1));
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
    }

    /// The longest `Retry-After` honoured: the schedule's longest delay, at least 5 minutes.
    fn max_delay(&self) -> Duration {
        self.ep
            .spec
            .retry_schedule
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(300))
    }

    async fn save(
        &self,
        seq: u64,
        status: DeliveryStatus,
        attempts: u32,
        last_status: Option<u16>,
        last_error: Option<String>,
    ) {
        let st = DeliveryState {
            status,
            attempts,
            last_status,
            last_error,
            updated_unix_ms: unix_ms(SystemTime::now()),
        };
        let (store, name) = (self.store.clone(), self.ep.spec.name.clone());
        if let Err(e) = blocking(move || store.record(&name, seq, &st)).await {
            error!(endpoint = %self.ep.spec.name, seq, "cannot record the delivery state: {e:#}");
        }
    }

    async fn control(&mut self, c: Control) {
        match c {
            Control::New { seq, stream_id } => {
                self.queue.insert(seq, Item::new(stream_id, 0));
            }
            Control::Enable(reply) => {
                self.disabled = false;
                self.epoch += 1;
                self.throttled_until = None;
                let (store, name) = (self.store.clone(), self.ep.spec.name.clone());
                if let Err(e) =
                    blocking(move || store.set_endpoint(&name, &EndpointState::default())).await
                {
                    error!(endpoint = %self.ep.spec.name, "cannot persist re-enabling: {e:#}");
                }
                {
                    let mut v = self.view.lock();
                    v.disabled = false;
                    v.disabled_reason = None;
                }
                metrics()
                    .webhook_endpoint_disabled
                    .with_label_values(&[&self.ep.spec.name])
                    .set(0);
                let now = Instant::now();
                for it in self.queue.values_mut() {
                    it.due = now;
                }
                info!(endpoint = %self.ep.spec.name, "webhook endpoint re-enabled");
                let _ = reply.send(());
            }
            Control::Redeliver { seq, reply } => {
                let (store, name) = (self.store.clone(), self.ep.spec.name.clone());
                let r = blocking(move || store.requeue_dead(&name, seq)).await;
                let r = r.map(|moved| {
                    let n = moved.len();
                    for (seq, stream) in moved {
                        self.queue.insert(seq, Item::new(stream.into(), 0));
                    }
                    self.dead = self.dead.saturating_sub(n);
                    n
                });
                let _ = reply.send(r);
            }
        }
    }

    fn publish(&self) {
        let name = &self.ep.spec.name;
        let m = metrics();
        m.outbox_pending
            .with_label_values(&[name])
            .set(self.queue.len() as i64);
        m.webhook_dead_letters
            .with_label_values(&[name])
            .set(self.dead as i64);
        m.webhook_endpoint_disabled
            .with_label_values(&[name])
            .set(self.disabled as i64);
        let mut v = self.view.lock();
        v.pending = self.queue.len();
        v.in_flight = self.inflight.len();
        v.dead_letters = self.dead;
        v.throttled_for_secs = self
            .throttled_until
            .map(|t| t.saturating_duration_since(Instant::now()).as_secs_f64())
            .filter(|s| *s > 0.0);
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// One signed POST.
async fn attempt(ep: &Endpoint, ev: &StoredEvent) -> Outcome {
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let signatures: Vec<String> = ep
        .signers
        .iter()
        .filter_map(|s| s.sign(&ev.event_id, ts, ev.body.as_bytes()).ok())
        .collect();
    let started = Instant::now();
    let result = ep
        .client
        .post(ep.spec.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &ev.event_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signatures.join(" "))
        .body(ev.body.clone())
        .send()
        .await;
    metrics()
        .stage_seconds
        .with_label_values(&[stage::DELIVER])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(resp) => {
            let status = resp.status();
            let code = status.as_u16();
            if status.is_success() {
                return Outcome::Delivered(code);
            }
            match code {
                410 => Outcome::Gone,
                429 | 502 | 503 | 504 => Outcome::Throttled {
                    status: code,
                    retry_after: resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry_after),
                },
                _ => Outcome::Failed {
                    status: Some(code),
                    error: format!("HTTP {status}"),
                    label: if status.is_redirection() {
                        "3xx"
                    } else if status.is_client_error() {
                        "4xx"
                    } else {
                        "5xx"
                    },
                },
            }
        }
        Err(e) => Outcome::Failed {
            status: None,
            label: if e.is_timeout() { "timeout" } else { "error" },
            error: e.without_url().to_string(),
        },
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d <= Duration::from_secs(120) && d >= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
