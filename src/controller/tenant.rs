//! Tenant: write it to the store and count its users by phase.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::guard::{self, Budget};
use super::{Context, Error, apply_status, publish, reconcile_with};
use crate::crd::Tenant;
use crate::plan::offboarding;
use crate::plan::records::{RoleRecord, TenantRecord};
use crate::plan::tenant;

use kube::runtime::events::EventType;

use crate::plan::tenant::THROTTLED;

#[tracing::instrument(skip_all, fields(kind = "Tenant", namespace = tenant.namespace().unwrap_or_default(), object = tenant.name_any()))]
pub(super) async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with(
        "Tenant",
        tenant,
        &ctx,
        |o| {
            let ctx = &ctx;
            async move { apply(&o, ctx).await }
        },
        |o| {
            let ctx = &ctx;
            async move { cleanup(&o, ctx).await }
        },
    )
    .await
}

/// The tenant is gone from git (or its namespace is): offboard its people under its policy and
/// within its offboarding budget, like any other deletion, then remove its groups, catalogue
/// and itself from the store. While the budget holds people back, the Tenant stays Terminating
/// with `OffboardingThrottled` until the release annotation.
async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let ns = tenant.namespace().ok_or(Error::Malformed("no namespace"))?;
    let key = TenantRecord::desired(tenant, &ns, &tenant.name_any()).key;
    let _lock = ctx.offboard_lock.lock().await;
    let mut budget = Budget::read(ctx, tenant, &ns).await?;
    let policy = budget.policy;
    let requested = tenant.metadata.deletion_timestamp.as_ref().map(|t| t.0);
    let mut offboarded = 0;
    let mut held = 0;
    for account in ctx.store.users_of_tenant(&key).await? {
        let counted = guard::counts(ctx, &account, policy).await?;
        if counted && !budget.allows(requested) {
            held += 1;
            continue;
        }
        super::system_user::offboard_account(ctx, &account, policy).await?;
        if counted {
            budget.spend(ctx).await?;
            offboarded += 1;
        }
    }
    if held > 0 {
        let condition = tenant::throttled(
            tenant,
            "offboardings of this deleted tenant's people",
            held,
            budget.done,
            budget.max,
            Timestamp::now(),
        );
        let message = condition.message.clone();
        let mut status = tenant.status.clone().unwrap_or_default();
        let was_throttled = tenant::was_throttled(tenant).is_some();
        status.conditions.retain(|c| c.type_ != THROTTLED);
        status.conditions.push(condition);
        apply_status(ctx, tenant, tenant.status.as_ref(), &status).await?;
        if !was_throttled {
            publish(ctx, tenant, EventType::Warning, THROTTLED, message.clone()).await;
        }
        // An error, not Ok: the finalizer helper releases the object after any Ok.
        return Err(Error::Throttled(message));
    }
    ctx.store.delete_tenant(&key).await?;
    publish(
        ctx,
        tenant,
        EventType::Normal,
        "Offboarded",
        format!("tenant removed from the store; {offboarded} people offboarded ({policy:?})"),
    )
    .await;
    Ok(Action::await_change())
}

async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let ns = tenant.namespace().ok_or(Error::Malformed("no namespace"))?;
    let name = tenant.name_any();
    let desired = TenantRecord::desired(tenant, &ns, &name);
    let stored = ctx.store.tenant(&desired.key).await?;
    if stored.as_ref() != Some(&desired) {
        ctx.store.put_tenant(&desired).await?;
    }
    let mut roles: Vec<RoleRecord> = tenant.catalogue().iter().map(RoleRecord::from).collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    if ctx.store.roles(&desired.key).await? != roles {
        ctx.store.put_roles(&desired.key, &roles).await?;
    }
    let members: Vec<_> = ctx
        .by_ns
        .users
        .list(&ns)
        .into_iter()
        .filter(|u| u.spec.tenant_ref.name == name)
        .collect();
    let phases = members
        .iter()
        .map(|u| u.status.as_ref().and_then(|s| s.phase));
    let now = Timestamp::now();
    let mut status = tenant::status(tenant, tenant::count(phases), now);
    if let Some(value) = tenant.annotations().get(offboarding::ALLOW_ANNOTATION) {
        ctx.store.release(&desired.key, value, now).await?;
    }
    // Deletions held by the guard: people being deleted while the hour's budget is spent.
    let held = members
        .iter()
        .filter(|u| u.metadata.deletion_timestamp.is_some())
        .count();
    let max = tenant
        .spec
        .offboarding
        .clone()
        .unwrap_or_default()
        .max_per_hour;
    let done = if held > 0 {
        ctx.store
            .offboardings_since(&desired.key, now - offboarding::WINDOW)
            .await?
    } else {
        0
    };
    let throttled = tenant::holds_back(held, done, max);
    if throttled {
        status
            .conditions
            .push(tenant::throttled(tenant, "deletions", held, done, max, now));
    }
    let was_throttled = tenant::was_throttled(tenant).is_some();
    apply_status(ctx, tenant, tenant.status.as_ref(), &status).await?;
    if throttled && !was_throttled {
        let message = status
            .conditions
            .last()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(ctx, tenant, EventType::Warning, THROTTLED, message).await;
    }
    if throttled {
        // Held deletions are retried by their own requeues; look again soon to clear this.
        return Ok(Action::requeue(std::time::Duration::from_secs(30)));
    }
    Ok(Action::requeue(ctx.settings.resync))
}
