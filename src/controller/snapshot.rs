//! A namespace as the decisions see it, from the controllers' caches, through the one builder
//! `usher validate` uses too ([`crate::plan::world`]).

use super::Context;
use crate::plan::world::Namespace;

/// The decided state of namespace `ns` as one decision needs it: every group, and the bindings
/// of person `user` (None: no bindings). Exclusivity is decided between one person's bindings,
/// so their verdicts are the same as when the whole namespace is decided, at the cost of that
/// person's bindings rather than everyone's. `now` decides which bindings have expired.
pub fn snapshot(ctx: &Context, ns: &str, user: Option<&str>, now: jiff::Timestamp) -> Namespace {
    let tenants = ctx.by_ns.tenants.list(ns);
    let groups = ctx.by_ns.groups.list(ns);
    let users: Vec<_> = user
        .and_then(|name| ctx.by_ns.users.get(ns, name))
        .into_iter()
        .collect();
    let bindings = user
        .map(|name| ctx.by_ns.bindings.with_key(ns, name))
        .unwrap_or_default();
    Namespace::build(
        tenants.iter().map(|t| &**t),
        groups.iter().map(|g| &**g),
        users.iter().map(|u| &**u),
        bindings.iter().map(|b| &**b),
        now,
    )
}
