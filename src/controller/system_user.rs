//! SystemUser: account in the store → token → Secret (if exposed) → mail → status.
//!
//! Order matters for crash safety: the token's hash is recorded before the mail is sent and the
//! "sent" mark after it. A crash in between leaves an unsent invitation, which the next
//! reconcile completes with a fresh token for the same attempt: at most one duplicate mail, never
//! a lost invitation, never two open tokens.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::guard::{self, Budget};
use super::snapshot::snapshot;
use super::{Context, Error, MANAGER, apply_status, publish, reconcile_with};
use crate::crd::{OffboardingPolicy, SystemUser, Tenant};
use crate::mail::Invitation;
use crate::plan::bindings::{assignments, bound_roles};
use crate::plan::offboarding;
use crate::plan::records::{InvitationRecord, UserRecord, object_key};
use crate::plan::system_user::{
    self as plan, AccessAction, AccountAction, Blocked, InvitationAction, InvitationSettings,
    StatusInput,
};
use crate::plan::world::peers;
use crate::store::StoreError;
use crate::token::Token;

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

/// The invitation Secret's name for a user.
pub fn secret_name(user: &str) -> String {
    format!("{user}-invitation")
}

async fn apply(user: &SystemUser, ctx: &Context) -> Result<Action, Error> {
    let ns = user.namespace().ok_or(Error::Malformed("no namespace"))?;
    let now = Timestamp::now();
    let tenant = ctx
        .tenants
        .get(&kube::runtime::reflector::ObjectRef::new(&user.spec.tenant_ref.name).within(&ns));
    // Only people with the same email can be duplicates.
    let candidates = ctx
        .by_ns
        .users
        .with_key(&ns, &user.spec.email.to_lowercase());
    let peers = peers(user, candidates.iter().map(|u| &**u));
    let mut blocked = plan::blocked(user, tenant.as_deref(), &peers);

    let mut account = None;
    let mut latest = None;
    let mut repaired: Vec<&'static str> = Vec::new();
    let mut secret = None;
    let mut failure = None;
    let mut edits = Vec::new();
    if let (None, Some(tenant)) = (&blocked, tenant.as_deref()) {
        let settings = InvitationSettings::of(tenant);
        let tenant_key = object_key(&ns, &tenant.name_any());
        account = match ctx
            .store
            .user_by_external_id(&object_key(&ns, &user.name_any()))
            .await?
        {
            Some(a) => Some(a),
            None => archived(ctx, &ns, &tenant_key, &user.spec.email).await?,
        };
        latest = match &account {
            Some(a) => ctx.store.latest_invitation(&a.id).await?,
            None => None,
        };
        // A redemption committed between the two reads: read the account again rather than
        // issue a second invitation.
        if let Some(a) = account
            .as_ref()
            .filter(|a| plan::read_mid_redemption(a, latest.as_ref()))
        {
            account = ctx.store.user_by_external_id(&a.external_id).await?;
        }
        let todo = plan::plan(user, &tenant_key, account.as_ref(), latest.as_ref());
        repaired.extend(plan::drift(user, &todo));
        edits.extend(todo.notes.iter().cloned());
        match execute(
            ctx,
            user,
            tenant,
            &settings,
            todo,
            &mut account,
            &mut latest,
            now,
        )
        .await
        {
            Ok(()) => {}
            // The status still tells what happened; the error then drives the backoff.
            Err(e @ Error::Mail(_)) => failure = Some(e),
            Err(Error::Store(e @ StoreError::Refused { .. })) => {
                blocked = Some(Blocked::StoreRefused(e.to_string()));
                failure = Some(Error::Store(e));
            }
            Err(e) => return Err(e),
        }
        let pending = latest.as_ref().is_some_and(|i| {
            i.open() && !i.expired(now) && !account.as_ref().is_some_and(|a| a.active)
        });
        if settings.expose_token && pending {
            secret = Some(secret_name(&user.name_any()));
        }
    }

    // Roles: the Bound bindings of this person, decided for the namespace as a whole.
    let snap = snapshot(ctx, &ns, Some(&user.name_any()));
    let me = user.name_any();
    let roles = bound_roles(&me, &snap.bindings, &snap.verdicts);
    if let Some(acc) = account.as_ref().filter(|_| blocked.is_none()) {
        let desired = assignments(&ns, &me, &snap.bindings, &snap.verdicts);
        if ctx.store.assignments(&acc.id).await? != desired {
            ctx.store.set_assignments(&acc.id, &desired).await?;
            // The bindings said the same last time: the store was changed, not the resources.
            let shown = user
                .status
                .as_ref()
                .map(|s| s.roles.clone())
                .unwrap_or_default();
            if user.status.is_some() && shown == roles {
                repaired.push("role assignments");
            }
        }
    }

    // Refused after it had been provisioned (a duplicate that lost, a domain no longer
    // allowed): the account keeps no access, no open token and no role.
    if matches!(
        blocked,
        Some(
            Blocked::DuplicateEmail { .. }
                | Blocked::EmailDomainNotAllowed { .. }
                | Blocked::EmailUndeliverable { .. }
        )
    ) && let Some(acc) = ctx
        .store
        .user_by_external_id(&object_key(&ns, &user.name_any()))
        .await?
    {
        let open = ctx
            .store
            .latest_invitation(&acc.id)
            .await?
            .is_some_and(|i| i.open());
        let roles = !ctx.store.assignments(&acc.id).await?.is_empty();
        if acc.active || open || roles {
            offboard_account(ctx, &acc, OffboardingPolicy::Deactivate).await?;
        }
    }

    let mut status = plan::status(&StatusInput {
        user,
        blocked: blocked.as_ref(),
        account: account.as_ref(),
        latest: latest.as_ref(),
        secret_name: secret.clone(),
        now,
    });
    status.roles = roles;
    // A refusal is the condition already; a mail failure is added to it.
    if let Some(err @ Error::Mail(_)) = &failure
        && let Some(c) = status.conditions.first_mut()
    {
        c.message = format!("{}: {err}", c.message);
    }

    // The token's Secret lives while the invitation is open, and goes once it is not.
    let had_secret = user
        .status
        .as_ref()
        .and_then(|s| s.invitation.as_ref())
        .and_then(|i| i.secret_name.clone());
    if let Some(old) = had_secret.filter(|_| secret.is_none()) {
        delete_secret(ctx, &ns, &old).await?;
    }
    if status.phase == Some(crate::crd::UserPhase::Expired)
        && user.status.as_ref().and_then(|s| s.phase) != Some(crate::crd::UserPhase::Expired)
    {
        ctx.metrics.invitations_expired.inc();
    }
    let mut notes = edits;
    notes.extend(plan::events(
        user.status.as_ref(),
        &status,
        blocked.as_ref(),
    ));
    apply_status(ctx, user, user.status.as_ref(), &status).await?;
    for note in notes {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, user, type_, note.reason, note.message).await;
    }
    if !repaired.is_empty() {
        ctx.metrics.drift_corrected.inc();
        let what = repaired.join(", ");
        tracing::warn!(repaired = %what, "store changed behind usher's back; repaired");
        publish(
            ctx,
            user,
            EventType::Warning,
            "DriftCorrected",
            format!("the user store differed from git and was repaired: {what}"),
        )
        .await;
    }
    if let Some(err) = failure {
        return Err(err);
    }
    if matches!(blocked, Some(Blocked::TenantNotFound(_))) {
        // The Tenant watch wakes us when it appears; this is only a safety net.
        return Ok(Action::requeue(ctx.settings.resync));
    }
    let wait = plan::requeue_after(latest.as_ref(), now, ctx.settings.resync);
    Ok(Action::requeue(wait))
}

