//! The controllers, one file per kind: read → decide (in [`crate::plan`]) → write the store →
//! send mail → patch status (skipped when unchanged: one JSON Patch, or server-side apply for the Tenant) → Events.

mod guard;
pub mod index;
mod invitations;
mod location_group;
mod peer;
mod role_binding;
pub mod snapshot;
mod system_user;
mod tenant;
mod tenant_store;
mod wiring;

pub use wiring::{announce_redemption, run};

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{LocationGroup, RoleBinding, SystemUser, Tenant};
use crate::mail::{MailError, Mailer};
use crate::metrics::{KindLabels, Metrics, ReconcileLabels};
use crate::store::{StoreError, Stores};
use index::ByNamespace;

/// An Api of a namespaced kind in `ns`, or across all namespaces.
pub fn scoped_api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The finalizer on every usher object: its store state is cleaned up before it goes.
pub const FINALIZER: &str = "usher.dev/cleanup";

/// The field manager of every write usher makes.
pub const MANAGER: &str = "usher";

/// Operator-wide settings the controllers need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// From header when a tenant sets none.
    pub mail_from: String,
    /// Base of acceptance links when a tenant sets none.
    pub public_url: String,
    /// How often an unchanged object is looked at again: each controller visits all of its
    /// objects once per period, spread evenly over it (`--resync`).
    pub resync: Duration,
    /// Mails in flight at once. A crash can duplicate each one in flight (sent, but not yet
    /// marked sent); the duplicate carries the same link, so it costs a mail, not a dead link.
    pub mail_concurrency: usize,
    /// The key invitation tokens are derived from.
    pub token_key: crate::token::TokenKey,
    /// Watch only the objects this label selector matches (`--shard-selector`); None: all.
    pub shard_selector: Option<String>,
}

impl Settings {
    /// How far ahead a deadline gets a timer of its own: three times the resync. Two visits
    /// of the paced resync (`wiring::resync::paced`) are at most about two periods apart (an
    /// object's place in the next pass moves when others arrive), so a deadline further away
    /// is seen by a visit with a period to spare, which sets its timer.
    pub fn horizon(&self) -> Duration {
        self.resync.saturating_mul(3)
    }
}

