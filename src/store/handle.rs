//! The store as the rest of usher holds it: connected in the background, retried with backoff
//! while it is down (so `/readyz` says why instead of the process crash-looping), and every call
//! measured: latency by operation, failures, and which calls write. Wrapping the port once keeps
//! the counts true for every backend and every caller, where counting at call sites drifts.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;

use super::{StoreConfig, StoreError, UserStore};
use crate::metrics::{Metrics, StoreLabels};
use crate::plan::records::{
    Assignment, Grant, GroupRecord, InvitationRecord, RedeemRefusal, Redeemed, RoleRecord,
    TenantRecord, UserFields, UserRecord,
};
use crate::token::TokenHash;

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

    fn inner(&self) -> Result<Arc<dyn UserStore>, StoreError> {
        self.inner.get().cloned().ok_or_else(|| {
            let why = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            StoreError::Backend(format!("not connected yet ({why})"))
        })
    }

    async fn call<T>(
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

#[async_trait]
impl UserStore for StoreHandle {
    async fn ping(&self) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("ping", false, store.ping()).await
    }
    async fn tenant(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
        let store = self.inner()?;
        self.call("tenant", false, store.tenant(key)).await
    }
    async fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("put_tenant", true, store.put_tenant(tenant))
            .await
    }
    async fn user_by_external_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let store = self.inner()?;
        self.call("user_by_external_id", false, store.user_by_external_id(id))
            .await
    }
    async fn create_user(&self, fields: &UserFields) -> Result<UserRecord, StoreError> {
        let store = self.inner()?;
        self.call("create_user", true, store.create_user(fields))
            .await
    }
    async fn update_user(&self, id: &str, fields: &UserFields) -> Result<UserRecord, StoreError> {
        let store = self.inner()?;
        self.call("update_user", true, store.update_user(id, fields))
            .await
    }
    async fn users_of_tenant(&self, tenant: &str) -> Result<Vec<UserRecord>, StoreError> {
        let store = self.inner()?;
        self.call("users_of_tenant", false, store.users_of_tenant(tenant))
            .await
    }
    async fn user_by_email(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let store = self.inner()?;
        self.call("user_by_email", false, store.user_by_email(tenant, email))
            .await
    }
    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("delete_user", true, store.delete_user(id)).await
    }
    async fn delete_tenant(&self, key: &str) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("delete_tenant", true, store.delete_tenant(key))
            .await
    }
    async fn remove_assignment(&self, binding: &str) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("remove_assignment", true, store.remove_assignment(binding))
            .await
    }
    async fn record_offboarding(&self, tenant: &str, at: Timestamp) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call(
            "record_offboarding",
            true,
            store.record_offboarding(tenant, at),
        )
        .await
    }
    async fn offboardings_since(&self, tenant: &str, since: Timestamp) -> Result<u64, StoreError> {
        let store = self.inner()?;
        self.call(
            "offboardings_since",
            false,
            store.offboardings_since(tenant, since),
        )
        .await
    }
    async fn release(
        &self,
        tenant: &str,
        value: &str,
        at: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        // Writes only when the value is new; counted as a read, as it usually is one.
        let store = self.inner()?;
        self.call("release", false, store.release(tenant, value, at))
            .await
    }
    async fn set_active(&self, id: &str, active: bool, now: Timestamp) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("set_active", true, store.set_active(id, active, now))
            .await
    }
    async fn latest_invitation(
        &self,
        user_id: &str,
    ) -> Result<Option<InvitationRecord>, StoreError> {
        let store = self.inner()?;
        self.call("latest_invitation", false, store.latest_invitation(user_id))
            .await
    }
    async fn record_invitation(&self, invitation: &InvitationRecord) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call(
            "record_invitation",
            true,
            store.record_invitation(invitation),
        )
        .await
    }
    async fn rotate_unsent(
        &self,
        user_id: &str,
        attempt: i32,
        new_hash: &TokenHash,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let store = self.inner()?;
        self.call(
            "rotate_unsent",
            true,
            store.rotate_unsent(user_id, attempt, new_hash, expires_at),
        )
        .await
    }
    async fn mark_sent(&self, hash: &TokenHash, at: Timestamp) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("mark_sent", true, store.mark_sent(hash, at))
            .await
    }
    async fn revoke_open(&self, user_id: &str, at: Timestamp) -> Result<u64, StoreError> {
        let store = self.inner()?;
        self.call("revoke_open", true, store.revoke_open(user_id, at))
            .await
    }
    async fn group(&self, key: &str) -> Result<Option<GroupRecord>, StoreError> {
        let store = self.inner()?;
        self.call("group", false, store.group(key)).await
    }
    async fn put_group(&self, group: &GroupRecord) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("put_group", true, store.put_group(group)).await
    }
    async fn delete_group(&self, key: &str) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("delete_group", true, store.delete_group(key))
            .await
    }
    async fn roles(&self, tenant: &str) -> Result<Vec<RoleRecord>, StoreError> {
        let store = self.inner()?;
        self.call("roles", false, store.roles(tenant)).await
    }
    async fn put_roles(&self, tenant: &str, roles: &[RoleRecord]) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call("put_roles", true, store.put_roles(tenant, roles))
            .await
    }
    async fn assignments(&self, user_id: &str) -> Result<Vec<Assignment>, StoreError> {
        let store = self.inner()?;
        self.call("assignments", false, store.assignments(user_id))
            .await
    }
    async fn set_assignments(
        &self,
        user_id: &str,
        assignments: &[Assignment],
    ) -> Result<(), StoreError> {
        let store = self.inner()?;
        self.call(
            "set_assignments",
            true,
            store.set_assignments(user_id, assignments),
        )
        .await
    }
    async fn grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        let store = self.inner()?;
        self.call("grants", false, store.grants(user_id)).await
    }
    async fn redeem(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Result<Redeemed, RedeemRefusal>, StoreError> {
        let store = self.inner()?;
        self.call("redeem", true, store.redeem(hash, now)).await
    }
}
