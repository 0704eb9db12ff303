//! A namespace as the decisions see it, built from the controllers' caches: group states and
//! binding verdicts are computed for the whole namespace, the same way `usher validate` does.

use std::collections::BTreeMap;

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

/// Decide groups and bindings for namespace `ns` from the caches.
pub fn snapshot(ctx: &Context, ns: &str) -> Snapshot {
    // Objects being deleted no longer count: their finalizers clean up, the rest moves on.
    let here = |o: &Option<String>| o.as_deref() == Some(ns);
    let live = |m: &kube::api::ObjectMeta| m.deletion_timestamp.is_none();
    let tenants: BTreeMap<String, Vec<crate::crd::Role>> = ctx
        .tenants
        .state()
        .iter()
        .filter(|t| here(&t.namespace()) && live(&t.metadata))
        .map(|t| (t.name_any(), t.catalogue()))
        .collect();
    let group_list: Vec<Group> = ctx
        .groups
        .state()
        .iter()
        .filter(|g| here(&g.namespace()) && live(&g.metadata))
        .map(|g| Group::from(&**g))
        .collect();
    let states = groups::resolve(&group_list, |t| tenants.contains_key(t));
    let groups: BTreeMap<String, (String, GroupState)> = groups::with_tenants(&group_list, &states);
    let users: BTreeMap<String, UserRef> = ctx
        .users
        .state()
        .iter()
        .filter(|u| here(&u.namespace()) && live(&u.metadata))
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
        .bindings
        .state()
        .iter()
        .filter(|b| here(&b.namespace()) && live(&b.metadata))
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
