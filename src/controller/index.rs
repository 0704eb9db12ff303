//! The caches by namespace. Every decision is per namespace (a person's duplicates, a binding's
//! siblings, a group's parents), so each reads its namespace only: with 10,000 people in 20
//! namespaces a reconcile looks at 500, not 10,000. The index holds the reflector's own `Arc`s
//! (no second copy of any object), and a version per namespace tells when its snapshot of
//! decisions must be made again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

/// A version per namespace, bumped by every change of any kind there.
#[derive(Default)]
pub struct Versions {
    map: Mutex<HashMap<String, u64>>,
}

impl Versions {
    fn bump(&self, ns: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(ns.to_string()).or_default() += 1;
    }

    fn bump_all(&self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values_mut().for_each(|v| *v += 1);
    }

    /// The namespace's current version.
    pub fn of(&self, ns: &str) -> u64 {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(ns).copied().unwrap_or_default()
    }
}

/// One kind's objects by namespace and name.
pub struct ByNamespace<K> {
    map: RwLock<HashMap<String, BTreeMap<String, Arc<K>>>>,
    versions: Arc<Versions>,
}

impl<K> ByNamespace<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    /// An empty index bumping `versions`.
    pub fn new(versions: Arc<Versions>) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            versions,
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
                    self.write()
                        .entry(ns.clone())
                        .or_default()
                        .insert(name, cached);
                }
                self.versions.bump(&ns);
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                if let Some(objects) = self.write().get_mut(&ns) {
                    objects.remove(&name);
                }
                self.versions.bump(&ns);
            }
            // A (re)list is complete: take the reflector's new state whole.
            watcher::Event::InitDone => {
                let mut fresh: HashMap<String, BTreeMap<String, Arc<K>>> = HashMap::new();
                for o in store.state() {
                    let (ns, name) = key(&o);
                    fresh.entry(ns).or_default().insert(name, o);
                }
                *self.write() = fresh;
                self.versions.bump_all();
                for ns in self.read().keys() {
                    self.versions.bump(ns);
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

    fn tenant(ns: &str, name: &str) -> Tenant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "usher.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"displayName": name}
        }))
        .unwrap()
    }

    #[test]
    fn follows_the_reflector_per_namespace_and_versions_each() {
        let versions = Arc::new(Versions::default());
        let index = ByNamespace::<Tenant>::new(versions.clone());
        let (reader, mut writer) = kube::runtime::reflector::store::<Tenant>();
        let mut feed = |event: watcher::Event<Tenant>| {
            writer.apply_watcher_event(&event);
            index.observe(&event, &reader);
        };
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(tenant("a", "one")));
        feed(watcher::Event::InitApply(tenant("b", "two")));
        feed(watcher::Event::InitDone);
        assert_eq!(index.list("a").len(), 1);
        let before = (versions.of("a"), versions.of("b"));
        feed(watcher::Event::Apply(tenant("a", "three")));
        assert_eq!(index.list("a").len(), 2);
        assert!(versions.of("a") > before.0, "a changed");
        assert_eq!(versions.of("b"), before.1, "b did not");
        feed(watcher::Event::Delete(tenant("a", "one")));
        let names: Vec<String> = index
            .list("a")
            .iter()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["three"]);
        assert!(index.list("nowhere").is_empty());
    }
}
