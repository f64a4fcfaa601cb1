//! systemd integration: readiness, reload and stop notifications, and the watchdog.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::health::Heartbeats;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!("cannot notify systemd: {e}");
    }
}

/// Config, banks and the pipeline threads are up (streams configured, not necessarily connected).
pub fn notify_ready() {
    send(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// A reload starts; [`notify_ready`] ends it. systemd 252 wants the monotonic time with it
/// only for `Type=notify-reload`, which it does not have; it is sent anyway for newer ones.
pub fn notify_reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    send(&states);
}

/// Asks systemd for more start-up time (TensorRT builds its engines on the first start, for
/// minutes): each call extends the start timeout to `by` from now.
pub fn extend_start_timeout(by: Duration, status: &str) {
    send(&[
        NotifyState::ExtendTimeoutUsec(by.as_micros().min(u32::MAX as u128) as u32),
        NotifyState::Status(status),
    ]);
}

pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Feeds systemd's watchdog (when `WatchdogSec=` is set) at half its period, but only while
/// every pipeline thread beats; a stuck thread stops the feeding and systemd restarts the
/// service. Incoming media plays no part: an upstream outage never restarts the box.
pub async fn watchdog(health: Arc<Heartbeats>, cancel: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let period = Duration::from_micros(usec);
    // a thread beats at least once a second; allow for a slow second
    let max_age = (period / 2).max(Duration::from_secs(3));
    debug!(period_secs = period.as_secs_f64(), "systemd watchdog on");
    let mut starved = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period / 2) => {}
        }
        let stale = health.stale(max_age);
        if stale.is_empty() {
            send(&[NotifyState::Watchdog]);
            starved = false;
        } else if !starved {
            error!(threads = ?stale, "pipeline threads stopped answering; not feeding the systemd watchdog");
            starved = true;
        }
    }
}
