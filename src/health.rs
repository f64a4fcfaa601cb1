//! Liveness of the pipeline's own threads, for systemd's watchdog.
//!
//! Every long-running thread (decoders, hash threads, the decision thread) beats at least
//! once a second while it is healthy, whether or not any media arrives: their loops wake on
//! timeouts. The watchdog is fed only while every beat is recent, so a stuck thread gets the
//! service restarted, while an upstream outage (no streams, no frames) never does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Default)]
pub struct Heartbeats {
    threads: Mutex<Vec<(String, Beat)>>,
}

/// A thread's handle: call [`Beat::beat`] from its loop.
#[derive(Clone)]
pub struct Beat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Beat {
    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

impl Heartbeats {
    /// Registers a thread (it counts as alive from now).
    pub fn register(&self, name: impl Into<String>) -> Beat {
        let beat = Beat {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        self.threads.lock().push((name.into(), beat.clone()));
        beat
    }

    /// Threads whose last beat is older than `max_age`.
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        self.threads
            .lock()
            .iter()
            .filter(|(_, b)| b.age() > max_age)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Forgets threads that ended on purpose (at shutdown).
    pub fn clear(&self) {
        self.threads.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_beating_is_reported() {
        let h = Heartbeats::default();
        let a = h.register("a");
        let b = h.register("b");
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert_eq!(h.stale(Duration::from_millis(20)), vec!["b".to_string()]);
        b.beat();
        assert!(h.stale(Duration::from_millis(20)).is_empty());
    }
}
