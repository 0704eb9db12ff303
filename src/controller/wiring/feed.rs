//! The watch feeds and the trigger filters the controllers are wired with: one watch per kind
//! ([`Feed`]), fanned out to every controller that subscribes, and each trigger filtered
//! ([`changes`]) so that only a relevant change, or a deletion, wakes a reconcile.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::controller::index::ByNamespace;
use crate::crd::{RoleBinding, Tenant};
use crate::metrics::{KindLabels, Metrics};
use crate::plan::offboarding::ALLOW_ANNOTATION;

pub(super) fn hash(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// One watch of a kind, cached in a reflector and handed to every stream taken from it with
/// [`Feed::changes`], each getting only the changes its key says are worth a reconcile (most
/// watch events are status writes that concern one subscriber or none), all of them sharing
/// one copy of the object. The objects of the first list are not handed on: after a start each
/// controller visits every object once, as fast as it takes them ([`super::resync::paced`]),
/// rather than have a dozen subscribers queue 20,000 objects at once. [`Feed::run`] consumes the feed and starts the
/// watch, so a subscriber can be neither added after the start nor miscounted: each `changes`
/// is one channel, and every channel has its reader. An object that does not decode (stored under an older schema,
/// or written around admission) is reported and left out, so that it cannot stop the watch of
/// every other object of its kind.
pub(super) struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<DeserializeGuard<K>>,
    invalid: Box<dyn Fn(&InvalidObject) + Send>,
    index: Arc<ByNamespace<K>>,
    reader: Store<K>,
    writer: reflector::store::Writer<K>,
    senders: Vec<Subscriber<K>>,
    inspectors: Vec<Inspector<K>>,
    /// Set once the first list is complete (and the cache with it).
    listed: tokio::sync::watch::Sender<bool>,
    /// Only objects with these labels (`--shard-selector`); None: every object.
    selector: Option<String>,
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// The watch of `api`, restricted to the objects `selector` matches (a Kubernetes label
    /// selector; None: all), reporting undecodable objects through `invalid` and indexing the
    /// cached ones in `index`.
    pub(super) fn new(
        api: Api<DeserializeGuard<K>>,
        invalid: impl Fn(&InvalidObject) + Send + 'static,
        index: Arc<ByNamespace<K>>,
        selector: Option<String>,
    ) -> Self {
        let (reader, writer) = reflector::store::<K>();
        Self {
            api,
            invalid: Box::new(invalid),
            index,
            reader,
            writer,
            senders: Vec::new(),
            inspectors: Vec::new(),
            listed: tokio::sync::watch::Sender::new(false),
            selector,
        }
    }

    /// Becomes true once the first list is complete: the cache holds every object.
    pub(super) fn listed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.listed.subscribe()
    }

    /// The cache the watch fills.
    pub(super) fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// A stream of the objects whose `key` changed since last seen, and of every deleted
    /// object, after the cache and the index saw them; not the objects of the first list (their
    /// keys are remembered, so a relist passes on only what changed). Each is shared (an `Arc`: the cache's
    /// own copy where it has this version) by every subscriber it concerns, rather than cloned
    /// for each: at a cold start the watch lists every object faster than the controllers take
    /// them, and a dozen subscribers' clones of 20,000 objects would wait in their channels.
    pub(super) fn changes(
        &mut self,
        key: impl Fn(&K) -> u64 + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe(key, false)
    }

    /// [`Feed::changes`], and the objects of the first list too: for a subscriber that
    /// remembers what it was handed (who held which address), not only what it wakes.
    pub(super) fn changes_and_first_list(
        &mut self,
        key: impl Fn(&K) -> u64 + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe(key, true)
    }

    /// Call `inspect` with every event, in order, once the cache and the index hold it: for
    /// what must see every object, the first list's too, without a copy of each waiting in a
    /// channel (at a cold start the watch lists faster than the controllers take objects).
    pub(super) fn inspect(&mut self, inspect: impl FnMut(&watcher::Event<K>) + Send + 'static) {
        self.inspectors.push(Box::new(inspect));
    }

    fn subscribe(
        &mut self,
        key: impl Fn(&K) -> u64 + Send + 'static,
        listed: bool,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded();
        self.senders.push(Subscriber {
            tx,
            key: Box::new(key),
            seen: HashMap::new(),
            listed,
            held: Vec::new(),
        });
        rx
    }

    /// The watch, until it ends: fills the cache and the index, then hands each event on.
    pub(super) fn run(self) -> impl std::future::Future<Output = ()> + Send {
        let Self {
            api,
            invalid,
            index,
            reader,
            writer,
            mut senders,
            mut inspectors,
            listed,
            selector,
        } = self;
        let cached = reader.clone();
        // Lists in pages (500 objects each, kube's default) rather than from the API server's
        // cache at any version: a list at resourceVersion 0 ignores the page size, so a start
        // among 10,000 people read them in one response and held its body and every decoded
        // object at once (BENCHMARKS.md, the restarted process's peak). Since Kubernetes 1.34
        // a paged list at the latest version is served from the same cache.
        let mut config = watcher::Config::default();
        if let Some(selector) = &selector {
            config = config.labels(selector);
        }
        watcher(api, config)
            .default_backoff()
            .filter_map(move |event| {
                futures::future::ready(match event {
                    Ok(event) => screen(event, &cached, &invalid).map(Ok),
                    Err(e) => Some(Err(e)),
                })
            })
            .reflect(writer)
            .for_each(move |event| {
                match event {
                    Ok(event) => {
                        index.observe(&event, &reader);
                        for inspect in &mut inspectors {
                            inspect(&event);
                        }
                        let mut shared = None;
                        for subscriber in &mut senders {
                            subscriber.offer(&event, &reader, &mut shared);
                        }
                        // After the index: a catch-up that starts now reads a complete one.
                        if matches!(event, watcher::Event::InitDone) {
                            listed.send_replace(true);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kind = %K::kind(&()), "watch error; retrying")
                    }
                }
                futures::future::ready(())
            })
    }
}

