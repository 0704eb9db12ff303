//! How the four controllers are fed, and what wakes each: one function per controller, each
//! subscribing to the watch feeds ([`feed::Feed`]) it needs, with the filter that says which
//! change of a watched object is worth a reconcile, and each with its resync ([`resync`]), which
//! after a start is also its catch-up.

mod feed;
mod resync;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::{
    Context, MANAGER, Settings, error_policy, location_group, role_binding, scoped_api,
    system_user, tenant,
};
use crate::crd::{LocationGroup, RoleBinding, SystemUser, Tenant};
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::plan::system_user::{REDEEMED_ANNOTATION, RESEND_ANNOTATION};
use crate::store::Stores;
use feed::{
    Feed, Moves, PROMPT, SUMMARY, hash, in_namespace, key_of, keyed, keys, lifecycle,
    report_invalid, tenant_key, tuned, with_key,
};
use resync::{Intake, Listed, paced};

/// The four watches, one per kind.
struct Feeds {
    users: Feed<SystemUser>,
    tenants: Feed<Tenant>,
    groups: Feed<LocationGroup>,
    bindings: Feed<RoleBinding>,
}

impl Feeds {
    /// The watches of the four kinds in `namespace` (None: all), filling the indexes of
    /// `by_ns`; objects that do not decode are reported through `recorder`.
    fn new(
        client: &Client,
        namespace: Option<&str>,
        selector: Option<&str>,
        recorder: &Recorder,
        metrics: &Arc<Metrics>,
        by_ns: &super::ByNs,
    ) -> Self {
        let selector = || selector.map(str::to_string);
        Self {
            users: Feed::new(
                scoped_api::<DeserializeGuard<SystemUser>>(client, namespace),
                report_invalid::<SystemUser>(client.clone(), recorder.clone(), metrics.clone()),
                by_ns.users.clone(),
                selector(),
            ),
            tenants: Feed::new(
                scoped_api::<DeserializeGuard<Tenant>>(client, namespace),
                report_invalid::<Tenant>(client.clone(), recorder.clone(), metrics.clone()),
                by_ns.tenants.clone(),
                selector(),
            ),
            groups: Feed::new(
                scoped_api::<DeserializeGuard<LocationGroup>>(client, namespace),
                report_invalid::<LocationGroup>(client.clone(), recorder.clone(), metrics.clone()),
                by_ns.groups.clone(),
                selector(),
            ),
            bindings: Feed::new(
                scoped_api::<DeserializeGuard<RoleBinding>>(client, namespace),
                report_invalid::<RoleBinding>(client.clone(), recorder.clone(), metrics.clone()),
                by_ns.bindings.clone(),
                selector(),
            ),
        }
    }

    /// Every watch's first list, which a resync's catch-up waits for.
    fn listed(&self) -> Listed {
        Listed(vec![
            self.users.listed(),
            self.tenants.listed(),
            self.groups.listed(),
            self.bindings.listed(),
        ])
    }
}

/// A controller's resync ([`paced`]) and what its results are consumed with, handing each key
/// back to the resync ([`Intake::handled`]): at most two reconciles a slot (`concurrency`)
/// queued by the resync at once.
fn resync<K>(
    feeds: &Feeds,
    store: &kube::runtime::reflector::Store<K>,
    period: std::time::Duration,
    concurrency: u16,
) -> (
    impl Stream<Item = ObjectRef<K>> + Send + 'static + use<K>,
    Arc<Intake>,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let intake = Intake::new(2 * usize::from(concurrency));
    let visits = paced(store.clone(), period, feeds.listed(), intake.clone());
    (visits, intake)
}

