//! A namespace as the decisions see it, built from the controllers' caches: group states and
//! binding verdicts, decided by the same functions `usher validate` uses.

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

/// The decided state of namespace `ns` as one decision needs it: every group, and the bindings
/// of person `user` (None: no bindings). Exclusivity is decided between one person's bindings,
/// so their verdicts are the same as when the whole namespace is decided, at the cost of that
/// person's bindings rather than everyone's.
pub fn snapshot(ctx: &Context, ns: &str, user: Option<&str>) -> Snapshot {
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
    let users: BTreeMap<String, UserRef> = user
        .and_then(|name| ctx.by_ns.users.get(ns, name))
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
    let binding_list: Vec<Binding> = user
        .map(|name| ctx.by_ns.bindings.with_key(ns, name))
        .unwrap_or_default()
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