/// The annotation `kubectl apply` keeps the last applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The event for the objects that decoded. An object that no longer decodes leaves the cache
/// (as a deletion of the version cached before) rather than lingering there stale.
fn screen<K>(
    event: watcher::Event<DeserializeGuard<K>>,
    cached: &Store<K>,
    invalid: &impl Fn(&InvalidObject),
) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    // managedFields and `kubectl apply`'s copy of the whole object are most of an object's
    // size, and usher reads neither.
    let lean = |mut o: K| {
        let meta = o.meta_mut();
        meta.managed_fields = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.remove(LAST_APPLIED);
        }
        o
    };
    let gone = |bad: InvalidObject| {
        invalid(&bad);
        let key = ObjectRef::<K>::new(bad.metadata.name.as_deref().unwrap_or_default());
        let key = match &bad.metadata.namespace {
            Some(ns) => key.within(ns),
            None => key,
        };
        cached.get(&key).map(|old| (*old).clone())
    };
    match event {
        watcher::Event::Apply(DeserializeGuard(o)) => match o {
            Ok(o) => Some(watcher::Event::Apply(lean(o))),
            Err(bad) => gone(bad).map(watcher::Event::Delete),
        },
        watcher::Event::Delete(DeserializeGuard(o)) => match o {
            Ok(o) => Some(watcher::Event::Delete(lean(o))),
            Err(bad) => gone(bad).map(watcher::Event::Delete),
        },
        // Left out of a relist, it is left out of the cache the relist rebuilds.
        watcher::Event::InitApply(DeserializeGuard(o)) => match o {
            Ok(o) => Some(watcher::Event::InitApply(lean(o))),
            Err(bad) => {
                invalid(&bad);
                None
            }
        },
        watcher::Event::Init => Some(watcher::Event::Init),
        watcher::Event::InitDone => Some(watcher::Event::InitDone),
    }
}