/// Run the four controllers until shutdown. `wake` carries the SystemUsers whose invitation was
/// just redeemed, so they turn Active at once.
pub async fn run(
    client: Client,
    stores: Arc<Stores>,
    mailer: Arc<dyn Mailer>,
    settings: Settings,
    metrics: Arc<Metrics>,
    namespace: Option<&str>,
    wake: impl Stream<Item = ObjectRef<SystemUser>> + Send + 'static,
) {
    // `usher_controllers_running` is 1 from here until this future ends or is dropped (the
    // leader Lease lost).
    let _running = metrics.controllers_running();
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("HOSTNAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter.clone());
    let by_ns = super::ByNs::new();
    let selector = settings.shard_selector.clone();
    let mut feeds = Feeds::new(
        &client,
        namespace,
        selector.as_deref(),
        &recorder,
        &metrics,
        &by_ns,
    );
    let mail_gate = tokio::sync::Semaphore::new(settings.mail_concurrency.max(1));
    let ctx = Arc::new(Context {
        recorder,
        reporter,
        client,
        stores,
        mailer,
        settings,
        users: feeds.users.store(),
        tenants: feeds.tenants.store(),
        groups: feeds.groups.store(),
        bindings: feeds.bindings.store(),
        by_ns,
        metrics,
        offboard_lock: tokio::sync::Mutex::new(()),
        mail_gate,
        failures: Default::default(),
    });

    let (people_left, bindings_left) = moved_away(&mut feeds.bindings);
    let controllers = futures::future::join5(
        system_users(&mut feeds, ctx.clone(), wake, people_left),
        tenants(&mut feeds, ctx.clone()),
        tenant_census(&mut feeds, ctx.clone()),
        location_groups(&mut feeds, ctx.clone()),
        role_bindings(&mut feeds, ctx, bindings_left),
    );
    // The watches end with the controllers: once all four have shut down, stop feeding.
    let Feeds {
        users,
        tenants,
        groups,
        bindings,
    } = feeds;
    let drivers = futures::future::join4(users.run(), tenants.run(), groups.run(), bindings.run());
    futures::future::select(Box::pin(controllers), Box::pin(drivers)).await;
}

/// Set [`REDEEMED_ANNOTATION`] on `person` to the time now: its invitation was just redeemed
/// here, and the instance that watches it (another shard's, or the leader when this process is
/// a standby) reconciles on that change. A person gone meanwhile
/// needs nothing; another failure is logged, and that instance's resync catches up.
pub async fn announce_redemption(client: &Client, person: &ObjectRef<SystemUser>) {
    let Some(ns) = person.namespace.as_deref() else {
        return;
    };
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {REDEEMED_ANNOTATION: now}}});
    let api: kube::Api<SystemUser> = kube::Api::namespaced(client.clone(), ns);
    match api
        .patch(
            &person.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(%person, "redeemed here, watched elsewhere: announced on the object")
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(%person, error = %e, "could not announce a redemption; the person turns Active at the next resync")
        }
    }
}

