//! Any store, measured: every call's latency by operation, its failures, and which calls write.
//! Wrapping the port once keeps the counts true for every backend and every caller (controllers
//! and the redeem API alike), where counting at call sites drifts.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use jiff::Timestamp;

use super::{StoreError, UserStore};
use crate::metrics::{Metrics, StoreLabels};
use crate::plan::records::{
    Assignment, Grant, GroupRecord, InvitationRecord, RedeemRefusal, Redeemed, RoleRecord,
    TenantRecord, UserFields, UserRecord,
};
use crate::token::TokenHash;

/// A store whose calls are recorded in [`Metrics`].
pub struct Measured {
    inner: Arc<dyn UserStore>,
    metrics: Arc<Metrics>,
}

impl Measured {
    /// Measure `inner`.
    pub fn wrap(inner: Arc<dyn UserStore>, metrics: Arc<Metrics>) -> Arc<dyn UserStore> {
        Arc::new(Self { inner, metrics })
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
impl UserStore for Measured {
    async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", false, self.inner.ping()).await
    }
    async fn tenant(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.call("tenant", false, self.inner.tenant(key)).await
    }
    async fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.call("put_tenant", true, self.inner.put_tenant(tenant))
            .await
    }
    async fn user_by_external_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.call(
            "user_by_external_id",
            false,
            self.inner.user_by_external_id(id),
        )
        .await
    }
    async fn create_user(&self, fields: &UserFields) -> Result<UserRecord, StoreError> {
        self.call("create_user", true, self.inner.create_user(fields))
            .await
    }
    async fn update_user(&self, id: &str, fields: &UserFields) -> Result<UserRecord, StoreError> {
        self.call("update_user", true, self.inner.update_user(id, fields))
            .await
    }
    async fn users_of_tenant(&self, tenant: &str) -> Result<Vec<UserRecord>, StoreError> {
        self.call("users_of_tenant", false, self.inner.users_of_tenant(tenant))
            .await
    }
    async fn user_by_email(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.call(
            "user_by_email",
            false,
            self.inner.user_by_email(tenant, email),
        )
        .await
    }
    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        self.call("delete_user", true, self.inner.delete_user(id))
            .await
    }
    async fn delete_tenant(&self, key: &str) -> Result<(), StoreError> {
        self.call("delete_tenant", true, self.inner.delete_tenant(key))
            .await
    }
    async fn remove_assignment(&self, binding: &str) -> Result<(), StoreError> {
        self.call(
            "remove_assignment",
            true,
            self.inner.remove_assignment(binding),
        )
        .await
    }
    async fn record_offboarding(&self, tenant: &str, at: Timestamp) -> Result<(), StoreError> {
        self.call(
            "record_offboarding",
            true,
            self.inner.record_offboarding(tenant, at),
        )
        .await
    }
    async fn offboardings_since(&self, tenant: &str, since: Timestamp) -> Result<u64, StoreError> {
        self.call(
            "offboardings_since",
            false,
            self.inner.offboardings_since(tenant, since),
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
        self.call("release", false, self.inner.release(tenant, value, at))
            .await
    }
    async fn set_active(&self, id: &str, active: bool, now: Timestamp) -> Result<(), StoreError> {
        self.call("set_active", true, self.inner.set_active(id, active, now))
            .await
    }
    async fn latest_invitation(
        &self,
        user_id: &str,
    ) -> Result<Option<InvitationRecord>, StoreError> {
        self.call(
            "latest_invitation",
            false,
            self.inner.latest_invitation(user_id),
        )
        .await
    }
    async fn record_invitation(&self, invitation: &InvitationRecord) -> Result<(), StoreError> {
        self.call(
            "record_invitation",
            true,
            self.inner.record_invitation(invitation),
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
        self.call(
            "rotate_unsent",
            true,
            self.inner
                .rotate_unsent(user_id, attempt, new_hash, expires_at),
        )
        .await
    }
    async fn mark_sent(&self, hash: &TokenHash, at: Timestamp) -> Result<(), StoreError> {
        self.call("mark_sent", true, self.inner.mark_sent(hash, at))
            .await
    }
    async fn revoke_open(&self, user_id: &str, at: Timestamp) -> Result<u64, StoreError> {
        self.call("revoke_open", true, self.inner.revoke_open(user_id, at))
            .await
    }
    async fn group(&self, key: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.call("group", false, self.inner.group(key)).await
    }
    async fn put_group(&self, group: &GroupRecord) -> Result<(), StoreError> {
        self.call("put_group", true, self.inner.put_group(group))
            .await
    }
    async fn delete_group(&self, key: &str) -> Result<(), StoreError> {
        self.call("delete_group", true, self.inner.delete_group(key))
            .await
    }
    async fn roles(&self, tenant: &str) -> Result<Vec<RoleRecord>, StoreError> {
        self.call("roles", false, self.inner.roles(tenant)).await
    }
    async fn put_roles(&self, tenant: &str, roles: &[RoleRecord]) -> Result<(), StoreError> {
        self.call("put_roles", true, self.inner.put_roles(tenant, roles))
            .await
    }
    async fn assignments(&self, user_id: &str) -> Result<Vec<Assignment>, StoreError> {
        self.call("assignments", false, self.inner.assignments(user_id))
            .await
    }
    async fn set_assignments(
        &self,
        user_id: &str,
        assignments: &[Assignment],
    ) -> Result<(), StoreError> {
        self.call(
            "set_assignments",
            true,
            self.inner.set_assignments(user_id, assignments),
        )
        .await
    }
    async fn grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        self.call("grants", false, self.inner.grants(user_id)).await
    }
    async fn redeem(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Result<Redeemed, RedeemRefusal>, StoreError> {
        self.call("redeem", true, self.inner.redeem(hash, now))
            .await
    }
}
