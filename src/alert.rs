//! Alert delivery: Standard Webhooks signed POSTs to every configured receiver, with retries.
//!
//! Each alert is delivered to each endpoint by its own task, so a slow or dead receiver never
//! delays another. The `webhook-id` is stable across retries (receivers de-duplicate on it);
//! the signature and `webhook-timestamp` are made afresh per attempt, since verifiers reject
//! stale timestamps.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use standardwebhooks::Webhook;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::WebhookSpec;
use crate::decide::Alert;
use crate::metrics::{metrics, stage};
use crate::redact::RedactedUrl;
use crate::source::backoff_delay;
use crate::stream::rfc3339;

struct Endpoint {
    spec: WebhookSpec,
    signer: Webhook,
    client: reqwest::Client,
}

/// The JSON body: the Standard Webhooks `{type, timestamp, data}` shape.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    data: &'a Alert,
}

/// Result of delivering one alert to one endpoint.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub alert_id: String,
    pub endpoint: String,
    pub ok: bool,
    pub attempts: u32,
    /// From the arrival of the frame that completed the alert to the receiver's 2xx.
    pub latency: Option<Duration>,
}

pub struct Dispatcher {
    endpoints: Vec<Arc<Endpoint>>,
    tasks: TaskTracker,
}

impl Dispatcher {
    pub fn new(specs: &[WebhookSpec]) -> anyhow::Result<Self> {
        let endpoints = specs
            .iter()
            .map(|spec| {
                let signer = Webhook::new(&spec.secret)
                    .map_err(|e| anyhow::anyhow!("webhook secret: {e}"))?;
                let client = reqwest::Client::builder()
                    .timeout(spec.timeout)
                    .user_agent(concat!("livewatch/", env!("CARGO_PKG_VERSION")))
                    .build()?;
                Ok(Arc::new(Endpoint {
                    spec: spec.clone(),
                    signer,
                    client,
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            endpoints,
            tasks: TaskTracker::new(),
        })
    }

    /// Delivers every alert from `rx` until it closes, then waits (up to `drain`) for the
    /// deliveries in flight. `report` hears about each finished delivery.
    pub async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Alert>,
        drain: Duration,
        report: Option<mpsc::UnboundedSender<Delivery>>,
    ) {
        while let Some(alert) = rx.recv().await {
            let alert = Arc::new(alert);
            if self.endpoints.is_empty() {
                warn!(alert_id = %alert.alert_id, "no webhook configured; alert only logged");
            }
            for ep in &self.endpoints {
                let (ep, alert, report) = (ep.clone(), alert.clone(), report.clone());
                self.tasks.spawn(async move {
                    let d = deliver(&ep, &alert).await;
                    if let Some(r) = report {
                        let _ = r.send(d);
                    }
                });
            }
        }
        self.tasks.close();
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight = self.tasks.len(),
                "shutdown: deliveries still in flight were abandoned"
            );
        }
    }
}

async fn deliver(ep: &Endpoint, alert: &Alert) -> Delivery {
    let m = metrics();
    let endpoint = RedactedUrl(&ep.spec.url).to_string();
    let msg_id = format!("msg_{}", alert.alert_id);
    let body = serde_json::to_string(&Envelope {
        kind: alert.event_type(),
        timestamp: rfc3339(SystemTime::now()),
        data: alert,
    })
    .expect("alert serialises");
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result = post(ep, &msg_id, &body).await;
        m.stage_seconds
            .with_label_values(&[stage::DELIVER])
            .observe(started.elapsed().as_secs_f64());
        let (label, retry, detail) = match &result {
            Ok(s) if s.is_success() => ("2xx", false, String::new()),
            Ok(s) if s.is_client_error() => {
                // the receiver refuses this request; only timeouts and throttling are worth a retry
                let again = *s == reqwest::StatusCode::REQUEST_TIMEOUT
                    || *s == reqwest::StatusCode::TOO_MANY_REQUESTS;
                ("4xx", again, format!("HTTP {s}"))
            }
            Ok(s) => ("5xx", true, format!("HTTP {s}")),
            Err(e) => ("error", true, e.to_string()),
        };
        m.webhook_attempts.with_label_values(&[label]).inc();
        if label == "2xx" {
            let latency = alert.arrival.map(|a| a.elapsed());
            if let Some(l) = latency {
                m.alert_latency.observe(l.as_secs_f64());
            }
            m.alerts_sent.inc();
            info!(
                alert_id = %alert.alert_id,
                stream = %alert.stream_id,
                endpoint = %endpoint,
                attempts = attempt,
                latency_ms = latency.map(|l| l.as_millis() as u64),
                "alert delivered"
            );
            return Delivery {
                alert_id: alert.alert_id.clone(),
                endpoint,
                ok: true,
                attempts: attempt,
                latency,
            };
        }
        if !retry || attempt >= ep.spec.max_attempts {
            m.alerts_failed.inc();
            warn!(alert_id = %alert.alert_id, endpoint = %endpoint, attempts = attempt, error = %detail, "alert delivery failed");
            return Delivery {
                alert_id: alert.alert_id.clone(),
                endpoint,
                ok: false,
                attempts: attempt,
                latency: None,
            };
        }
        let delay = backoff_delay(
            attempt - 1,
            Duration::from_millis(500),
            Duration::from_secs(10),
        );
        warn!(alert_id = %alert.alert_id, endpoint = %endpoint, attempt, error = %detail, "alert delivery attempt failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

async fn post(
    ep: &Endpoint,
    msg_id: &str,
    body: &str,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let signature = ep
        .signer
        .sign(msg_id, ts, body.as_bytes())
        .expect("UTF-8 body signs");
    let resp = ep
        .client
        .post(ep.spec.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.without_url())?;
    Ok(resp.status())
}