/// SystemUser: its spec, the resend annotation, deletion; its tenant's spec; its bindings'
/// specs; the location groups they name; the other holders of its address; a redemption
/// (`wake`); a binding that left them (`left`, from [`moved_away`]).
fn system_users<W>(
    feeds: &mut Feeds,
    ctx: Arc<Context>,
    wake: W,
    left: Moved,
) -> impl Future<Output = ()> + use<W>
where
    W: Stream<Item = ObjectRef<SystemUser>> + Send + 'static,
{
    let (u1, u2, u3, u4) = (
        ctx.by_ns.users.clone(),
        ctx.by_ns.users.clone(),
        ctx.by_ns.users.clone(),
        ctx.by_ns.users.clone(),
    );
    let bindings = ctx.by_ns.bindings.clone();
    // A person's first reconcile spends about a fifth of its time handing the mail to the
    // relay and the rest on the store, their status and an Event, which under a bulk import
    // wait on a busy API server: with 4 reconciles per mail slot the relay idled a third of
    // the time; with 12, onboarding 10,000 took 6 % less on the same machine (README).
    let people = u16::try_from(ctx.settings.mail_concurrency.saturating_mul(12))
        .unwrap_or(u16::MAX)
        .max(32);
    let (visits, intake) = resync(feeds, &ctx.users, ctx.settings.resync, people);
    let addresses = std::sync::Mutex::new(HashMap::<String, String>::new());
    // A redemption of someone this instance does not watch (another shard's, or another
    // namespace's) is announced on the object itself, so that the instance that watches it
    // turns it Active at once rather than at its next resync.
    let (cache, client) = (ctx.users.clone(), ctx.client.clone());
    let wake = wake.filter_map(move |person| {
        let known = cache.get(&person).is_some();
        let client = client.clone();
        async move {
            if known {
                return Some(person);
            }
            announce_redemption(&client, &person).await;
            None
        }
    });
    keyed(ctx.users.clone())
        .reconcile_on(keys(
            feeds.users.changes(|u: &SystemUser| {
                hash((
                    lifecycle(u),
                    u.annotations().get(RESEND_ANNOTATION),
                    u.annotations().get(REDEEMED_ANNOTATION),
                ))
            }),
            |o| Some(key_of(&*o)),
        ))
        // The invitation Secrets are not watched: usher only writes and deletes them, so its
        // ServiceAccount needs no right to read or list any Secret.
        .reconcile_on(keys(
            feeds.tenants.changes(tenant_key),
            move |t: Arc<Tenant>| {
                let name = t.name_any();
                in_namespace(&u1, t.namespace(), move |u| u.spec.tenant_ref.name == name)
            },
        ))
        // A person's roles are decided in their own reconcile, from the specs of their bindings,
        // groups and tenant (the snapshot): a binding's spec wakes them, and of its status only
        // what that decision reads (`exclusive`). Not its phase: that is the binding reconcile's
        // copy of the same decision, and waking on it would reconcile every person twice.
        .reconcile_on(keys(
            feeds.bindings.changes(|b: &RoleBinding| {
                // As the decision reads it: unset is not exclusive.
                let exclusive = b.status.as_ref().and_then(|s| s.exclusive);
                hash((lifecycle(b), exclusive.unwrap_or(false)))
            }),
            move |b: Arc<RoleBinding>| {
                let ns = b.namespace().unwrap_or_default();
                u2.get(&ns, &b.spec.user_ref.name).map(|u| key_of(&*u))
            },
        ))
        // A binding pointed at another person (spec.userRef edited) wakes the one it left too:
        // their store assignments still hold its role until their own reconcile takes it out.
        .reconcile_on(keys(left, move |(ns, person)| {
            u4.get(&ns, &person).map(|u| key_of(&*u))
        }))
        // A location group's spec (its place in the tree) decides whether the bindings scoped to
        // it, or to a group below it, grant anything: it wakes the people with a scoped binding in
        // its namespace.
        .reconcile_on(keys(
            feeds.groups.changes(lifecycle),
            move |g: Arc<LocationGroup>| {
                let ns = g.namespace().unwrap_or_default();
                let people: std::collections::BTreeSet<String> = bindings
                    .list(&ns)
                    .iter()
                    .filter(|b| b.spec.scope.is_some())
                    .map(|b| b.spec.user_ref.name.clone())
                    .collect();
                people
                    .into_iter()
                    .map(|name| ObjectRef::new(&name).within(&ns))
                    .collect::<Vec<_>>()
            },
        ))
        // Who holds an address is decided among all its holders (DuplicateEmail), so one that
        // arrives, leaves or changes address wakes the holders of its old address and its new one.
        // The first list too: `addresses` must know who held what before any change.
        .reconcile_on(keys(
            feeds.users.changes_and_first_list(|u: &SystemUser| {
                hash((
                    u.spec.email.to_lowercase(),
                    u.metadata.deletion_timestamp.is_some(),
                ))
            }),
            move |u: Arc<SystemUser>| {
                let ns = u.namespace().unwrap_or_default();
                let uid = u.metadata.uid.clone().unwrap_or_default();
                let email = u.spec.email.to_lowercase();
                let old = {
                    let mut seen = addresses.lock().unwrap_or_else(|p| p.into_inner());
                    if u.metadata.deletion_timestamp.is_some() {
                        seen.remove(&uid)
                    } else {
                        seen.insert(uid, email.clone())
                    }
                };
                let mut emails = vec![email];
                emails.extend(old.filter(|o| o != &emails[0]));
                emails
                    .iter()
                    .flat_map(|e| u3.with_key(&ns, e))
                    .filter(|p| p.metadata.uid != u.metadata.uid)
                    .map(|p| key_of(&*p))
                    .collect::<Vec<_>>()
            },
        ))
        .reconcile_on(wake)
        .reconcile_on(visits)
        .with_config(tuned(people, PROMPT))
        .shutdown_on_signal()
        .run(system_user::reconcile, error_policy, ctx)
        .for_each(intake.handled())
}