/// Say, once per version, that an object cannot be read: a log line, a metric, and a Warning
/// Event on the object that `kubectl describe` shows, naming the field at fault.
pub(super) fn report_invalid<K>(
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
) -> impl Fn(&InvalidObject) + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + 'static,
{
    let seen = std::sync::Mutex::new(std::collections::HashSet::<(String, String)>::new());
    move |bad: &InvalidObject| {
        let m = bad.metadata.clone();
        let version = (
            m.uid.clone().unwrap_or_default(),
            m.resource_version.clone().unwrap_or_default(),
        );
        {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() > 10_000 {
                seen.clear();
            }
            if !seen.insert(version) {
                return;
            }
        }
        // The kinds are static types: their names are 'static, which a metric label needs.
        let kind: &'static str = match K::kind(&()) {
            std::borrow::Cow::Borrowed(kind) => kind,
            std::borrow::Cow::Owned(_) => "unknown",
        };
        metrics
            .invalid_objects
            .get_or_create(&KindLabels { kind })
            .inc();
        let (client, recorder, error) = (client.clone(), recorder.clone(), bad.error.clone());
        tokio::spawn(async move {
            let error = where_it_fails::<K>(&client, &m).await.unwrap_or(error);
            tracing::warn!(
                kind,
                namespace = m.namespace.as_deref().unwrap_or_default(),
                object = m.name.as_deref().unwrap_or_default(),
                %error,
                "an object does not match usher's schema; skipped until it is fixed"
            );
            let reference = ObjectReference {
                api_version: Some(K::api_version(&()).to_string()),
                kind: Some(kind.to_string()),
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                resource_version: m.resource_version.clone(),
                ..Default::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "Unreadable".into(),
                note: Some(crate::crd::unreadable(kind, &error)),
                action: "Decode".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish an Event");
            }
        });
    }
}

/// The decoding error with the path of the field at fault (`spec.email: invalid type …`), read
/// from the object as the API server serves it. None when it cannot be read again.
async fn where_it_fails<K>(client: &Client, m: &ObjectMeta) -> Option<String>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match &m.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let raw = serde_json::to_value(api.get(m.name.as_deref()?).await.ok()?).ok()?;
    match serde_path_to_error::deserialize::<_, K>(raw) {
        Err(e) => Some(format!("{}: {}", e.path(), e.inner())),
        Ok(_) => None,
    }
}

/// What [`Feed::inspect`] calls with every event.
type Inspector<K> = Box<dyn FnMut(&watcher::Event<K>) + Send>;

