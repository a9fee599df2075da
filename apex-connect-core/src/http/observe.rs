//! Process-wide observers of what every HTTP client in the process does, for metrics.
//!
//! Connectors build their own [`HttpClient`](super::HttpClient)s (a host never sees them), so
//! a host that exports metrics registers an observer here instead: the rate gates of every
//! client report each admission's wait to it. Observers are held weakly: dropping the last
//! `Arc` of one unregisters it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// Receives the waits of every rate gate in the process.
pub trait GateWaitObserver: Send + Sync {
    /// A request was admitted by a rate gate after waiting `waited` (zero: at once).
    fn gate_wait(&self, waited: Duration);
}

static OBSERVERS: RwLock<Vec<Weak<dyn GateWaitObserver>>> = RwLock::new(Vec::new());
static ANY: AtomicBool = AtomicBool::new(false);

/// Registers `observer` for the rest of its life (it is held weakly).
pub fn observe_gate_waits(observer: &Arc<dyn GateWaitObserver>) {
    let mut list = OBSERVERS.write().unwrap_or_else(|p| p.into_inner());
    list.retain(|w| w.strong_count() > 0);
    list.push(Arc::downgrade(observer));
    ANY.store(true, Ordering::Release);
}

/// Reports one admission to the live observers (a load of one flag when there are none).
pub(crate) fn gate_waited(waited: Duration) {
    if !ANY.load(Ordering::Acquire) {
        return;
    }
    let list = OBSERVERS.read().unwrap_or_else(|p| p.into_inner());
    for o in list.iter().filter_map(Weak::upgrade) {
        o.gate_wait(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Seen(Mutex<Vec<Duration>>);

    impl GateWaitObserver for Seen {
        fn gate_wait(&self, waited: Duration) {
            self.0.lock().unwrap().push(waited);
        }
    }

    #[test]
    fn observers_see_waits_until_dropped() {
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        let o: Arc<dyn GateWaitObserver> = seen.clone();
        observe_gate_waits(&o);
        gate_waited(Duration::from_millis(3));
        assert!(seen.0.lock().unwrap().contains(&Duration::from_millis(3)));
        drop(o);
        let weak = Arc::downgrade(&seen);
        drop(seen);
        assert!(weak.upgrade().is_none());
        gate_waited(Duration::from_millis(4)); // no live observer: nothing to call
    }
}