/// Tenant: its spec and the release annotation; its people being deleted (the guard). Their
/// arrivals and phases are the census's ([`tenant_census`]): were they triggers here, a bulk
/// import would reconcile each Tenant hundreds of times, and the trailing debounce would hold
/// its own first reconcile (its finalizer, its record in the store) back meanwhile.
fn tenants(feeds: &mut Feeds, ctx: Arc<Context>) -> impl Future<Output = ()> + use<> {
    let (visits, intake) = resync(feeds, &ctx.tenants, ctx.settings.resync, 4);
    keyed(ctx.tenants.clone())
        .reconcile_on(keys(feeds.tenants.changes(tenant_key), |o| {
            Some(key_of(&*o))
        }))
        .reconcile_on(keys(
            feeds.users.changes(|u: &SystemUser| {
                hash((
                    &u.spec.tenant_ref.name,
                    u.metadata.deletion_timestamp.is_some(),
                ))
            }),
            |u: Arc<SystemUser>| {
                let leaving = u.metadata.deletion_timestamp.is_some();
                u.namespace()
                    .filter(|_| leaving)
                    .map(|ns| ObjectRef::new(&u.spec.tenant_ref.name).within(&ns))
            },
        ))
        .reconcile_on(visits)
        .with_config(tuned(4, PROMPT))
        .shutdown_on_signal()
        .run(tenant::reconcile, error_policy, ctx)
        .for_each(intake.handled())
}

/// The Tenant census: its people's phases, counted again into its status once they have been
/// quiet for [`SUMMARY`].
fn tenant_census(feeds: &mut Feeds, ctx: Arc<Context>) -> impl Future<Output = ()> + use<> {
    // Its resync counts each Tenant once after a start (the first list wakes nothing), and
    // again each period, writing only what changed.
    let (visits, intake) = resync(feeds, &ctx.tenants, ctx.settings.resync, 2);
    keyed(ctx.tenants.clone())
        .reconcile_on(keys(feeds.tenants.changes(|_| 0), |o| Some(key_of(&*o))))
        .reconcile_on(keys(
            feeds.users.changes(|u: &SystemUser| {
                hash((
                    u.status.as_ref().and_then(|s| s.phase),
                    &u.spec.tenant_ref.name,
                ))
            }),
            |u: Arc<SystemUser>| {
                u.namespace()
                    .map(|ns| ObjectRef::new(&u.spec.tenant_ref.name).within(&ns))
            },
        ))
        .reconcile_on(visits)
        .with_config(tuned(2, SUMMARY))
        .shutdown_on_signal()
        .run(tenant::recount, error_policy, ctx)
        .for_each(intake.handled())
}

/// LocationGroup: any group's spec in the namespace (parents decide children); tenants.
fn location_groups(feeds: &mut Feeds, ctx: Arc<Context>) -> impl Future<Output = ()> + use<> {
    let (g1, g2) = (ctx.by_ns.groups.clone(), ctx.by_ns.groups.clone());
    let (visits, intake) = resync(feeds, &ctx.groups, ctx.settings.resync, 8);
    keyed(ctx.groups.clone())
        .reconcile_on(keys(feeds.groups.changes(lifecycle), |o| Some(key_of(&*o))))
        .reconcile_on(keys(
            feeds.groups.changes(lifecycle),
            move |g: Arc<LocationGroup>| in_namespace(&g1, g.namespace(), |_| true),
        ))
        .reconcile_on(keys(
            feeds.tenants.changes(lifecycle),
            move |t: Arc<Tenant>| in_namespace(&g2, t.namespace(), |_| true),
        ))
        .reconcile_on(visits)
        .with_config(tuned(8, PROMPT))
        .shutdown_on_signal()
        .run(location_group::reconcile, error_policy, ctx)
        .for_each(intake.handled())
}

