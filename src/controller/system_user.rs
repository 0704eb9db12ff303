//! SystemUser: read (caches and store) → decide ([`plan::decide`]) → execute (the store writes,
//! and the invitation through [`super::invitations::Executor`]) → report ([`plan::report`]:
//! status and Events). Offboarding, when the person's file leaves git, goes through the
//! tenant's mass-offboarding guard.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::guard::Budget;
use super::invitations::{Executor, KubeSecrets, secret_name};
use super::snapshot::snapshot;
use super::tenant_store;
use super::{Context, Error, publish, publish_note, reconcile_with, replace_status};
use crate::crd::{OffboardingPolicy, SystemUser, Tenant};
use crate::plan::bindings::{assignments as assignments_of, bound_roles, next_expiry};
use crate::plan::offboarding::Step;
use crate::plan::records::{Assignment, InvitationRecord, ObjectKey, UserRecord, object_key};
use crate::plan::system_user as plan;
use crate::plan::world::peers;
use crate::store::{StoreError, UserStore};

#[tracing::instrument(skip_all, fields(kind = "SystemUser", namespace = user.namespace().unwrap_or_default(), object = user.name_any()))]
pub(super) async fn reconcile(user: Arc<SystemUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with(
        "SystemUser",
        user,
        &ctx,
        |o| {
            let ctx = &ctx;
            async move { apply(&o, ctx).await }
        },
        |o| {
            let ctx = &ctx;
            async move { offboard(&o, ctx).await }
        },
    )
    .await
}

/// One reconcile in four steps: read, decide ([`plan::decide`]), execute, report
/// ([`plan::report`]).
async fn apply(user: &SystemUser, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let read = match read(ctx, user).await {
        Err(e @ Error::TenantStore(_)) => {
            let (status, note) = plan::store_unavailable(user, &e.to_string(), now);
            replace_status(ctx, user, user.status.as_ref(), &status).await?;
            if let Some(note) = note {
                publish_note(ctx, user, note).await;
            }
            return Err(e);
        }
        read => read?,
    };
    let decision = plan::decide(user, &read.seen());
    let done = execute(ctx, user, read, &decision, now).await?;
    let report = plan::report(
        user,
        &decision,
        &done.outcome(),
        &secret_name(&user.name_any()),
        now,
        ctx.settings.horizon(),
    );
    show(ctx, user, &report).await?;
    match done.failure {
        // The status says what happened; the error drives the backoff.
        Some(e) => Err(e),
        None => Ok(super::after(report.requeue, ctx.settings.horizon())),
    }
}

/// What the caches and the store hold about one person: [`plan::Seen`], owned.
struct Read {
    /// The tenant's store, which everything below was read from.
    store: Arc<dyn UserStore>,
    tenant: Option<Arc<Tenant>>,
    peers: Vec<plan::Peer>,
    account: Option<UserRecord>,
    own: bool,
    latest: Option<InvitationRecord>,
    assignments: Vec<Assignment>,
    roles: Vec<String>,
    desired: Vec<Assignment>,
    expires: Option<Timestamp>,
}

impl Read {
    fn seen(&self) -> plan::Seen<'_> {
        plan::Seen {
            tenant: self.tenant.as_deref(),
            peers: &self.peers,
            account: self.account.as_ref(),
            own: self.own,
            latest: self.latest.as_ref(),
            assignments: &self.assignments,
            roles: self.roles.clone(),
            desired: self.desired.clone(),
            expires: self.expires,
        }
    }
}

