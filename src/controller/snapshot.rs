//! A namespace as the decisions see it, built from the controllers' caches: group states and
//! binding verdicts are computed for the whole namespace, the same way `usher validate` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;

use super::Context;
use crate::plan::bindings::{self, Binding, UserRef, Verdict, World};
use crate::plan::groups::{self, Group, GroupState};

/// Decided state of one namespace.
pub struct Snapshot {
    /// Group states by name, with each group's tenant.
    pub groups: BTreeMap<String, (String, GroupState)>,
    /// Every binding of the namespace.
    pub bindings: Vec<Binding>,
    /// Binding verdicts by name.
    pub verdicts: BTreeMap<String, Verdict>,
}

/// The decided state of namespace `ns`: made again only when something there changed since the
/// last time, so a burst of reconciles in a quiet namespace decides it once.
pub fn snapshot(ctx: &Context, ns: &str) -> Arc<Snapshot> {
    let version = ctx.by_ns.versions.of(ns);
    let cache = |m: &mut std::collections::HashMap<String, (u64, Arc<Snapshot>)>| {
        m.get(ns)
            .filter(|(v, _)| *v == version)
            .map(|(_, s)| s.clone())
    };
    if let Some(hit) = cache(&mut ctx.snapshots.lock().unwrap_or_else(|p| p.into_inner())) {
        return hit;
    }
    // Made outside the lock; a change meanwhile bumps the version and the next call remakes it.
    let made = Arc::new(decide(ctx, ns));
    ctx.snapshots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(ns.to_string(), (version, made.clone()));
    made
}

fn decide(ctx: &Context, ns: &str) -> Snapshot {
    // Objects being deleted no longer count: their finalizers clean up, the rest moves on.
    let live = |m: &kube::api::ObjectMeta| m.deletion_timestamp.is_none();
    let tenants: BTreeMap<String, Vec<crate::crd::Role>> = ctx
        .by_ns
        .tenants
        .list(ns)
        .iter()
        .filter(|t| live(&t.metadata))
        .map(|t| (t.name_any(), t.catalogue()))
        .collect();
    let group_list: Vec<Group> = ctx
        .by_ns
        .groups
        .list(ns)
        .iter()
        .filter(|g| live(&g.metadata))
        .map(|g| Group::from(&**g))
        .collect();
    let states = groups::resolve(&group_list, |t| tenants.contains_key(t));
    let groups: BTreeMap<String, (String, GroupState)> = groups::with_tenants(&group_list, &states);
    let users: BTreeMap<String, UserRef> = ctx
        .by_ns
        .users
        .list(ns)
        .iter()
        .filter(|u| live(&u.metadata))
        .map(|u| {
            (
                u.name_any(),
                UserRef {
                    tenant: u.spec.tenant_ref.name.clone(),
                },
            )
        })
        .collect();
    let binding_list: Vec<Binding> = ctx
        .by_ns
        .bindings
        .list(ns)
        .iter()
        .filter(|b| live(&b.metadata))
        .map(|b| Binding::from(&**b))
        .collect();
    let verdicts = bindings::evaluate(&World {
        bindings: &binding_list,
        users: &users,
        catalogues: &tenants,
        groups: &groups,
    });
    Snapshot {
        groups,
        bindings: binding_list,
        verdicts,
    }
}