/// One subscriber of a [`Feed`]: its channel, the key whose change is worth passing on, the
/// key each object had when last passed on (by a hash of its uid: 16 bytes an object rather
/// than a copy of the uid, in each of the dozen subscribers), whether the first list is over
/// (or passed on too), and which objects a list in progress changed, held by name until the
/// list is complete.
struct Subscriber<K: Resource<DynamicType = ()>> {
    tx: mpsc::UnboundedSender<Arc<K>>,
    key: Box<dyn Fn(&K) -> u64 + Send>,
    seen: HashMap<u64, u64>,
    listed: bool,
    held: Vec<ObjectRef<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone> Subscriber<K> {
    /// Pass `event`'s object on if its key changed, or it was deleted, as `shared`: one copy
    /// for every subscriber of the event, made by the first that needs it. That is the copy
    /// `cache` holds when the cache has this version (an `Apply`, just written to it), and a
    /// copy of its own otherwise (a deletion). A list's changes are held, by name, until it is
    /// complete: kube's cache keeps a list aside until then, and a reconcile woken earlier would
    /// find the object missing or as it was before. Then they are handed on as the cache's
    /// copies. A copy of each made as it was listed would wait beside the cache until the
    /// subscriber took it: at a cold start among 10,000 people, a second copy of every person.
    fn offer(&mut self, event: &watcher::Event<K>, cache: &Store<K>, shared: &mut Option<Arc<K>>) {
        let uid = |o: &K| hash(o.meta().uid.as_deref().unwrap_or_default());
        let mut copy = |o: &K| {
            shared
                .get_or_insert_with(|| {
                    cache
                        .get(&key_of(o))
                        .filter(|c| c.meta().resource_version == o.meta().resource_version)
                        .unwrap_or_else(|| Arc::new(o.clone()))
                })
                .clone()
        };
        match event {
            watcher::Event::Apply(o) => {
                let k = (self.key)(o);
                if self.seen.insert(uid(o), k) != Some(k) {
                    let _ = self.tx.unbounded_send(copy(o));
                }
            }
            watcher::Event::InitApply(o) => {
                let k = (self.key)(o);
                if self.seen.insert(uid(o), k) != Some(k) && self.listed {
                    self.held.push(key_of(o));
                }
            }
            watcher::Event::Delete(o) => {
                self.seen.remove(&uid(o));
                let _ = self.tx.unbounded_send(copy(o));
            }
            watcher::Event::InitDone => {
                self.listed = true;
                for o in self.held.drain(..).filter_map(|k| cache.get(&k)) {
                    let _ = self.tx.unbounded_send(o);
                }
            }
            watcher::Event::Init => {}
        }
    }
}

/// A Tenant's lifecycle plus the release annotation of the offboarding guard.
pub(super) fn tenant_key(t: &Tenant) -> u64 {
    hash((lifecycle(t), t.annotations().get(ALLOW_ANNOTATION)))
}

/// What wakes an object's own controller: its spec and its deletion. Not our finalizer being
/// added: the reconcile that adds it applies the object in the same pass.
pub(super) fn lifecycle<K: Resource>(o: &K) -> u64 {
    let m = o.meta();
    hash((m.generation, m.deletion_timestamp.is_some()))
}

pub(super) fn in_namespace<K>(
    index: &ByNamespace<K>,
    ns: Option<String>,
    keep: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    keys_kept(index.list(ns.as_deref().unwrap_or_default()), keep)
}

/// The queue keys of the `objects` that `keep` keeps.
fn keys_kept<K>(objects: Vec<Arc<K>>, keep: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    objects
        .iter()
        .filter(|o| keep(o))
        .map(|o| key_of(&**o))
        .collect()
}

/// Who each RoleBinding named when last seen ([`Feed::inspect`], every event, the first list's
/// too): an edit of `spec.userRef` must also wake the person the binding left, whose store
/// assignments hold its role until their own reconcile takes it out.
///
/// Keyed by a hash of the uid, the name boxed: about 40 bytes a binding. A clash of two 64-bit
/// hashes (about one in 10^11 among 10,000) would wake a person for nothing or leave one to their
/// resync visit.
#[derive(Default)]
pub(super) struct Moves {
    by_uid: HashMap<u64, Box<str>>,
    held: Vec<(String, String)>,
}

impl Moves {
    /// The people (namespace, name) that `event` moved a binding away from. A relist's are held
    /// until it is complete, as [`Feed::changes`] holds its changes: a reconcile woken earlier
    /// would read the binding from kube's cache as it was, still naming them.
    pub(super) fn observe(&mut self, event: &watcher::Event<RoleBinding>) -> Vec<(String, String)> {
        match event {
            watcher::Event::Apply(b) => self.moved(b, false).into_iter().collect(),
            watcher::Event::Delete(b) => self.moved(b, true).into_iter().collect(),
            watcher::Event::InitApply(b) => {
                let left = self.moved(b, false);
                self.held.extend(left);
                Vec::new()
            }
            watcher::Event::InitDone => std::mem::take(&mut self.held),
            watcher::Event::Init => Vec::new(),
        }
    }

    fn moved(&mut self, b: &RoleBinding, deleted: bool) -> Option<(String, String)> {
        let uid = hash(b.metadata.uid.as_deref().unwrap_or_default());
        let to = b.spec.user_ref.name.as_str();
        let before = if deleted {
            self.by_uid.remove(&uid)
        } else {
            self.by_uid.insert(uid, to.into())
        };
        before
            .filter(|was| &**was != to)
            .map(|was| (b.metadata.namespace.clone().unwrap_or_default(), was.into()))
    }
}

/// The queue keys `map` names for each object of `changes`: what wakes a controller. Every
/// trigger is a bare key (`reconcile_on`), not a watched object (`for_stream`,
/// `watches_stream`): for those kube queues a reason beside each key (a reference to the object
/// with its API resource, nine strings), and keeps each queued request twice. At the peak of a
/// bulk import of 10,000 people that was 15 MB of 60 (README, "Where the memory goes").
pub(super) fn keys<K, T, I>(
    changes: impl Stream<Item = K> + Send + 'static,
    mut map: impl FnMut(K) -> I + Send + 'static,
) -> impl Stream<Item = ObjectRef<T>> + Send + 'static
where
    T: Resource<DynamicType = ()> + 'static,
    I: IntoIterator<Item = ObjectRef<T>>,
    I::IntoIter: Send + 'static,
{
    changes.flat_map(move |o| futures::stream::iter(map(o)))
}

/// A controller of the objects cached in `store`, woken only by the [`keys`] given to its
/// `reconcile_on`: its own stream of objects is empty and never ends (an ended one would
/// stop it).
pub(super) fn keyed<K>(store: Store<K>) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Controller::for_stream(futures::stream::pending(), store)
}

