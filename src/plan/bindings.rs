//! RoleBindings: which are in effect. Decided for all bindings of a namespace at once, by one
//! function the controllers and `usher validate` share, so git CI rejects what the cluster would.
//!
//! The rule: a user's bindings are taken oldest first (creationTimestamp, then name); a binding
//! is Bound when it is compatible with every binding of the user already Bound, and Conflict
//! (naming those it clashes with) otherwise. Two bindings are compatible unless one holds an
//! exclusive role and the other a different role.
//!
//! Fail closed: a binding whose role was exclusive when last decided (`status.exclusive`) and
//! has since left the catalogue (removed, or renamed in two steps) is Invalid, and still blocks
//! what it blocked until a person fixes or removes it. So does an exclusive binding whose group
//! is missing, of another tenant or not Ready (a group renamed or moved in two applies): it grants
//! nothing then, and blocks what it blocked. Otherwise the moment between two applies would grant
//! the person a role the exclusive one kept from them.
//!
//! Over 500 lines because half of it is the tests of the rules, kept beside them.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::groups::GroupState;
use crate::crd::{BindingPhase, Role};

/// One binding as the decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Its name.
    pub name: String,
    /// The SystemUser it names.
    pub user: String,
    /// The role it grants.
    pub role: String,
    /// The LocationGroup it is scoped to; None is tenant-wide.
    pub group: Option<String>,
    /// Its creation time.
    pub created: Option<Timestamp>,
    /// Whether its role was exclusive when it was last decided (its `status.exclusive`).
    pub was_exclusive: bool,
    /// When its access ends (`spec.expiresAt`); None: never.
    pub expires: Option<Timestamp>,
}

impl From<&crate::crd::RoleBinding> for Binding {
    fn from(b: &crate::crd::RoleBinding) -> Self {
        Self {
            name: b.metadata.name.clone().unwrap_or_default(),
            user: b.spec.user_ref.name.clone(),
            role: b.spec.role.clone(),
            group: b.spec.scope.as_ref().map(|s| s.location_group.clone()),
            created: b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            was_exclusive: b.status.as_ref().and_then(|s| s.exclusive).unwrap_or(false),
            expires: b.spec.expires_at.as_ref().map(|t| t.0),
        }
    }
}

/// What the decisions need to know of a SystemUser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRef {
    /// Its tenant's name.
    pub tenant: String,
}

/// The verdict on one binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Bound, Conflict, Invalid or Waiting.
    pub phase: BindingPhase,
    /// The bindings that keep it from being Bound.
    pub conflicts_with: Vec<String>,
    /// The Ready condition's reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
    /// The tenant of its user, when known.
    pub tenant: Option<String>,
    /// Whether it counts as exclusive: its role is, or (the role having left the catalogue, or
    /// its user or tenant being missing) it was. Written to `status.exclusive`.
    pub exclusive: Option<bool>,
}

/// Everything the evaluation reads, for one namespace.
pub struct World<'a> {
    /// Every binding.
    pub bindings: &'a [Binding],
    /// Users by name.
    pub users: &'a BTreeMap<String, UserRef>,
    /// Role catalogues by tenant name (a tenant absent here does not exist).
    pub catalogues: &'a BTreeMap<String, Vec<Role>>,
    /// Group states by name, with each group's tenant.
    pub groups: &'a BTreeMap<String, (String, GroupState)>,
    /// The clock: a binding whose `expires` is not after it is Expired.
    pub now: Timestamp,
}

fn verdict(
    phase: BindingPhase,
    reason: &'static str,
    message: String,
    tenant: Option<String>,
) -> Verdict {
    Verdict {
        phase,
        conflicts_with: Vec::new(),
        reason,
        message,
        tenant,
        exclusive: None,
    }
}

