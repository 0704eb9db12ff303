//! Tenant: write it to the store and count its users by phase.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::{Context, Error, apply_status, publish, reconcile_with};
use crate::crd::Tenant;
use crate::plan::condition::ready;
use crate::plan::offboarding;
use crate::plan::records::{RoleRecord, TenantRecord};
use crate::plan::tenant;

/// The Tenant condition shown while the mass-offboarding guard holds deletions back.
const THROTTLED: &str = "OffboardingThrottled";
use kube::runtime::events::EventType;

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

/// The tenant is gone from git: offboard all its people under its policy, then remove its
/// groups, catalogue and itself from the store.
async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let ns = tenant.namespace().ok_or(Error::Malformed("no namespace"))?;
    let key = TenantRecord::desired(tenant, &ns, &tenant.name_any()).key;
    let policy = tenant.spec.offboarding.clone().unwrap_or_default().policy;
    let accounts = ctx.store.users_of_tenant(&key).await?;
    for account in &accounts {
        super::system_user::offboard_account(ctx, account, policy).await?;
    }
    ctx.store.delete_tenant(&key).await?;
    publish(
        ctx,
        tenant,
        EventType::Normal,
        "Offboarded",
        format!(
            "tenant removed from the store; {} people offboarded ({policy:?})",
            accounts.len()
        ),
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
    let throttled = held > 0 && done >= u64::try_from(max).unwrap_or(0);
    if throttled {
        let previous = tenant
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let mut c = ready(
            true,
            "MaxPerHourReached",
            &format!(
                "{held} deletions wait: {done} people were offboarded in the last hour (maxPerHour {max}); set the annotation {} to a new value to release them",
                offboarding::ALLOW_ANNOTATION
            ),
            tenant.metadata.generation,
            &[],
            now,
        );
        c.type_ = THROTTLED.into();
        if let Some(p) = previous
            .iter()
            .find(|p| p.type_ == THROTTLED && p.status == "True")
        {
            c.last_transition_time = p.last_transition_time.clone();
        }
        status.conditions.push(c);
    }
    let was_throttled = tenant.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == THROTTLED && c.status == "True")
    });
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