/// The key of `o` for a controller's queue: its name and namespace only. `from_obj` would
/// also copy its resourceVersion and uid, which the queue neither compares nor reads, into each
/// of the thousands of requests a bulk import queues.
pub(super) fn key_of<K: Resource<DynamicType = ()>>(o: &K) -> ObjectRef<K> {
    let m = o.meta();
    let key = ObjectRef::new(m.name.as_deref().unwrap_or_default());
    match &m.namespace {
        Some(ns) => key.within(ns),
        None => key,
    }
}

/// The objects of namespace `ns` whose second key (a binding's person) is `key`, and that
/// `keep` keeps: read from the index by that key, not by a scan of the namespace.
pub(super) fn with_key<K>(
    index: &ByNamespace<K>,
    ns: Option<String>,
    key: &str,
    keep: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    keys_kept(index.with_key(ns.as_deref().unwrap_or_default(), key), keep)
}

/// Reconciles of one kind at a time at most `concurrency`, and a burst of triggers for one object
/// (its creation, its binding's, the finalizer, …) folded into one reconcile: the triggers that
/// come within `debounce` of each other (trailing edge; each one pushes the reconcile back, so
/// it also bounds how soon a lone change is acted on). Unbounded, a bulk import had hundreds of
/// reconciles queueing for the store's few connections.
pub(super) fn tuned(
    concurrency: u16,
    debounce: std::time::Duration,
) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .debounce(debounce)
        .concurrency(concurrency)
}

/// The debounce of the controllers a person waits on (apply → Pending, redeem → Active): a
/// creation and its binding's, made by one `kubectl apply`, arrive well within it.
pub(super) const PROMPT: std::time::Duration = std::time::Duration::from_millis(20);