/// Decide every binding of the namespace.
pub fn evaluate(world: &World<'_>) -> BTreeMap<String, Verdict> {
    let mut out = BTreeMap::new();
    // First what each binding is on its own; the survivors compete per user below.
    // (binding, exclusive, retired: an exclusive binding not in effect (its role left the
    // catalogue, or its group is missing or not Ready); it blocks, never binds)
    let mut eligible: BTreeMap<&str, Vec<(&Binding, bool, bool)>> = BTreeMap::new();
    for b in world.bindings {
        // Ended: it grants nothing and blocks nothing, whatever else is true of it.
        if let Some(at) = b.expires.filter(|at| *at <= world.now) {
            let tenant = world.users.get(&b.user).map(|u| u.tenant.clone());
            out.insert(
                b.name.clone(),
                verdict(
                    BindingPhase::Expired,
                    "BindingExpired",
                    format!(
                        "{}'s access as {} ended at {} (spec.expiresAt); remove this binding from git, or move the date to grant it again",
                        b.user,
                        scope_text(b),
                        at.strftime("%Y-%m-%dT%H:%M:%SZ")
                    ),
                    tenant,
                ),
            );
            continue;
        }
        let Some(user) = world.users.get(&b.user) else {
            out.insert(
                b.name.clone(),
                verdict(
                    BindingPhase::Waiting,
                    "UserNotFound",
                    format!(
                        "SystemUser {:?} does not exist in this namespace; waiting for it",
                        b.user
                    ),
                    None,
                ),
            );
            continue;
        };
        let tenant = Some(user.tenant.clone());
        let Some(catalogue) = world.catalogues.get(&user.tenant) else {
            out.insert(
                b.name.clone(),
                verdict(
                    BindingPhase::Waiting,
                    "TenantNotFound",
                    format!(
                        "Tenant {:?} of SystemUser {:?} does not exist; waiting for it",
                        user.tenant, b.user
                    ),
                    tenant,
                ),
            );
            continue;
        };
        let Some(role) = catalogue.iter().find(|r| r.name == b.role) else {
            let known: Vec<&str> = catalogue.iter().map(|r| r.name.as_str()).collect();
            let mut message = format!(
                "role {:?} is not in the catalogue of tenant {:?} ({})",
                b.role,
                user.tenant,
                known.join(", ")
            );
            if b.was_exclusive {
                message.push_str(&format!(
                    "; it was exclusive, so it keeps blocking the other roles of {} until this binding is fixed or removed",
                    b.user
                ));
                eligible
                    .entry(b.user.as_str())
                    .or_default()
                    .push((b, true, true));
            }
            let mut v = verdict(BindingPhase::Invalid, "UnknownRole", message, tenant);
            v.exclusive = Some(b.was_exclusive);
            out.insert(b.name.clone(), v);
            continue;
        };
        if let Some(group) = &b.group {
            let not_in_effect = match world.groups.get(group) {
                None => Some(verdict(
                    BindingPhase::Waiting,
                    "GroupNotFound",
                    format!(
                        "LocationGroup {group:?} does not exist in this namespace; waiting for it"
                    ),
                    tenant,
                )),
                Some((group_tenant, _)) if *group_tenant != user.tenant => Some(verdict(
                    BindingPhase::Invalid,
                    "GroupInOtherTenant",
                    format!(
                        "LocationGroup {group:?} belongs to tenant {group_tenant:?}, but SystemUser {:?} to {:?}",
                        b.user, user.tenant
                    ),
                    tenant,
                )),
                Some((_, state)) if !state.ready() => Some(verdict(
                    BindingPhase::Waiting,
                    "GroupNotReady",
                    format!(
                        "LocationGroup {group:?} is not Ready; nothing is granted through it until it is"
                    ),
                    tenant,
                )),
                Some(_) => None,
            };
            if let Some(mut v) = not_in_effect {
                // Fail closed: a group renamed or moved in two applies, or a parent briefly
                // missing, leaves an exclusive binding without its group for a moment. It grants
                // nothing then, but it still blocks what it blocked; otherwise the person would
                // hold, until the next apply, a role git keeps from them.
                if role.exclusive {
                    v.message.push_str(&format!(
                        "; {} is exclusive, so it keeps blocking the other roles of {} meanwhile",
                        b.role, b.user
                    ));
                    eligible
                        .entry(b.user.as_str())
                        .or_default()
                        .push((b, true, true));
                }
                out.insert(b.name.clone(), v);
                continue;
            }
        }
        eligible
            .entry(b.user.as_str())
            .or_default()
            .push((b, role.exclusive, false));
    }

    for (_, mut list) in eligible {
        list.sort_by(|(a, ..), (b, ..)| (a.created, &a.name).cmp(&(b.created, &b.name)));
        let mut bound: Vec<(&Binding, bool)> = Vec::new();
        for (b, exclusive, retired) in list {
            let tenant = world.users.get(&b.user).map(|u| u.tenant.clone());
            let clashes: Vec<&(&Binding, bool)> = bound
                .iter()
                .filter(|(other, other_exclusive)| {
                    other.role != b.role && (exclusive || *other_exclusive)
                })
                .collect();
            if retired {
                // Invalid already; it blocks what it blocked, unless an older one blocks it.
                if clashes.is_empty() {
                    bound.push((b, exclusive));
                }
            } else if clashes.is_empty() {
                let mut v = verdict(
                    BindingPhase::Bound,
                    "Bound",
                    format!("{} is granted {}", b.user, scope_text(b)),
                    tenant,
                );
                v.exclusive = Some(exclusive);
                out.insert(b.name.clone(), v);
                bound.push((b, exclusive));
            } else {
                let names: Vec<String> = clashes.iter().map(|(o, _)| o.name.clone()).collect();
                let exclusive_role = clashes
                    .iter()
                    .find(|(_, e)| *e)
                    .map(|(o, _)| o.role.clone())
                    .unwrap_or_else(|| b.role.clone());
                let message = format!(
                    "{} is exclusive and {} already holds {}; this binding stays inactive until {}",
                    exclusive_role,
                    b.user,
                    names.join(", "),
                    if names.len() == 1 {
                        "it goes"
                    } else {
                        "they go"
                    }
                );
                let mut v = verdict(
                    BindingPhase::Conflict,
                    "ExclusiveRoleConflict",
                    message,
                    tenant,
                );
                v.conflicts_with = names;
                v.exclusive = Some(exclusive);
                out.insert(b.name.clone(), v);
            }
        }
    }
    // What each binding counts as, for its status: its role's exclusivity where the role is
    // known, and otherwise what it counted as before (kept, so that a retired exclusive role
    // keeps blocking across reconciles and restarts).
    for b in world.bindings {
        if let Some(v) = out.get_mut(&b.name)
            && v.exclusive.is_none()
        {
            let role = world
                .users
                .get(&b.user)
                .and_then(|u| world.catalogues.get(&u.tenant))
                .and_then(|c| c.iter().find(|r| r.name == b.role));
            v.exclusive = Some(role.map_or(b.was_exclusive, |r| r.exclusive));
        }
    }
    out
}