/// The queue's next step for an object that is due again in `wait` (the plan's answer, capped
/// at `horizon`, [`Settings::horizon`]): a timer when something falls due within the horizon,
/// otherwise none, and the paced resync looks at the object in time.
pub fn after(wait: Duration, horizon: Duration) -> Action {
    if wait >= horizon {
        Action::await_change()
    } else {
        Action::requeue(wait)
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The user stores: the operator's and each Tenant's own ([`tenant_store::store_of`]
    /// picks a tenant's).
    pub stores: Arc<Stores>,
    /// The mail transport.
    pub mailer: Arc<dyn Mailer>,
    /// Settings.
    pub settings: Settings,
    /// Every SystemUser, from the controller's cache.
    pub users: Store<SystemUser>,
    /// Every Tenant, from the controller's cache.
    pub tenants: Store<Tenant>,
    /// Every LocationGroup, from the controller's cache.
    pub groups: Store<LocationGroup>,
    /// Every RoleBinding, from the controller's cache.
    pub bindings: Store<RoleBinding>,
    /// The same caches by namespace.
    pub by_ns: ByNs,
    /// Publishes Warning Events, counting a repeated one as a series of one Event.
    pub recorder: Recorder,
    /// Who publishes usher's Events (the `reportingController` and `reportingInstance`).
    pub reporter: Reporter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Serialises the offboarding guard's count-then-record.
    pub offboard_lock: tokio::sync::Mutex<()>,
    /// Admits `Settings::mail_concurrency` mails at a time, from sending to marking sent.
    pub mail_gate: tokio::sync::Semaphore,
    /// Consecutive failed reconciles per object (`Kind/namespace/name`), for the backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Context {
    /// Whether both caches hold a full list: deciding duplicates or counts from a partial cache
    /// would show wrong states (and publish wrong Events) at start. Checked without waiting:
    /// a waiter parked on the other controller's cache is not reliably woken, so a reconcile
    /// that comes too early is simply requeued.
    pub(crate) fn caches_ready(&self) -> bool {
        use futures::FutureExt;
        let ready = |f: Option<Result<(), _>>| matches!(f, Some(Ok(())));
        ready(self.users.wait_until_ready().now_or_never())
            && ready(self.tenants.wait_until_ready().now_or_never())
            && ready(self.groups.wait_until_ready().now_or_never())
            && ready(self.bindings.wait_until_ready().now_or_never())
    }
}

/// The caches by namespace (see [`index`]).
pub struct ByNs {
    /// SystemUsers.
    pub users: Arc<ByNamespace<SystemUser>>,
    /// Tenants.
    pub tenants: Arc<ByNamespace<Tenant>>,
    /// LocationGroups.
    pub groups: Arc<ByNamespace<LocationGroup>>,
    /// RoleBindings.
    pub bindings: Arc<ByNamespace<RoleBinding>>,
}

impl ByNs {
    /// Empty indexes.
    pub fn new() -> Self {
        Self {
            // A person's duplicates share their email; a binding's siblings, their person.
            users: Arc::new(ByNamespace::new(|u| Some(u.spec.email.to_lowercase()))),
            tenants: Arc::new(ByNamespace::new(|_| None)),
            groups: Arc::new(ByNamespace::new(|_| None)),
            bindings: Arc::new(ByNamespace::new(|b| Some(b.spec.user_ref.name.clone()))),
        }
    }
}

impl Default for ByNs {
    fn default() -> Self {
        Self::new()
    }
}

/// What a reconcile can fail at; `label()` is the metric label and Event reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Mail could not be sent.
    #[error(transparent)]
    Mail(#[from] MailError),
    /// The Kubernetes API refused a write.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks something the API server always sets.
    #[error("malformed object: {0}")]
    Malformed(&'static str),
    /// No randomness for a token.
    #[error("no randomness available: {0}")]
    Random(String),
    /// A Tenant's own store cannot be used: its credential is missing or unreadable, or its
    /// URL unusable. The message names the tenant and the Secret.
    #[error("{0}")]
    TenantStore(String),
    /// The mass-offboarding guard holds this deletion back.
    #[error("{0}")]
    Throttled(String),
    /// An offboarding took access away (open invitations revoked, account deactivated) but a
    /// later step failed; `left` says which.
    #[error(
        "the account is deactivated and its invitations revoked, but {left} failed: {source}; retrying"
    )]
    OffboardingIncomplete {
        /// The step still to do ("removing its roles", "deleting the account").
        left: &'static str,
        /// Why it failed.
        source: StoreError,
    },
    /// Adding or removing the finalizer, or the work around it, failed.
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A low-cardinality name for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Store(_) => "StoreError",
            Self::Mail(_) => "MailError",
            Self::Kube(_) => "KubernetesError",
            Self::Malformed(_) => "MalformedObject",
            Self::Random(_) => "RandomnessError",
            Self::Throttled(_) => "OffboardingThrottled",
            Self::TenantStore(_) => "StoreUnavailable",
            Self::OffboardingIncomplete { .. } => "OffboardingIncomplete",
            Self::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.label(),
                _ => "FinalizerError",
            },
        }
    }
}

pub(crate) fn error_policy<K>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    // Store and mail outages heal by themselves; back off rather than hammer them.
    let wait = match err {
        Error::Malformed(_) => Duration::from_secs(300),
        Error::Finalizer(e)
            if matches!(
                &**e,
                kube::runtime::finalizer::Error::CleanupFailed(Error::Throttled(_))
            ) =>
        {
            Duration::from_secs(30)
        }
        _ => {
            let key = failure_key(&*obj);
            let failures = ctx
                .failures
                .lock()
                .map(|f| f.get(&key).copied().unwrap_or(1))
                .unwrap_or(1);
            crate::plan::retry::backoff(failures, &key)
        }
    };
    Action::requeue(wait)
}

/// The key of an object's failure count; the kind comes from the type, so that the count kept
/// by `observe` and the one read by `error_policy` cannot name it differently.
fn failure_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}/{}",
        K::kind(&()),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// One reconcile of any kind: wait until the caches are full, run `apply` — or `cleanup` for an