/// The debounce of the Tenant census: a Tenant's status counts its people by phase, which a bulk
/// import changes many times a second; a recount once they have been quiet for this long. Being
/// trailing, a longer one would fold more recounts but leave the counts stale for longer.
pub(super) const SUMMARY: std::time::Duration = std::time::Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    #[test]
    fn a_queue_key_is_name_and_namespace_and_each_change_wakes_what_it_maps_to() {
        let mut tenant: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "usher.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "acme", "uid": "u-1",
                         "resourceVersion": "42"},
            "spec": {"displayName": "Acme"}
        }))
        .unwrap();
        let key = key_of(&tenant);
        assert_eq!(key, ObjectRef::new("acme").within("acme"));
        assert_eq!(key.extra.uid, None);
        assert_eq!(key.extra.resource_version, None);
        tenant.metadata.name = Some("globex".into());
        let changes = futures::stream::iter([tenant.clone(), tenant]);
        let woken: Vec<ObjectRef<Tenant>> = futures::executor::block_on(
            keys(changes, |t: Tenant| {
                let ns = t.metadata.namespace.clone().unwrap_or_default();
                vec![key_of(&t), ObjectRef::new("other").within(&ns)]
            })
            .collect(),
        );
        assert_eq!(woken.len(), 4);
        assert_eq!(woken[0], ObjectRef::new("globex").within("acme"));
        assert_eq!(woken[1], ObjectRef::new("other").within("acme"));
    }

    #[test]
    fn a_move_names_the_person_a_binding_left_and_a_relists_moves_wait_for_its_end() {
        let binding = |uid: &str, user: &str| {
            let mut b: RoleBinding = serde_json::from_value(serde_json::json!({
                "metadata": {"name": uid, "namespace": "acme", "uid": uid},
                "spec": {"userRef": {"name": user}, "role": "Manager"},
            }))
            .unwrap();
            b.metadata.uid = Some(uid.into());
            b
        };
        let left = |who: &str| vec![("acme".to_string(), who.to_string())];
        let none: Vec<(String, String)> = Vec::new();
        let mut moves = Moves::default();
        use watcher::Event::*;
        assert_eq!(moves.observe(&Init), none);
        assert_eq!(
            moves.observe(&InitApply(binding("b-1", "alice"))),
            none,
            "first list"
        );
        assert_eq!(moves.observe(&InitDone), none);
        assert_eq!(
            moves.observe(&Apply(binding("b-1", "alice"))),
            none,
            "unchanged"
        );
        assert_eq!(moves.observe(&Apply(binding("b-1", "bob"))), left("alice"));
        assert_eq!(
            moves.observe(&Apply(binding("b-2", "bob"))),
            none,
            "another binding"
        );
        assert_eq!(
            moves.observe(&Delete(binding("b-1", "bob"))),
            none,
            "deleted where it was"
        );
        assert_eq!(
            moves.observe(&Apply(binding("b-1", "carl"))),
            none,
            "forgotten once deleted"
        );
        assert_eq!(moves.observe(&Delete(binding("b-2", "carl"))), left("bob"));
        // A relist that finds a binding moved hands the move out only once it is complete.
        assert_eq!(moves.observe(&Init), none);
        assert_eq!(moves.observe(&InitApply(binding("b-1", "dora"))), none);
        assert_eq!(moves.observe(&InitDone), left("carl"));
        assert_eq!(moves.observe(&InitDone), none, "handed out once");
    }

    #[test]
    fn a_subscriber_gets_the_caches_copy_once_per_change_of_its_key_and_every_deletion() {
        let versioned = |rv: &str, name: &str| {
            let mut t = Tenant::named("acme", "acme");
            t.metadata.uid = Some("u-1".into());
            t.metadata.resource_version = Some(rv.into());
            t.spec.display_name = name.into();
            t
        };
        let (cache, mut writer) = reflector::store::<Tenant>();
        let (tx, mut rx) = mpsc::unbounded();
        let mut subscriber = Subscriber {
            tx,
            key: Box::new(|t: &Tenant| hash(&t.spec.display_name)),
            seen: HashMap::new(),
            listed: true,
            held: Vec::new(),
        };
        let mut feed = |event: watcher::Event<Tenant>, cache: &Store<Tenant>| {
            writer.apply_watcher_event(&event);
            subscriber.offer(&event, cache, &mut None);
        };
        feed(watcher::Event::Apply(versioned("1", "Acme")), &cache);
        let first = rx.try_recv().unwrap();
        let cached = cache.get(&ObjectRef::new("acme").within("acme")).unwrap();
        assert!(
            Arc::ptr_eq(&first, &cached),
            "the cache's copy, not a clone"
        );
        // A new version with the same key wakes nobody.
        feed(watcher::Event::Apply(versioned("2", "Acme")), &cache);
        assert!(rx.try_recv().is_err());
        // A changed key does, with that version even if the cache is elsewhere already.
        let (other, _w) = reflector::store::<Tenant>();
        feed(watcher::Event::Apply(versioned("3", "Acme Corp")), &other);
        assert_eq!(rx.try_recv().unwrap().spec.display_name, "Acme Corp");
        feed(watcher::Event::Delete(versioned("3", "Acme Corp")), &cache);
        assert!(rx.try_recv().is_ok(), "every deletion is passed on");
    }

    #[test]
    fn the_subscribers_of_a_listed_object_get_the_caches_copy() {
        let (cache, mut writer) = reflector::store::<Tenant>();
        let mut subscribers: Vec<_> = (0..3)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded();
                // After the first list: a relist.
                let subscriber = Subscriber {
                    tx,
                    key: Box::new(|_: &Tenant| 0),
                    seen: HashMap::new(),
                    listed: true,
                    held: Vec::new(),
                };
                (subscriber, rx)
            })
            .collect();
        let mut listed = Tenant::named("acme", "acme");
        listed.metadata.uid = Some("u-1".into());
        // kube's cache keeps a listed object aside until the list is complete: all three get
        // the cache's copy then, and no copy is made.
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(listed.clone()),
            watcher::Event::InitDone,
        ] {
            writer.apply_watcher_event(&event);
            let mut shared = None;
            for (subscriber, _) in &mut subscribers {
                subscriber.offer(&event, &cache, &mut shared);
            }
        }
        let copies: Vec<Arc<Tenant>> = subscribers
            .iter_mut()
            .map(|(_, rx)| rx.try_recv().unwrap())
            .collect();
        let cached = cache.get(&ObjectRef::new("acme").within("acme")).unwrap();
        assert!(copies.iter().all(|c| Arc::ptr_eq(c, &cached)));
        assert_eq!(
            Arc::strong_count(&cached),
            5,
            "the cache's, three subscribers', this one"
        );
    }

    #[test]
    fn the_first_list_is_remembered_not_passed_on_and_a_relist_passes_on_what_changed() {
        let named = |name: &str, display: &str| {
            let mut t = Tenant::named("acme", name);
            t.metadata.uid = Some(format!("u-{name}"));
            t.spec.display_name = display.into();
            t
        };
        let (cache, mut writer) = reflector::store::<Tenant>();
        let subscriber = |listed| {
            let (tx, rx) = mpsc::unbounded();
            let s = Subscriber {
                tx,
                key: Box::new(|t: &Tenant| hash(&t.spec.display_name)),
                seen: HashMap::new(),
                listed,
                held: Vec::new(),
            };
            (s, rx)
        };
        let (mut quiet, mut quiet_rx) = subscriber(false);
        let (mut every, mut every_rx) = subscriber(true);
        let mut feed = |event: watcher::Event<Tenant>| {
            writer.apply_watcher_event(&event);
            quiet.offer(&event, &cache, &mut None);
            every.offer(&event, &cache, &mut None);
        };
        let names = |rx: &mut mpsc::UnboundedReceiver<Arc<Tenant>>| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|t| t.name_any())
                .collect::<Vec<_>>()
        };
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(named("a", "A")));
        feed(watcher::Event::InitApply(named("b", "B")));
        feed(watcher::Event::InitDone);
        assert_eq!(names(&mut quiet_rx), Vec::<String>::new());
        assert_eq!(names(&mut every_rx), ["a", "b"]);
        // A relist (after the watch fell behind): only what changed meanwhile.
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(named("a", "A")));
        feed(watcher::Event::InitApply(named("b", "B, renamed")));
        // Held until the cache has the relist.
        assert_eq!(names(&mut quiet_rx), Vec::<String>::new());
        feed(watcher::Event::InitDone);
        assert_eq!(names(&mut quiet_rx), ["b"]);
        assert_eq!(names(&mut every_rx), ["b"]);
        feed(watcher::Event::Apply(named("a", "A, renamed")));
        assert_eq!(names(&mut quiet_rx), ["a"]);
    }

    #[test]
    fn the_cache_keeps_neither_managed_fields_nor_the_last_applied_copy() {
        let mut tenant: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "usher.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "acme"},
            "spec": {"displayName": "Acme"}
        }))
        .unwrap();
        tenant.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        tenant.metadata.annotations = Some(BTreeMap::from([
            (LAST_APPLIED.to_string(), "{\"big\": \"copy\"}".to_string()),
            (ALLOW_ANNOTATION.to_string(), "1".to_string()),
        ]));
        let (cache, _writer) = reflector::store::<Tenant>();
        let event = watcher::Event::Apply(DeserializeGuard(Ok(tenant)));
        let Some(watcher::Event::Apply(lean)) = screen(event, &cache, &|_| {}) else {
            panic!("an Apply comes out");
        };
        assert_eq!(lean.metadata.managed_fields, None);
        let annotations = lean.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(
            annotations.get(ALLOW_ANNOTATION).map(String::as_str),
            Some("1")
        );
    }
}