/// The account of a person offboarded under the Deactivate policy, found by email, to restore
/// it instead of creating a second one. Only an account no SystemUser holds qualifies.
async fn archived(
    ctx: &Context,
    ns: &str,
    tenant_key: &str,
    email: &str,
) -> Result<Option<UserRecord>, Error> {
    let Some(found) = ctx.store.user_by_email(tenant_key, email).await? else {
        return Ok(None);
    };
    let holder = found
        .external_id
        .split_once('/')
        .filter(|(holder_ns, _)| *holder_ns == ns)
        .and_then(|(_, name)| {
            ctx.users
                .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
        });
    Ok(holder.is_none().then_some(found))
}

/// The person's file is gone from git: revoke open tokens, remove roles, and deactivate or
/// delete the account per the tenant's policy, within the tenant's offboarding budget.
async fn offboard(user: &SystemUser, ctx: &Context) -> Result<Action, Error> {
    let ns = user.namespace().ok_or(Error::Malformed("no namespace"))?;
    let key = object_key(&ns, &user.name_any());
    let tenant = ctx
        .tenants
        .get(&kube::runtime::reflector::ObjectRef::new(&user.spec.tenant_ref.name).within(&ns));
    let _lock = ctx.offboard_lock.lock().await;
    let Some(account) = ctx.store.user_by_external_id(&key).await? else {
        return Ok(Action::await_change());
    };
    let mut budget = match &tenant {
        Some(tenant) => Some(Budget::read(ctx, tenant, &ns).await?),
        None => None,
    };
    let policy = budget.as_ref().map(|b| b.policy).unwrap_or_default();
    // An account offboarded before (by its Tenant's deletion, say) removes nothing now.
    let counted = match &budget {
        Some(_) => guard::counts(ctx, &account, policy).await?,
        None => false,
    };
    if let (true, Some(budget), Some(tenant)) = (counted, &budget, &tenant)
        && !budget.allows(user.metadata.deletion_timestamp.as_ref().map(|t| t.0))
    {
        // An error, not Ok: the finalizer helper releases the object after any Ok.
        return Err(Error::Throttled(format!(
            "{} people of tenant {:?} were offboarded in the last hour (maxPerHour {}); this deletion waits. Set the annotation {} on the Tenant to a new value to let it proceed",
            budget.done,
            tenant.name_any(),
            budget.max,
            offboarding::ALLOW_ANNOTATION
        )));
    }
    let what = match offboard_account(ctx, &account, policy).await {
        Ok(what) => what,
        Err(e @ Error::OffboardingIncomplete { .. }) => {
            let (status, news) =
                plan::offboarding_incomplete(user, &e.to_string(), Timestamp::now());
            apply_status(ctx, user, user.status.as_ref(), &status).await?;
            if news {
                publish(ctx, user, EventType::Warning, e.label(), e.to_string()).await;
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let (true, Some(budget)) = (counted, budget.as_mut()) {
        budget.spend(ctx).await?;
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
    ctx: &Context,
    account: &UserRecord,
    policy: OffboardingPolicy,
) -> Result<&'static str, Error> {
    let now = Timestamp::now();
    ctx.store.revoke_open(&account.id, now).await?;
    match ctx.store.set_active(&account.id, false, now).await {
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
    ctx.store
        .set_assignments(&account.id, &[])
        .await
        .map_err(left("removing its roles"))?;
    Ok(match policy {
        OffboardingPolicy::Deactivate => {
            "account deactivated (kept for restore), open invitations revoked, roles removed"
        }
        OffboardingPolicy::Delete => {
            ctx.store
                .delete_user(&account.id)
                .await
                .map_err(left("deleting the account"))?;
            "account deleted with its invitations and roles"
        }
    })
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    ctx: &Context,
    user: &SystemUser,
    tenant: &Tenant,
    settings: &InvitationSettings,
    todo: plan::UserPlan,
    account: &mut Option<UserRecord>,
    latest: &mut Option<InvitationRecord>,
    now: Timestamp,
) -> Result<(), Error> {
    let store = &ctx.store;
    if todo.revoke_first
        && let Some(acc) = account.as_ref()
    {
        store.revoke_open(&acc.id, now).await?;
        *latest = store.latest_invitation(&acc.id).await?;
    }
    match todo.account {
        AccountAction::Keep => {}
        AccountAction::Create(fields) => {
            *account = Some(store.create_user(&fields).await?);
        }
        AccountAction::Update(fields) => {
            let id = account.as_ref().map(|a| a.id.clone()).unwrap_or_default();
            *account = Some(store.update_user(&id, &fields).await?);
        }
    }
    let Some(acc) = account.as_mut() else {
        return Ok(());
    };
    match todo.access {
        AccessAction::Keep => {}
        AccessAction::Suspend => {
            // Revoke first: a redemption between the two steps must not reactivate the account.
            store.revoke_open(&acc.id, now).await?;
            store.set_active(&acc.id, false, now).await?;
            acc.active = false;
            *latest = store.latest_invitation(&acc.id).await?;
        }
        AccessAction::Restore => {
            store.set_active(&acc.id, true, now).await?;
            acc.active = true;
        }
        AccessAction::Deactivate => {
            store.set_active(&acc.id, false, now).await?;
            acc.active = false;
        }
    }
    let expires_at = now + settings.ttl;
    let token = match todo.invitation {
        InvitationAction::Keep => return Ok(()),
        InvitationAction::Issue { attempt, trigger } => {
            let token = Token::generate().map_err(|e| Error::Random(e.to_string()))?;
            let record = InvitationRecord {
                token_hash: token.hash(),
                user_id: acc.id.clone(),
                attempt,
                trigger,
                created_at: now,
                expires_at,
                sent_at: None,
                used_at: None,
                revoked_at: None,
            };
            store.record_invitation(&record).await?;
            ctx.metrics.invitations_issued.inc();
            *latest = Some(record);
            token
        }
        InvitationAction::Resend { attempt } => {
            let token = Token::generate().map_err(|e| Error::Random(e.to_string()))?;
            if !store
                .rotate_unsent(&acc.id, attempt, &token.hash(), expires_at)
                .await?
            {
                // Sent, used or revoked meanwhile: read again next time.
                *latest = store.latest_invitation(&acc.id).await?;
                return Ok(());
            }
            if let Some(l) = latest.as_mut() {
                l.token_hash = token.hash();
                l.expires_at = expires_at;
            }
            token
        }
    };
    if settings.expose_token {
        write_secret(ctx, user, &token, expires_at).await?;
    }
    // From the server's acceptance to the mark, a crash duplicates the mail: the gate keeps
    // that window to `mail_concurrency` mails.
    let permit = ctx
        .mail_gate
        .acquire()
        .await
        .map_err(|_| Error::Malformed("mail gate closed"))?;
    send(ctx, user, tenant, &token, expires_at).await?;
    let sent = Timestamp::now();
    mark_sent(ctx, &token, sent).await?;
    drop(permit);
    if let Some(l) = latest.as_mut() {
        l.sent_at = Some(sent);
    }
    tracing::info!(fingerprint = %token.hash().fingerprint(), "invitation sent");
    Ok(())
}

/// Record that the mail went out, retrying a store hiccup: unrecorded, it is sent again.
async fn mark_sent(ctx: &Context, token: &Token, sent: Timestamp) -> Result<(), Error> {
    let hash = token.hash();
    let mut waits = crate::plan::retry::MARK_SENT_WAITS.iter();
    loop {
        match ctx.store.mark_sent(&hash, sent).await {
            Ok(()) => return Ok(()),
            Err(e) => match waits.next() {
                Some(wait) => {
                    tracing::warn!(error = %e, fingerprint = %hash.fingerprint(), retry_in = ?wait,
                        "mail sent but not recorded yet");
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(e.into()),
            },
        }
    }
}

async fn send(
    ctx: &Context,
    user: &SystemUser,
    tenant: &Tenant,
    token: &Token,
    expires_at: Timestamp,
) -> Result<(), Error> {
    let policy = tenant.spec.invitations.as_ref();
    let default_accept = format!("{}/accept", ctx.settings.public_url.trim_end_matches('/'));
    let mail = Invitation {
        tenant: &tenant.spec.display_name,
        from: policy
            .and_then(|p| p.from.as_deref())
            .unwrap_or(&ctx.settings.mail_from),
        to: &user.spec.email,
        first_name: user.spec.first_name.as_deref(),
        last_name: user.spec.last_name.as_deref(),
        accept_url: policy
            .and_then(|p| p.accept_url.as_deref())
            .unwrap_or(&default_accept),
        token: token.expose(),
        expires_at,
    };
    let started = std::time::Instant::now();
    let result = async { ctx.mailer.send(mail.message()?).await }.await;
    ctx.metrics
        .mail_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            ctx.metrics.invitations_sent.inc();
            Ok(())
        }
        Err(e) => {
            ctx.metrics.mail_errors.inc();
            Err(e.into())
        }
    }
}

async fn write_secret(
    ctx: &Context,
    user: &SystemUser,
    token: &Token,
    expires_at: Timestamp,
) -> Result<(), Error> {
    let ns = user.namespace().ok_or(Error::Malformed("no namespace"))?;
    let name = secret_name(&user.name_any());
    let owner: OwnerReference = user
        .controller_owner_ref(&())
        .ok_or(Error::Malformed("no uid"))?;
    let labels: BTreeMap<&str, &str> = [
        ("app.kubernetes.io/managed-by", MANAGER),
        (
            "usher.dev/user",
            user.meta().name.as_deref().unwrap_or_default(),
        ),
    ]
    .into();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner]},
        "type": "Opaque",
        "stringData": {
            "token": token.expose(),
            "expiresAt": expires_at.to_string(),
        },
    });
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    ctx.metrics.api_writes.inc();
    Ok(())
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
