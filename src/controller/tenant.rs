//! Tenant: write it to the store and count its users by phase.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::{Context, Error, apply_status, finalized, observe, publish};
use crate::crd::Tenant;
use crate::plan::records::{RoleRecord, TenantRecord};
use crate::plan::tenant;
use kube::runtime::events::EventType;

#[tracing::instrument(skip_all, fields(kind = "Tenant", namespace = tenant.namespace().unwrap_or_default(), name = tenant.name_any()))]
pub(super) async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    if !ctx.caches_ready() {
        return Ok(Action::requeue(std::time::Duration::from_millis(200)));
    }
    let result = finalized(
        &ctx,
        tenant.clone(),
        |t| {
            let ctx = &ctx;
            async move { apply(&t, ctx).await }
        },
        |t| {
            let ctx = &ctx;
            async move { cleanup(&t, ctx).await }
        },
    )
    .await;
    observe(&ctx, "Tenant", &*tenant, started, result).await
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
    ctx.metrics.store_writes.inc();
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
        ctx.metrics.store_writes.inc();
    }
    let mut roles: Vec<RoleRecord> = tenant.catalogue().iter().map(RoleRecord::from).collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    if ctx.store.roles(&desired.key).await? != roles {
        ctx.store.put_roles(&desired.key, &roles).await?;
        ctx.metrics.store_writes.inc();
    }
    let phases = ctx
        .users
        .state()
        .into_iter()
        .filter(|u| u.namespace().as_deref() == Some(&ns) && u.spec.tenant_ref.name == name)
        .map(|u| u.status.as_ref().and_then(|s| s.phase));
    let status = tenant::status(tenant, tenant::count(phases), Timestamp::now());
    apply_status(ctx, tenant, tenant.status.as_ref(), &status).await?;
    Ok(Action::requeue(ctx.settings.resync))
}