fn scope_text(b: &Binding) -> String {
    match &b.group {
        Some(g) => format!("{} on LocationGroup {g:?} and every group below it", b.role),
        None => format!("{} tenant-wide", b.role),
    }
}

/// The Bound bindings of one user, in the order given.
fn bound_of<'a>(
    user: &'a str,
    bindings: &'a [Binding],
    verdicts: &'a BTreeMap<String, Verdict>,
) -> impl Iterator<Item = &'a Binding> + 'a {
    bindings.iter().filter(move |b| {
        b.user == user
            && verdicts
                .get(&b.name)
                .is_some_and(|v| v.phase == BindingPhase::Bound)
    })
}

/// The bound roles of one user as `role@scope` (scope "tenant" when tenant-wide), sorted.
pub fn bound_roles(
    user: &str,
    bindings: &[Binding],
    verdicts: &BTreeMap<String, Verdict>,
) -> Vec<String> {
    let mut roles: Vec<String> = bound_of(user, bindings, verdicts)
        .map(|b| format!("{}@{}", b.role, b.group.as_deref().unwrap_or("tenant")))
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

/// The store assignments one user of namespace `ns` should hold: one per Bound binding, keyed
/// `<namespace>/<name>`, sorted (as the stores return them).
pub fn assignments(
    ns: &str,
    user: &str,
    bindings: &[Binding],
    verdicts: &BTreeMap<String, Verdict>,
) -> Vec<super::records::Assignment> {
    let mut desired: Vec<super::records::Assignment> = bound_of(user, bindings, verdicts)
        .map(|b| super::records::Assignment {
            binding: super::records::object_key(ns, &b.name),
            role: b.role.clone(),
            group: b.group.as_ref().map(|g| super::records::object_key(ns, g)),
        })
        .collect();
    desired.sort();
    desired
}

/// When the earliest expiry among `user`'s Bound bindings comes, if any: the moment their
/// access changes without any edit, so both the binding and the person are looked at then.
pub fn next_expiry(
    user: &str,
    bindings: &[Binding],
    verdicts: &BTreeMap<String, Verdict>,
) -> Option<Timestamp> {
    bound_of(user, bindings, verdicts)
        .filter_map(|b| b.expires)
        .min()
}

/// How long to wait before looking again: until `at` (just after it, so that the clock has
/// passed it), and at most `horizon` (nothing due before it).
pub fn wait_until(
    at: Option<Timestamp>,
    now: Timestamp,
    horizon: std::time::Duration,
) -> std::time::Duration {
    at.filter(|at| *at > now)
        .and_then(|at| std::time::Duration::try_from(at.duration_since(now)).ok())
        .map_or(horizon, |d| {
            (d + std::time::Duration::from_millis(50)).min(horizon)
        })
}

/// The status a RoleBinding shows for its `verdict`, and the Event when its phase changes:
/// Normal for Bound and Waiting, Warning for Conflict and Invalid.
pub fn report(
    binding: &crate::crd::RoleBinding,
    verdict: &Verdict,
    now: Timestamp,
) -> (
    crate::crd::RoleBindingStatus,
    Option<super::condition::Note>,
) {
    let generation = binding.metadata.generation;
    let previous = binding
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = crate::crd::RoleBindingStatus {
        observed_generation: generation,
        phase: Some(verdict.phase),
        conflicts_with: verdict.conflicts_with.clone(),
        exclusive: verdict.exclusive,
        conditions: super::condition::conditions(
            verdict.phase == BindingPhase::Bound,
            verdict.reason,
            &verdict.message,
            generation,
            previous,
            now,
        ),
    };
    // An Event marks a change of verdict. A new binding found Bound is what its author asked
    // for and its status says so: an Event each would be 10,000 more API writes in a bulk
    // import, on the API server the import is waiting for. Bound after anything else is news.
    let old_phase = binding.status.as_ref().and_then(|s| s.phase);
    let first_bound = old_phase.is_none() && verdict.phase == BindingPhase::Bound;
    let note = (old_phase != Some(verdict.phase) && !first_bound).then(|| super::condition::Note {
        warning: matches!(
            verdict.phase,
            BindingPhase::Conflict | BindingPhase::Invalid
        ),
        reason: verdict.reason,
        message: verdict.message.clone(),
    });
    (status, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::default_roles;

    fn at(secs: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(1_700_000_000 + secs).unwrap())
    }

    fn b(name: &str, user: &str, role: &str, group: Option<&str>, t: i64) -> Binding {
        Binding {
            was_exclusive: false,
            name: name.into(),
            user: user.into(),
            role: role.into(),
            group: group.map(Into::into),
            created: at(t),
            expires: None,
        }
    }

    fn run(bindings: &[Binding]) -> BTreeMap<String, Verdict> {
        let users = BTreeMap::from([
            (
                "alice".to_string(),
                UserRef {
                    tenant: "acme".into(),
                },
            ),
            (
                "bob".to_string(),
                UserRef {
                    tenant: "acme".into(),
                },
            ),
        ]);
        let catalogues = BTreeMap::from([("acme".to_string(), default_roles())]);
        let groups = BTreeMap::from([
            (
                "west".to_string(),
                (
                    "acme".to_string(),
                    GroupState::Ready {
                        path: vec!["main".into(), "west".into()],
                    },
                ),
            ),
            (
                "loop".to_string(),
                (
                    "acme".to_string(),
                    GroupState::NotReady {
                        reason: "Cycle",
                        message: String::new(),
                    },
                ),
            ),
            (
                "foreign".to_string(),
                (
                    "globex".to_string(),
                    GroupState::Ready {
                        path: vec!["foreign".into()],
                    },
                ),
            ),
        ]);
        evaluate(&World {
            bindings,
            users: &users,
            catalogues: &catalogues,
            groups: &groups,
            now: at(1000).unwrap(),
        })
    }

    fn phase(v: &BTreeMap<String, Verdict>, name: &str) -> BindingPhase {
        v[name].phase
    }

    #[test]
    fn a_binding_past_its_end_grants_and_blocks_nothing_and_one_ahead_is_looked_at_then() {
        let ending = |expires| Binding {
            expires: at(expires),
            ..b("tech", "alice", "Technician", None, 1)
        };
        let manager = b("mgr", "alice", "Manager", None, 2);
        // Still running: the exclusive role holds, the other waits, and the end is due.
        let bindings = [ending(2000), manager.clone()];
        let v = run(&bindings);
        assert_eq!(phase(&v, "tech"), BindingPhase::Bound);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Conflict);
        assert_eq!(next_expiry("alice", &bindings, &v), at(2000));
        // Ended (at the very second, too): Expired, and the other role is free.
        for end in [500, 1000] {
            let bindings = [ending(end), manager.clone()];
            let v = run(&bindings);
            assert_eq!(phase(&v, "tech"), BindingPhase::Expired, "ended at {end}");
            assert_eq!(v["tech"].reason, "BindingExpired");
            assert!(v["tech"].message.contains("spec.expiresAt"));
            assert_eq!(phase(&v, "mgr"), BindingPhase::Bound);
            assert_eq!(assignments("acme", "alice", &bindings, &v).len(), 1);
            assert_eq!(next_expiry("alice", &bindings, &v), None);
        }
    }

    #[test]
    fn the_wait_for_an_end_lands_just_after_it_and_never_past_the_horizon() {
        let now = at(0).unwrap();
        let horizon = std::time::Duration::from_secs(600);
        assert_eq!(
            wait_until(at(10), now, horizon),
            std::time::Duration::from_millis(10_050)
        );
        assert_eq!(wait_until(at(10_000), now, horizon), horizon);
        assert_eq!(
            wait_until(at(-1), now, horizon),
            horizon,
            "past: nothing due"
        );
        assert_eq!(wait_until(None, now, horizon), horizon);
    }

    #[test]
    fn the_older_exclusive_binding_wins_and_the_newer_names_it() {
        let v = run(&[
            b("tech", "alice", "Technician", Some("west"), 0),
            b("mgr", "alice", "Manager", None, 10),
        ]);
        assert_eq!(phase(&v, "tech"), BindingPhase::Bound);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Conflict);
        assert_eq!(v["mgr"].conflicts_with, ["tech"]);
        assert!(
            v["mgr"].message.contains("Technician is exclusive"),
            "{}",
            v["mgr"].message
        );
    }

    /// Issue 14, kind 7: fail closed. An exclusive binding whose role left the catalogue (removed,
    /// or renamed in two steps: either apply first) keeps blocking until a person fixes it.
    #[test]
    fn a_retired_exclusive_role_keeps_blocking_what_it_blocked() {
        let retired = |name: &str, role: &str, t: i64| Binding {
            was_exclusive: true,
            ..b(name, "alice", role, None, t)
        };
        // The catalogue lost Technician (or the binding already names its new, unknown name).
        for gone in ["Installer", "FieldTechnician", "technician"] {
            let v = run(&[
                retired("tech", gone, 0),
                b("mgr", "alice", "Manager", None, 10),
            ]);
            assert_eq!(phase(&v, "tech"), BindingPhase::Invalid, "{gone}");
            assert_eq!(v["tech"].reason, "UnknownRole");
            assert!(
                v["tech"].message.contains("keeps blocking"),
                "{}",
                v["tech"].message
            );
            assert_eq!(v["tech"].exclusive, Some(true), "remembered");
            assert_eq!(
                phase(&v, "mgr"),
                BindingPhase::Conflict,
                "{gone}: Manager granted"
            );
            assert_eq!(v["mgr"].conflicts_with, ["tech"]);
            // Several younger roles, and one on a group: all held.
            let v = run(&[
                retired("tech", gone, 0),
                b("mgr", "alice", "Manager", None, 10),
                b("cs", "alice", "CustomerService", Some("west"), 20),
            ]);
            assert_eq!(phase(&v, "cs"), BindingPhase::Conflict);
        }
        // Someone else's bindings are not touched.
        let v = run(&[
            retired("tech", "Gone", 0),
            b("bmgr", "bob", "Manager", None, 10),
        ]);
        assert_eq!(phase(&v, "bmgr"), BindingPhase::Bound);
        // It blocks only what it blocked: an older role stays Bound.
        let v = run(&[
            b("mgr", "alice", "Manager", None, 0),
            retired("tech", "Gone", 10),
        ]);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Bound);
        // An ordinary role that leaves the catalogue blocks nothing.
        let v = run(&[
            b("old", "alice", "Retired", None, 0),
            b("mgr", "alice", "Manager", None, 10),
        ]);
        assert_eq!(
            (phase(&v, "old"), phase(&v, "mgr"), v["old"].exclusive),
            (BindingPhase::Invalid, BindingPhase::Bound, Some(false))
        );
        // The rename completed: the new name is exclusive and known again; still one role.
        let v = run(&[
            retired("tech", "Technician", 0),
            b("mgr", "alice", "Manager", None, 10),
        ]);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Conflict);
        // Fixed by removing the stale binding: the next is granted.
        let v = run(&[b("mgr", "alice", "Manager", None, 10)]);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Bound);
    }

    /// Kind 7 again, through groups: a group renamed or moved in two applies (the binding's scope
    /// edited in the second), a parent briefly missing (not Ready), or a group that turned out to
    /// be another tenant's. The exclusive binding grants nothing meanwhile, and still blocks.
    #[test]
    fn an_exclusive_binding_without_its_group_keeps_blocking() {
        for (group, phase_now, reason) in [
            ("east", BindingPhase::Waiting, "GroupNotFound"),
            ("loop", BindingPhase::Waiting, "GroupNotReady"),
            ("foreign", BindingPhase::Invalid, "GroupInOtherTenant"),
        ] {
            let bindings = [
                b("tech", "alice", "Technician", Some(group), 0),
                b("mgr", "alice", "Manager", None, 10),
            ];
            let v = run(&bindings);
            assert_eq!((phase(&v, "tech"), v["tech"].reason), (phase_now, reason));
            assert!(
                v["tech"].message.contains("keeps blocking"),
                "{}",
                v["tech"].message
            );
            assert_eq!(v["tech"].exclusive, Some(true));
            assert_eq!(
                phase(&v, "mgr"),
                BindingPhase::Conflict,
                "{group}: Manager granted"
            );
            assert_eq!(v["mgr"].conflicts_with, ["tech"]);
            assert!(assignments("acme", "alice", &bindings, &v).is_empty());
        }
        // An ordinary role without its group blocks nothing, and an older role is not blocked.
        let v = run(&[
            b("mgr", "alice", "Manager", Some("east"), 0),
            b("cs", "alice", "CustomerService", None, 10),
        ]);
        assert_eq!(phase(&v, "cs"), BindingPhase::Bound);
        let v = run(&[
            b("mgr", "alice", "Manager", None, 0),
            b("tech", "alice", "Technician", Some("east"), 10),
        ]);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Bound);
        // The group is back: the exclusive role is granted again, and still alone.
        let v = run(&[
            b("tech", "alice", "Technician", Some("west"), 0),
            b("mgr", "alice", "Manager", None, 10),
        ]);
        assert_eq!(
            (phase(&v, "tech"), phase(&v, "mgr")),
            (BindingPhase::Bound, BindingPhase::Conflict)
        );
    }

    #[test]
    fn assignments_are_the_bound_bindings_only_keyed_and_sorted() {
        let list = [
            b("z-mgr", "alice", "Manager", Some("west"), 0),
            b("a-admin", "alice", "Administrator", None, 1),
            b("tech", "alice", "Technician", None, 2),
            b("bob-mgr", "bob", "Manager", None, 0),
        ];
        let v = run(&list);
        assert_eq!(phase(&v, "tech"), BindingPhase::Conflict);
        let got = assignments("acme", "alice", &list, &v);
        let keys: Vec<(&str, &str, Option<&str>)> = got
            .iter()
            .map(|a| (a.binding.as_str(), a.role.as_str(), a.group.as_deref()))
            .collect();
        assert_eq!(
            keys,
            [
                ("acme/a-admin", "Administrator", None),
                ("acme/z-mgr", "Manager", Some("acme/west")),
            ]
        );
        assert_eq!(
            bound_roles("alice", &list, &v),
            ["Administrator@tenant", "Manager@west"]
        );
    }

    #[test]
    fn deleting_the_winner_promotes_the_next() {
        let v = run(&[b("mgr", "alice", "Manager", None, 10)]);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Bound);
    }

    #[test]
    fn an_older_ordinary_role_blocks_a_newer_exclusive_one() {
        let v = run(&[
            b("mgr", "alice", "Manager", None, 0),
            b("cs", "alice", "CustomerService", None, 5),
            b("tech", "alice", "Technician", None, 10),
        ]);
        assert_eq!(phase(&v, "mgr"), BindingPhase::Bound);
        assert_eq!(
            phase(&v, "cs"),
            BindingPhase::Bound,
            "ordinary roles combine"
        );
        assert_eq!(v["tech"].conflicts_with, ["mgr", "cs"]);
    }

    #[test]
    fn the_same_exclusive_role_on_two_scopes_is_one_role() {
        let v = run(&[
            b("t1", "alice", "Technician", Some("west"), 0),
            b("t2", "alice", "Technician", None, 5),
        ]);
        assert_eq!(
            (phase(&v, "t1"), phase(&v, "t2")),
            (BindingPhase::Bound, BindingPhase::Bound)
        );
    }

    #[test]
    fn ties_on_time_are_broken_by_name() {
        let v = run(&[
            b("zz", "alice", "Manager", None, 0),
            b("aa", "alice", "Technician", None, 0),
        ]);
        assert_eq!(phase(&v, "aa"), BindingPhase::Bound);
        assert_eq!(phase(&v, "zz"), BindingPhase::Conflict);
    }

    #[test]
    fn users_do_not_compete_with_each_other() {
        let v = run(&[
            b("a", "alice", "Technician", None, 0),
            b("b", "bob", "Manager", None, 5),
        ]);
        assert_eq!(
            (phase(&v, "a"), phase(&v, "b")),
            (BindingPhase::Bound, BindingPhase::Bound)
        );
    }

    #[test]
    fn missing_or_wrong_references_wait_or_are_invalid() {
        let v = run(&[
            b("ghost", "nobody", "Manager", None, 0),
            b("typo", "alice", "Tecnician", None, 0),
            b("nogroup", "alice", "Manager", Some("east"), 0),
            b("cycle", "alice", "Manager", Some("loop"), 0),
            b("other", "bob", "Manager", Some("foreign"), 0),
        ]);
        assert_eq!(
            (phase(&v, "ghost"), v["ghost"].reason),
            (BindingPhase::Waiting, "UserNotFound")
        );
        assert_eq!(
            (phase(&v, "typo"), v["typo"].reason),
            (BindingPhase::Invalid, "UnknownRole")
        );
        assert!(
            v["typo"].message.contains("Technician"),
            "lists the catalogue"
        );
        assert_eq!(
            (phase(&v, "nogroup"), v["nogroup"].reason),
            (BindingPhase::Waiting, "GroupNotFound")
        );
        assert_eq!(
            (phase(&v, "cycle"), v["cycle"].reason),
            (BindingPhase::Waiting, "GroupNotReady")
        );
        assert_eq!(
            (phase(&v, "other"), v["other"].reason),
            (BindingPhase::Invalid, "GroupInOtherTenant")
        );
    }

    #[test]
    fn roles_are_listed_as_role_at_scope() {
        let bindings = [
            b("t", "alice", "Technician", Some("west"), 0),
            b("m", "alice", "Manager", None, 5),
            b("x", "bob", "Administrator", None, 0),
        ];
        let v = run(&bindings);
        assert_eq!(bound_roles("alice", &bindings, &v), ["Technician@west"]);
        assert_eq!(bound_roles("bob", &bindings, &v), ["Administrator@tenant"]);
    }

    #[test]
    fn a_new_binding_found_bound_publishes_nothing_and_every_change_of_verdict_does() {
        let verdict = |phase, reason| Verdict {
            phase,
            conflicts_with: Vec::new(),
            reason,
            message: format!("{reason} because"),
            tenant: Some("acme".into()),
            exclusive: Some(false),
        };
        let spec: crate::crd::RoleBindingSpec = serde_json::from_value(serde_json::json!({
            "userRef": {"name": "rita"}, "role": "Manager"
        }))
        .unwrap();
        let fresh = crate::crd::RoleBinding::new("rita-manager", spec);
        let now = Timestamp::UNIX_EPOCH;
        let bound = verdict(BindingPhase::Bound, "Bound");
        let conflict = verdict(BindingPhase::Conflict, "ExclusiveRole");

        let (status, note) = report(&fresh, &bound, now);
        assert_eq!(status.phase, Some(BindingPhase::Bound));
        assert!(note.is_none(), "the status says Bound; no Event");
        let first = report(&fresh, &conflict, now).1.expect("a Warning");
        assert!(first.warning);

        let mut was = fresh.clone();
        was.status = Some(report(&fresh, &conflict, now).0);
        let freed = report(&was, &bound, now)
            .1
            .expect("Bound after Conflict is news");
        assert!(!freed.warning);
        assert_eq!(freed.reason, "Bound");
        was.status = Some(report(&fresh, &bound, now).0);
        assert!(report(&was, &bound, now).1.is_none(), "no change, no Event");
        assert!(report(&was, &conflict, now).1.is_some_and(|n| n.warning));
    }
}