/// RoleBinding: its spec; its siblings (same user), their specs and phases; its user; groups;
/// the catalogue; a sibling that moved to another person (`left`, from [`moved_away`]).
fn role_bindings(
    feeds: &mut Feeds,
    ctx: Arc<Context>,
    left: Moved,
) -> impl Future<Output = ()> + use<> {
    let (b1, b2, b3, b4, b5) = (
        ctx.by_ns.bindings.clone(),
        ctx.by_ns.bindings.clone(),
        ctx.by_ns.bindings.clone(),
        ctx.by_ns.bindings.clone(),
        ctx.by_ns.bindings.clone(),
    );
    let (visits, intake) = resync(feeds, &ctx.bindings, ctx.settings.resync, 16);
    keyed(ctx.bindings.clone())
        .reconcile_on(keys(feeds.bindings.changes(lifecycle), |o| {
            Some(key_of(&*o))
        }))
        // A sibling's spec, or its phase: one that expires frees what it blocked, without an edit.
        // Not the binding itself: its own phase is what its reconcile just wrote.
        .reconcile_on(keys(
            feeds.bindings.changes(|b: &RoleBinding| {
                hash((lifecycle(b), b.status.as_ref().and_then(|s| s.phase)))
            }),
            move |b: Arc<RoleBinding>| {
                let me = b.name_any();
                with_key(&b1, b.namespace(), &b.spec.user_ref.name, move |o| {
                    o.name_any() != me
                })
            },
        ))
        // A binding moved to another person frees what it blocked among the bindings of the one
        // it left: they are decided again, not at the next resync.
        .reconcile_on(keys(left, move |(ns, person)| {
            with_key(&b5, Some(ns), &person, |_| true)
        }))
        .reconcile_on(keys(
            feeds
                .users
                .changes(|u: &SystemUser| hash((lifecycle(u), &u.spec.tenant_ref.name))),
            move |u: Arc<SystemUser>| with_key(&b2, u.namespace(), &u.name_any(), |_| true),
        ))
        .reconcile_on(keys(
            feeds.groups.changes(lifecycle),
            move |g: Arc<LocationGroup>| {
                in_namespace(&b3, g.namespace(), |o| o.spec.scope.is_some())
            },
        ))
        .reconcile_on(keys(
            feeds.tenants.changes(lifecycle),
            move |t: Arc<Tenant>| in_namespace(&b4, t.namespace(), |_| true),
        ))
        .reconcile_on(visits)
        // Not more: at 64 at once, an onboarding of 10,000 decided half again as many bindings
        // (1.50 reconciles each, against 1.06), most of them before their person was there
        // (Waiting, then Bound: 4,400 more status writes and 5,300 more Events), and took longer.
        .with_config(tuned(16, PROMPT))
        .shutdown_on_signal()
        .run(role_binding::reconcile, error_policy, ctx)
        .for_each(intake.handled())
}

/// The people (namespace, name) RoleBindings were pointed away from, in the order the
/// bindings' watch saw it.
type Moved = futures::channel::mpsc::UnboundedReceiver<(String, String)>;

/// One [`Moves`] map over the bindings' watch, each person it reports handed to both
/// controllers that wake on it: the people's (to take the binding's role out of the store)
/// and the bindings' (to decide that person's other bindings again).
fn moved_away(bindings: &mut Feed<RoleBinding>) -> (Moved, Moved) {
    let (people, people_rx) = futures::channel::mpsc::unbounded();
    let (siblings, siblings_rx) = futures::channel::mpsc::unbounded();
    let mut moves = Moves::default();
    bindings.inspect(move |event| {
        for left in moves.observe(event) {
            let _ = people.unbounded_send(left.clone());
            let _ = siblings.unbounded_send(left);
        }
    });
    (people_rx, siblings_rx)
}