async fn read(ctx: &Context, user: &SystemUser) -> Result<Read, Error> {
    let ns = user.namespace().ok_or(Error::Malformed("no namespace"))?;
    let me = user.name_any();
    let tenant = ctx
        .tenants
        .get(&kube::runtime::reflector::ObjectRef::new(&user.spec.tenant_ref.name).within(&ns));
    // Only people with the same email can be duplicates.
    let candidates = ctx
        .by_ns
        .users
        .with_key(&ns, &user.spec.email.to_lowercase());
    let peers = peers(user, candidates.iter().map(|u| &**u));
    let store = tenant_store::store_of(ctx, &ns, &user.spec.tenant_ref.name).await?;
    let mut account = store.user_by_external_id(&object_key(&ns, &me)).await?;
    let own = account.is_some();
    if let (None, Some(tenant)) = (&account, &tenant) {
        let tenant_key = object_key(&ns, &tenant.name_any());
        account = archived(ctx, &*store, user, &tenant_key).await?;
    }
    let latest = match &account {
        Some(a) => store.latest_invitation(&a.id).await?,
        None => None,
    };
    // A redemption committed between the two reads: read the account again rather than issue
    // a second invitation.
    if let Some(a) = account
        .as_ref()
        .filter(|a| plan::read_mid_redemption(a, latest.as_ref()))
    {
        account = store.user_by_external_id(&a.external_id).await?;
    }
    let assignments = match &account {
        Some(a) => store.assignments(&a.id).await?,
        None => Vec::new(),
    };
    // Roles: the Bound bindings of this person, decided for the namespace as a whole.
    let snap = snapshot(ctx, &ns, Some(&me), Timestamp::now());
    Ok(Read {
        roles: bound_roles(&me, &snap.bindings, &snap.verdicts),
        expires: next_expiry(&me, &snap.bindings, &snap.verdicts),
        desired: assignments_of(&ns, &me, &snap.bindings, &snap.verdicts),
        store,
        tenant,
        peers,
        account,
        own,
        latest,
        assignments,
    })
}

/// What carrying out a decision left: the account and invitation as the store now holds them.
#[derive(Default)]
struct Done {
    account: Option<UserRecord>,
    latest: Option<InvitationRecord>,
    refused: Option<String>,
    mail_failed: Option<String>,
    assigned: bool,
    unkept: Vec<String>,
    failure: Option<Error>,
}

impl Done {
    fn outcome(&self) -> plan::Outcome<'_> {
        plan::Outcome {
            account: self.account.as_ref(),
            latest: self.latest.as_ref(),
            refused: self.refused.as_deref(),
            mail_failed: self.mail_failed.as_deref(),
            assigned: self.assigned,
            unkept: &self.unkept,
        }
    }
}

async fn execute(
    ctx: &Context,
    user: &SystemUser,
    read: Read,
    decision: &plan::Decision,
    now: Timestamp,
) -> Result<Done, Error> {
    let mut done = Done::default();
    let store = read.store.clone();
    let (Some(tenant), Some(settings)) = (read.tenant.as_deref(), &decision.settings) else {
        if let Some(acc) = read.account.as_ref().filter(|_| decision.withdraw) {
            offboard_account(&*store, acc, OffboardingPolicy::Deactivate).await?;
        }
        return Ok(done);
    };
    done.account = read.account;
    done.latest = read.latest;
    let secrets = KubeSecrets {
        client: &ctx.client,
        metrics: &ctx.metrics,
    };
    let carried = Executor::of(ctx, &*store, &secrets)
        .carry_out(
            user,
            tenant,
            settings,
            &decision.writes,
            &mut done.account,
            &mut done.latest,
            now,
        )
        .await;
    match carried {
        Ok(()) => {}
        Err(e @ Error::Mail(_)) => {
            done.mail_failed = Some(e.to_string());
            done.failure = Some(e);
        }
        Err(Error::Store(e @ StoreError::Refused { .. })) => {
            done.refused = Some(e.to_string());
            done.failure = Some(Error::Store(e));
            done.unkept = store.unkept_fields().await?;
            return Ok(done);
        }
        Err(e) => return Err(e),
    }
    if let (Some(desired), Some(acc)) = (&decision.assignments, &done.account) {
        store.set_assignments(&acc.id, desired).await?;
        done.assigned = true;
    }
    done.unkept = store.unkept_fields().await?;
    Ok(done)
}

/// The last step: the Secret that no longer holds an open token goes, the status is applied
/// (skipped when unchanged), the Events are published.
async fn show(ctx: &Context, user: &SystemUser, report: &plan::Report) -> Result<(), Error> {
    if let Some(old) = &report.delete_secret {
        let ns = user.namespace().ok_or(Error::Malformed("no namespace"))?;
        delete_secret(ctx, &ns, old).await?;
    }
    if report.newly_expired {
        ctx.metrics.invitations_expired.inc();
    }
    replace_status(ctx, user, user.status.as_ref(), &report.status).await?;
    if !report.repaired.is_empty() {
        ctx.metrics.drift_corrected.inc();
        tracing::warn!(repaired = %report.repaired.join(", "), "store changed behind usher's back; repaired");
    }
    for note in &report.notes {
        publish_note(ctx, user, note.clone()).await;
    }
    Ok(())
}