/// object being deleted, then release the finalizer — and record the outcome.
async fn reconcile_with<K, A, C, FA, FC>(
    kind: &'static str,
    obj: Arc<K>,
    ctx: &Context,
    apply: A,
    cleanup: C,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    A: FnOnce(Arc<K>) -> FA,
    C: FnOnce(Arc<K>) -> FC,
    FA: std::future::Future<Output = Result<Action, Error>>,
    FC: std::future::Future<Output = Result<Action, Error>>,
{
    let started = std::time::Instant::now();
    if !ctx.caches_ready() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let result = async {
        let ns = obj
            .meta()
            .namespace
            .clone()
            .ok_or(Error::Malformed("no namespace"))?;
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        finalized(&api, obj.clone(), apply, cleanup)
            .await
            .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .await;
    observe(ctx, kind, &*obj, started, result).await
}

/// Run `apply` with usher's finalizer on the object, or, for an object being deleted that has
/// it, `cleanup` and then release it (kube's `finalizer` helper, with one difference: an object
/// without the finalizer gets it and is applied in the same pass, rather than in a second
/// reconcile woken by the change). The finalizer is in place before `apply` writes anything to
/// the store, so whatever it writes is cleaned up on deletion. Errors: kube's finalizer errors,
/// so that `error_policy` and the labels read them as before.
async fn finalized<K, A, C, FA, FC>(
    api: &Api<K>,
    obj: Arc<K>,
    apply: A,
    cleanup: C,
) -> Result<Action, kube::runtime::finalizer::Error<Error>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    A: FnOnce(Arc<K>) -> FA,
    C: FnOnce(Arc<K>) -> FC,
    FA: std::future::Future<Output = Result<Action, Error>>,
    FC: std::future::Future<Output = Result<Action, Error>>,
{
    use kube::runtime::finalizer::Error as Fin;
    let meta = obj.meta();
    let name = meta.name.clone().ok_or(Fin::UnnamedObject)?;
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    let held = finalizers.iter().position(|f| f == FINALIZER);
    let patch = |ops: serde_json::Value| {
        serde_json::from_value::<json_patch::Patch>(ops).map_err(|_| Fin::InvalidFinalizer)
    };
    match (meta.deletion_timestamp.is_some(), held) {
        (false, Some(_)) => apply(obj).await.map_err(Fin::ApplyFailed),
        (true, Some(index)) => {
            let action = cleanup(obj).await.map_err(Fin::CleanupFailed)?;
            let path = format!("/metadata/finalizers/{index}");
            // The test fails rather than remove another controller's finalizer at that index.
            let ops = patch(serde_json::json!([
                {"op": "test", "path": path, "value": FINALIZER},
                {"op": "remove", "path": path},
            ]))?;
            api.patch::<K>(&name, &PatchParams::default(), &Patch::Json(ops))
                .await
                .map_err(Fin::RemoveFinalizer)?;
            Ok(action)
        }
        (false, None) => {
            // The test fails if the list changed meanwhile (the API server does not deduplicate
            // finalizers), and the next reconcile tries again.
            let ops = if finalizers.is_empty() {
                serde_json::json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
                ])
            } else {
                serde_json::json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
                ])
            };
            let with = api
                .patch::<K>(&name, &PatchParams::default(), &Patch::Json(patch(ops)?))
                .await
                .map_err(Fin::AddFinalizer)?;
            apply(Arc::new(with)).await.map_err(Fin::ApplyFailed)
        }
        (true, None) => Ok(Action::await_change()),
    }
}

/// One reconcile of a kind that needs no cleanup of its own (its store state is derived by
/// another kind's reconcile): no finalizer is added, and one left by an earlier version is
/// released on deletion, so that the object can go.
async fn reconcile_plain<K, A, FA>(
    kind: &'static str,
    obj: Arc<K>,
    ctx: &Context,
    apply: A,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    A: FnOnce(Arc<K>) -> FA,
    FA: std::future::Future<Output = Result<Action, Error>>,
{
    let started = std::time::Instant::now();
    if !ctx.caches_ready() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let result = async {
        let meta = obj.meta();
        let held = meta
            .finalizers
            .as_ref()
            .and_then(|f| f.iter().position(|f| f == FINALIZER));
        match (meta.deletion_timestamp.is_some(), held) {
            (true, Some(index)) => {
                let ns = meta
                    .namespace
                    .clone()
                    .ok_or(Error::Malformed("no namespace"))?;
                let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
                let path = format!("/metadata/finalizers/{index}");
                // The test guards against removing another controller's finalizer.
                let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
                    {"op": "test", "path": path, "value": FINALIZER},
                    {"op": "remove", "path": path},
                ]))
                .map_err(|_| Error::Malformed("finalizer patch"))?;
                api.patch(
                    &obj.name_any(),
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await?;
                Ok(Action::await_change())
            }
            (true, None) => Ok(Action::await_change()),
            (false, _) => apply(obj.clone()).await,
        }
    }
    .await;
    observe(ctx, kind, &*obj, started, result).await
}

