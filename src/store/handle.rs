//! The store as the rest of usher holds it: connected in the background, retried with backoff
//! while it is down (so `/readyz` says why instead of the process crash-looping), and every call
//! measured: latency by operation, failures, and which calls write. Wrapping the port once keeps
//! the counts true for every backend and every caller, where counting at call sites drifts.
//!
//! The wrapping itself — one metered method per port method, each marked read or write — is
//! generated where the ports are declared (`port.rs`), so it cannot drift from them either; this
//! file holds the connection and `StoreHandle::call`, which does the measuring.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{StoreConfig, StoreError, UserStore};
use crate::metrics::{Metrics, StoreLabels};

/// A store that connects in the background and records its calls in [`Metrics`].
pub struct StoreHandle {
    inner: OnceLock<Arc<dyn UserStore>>,
    /// Why it is not connected yet.
    waiting: Mutex<String>,
    connected: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl StoreHandle {
    /// Measure a store that is already open.
    pub fn ready(inner: Arc<dyn UserStore>, metrics: Arc<Metrics>) -> Arc<Self> {
        let handle = Self::empty(metrics);
        let _ = handle.inner.set(inner);
        Arc::new(handle)
    }

    /// Connect to `config` in the background, retrying every 1 s, 2 s, 4 s … up to 30 s until
    /// it answers. Calls fail with the last connection error meanwhile.
    pub fn connect(config: StoreConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let handle = Arc::new(Self::empty(metrics));
        let h = handle.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                match config.open().await {
                    Ok(store) => {
                        let _ = h.inner.set(store);
                        h.connected.notify_waiters();
                        tracing::info!("user store connected");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "user store unreachable");
                        *h.waiting.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        handle
    }

    fn empty(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: OnceLock::new(),
            waiting: Mutex::new("connecting".into()),
            connected: tokio::sync::Notify::new(),
            metrics,
        }
    }

    /// Wait until the store is connected.
    pub async fn connected(&self) {
        loop {
            let notified = self.connected.notified();
            if self.inner.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// The connected store; [`StoreError::Backend`] with the last connection error until then.
    pub(super) fn inner(&self) -> Result<Arc<dyn UserStore>, StoreError> {
        self.inner.get().cloned().ok_or_else(|| {
            let why = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            StoreError::Backend(format!("not connected yet ({why})"))
        })
    }

    /// Await one call of the store, recorded as operation `op`: its latency in seconds into
    /// `store_seconds`, a failure into `store_errors`, a success into `store_writes` when
    /// `writes`. The result is returned as it is. The ports' metered implementations (declared
    /// with the ports, in `port.rs`) are the callers, one per method.
    pub(super) async fn call<T>(
        &self,
        op: &'static str,
        writes: bool,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = fut.await;
        self.metrics
            .store_seconds
            .get_or_create(&StoreLabels { op })
            .observe(start.elapsed().as_secs_f64());
        match &result {
            Err(_) => self.metrics.store_errors.inc(),
            Ok(_) if writes => self.metrics.store_writes.inc(),
            Ok(_) => 0,
        };
        result
    }
}