/// An account of the person's tenant with their address, not under their key, that they may
/// take over ([`plan::restorable`]): one kept for restore, or a losing duplicate's.
async fn archived(
    ctx: &Context,
    store: &dyn UserStore,
    user: &SystemUser,
    tenant_key: &str,
) -> Result<Option<UserRecord>, Error> {
    let Some(found) = store.user_by_email(tenant_key, &user.spec.email).await? else {
        return Ok(None);
    };
    let holder = ObjectKey::parse(&found.external_id).and_then(|key| {
        ctx.users
            .get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace))
    });
    Ok(plan::restorable(user, holder.as_deref()).then_some(found))
}

/// The person's file is gone from git: revoke open tokens, remove roles, and deactivate or
/// delete the account per the tenant's policy, within the tenant's offboarding budget.
async fn offboard(user: &SystemUser, ctx: &Context) -> Result<Action, Error> {
    let ns = user.namespace().ok_or(Error::Malformed("no namespace"))?;
    let key = object_key(&ns, &user.name_any());
    let tenant = ctx
        .tenants
        .get(&kube::runtime::reflector::ObjectRef::new(&user.spec.tenant_ref.name).within(&ns));
    let store = tenant_store::store_of(ctx, &ns, &user.spec.tenant_ref.name).await?;
    let _lock = ctx.offboard_lock.lock().await;
    let Some(account) = store.user_by_external_id(&key).await? else {
        return Ok(Action::await_change());
    };
    let mut budget = match &tenant {
        Some(tenant) => Some(Budget::read(&*store, tenant, &ns).await?),
        None => None,
    };
    let policy = budget.as_ref().map(|b| b.policy).unwrap_or_default();
    let requested = user.metadata.deletion_timestamp.as_ref().map(|t| t.0);
    // Without its Tenant there is no budget to weigh: what the person held goes.
    let step = match &budget {
        Some(b) => b.step(&*store, &account, requested).await?,
        None => Step::Offboard { counted: false },
    };
    if let (Step::Hold, Some(b)) = (step, &budget) {
        // An error, not Ok: the finalizer helper releases the object after any Ok.
        return Err(Error::Throttled(b.plan.held(&user.spec.tenant_ref.name)));
    }
    let what = match offboard_account(&*store, &account, policy).await {
        Ok(what) => what,
        Err(e @ Error::OffboardingIncomplete { .. }) => {
            let (status, news) =
                plan::offboarding_incomplete(user, &e.to_string(), Timestamp::now());
            replace_status(ctx, user, user.status.as_ref(), &status).await?;
            if news {
                publish(ctx, user, EventType::Warning, e.label(), e.to_string()).await;
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let (Step::Offboard { counted: true }, Some(budget)) = (step, budget.as_mut()) {
        budget.spend(&*store).await?;
    }
    publish(
        ctx,
        user,
        EventType::Normal,
        "Offboarded",
        format!("{}: {what}", user.spec.email),
    )
    .await;
    tracing::info!(policy = ?policy, "offboarded");
    Ok(Action::await_change())
}

/// Offboard one account; says what was done.
///
/// Access goes first and in the store's own terms: open invitations revoked, the account
/// deactivated. Roles and, under Delete, the account itself follow. Should one of those later
/// steps fail (a SCIM product refusing a membership change, say), the person already has no
/// access, and the error ([`Error::OffboardingIncomplete`]) says what is left; the reconcile
/// retries it.
pub(super) async fn offboard_account(
    store: &dyn UserStore,
    account: &UserRecord,
    policy: OffboardingPolicy,
) -> Result<&'static str, Error> {
    let now = Timestamp::now();
    store.revoke_open(&account.id, now).await?;
    match store.set_active(&account.id, false, now).await {
        // Gone from the product already: nothing there to deactivate.
        Err(StoreError::NotFound(_)) => {}
        other => other?,
    }
    let left = |step: &'static str| {
        move |e: StoreError| Error::OffboardingIncomplete {
            left: step,
            source: e,
        }
    };
    store
        .set_assignments(&account.id, &[])
        .await
        .map_err(left("removing its roles"))?;
    Ok(match policy {
        OffboardingPolicy::Deactivate => {
            "account deactivated (kept for restore), open invitations revoked, roles removed"
        }
        OffboardingPolicy::Delete => {
            store
                .delete_user(&account.id)
                .await
                .map_err(left("deleting the account"))?;
            "account deleted with its invitations and roles"
        }
    })
}

async fn delete_secret(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    match Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => {
            ctx.metrics.api_writes.inc();
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