/// Record a reconcile's outcome in metrics and, on error, as a Warning Event on the object.
async fn observe<K>(
    ctx: &Context,
    kind: &'static str,
    obj: &K,
    started: std::time::Instant,
    result: Result<Action, Error>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
{
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.label(),
    };
    if let Ok(mut failures) = ctx.failures.lock() {
        let key = failure_key(obj);
        match &result {
            Ok(_) => {
                failures.remove(&key);
            }
            Err(_) => *failures.entry(key).or_insert(0) += 1,
        }
    }
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            kind,
            result: label,
        })
        .inc();
    ctx.metrics
        .reconcile_seconds
        .get_or_create(&KindLabels { kind })
        .observe(started.elapsed().as_secs_f64());
    if let Err(err) = &result {
        if let Some(labels) = peer::failure(err) {
            ctx.metrics.peer_errors.get_or_create(&labels).inc();
        }
        tracing::warn!(error = %err, "reconcile failed");
        publish(ctx, obj, EventType::Warning, err.label(), err.to_string()).await;
    }
    result
}

/// Publish an Event; a failure to publish is logged, never fatal.
async fn publish<K>(ctx: &Context, obj: &K, type_: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // kube's Recorder keeps every Event it publishes for six minutes, to count a repeat as a
    // series: a failure that lasts repeats its Warning at every retry, and is counted. A
    // Normal Event marks one transition and does not repeat; kept, the 10,000 `Bound` of a
    // bulk import held 70 MB (README, "Where the memory goes"). So Normal Events go through a
    // recorder of their own that keeps nothing.
    let recorder = match type_ {
        EventType::Warning => ctx.recorder.clone(),
        EventType::Normal => Recorder::new(ctx.client.clone(), ctx.reporter.clone()),
    };
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish an Event");
    }
}

/// Publish an Event a decision asked for ([`crate::plan::condition::Note`]).
async fn publish_note<K>(ctx: &Context, obj: &K, note: crate::plan::condition::Note)
where
    K: Resource<DynamicType = ()>,
{
    let type_ = if note.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, obj, type_, note.reason, note.message).await;
}

/// Replace a status this controller alone writes, unless it is already what the object shows:
/// one JSON Patch `add /status` (RFC 6902 §4.1: `add` on a member that exists replaces it), the
/// cheapest write the API server takes. Server-side apply of the same status cost the API server
/// 1.4 ms of CPU a request against 0.5 ms (pprof during the bench's onboarding, where these
/// writes are a third of all), and bought nothing here: no other manager owns a field of a
/// SystemUser's, RoleBinding's or LocationGroup's status. The write is last-writer-wins, as a
/// forced apply is.
///
/// Returns whether it wrote. Errors: the API server's answer ([`Error::Kube`]), or
/// [`Error::Malformed`] for an object without a namespace or name.
async fn replace_status<K, S>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    desired: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let ops: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "add", "path": "/status", "value": desired},
    ]))
    .map_err(|_| Error::Malformed("status patch"))?;
    // Named, so that managedFields credits usher with the status rather than its user agent.
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    write_status(ctx, obj, params, &Patch::<()>::Json(ops)).await
}

/// Server-side apply a status part of which another field manager owns (a Tenant's
/// `status.users`, the census's), unless it is already what the object shows: the apply owns
/// only the fields `desired` sets. Returns whether it wrote; errors as [`replace_status`].
async fn apply_status<K, S>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    desired: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    let params = PatchParams::apply(MANAGER).force();
    write_status(ctx, obj, params, &Patch::Apply(&patch)).await
}

/// Send one status patch and count it in `usher_api_writes_total`.
async fn write_status<K, P>(
    ctx: &Context,
    obj: &K,
    params: PatchParams,
    patch: &Patch<P>,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    P: Serialize + std::fmt::Debug,
{
    let meta = obj.meta();
    let ns = meta
        .namespace
        .as_deref()
        .ok_or(Error::Malformed("no namespace"))?;
    let name = meta.name.as_deref().ok_or(Error::Malformed("no name"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    api.patch_status(name, &params, patch).await?;
    ctx.metrics.api_writes.inc();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_within_the_horizon_keeps_a_timer_and_none_beyond_it() {
        let horizon = Duration::from_secs(1200);
        let soon = Duration::from_secs(90);
        assert_eq!(after(soon, horizon), Action::requeue(soon));
        assert_eq!(
            after(horizon - Duration::from_millis(1), horizon),
            Action::requeue(horizon - Duration::from_millis(1))
        );
        // The plan answers `horizon` when nothing falls due before it: the paced resync visits.
        assert_eq!(after(horizon, horizon), Action::await_change());
        assert_eq!(after(horizon * 3, horizon), Action::await_change());
    }
}
