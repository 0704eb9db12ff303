//! The controllers, one file per kind: read → decide (in [`crate::plan`]) → write the store →
//! send mail → patch status (server-side apply, skipped when unchanged) → Events.

mod system_user;
mod tenant;

use std::sync::Arc;
use std::time::Duration;

use std::hash::{Hash, Hasher};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::{PredicateConfig, predicates};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{SystemUser, Tenant};
use crate::mail::{MailError, Mailer};
use crate::metrics::{KindLabels, Metrics, ReconcileLabels};
use crate::plan;
use crate::store::{StoreError, UserStore};

/// The field manager of every write usher makes.
pub const MANAGER: &str = "usher";
/// Label on the objects usher creates (invitation Secrets), so it watches only those.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=usher";

/// Operator-wide settings the controllers need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// From header when a tenant sets none.
    pub mail_from: String,
    /// Base of acceptance links when a tenant sets none.
    pub public_url: String,
    /// How often an unchanged object is looked at again.
    pub resync: Duration,
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The user store.
    pub store: Arc<dyn UserStore>,
    /// The mail transport.
    pub mailer: Arc<dyn Mailer>,
    /// Settings.
    pub settings: Settings,
    /// Every SystemUser, from the controller's cache.
    pub users: Store<SystemUser>,
    /// Every Tenant, from the controller's cache.
    pub tenants: Store<Tenant>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// Whether both caches hold a full list: deciding duplicates or counts from a partial cache
    /// would show wrong states (and publish wrong Events) at start. Checked without waiting:
    /// a waiter parked on the other controller's cache is not reliably woken, so a reconcile
    /// that comes too early is simply requeued.
    fn caches_ready(&self) -> bool {
        use futures::FutureExt;
        let ready = |f: Option<Result<(), _>>| matches!(f, Some(Ok(())));
        ready(self.users.wait_until_ready().now_or_never())
            && ready(self.tenants.wait_until_ready().now_or_never())
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
        }
    }
}

/// Run the Tenant and SystemUser controllers until shutdown. `wake` carries the SystemUsers
/// whose invitation was just redeemed, so they turn Active at once.
pub async fn run(
    client: Client,
    store: Arc<dyn UserStore>,
    mailer: Arc<dyn Mailer>,
    settings: Settings,
    metrics: Arc<Metrics>,
    namespace: Option<&str>,
    wake: impl futures::Stream<Item = ObjectRef<SystemUser>> + Send + 'static,
) {
    let api = |client: &Client| -> (Api<Tenant>, Api<SystemUser>, Api<Secret>) {
        match namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        }
    };
    let (tenants_api, users_api, secrets_api) = api(&client);
    let cfg = watcher::Config::default().any_semantic();

    // Each controller's own objects are cached once (the readers are shared); the triggers are
    // filtered so that a status patch, ours or another's, is not by itself a reason to reconcile.
    let (users, users_writer) = reflector::store::<SystemUser>();
    let (tenants, tenants_writer) = reflector::store::<Tenant>();
    let users_trigger = watcher(users_api.clone(), cfg.clone())
        .default_backoff()
        .reflect(users_writer)
        .touched_objects()
        .predicate_filter(
            |u: &SystemUser| {
                Some(hash((
                    u.metadata.generation,
                    u.annotations().get(plan::system_user::RESEND_ANNOTATION),
                    u.metadata.deletion_timestamp.is_some(),
                )))
            },
            PredicateConfig::default(),
        );
    let tenants_trigger = watcher(tenants_api.clone(), cfg.clone())
        .default_backoff()
        .reflect(tenants_writer)
        .touched_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    // A tenant's settings (domains, ttl, catalogue) decide its users' state.
    let tenant_changes = watcher(tenants_api, cfg.clone())
        .default_backoff()
        .touched_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    // A user's phase (or existence) changes its tenant's counts.
    let phase_changes = watcher(users_api, cfg)
        .default_backoff()
        .touched_objects()
        .predicate_filter(
            |u: &SystemUser| {
                Some(hash((
                    u.status.as_ref().and_then(|s| s.phase),
                    &u.spec.tenant_ref.name,
                    u.metadata.deletion_timestamp.is_some(),
                )))
            },
            PredicateConfig::default(),
        );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    let ctx = Arc::new(Context {
        client,
        store,
        mailer,
        settings,
        users: users.clone(),
        tenants: tenants.clone(),
        recorder,
        metrics,
    });

    let users_of_tenant = users.clone();
    let users_ctl = Controller::for_stream(users_trigger, users.clone())
        .owns(secrets_api, watcher::Config::default().labels(MANAGED_BY))
        .watches_stream(tenant_changes, move |tenant: Tenant| {
            let ns = tenant.namespace();
            let name = tenant.name_any();
            users_of_tenant
                .state()
                .into_iter()
                .filter(|u| u.namespace() == ns && u.spec.tenant_ref.name == name)
                .map(|u| ObjectRef::from_obj(&*u))
                .collect::<Vec<_>>()
        })
        .reconcile_on(wake)
        .shutdown_on_signal()
        .run(system_user::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let tenants_ctl = Controller::for_stream(tenants_trigger, tenants)
        .watches_stream(phase_changes, |user: SystemUser| {
            user.namespace()
                .map(|ns| ObjectRef::new(&user.spec.tenant_ref.name).within(&ns))
        })
        .shutdown_on_signal()
        .run(tenant::reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));

    futures::join!(users_ctl, tenants_ctl);
}

fn hash(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    // Store and mail outages heal by themselves; back off rather than hammer them.
    let wait = match err {
        Error::Malformed(_) => Duration::from_secs(300),
        _ => Duration::from_secs(15),
    };
    Action::requeue(wait)
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
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish an Event");
    }
}

/// Server-side apply a status, unless it is already what the object shows.
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
    let ns = obj
        .meta()
        .namespace
        .as_deref()
        .ok_or(Error::Malformed("no namespace"))?;
    let name = obj
        .meta()
        .name
        .as_deref()
        .ok_or(Error::Malformed("no name"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.api_writes.inc();
    Ok(true)
}
