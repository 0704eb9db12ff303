//! The caches by namespace and by the keys reconciles look things up by (a person's email, a
//! binding's person). A reconcile then reads the few objects its decision depends on — with
//! 10,000 people a person's duplicates are found among those with the same email, not by a scan
//! of everyone. The index holds the reflector's own `Arc`s: no second copy of any object.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

type Objects<K> = BTreeMap<String, Arc<K>>;
/// The objects of each (namespace, second key), in name order.
type Keyed<K> = HashMap<(String, String), Vec<Arc<K>>>;

/// One kind's objects by namespace and name, and by namespace and a second key (a person's
/// email, a binding's person) for the lookups a reconcile makes.
pub struct ByNamespace<K> {
    map: RwLock<HashMap<String, Objects<K>>>,
    /// Mostly one object a key: a short list in name order costs one small allocation where a
    /// map of its own cost a tree node (about 400 bytes an object at 10,000 people).
    by_key: RwLock<Keyed<K>>,
    key: fn(&K) -> Option<String>,
}

fn name_of<K: Resource>(o: &K) -> &str {
    o.meta().name.as_deref().unwrap_or_default()
}

/// Take the object called `name` out of the list of `(ns, key)`, and the list out of the
/// index once it is empty.
fn unlist<K: Resource>(by_key: &mut Keyed<K>, ns: &str, key: String, name: &str) {
    let slot = (ns.to_string(), key);
    if let Some(objects) = by_key.get_mut(&slot) {
        objects.retain(|o| name_of(&**o) != name);
        if objects.is_empty() {
            by_key.remove(&slot);
        }
    }
}

impl<K> ByNamespace<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    /// An empty index with a second key `key`.
    pub fn new(key: fn(&K) -> Option<String>) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            by_key: RwLock::new(HashMap::new()),
            key,
        }
    }

    fn insert(&self, ns: &str, name: &str, o: Arc<K>) {
        let old = self
            .write()
            .entry(ns.to_string())
            .or_default()
            .insert(name.to_string(), o.clone());
        let mut by_key = self.by_key.write().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = old.as_deref().and_then(self.key) {
            unlist(&mut by_key, ns, k, name);
        }
        if let Some(k) = (self.key)(&o) {
            let objects = by_key.entry((ns.to_string(), k)).or_default();
            match objects.binary_search_by(|p| name_of(&**p).cmp(name)) {
                Ok(i) => objects[i] = o,
                Err(i) => objects.insert(i, o),
            }
        }
    }

    fn remove(&self, ns: &str, name: &str) {
        let old = self
            .write()
            .get_mut(ns)
            .and_then(|objects| objects.remove(name));
        if let Some(k) = old.as_deref().and_then(self.key) {
            let mut by_key = self.by_key.write().unwrap_or_else(|p| p.into_inner());
            unlist(&mut by_key, ns, k, name);
        }
    }

    /// Follow one watch event, after the reflector `store` has applied it.
    pub fn observe(&self, event: &watcher::Event<K>, store: &Store<K>) {
        let key = |o: &K| {
            let m = o.meta();
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Apply(o) => {
                let (ns, name) = key(o);
                if let Some(cached) = store.get(&ObjectRef::from_obj(o)) {
                    self.insert(&ns, &name, cached);
                }
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                self.remove(&ns, &name);
            }
            // A (re)list is complete: take the reflector's new state whole.
            watcher::Event::InitDone => {
                self.write().clear();
                self.by_key
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                for o in store.state() {
                    let (ns, name) = key(&o);
                    self.insert(&ns, &name, o);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// The objects of namespace `ns`, by name.
    pub fn list(&self, ns: &str) -> Vec<Arc<K>> {
        self.read()
            .get(ns)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects of namespace `ns` whose second key is `key`.
    pub fn with_key(&self, ns: &str, key: &str) -> Vec<Arc<K>> {
        self.by_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(ns.to_string(), key.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// One object by namespace and name.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.read().get(ns)?.get(name).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, BTreeMap<String, Arc<K>>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, BTreeMap<String, Arc<K>>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Tenant;

    #[test]
    fn follows_the_reflector_by_namespace_and_second_key() {
        let index = ByNamespace::<Tenant>::new(|t| Some(t.spec.display_name.clone()));
        let (reader, mut writer) = kube::runtime::reflector::store::<Tenant>();
        let mut feed = |event: watcher::Event<Tenant>| {
            writer.apply_watcher_event(&event);
            index.observe(&event, &reader);
        };
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(Tenant::named("a", "one")));
        feed(watcher::Event::InitApply(Tenant::named("b", "two")));
        feed(watcher::Event::InitDone);
        assert_eq!(index.list("a").len(), 1);
        feed(watcher::Event::Apply(Tenant::named("a", "three")));
        assert_eq!(index.list("a").len(), 2);
        assert_eq!(index.list("b").len(), 1);
        feed(watcher::Event::Delete(Tenant::named("a", "one")));
        let names: Vec<String> = index
            .list("a")
            .iter()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["three"]);
        assert!(index.list("nowhere").is_empty());
        // The second key follows changes: "three" renamed to "four" is found under "four" only.
        let mut renamed = Tenant::named("a", "three");
        renamed.spec.display_name = "four".into();
        feed(watcher::Event::Apply(renamed));
        assert!(index.with_key("a", "three").is_empty());
        assert_eq!(index.with_key("a", "four").len(), 1);
        assert!(index.get("a", "three").is_some());
        // Several objects under one key, in name order; a deletion leaves the others.
        let mut zed = Tenant::named("a", "zed");
        zed.spec.display_name = "four".into();
        let mut abe = Tenant::named("a", "abe");
        abe.spec.display_name = "four".into();
        feed(watcher::Event::Apply(zed));
        feed(watcher::Event::Apply(abe));
        let named = |key| -> Vec<String> {
            index
                .with_key("a", key)
                .iter()
                .map(|t| t.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(named("four"), ["abe", "three", "zed"]);
        feed(watcher::Event::Delete(Tenant::named("a", "three")));
        assert_eq!(named("four"), ["abe", "zed"]);
        feed(watcher::Event::Delete(Tenant::named("a", "abe")));
        feed(watcher::Event::Delete(Tenant::named("a", "zed")));
        assert!(named("four").is_empty());
        let slot = ("a".to_string(), "four".to_string());
        assert!(!index.by_key.read().unwrap().contains_key(&slot));
    }
}
