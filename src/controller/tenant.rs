//! Tenant: write it to the store, and show its people by phase and any deletions the guard
//! holds ([`tenant::report`]); when it is deleted, offboard its people through the guard
//! ([`tenant::cleanup`]).

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::guard::Budget;
use super::tenant_store;
use super::{Context, Error, apply_status, publish_note, reconcile_with};
use crate::crd::{SystemUser, Tenant};
use crate::plan::offboarding::{self, Step};
use crate::plan::records::{RoleRecord, TenantRecord};
use crate::plan::tenant::{self, Cleanup};
use crate::store::UserStore;

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
    let store = tenant_store::store_of(ctx, &ns, &tenant.name_any()).await?;
    let _lock = ctx.offboard_lock.lock().await;
    let mut budget = Budget::read(&*store, tenant, &ns).await?;
    let requested = tenant.metadata.deletion_timestamp.as_ref().map(|t| t.0);
    let mut offboarded = 0;
    let mut held = 0;
    for account in store.users_of_tenant(&key).await? {
        match budget.step(&*store, &account, requested).await? {
            Step::Hold => held += 1,
            Step::Offboard { counted } => {
                super::system_user::offboard_account(&*store, &account, budget.policy).await?;
                if counted {
                    budget.spend(&*store).await?;
                    offboarded += 1;
                }
            }
        }
    }
    let now = Timestamp::now();
    match tenant::cleanup(tenant, held, offboarded, &budget.plan, budget.policy, now) {
        Cleanup::Held {
            status,
            note,
            message,
        } => {
            ctx.metrics.set_offboardings_held(&key, held);
            apply_status(ctx, tenant, tenant.status.as_ref(), &status).await?;
            if let Some(note) = note {
                publish_note(ctx, tenant, note).await;
            }
            // An error, not Ok: the finalizer helper releases the object after any Ok.
            Err(Error::Throttled(message))
        }
        Cleanup::Done { note } => {
            store.delete_tenant(&key).await?;
            ctx.metrics.forget_tenant(&key);
            ctx.stores.detach(&key);
            publish_note(ctx, tenant, note).await;
            Ok(Action::await_change())
        }
    }
}

async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let ns = tenant.namespace().ok_or(Error::Malformed("no namespace"))?;
    let name = tenant.name_any();
    let desired = TenantRecord::desired(tenant, &ns, &name);
    // The credential is read again at each reconcile: a rotated one takes effect here.
    let written = async {
        tenant_store::attach(ctx, tenant).await?;
        let store = tenant_store::store_of(ctx, &ns, &name).await?;
        write(&*store, tenant, &desired).await?;
        Ok::<_, Error>(store)
    }
    .await;
    let store = match written {
        Ok(store) => store,
        // Only a tenant's own store says so on the Tenant: the operator's shows in /readyz.
        Err(e) if tenant.spec.store.is_some() => {
            let status = tenant::store_unavailable(tenant, &e.to_string(), Timestamp::now());
            apply_status(ctx, tenant, tenant.status.as_ref(), &status).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let members = members_of(ctx, &ns, &name);
    let members: Vec<&SystemUser> = members.iter().map(|u| &**u).collect();
    let now = Timestamp::now();
    if let Some(value) = tenant.annotations().get(offboarding::ALLOW_ANNOTATION) {
        store.release(&desired.key, value, now).await?;
    }
    // The hour's count matters only while someone's deletion may be held.
    let done = if tenant::deleting(&members) > 0 {
        store
            .offboardings_since(&desired.key, now - offboarding::WINDOW)
            .await?
    } else {
        0
    };
    let report = tenant::report(tenant, &members, done, now, ctx.settings.horizon());
    if let Some(people) = &report.status.users {
        ctx.metrics.set_tenant_people(&desired.key, people);
    }
    ctx.metrics.set_offboardings_held(&desired.key, report.held);
    apply_status(ctx, tenant, tenant.status.as_ref(), &report.status).await?;
    if let Some(note) = report.note {
        publish_note(ctx, tenant, note).await;
    }
    Ok(super::after(report.requeue, ctx.settings.horizon()))
}

/// The census: a Tenant's people counted again ([`tenant::recount`]) and the count written
/// into its status, between the Tenant's own reconciles, so that a bulk import's many phase
/// changes neither hold back nor multiply those. Only `status.users` is applied, under a field
/// manager of its own ([`CENSUS_MANAGER`]): the conditions stay the Tenant reconcile's, whatever
/// the census read.
pub(super) async fn recount(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = count_again(&tenant, &ctx).await;
    // Counted apart from the Tenant's reconciles: `usher_reconciles_total{kind="TenantCensus"}`.
    super::observe(&ctx, "TenantCensus", &*tenant, started, result).await
}

async fn count_again(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    // Not on a cache still being filled (at start): a partial count is a wrong count.
    if !ctx.caches_ready() {
        return Ok(Action::requeue(std::time::Duration::from_millis(200)));
    }
    let ns = tenant.namespace().ok_or(Error::Malformed("no namespace"))?;
    let name = tenant.name_any();
    let members = members_of(ctx, &ns, &name);
    let members: Vec<&SystemUser> = members.iter().map(|u| &**u).collect();
    let Some(people) = tenant::recount(tenant, &members) else {
        return Ok(Action::await_change());
    };
    let patch = serde_json::json!({
        "apiVersion": <Tenant as kube::Resource>::api_version(&()),
        "kind": "Tenant",
        "status": {"users": people},
    });
    let api: kube::Api<Tenant> = kube::Api::namespaced(ctx.client.clone(), &ns);
    match api
        .patch_status(
            &name,
            &kube::api::PatchParams::apply(CENSUS_MANAGER).force(),
            &kube::api::Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {
            ctx.metrics.api_writes.inc();
            let key = TenantRecord::desired(tenant, &ns, &name).key;
            ctx.metrics.set_tenant_people(&key, &people);
            Ok(Action::await_change())
        }
        // Gone meanwhile: nothing to count.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// The field manager of the census's writes (`status.users` only).
pub const CENSUS_MANAGER: &str = "usher-census";

/// The SystemUsers of tenant `name` in namespace `ns`, from the cache.
fn members_of(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<SystemUser>> {
    ctx.by_ns
        .users
        .list(ns)
        .into_iter()
        .filter(|u| u.spec.tenant_ref.name == name)
        .collect()
}

/// The tenant and its role catalogue in its store, written only where they differ.
async fn write(
    store: &dyn UserStore,
    tenant: &Tenant,
    desired: &TenantRecord,
) -> Result<(), Error> {
    if store.tenant(&desired.key).await?.as_ref() != Some(desired) {
        store.put_tenant(desired).await?;
    }
    let mut roles: Vec<RoleRecord> = tenant.catalogue().iter().map(RoleRecord::from).collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    if store.roles(&desired.key).await? != roles {
        store.put_roles(&desired.key, &roles).await?;
    }
    Ok(())
}
