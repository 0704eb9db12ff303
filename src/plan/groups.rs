//! LocationGroup trees: paths, depths, missing parents, cycles and duplicate location ids,
//! decided for all groups of a namespace at once. Used by the controller and `usher validate`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;

/// One group as the decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its tenant's name.
    pub tenant: String,
    /// Its parent's name, if not top level.
    pub parent: Option<String>,
    /// Its location ids.
    pub locations: Vec<String>,
    /// Its creation time, for "who was first" on duplicate location ids.
    pub created: Option<Timestamp>,
}

impl From<&crate::crd::LocationGroup> for Group {
    fn from(g: &crate::crd::LocationGroup) -> Self {
        Self {
            name: g.metadata.name.clone().unwrap_or_default(),
            tenant: g.spec.tenant_ref.name.clone(),
            parent: g.spec.parent_ref.as_ref().map(|p| p.name.clone()),
            locations: g.spec.locations.iter().map(|l| l.id.clone()).collect(),
            created: g.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// Where a group stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// Usable: its path from the top level down, e.g. ["main", "west"].
    Ready {
        /// Names from the top level down to this group.
        path: Vec<String>,
    },
    /// Not usable, with a condition reason and a message.
    NotReady {
        /// TenantNotFound, ParentNotFound, ParentNotReady, ParentInOtherTenant, Cycle or
        /// DuplicateLocation.
        reason: &'static str,
        /// For people.
        message: String,
    },
}

impl GroupState {
    /// Whether roles can be granted through it.
    pub fn ready(&self) -> bool {
        matches!(self, Self::Ready { .. })
    }
}

fn not_ready(reason: &'static str, message: String) -> GroupState {
    GroupState::NotReady { reason, message }
}

/// Decide every group's state. `tenant_exists` answers for tenant names of the namespace.
pub fn resolve(
    groups: &[Group],
    tenant_exists: impl Fn(&str) -> bool,
) -> BTreeMap<String, GroupState> {
    let by_name: HashMap<&str, &Group> = groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut states: BTreeMap<String, GroupState> = BTreeMap::new();

    // Location ids are unique within a tenant: the oldest group keeps an id.
    let mut owner: HashMap<(&str, &str), &Group> = HashMap::new();
    let mut ordered: Vec<&Group> = groups.iter().collect();
    ordered.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut duplicate: HashMap<&str, (String, String)> = HashMap::new();
    for g in &ordered {
        for id in &g.locations {
            match owner.get(&(g.tenant.as_str(), id.as_str())) {
                Some(first) if first.name != g.name => {
                    duplicate
                        .entry(g.name.as_str())
                        .or_insert((id.clone(), first.name.clone()));
                }
                _ => {
                    owner.insert((g.tenant.as_str(), id.as_str()), g);
                }
            }
        }
    }

    for g in groups {
        if states.contains_key(&g.name) {
            continue;
        }
        // Walk up until a known state, the top, a missing parent or a repeat (a cycle).
        let mut chain: Vec<&Group> = vec![g];
        let mut seen: BTreeSet<&str> = BTreeSet::from([g.name.as_str()]);
        let outcome = loop {
            let current = chain.last().expect("chain starts non-empty");
            let Some(parent) = current.parent.as_deref() else {
                break None;
            };
            if let Some(state) = states.get(parent) {
                break Some(Ok(state.clone()));
            }
            let Some(next) = by_name.get(parent) else {
                break Some(Err(("ParentNotFound", parent.to_string())));
            };
            if !seen.insert(parent) {
                break Some(Err(("Cycle", parent.to_string())));
            }
            chain.push(next);
        };
        // Settle the chain from the top down.
        match outcome {
            Some(Err(("Cycle", start))) => {
                let pos = chain.iter().position(|c| c.name == start).unwrap_or(0);
                let ring: Vec<String> = chain[pos..].iter().map(|c| c.name.clone()).collect();
                let message = format!(
                    "parentRef forms a cycle: {} → {}",
                    ring.join(" → "),
                    ring[0]
                );
                for c in &chain[pos..] {
                    states.insert(c.name.clone(), not_ready("Cycle", message.clone()));
                }
                settle_below(
                    &chain[..pos],
                    &by_name,
                    &mut states,
                    &tenant_exists,
                    &duplicate,
                );
            }
            Some(Err((_, missing))) => {
                let top = chain.last().expect("non-empty");
                states.insert(
                    top.name.clone(),
                    not_ready(
                        "ParentNotFound",
                        format!("parent LocationGroup {missing:?} does not exist in this namespace; waiting for it"),
                    ),
                );
                settle_below(
                    &chain[..chain.len() - 1],
                    &by_name,
                    &mut states,
                    &tenant_exists,
                    &duplicate,
                );
            }
            Some(Ok(_)) | None => {
                settle_below(&chain, &by_name, &mut states, &tenant_exists, &duplicate)
            }
        }
    }
    states
}

/// Every group's state next to its tenant's name: what the bindings need to know of groups.
pub fn with_tenants(
    groups: &[Group],
    states: &BTreeMap<String, GroupState>,
) -> BTreeMap<String, (String, GroupState)> {
    groups
        .iter()
        .filter_map(|g| {
            Some((
                g.name.clone(),
                (g.tenant.clone(), states.get(&g.name)?.clone()),
            ))
        })
        .collect()
}

/// Give each group of `chain` (child first, its parent already settled or absent) its state.
fn settle_below(
    chain: &[&Group],
    by_name: &HashMap<&str, &Group>,
    states: &mut BTreeMap<String, GroupState>,
    tenant_exists: &impl Fn(&str) -> bool,
    duplicate: &HashMap<&str, (String, String)>,
) {
    for g in chain.iter().rev() {
        let parent_state = g.parent.as_deref().and_then(|p| states.get(p).cloned());
        let state = if !tenant_exists(&g.tenant) {
            not_ready(
                "TenantNotFound",
                format!(
                    "Tenant {:?} does not exist in this namespace; waiting for it",
                    g.tenant
                ),
            )
        } else if let Some((id, holder)) = duplicate.get(g.name.as_str()) {
            not_ready(
                "DuplicateLocation",
                format!(
                    "location id {id:?} already belongs to LocationGroup {holder:?} of this tenant"
                ),
            )
        } else {
            match (g.parent.as_deref(), parent_state) {
                (None, _) => GroupState::Ready {
                    path: vec![g.name.clone()],
                },
                (Some(p), Some(GroupState::Ready { path })) => {
                    let parent_tenant = by_name.get(p).map(|c| c.tenant.clone());
                    match parent_tenant {
                        Some(t) if t != g.tenant => not_ready(
                            "ParentInOtherTenant",
                            format!(
                                "parent LocationGroup {p:?} belongs to tenant {t:?}, not {:?}",
                                g.tenant
                            ),
                        ),
                        _ => {
                            let mut path = path.clone();
                            path.push(g.name.clone());
                            GroupState::Ready { path }
                        }
                    }
                }
                (Some(p), Some(GroupState::NotReady { .. })) => not_ready(
                    "ParentNotReady",
                    format!(
                        "parent LocationGroup {p:?} is not Ready; nothing is granted through this group until it is"
                    ),
                ),
                (Some(p), None) => not_ready(
                    "ParentNotFound",
                    format!(
                        "parent LocationGroup {p:?} does not exist in this namespace; waiting for it"
                    ),
                ),
            }
        };
        states.insert(g.name.clone(), state);
    }
}

/// The groups at or below `root` that are Ready, `root` included.
pub fn subtree<'a>(root: &str, states: &'a BTreeMap<String, GroupState>) -> Vec<&'a str> {
    states
        .iter()
        .filter_map(|(name, s)| match s {
            GroupState::Ready { path } if path.iter().any(|p| p == root) => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

/// What one LocationGroup's reconcile writes: its store record, its status, and an Event.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDecision {
    /// The record the store must hold (written when it differs); None: the store must not hold
    /// the group, since nothing may be granted through a group that is not Ready.
    pub record: Option<super::records::GroupRecord>,
    /// The status to show (patched when it differs).
    pub status: crate::crd::LocationGroupStatus,
    /// A Warning when it newly turned not Ready.
    pub event: Option<super::condition::Note>,
}

/// Decide one group of namespace `ns`, given its tenant's name and its state in the tree.
pub fn decide(
    group: &crate::crd::LocationGroup,
    ns: &str,
    tenant: &str,
    state: &GroupState,
    now: Timestamp,
) -> GroupDecision {
    use super::records::{GroupRecord, object_key};
    let name = group.metadata.name.as_deref().unwrap_or_default();
    let generation = group.metadata.generation;
    let previous = group
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let locations = i32::try_from(group.spec.locations.len()).unwrap_or(i32::MAX);
    let (record, status) = match state {
        GroupState::Ready { path } => {
            let record = GroupRecord {
                key: object_key(ns, name),
                tenant: object_key(ns, tenant),
                parent: group
                    .spec
                    .parent_ref
                    .as_ref()
                    .map(|p| object_key(ns, &p.name)),
                display_name: group.spec.display_name.clone(),
                path: path.join("/"),
                locations: group.spec.locations.clone(),
            };
            let status = crate::crd::LocationGroupStatus {
                observed_generation: generation,
                path: Some(record.path.clone()),
                depth: Some(i32::try_from(path.len()).unwrap_or(i32::MAX)),
                locations: Some(locations),
                conditions: super::condition::conditions(
                    true,
                    "Reconciled",
                    &format!("{} with {locations} locations", record.path),
                    generation,
                    previous,
                    now,
                ),
            };
            (Some(record), status)
        }
        GroupState::NotReady { reason, message } => (
            None,
            crate::crd::LocationGroupStatus {
                observed_generation: generation,
                path: None,
                depth: None,
                locations: Some(locations),
                conditions: super::condition::conditions(
                    false, reason, message, generation, previous, now,
                ),
            },
        ),
    };
    let old_reason = previous.first().map(|c| c.reason.as_str());
    let event = match state {
        GroupState::NotReady { reason, message } if old_reason != Some(*reason) => {
            Some(super::condition::Note {
                warning: true,
                reason,
                message: message.clone(),
            })
        }
        _ => None,
    };
    GroupDecision {
        record,
        status,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, parent: Option<&str>) -> Group {
        Group {
            name: name.into(),
            tenant: "acme".into(),
            parent: parent.map(Into::into),
            locations: vec![],
            created: None,
        }
    }

    #[test]
    fn a_group_is_stored_while_ready_and_removed_with_one_warning_when_not() {
        use crate::crd::{LocationGroup, LocationGroupSpec, ObjectRef};
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut group = LocationGroup::new(
            "west",
            LocationGroupSpec {
                tenant_ref: ObjectRef::new("acme"),
                display_name: "West".into(),
                parent_ref: Some(ObjectRef::new("main")),
                locations: vec![],
            },
        );
        group.metadata.generation = Some(2);
        let ready = GroupState::Ready {
            path: vec!["main".into(), "west".into()],
        };
        let d = decide(&group, "ns", "acme", &ready, now);
        let record = d.record.clone().expect("stored while Ready");
        assert_eq!(
            (
                record.key.as_str(),
                record.tenant.as_str(),
                record.parent.as_deref()
            ),
            ("ns/west", "ns/acme", Some("ns/main"))
        );
        assert_eq!(record.path, "main/west");
        assert_eq!((d.status.depth, d.event.clone()), (Some(2), None));
        // A cycle: not stored, one Warning, and none when it stays so.
        group.status = Some(d.status);
        let cycle = GroupState::NotReady {
            reason: "Cycle",
            message: "main → west → main".into(),
        };
        let d = decide(&group, "ns", "acme", &cycle, now);
        assert_eq!(d.record, None);
        assert_eq!(d.event.as_ref().map(|n| n.reason), Some("Cycle"));
        assert_eq!(d.status.conditions[0].status, "False");
        group.status = Some(d.status.clone());
        let again = decide(&group, "ns", "acme", &cycle, now);
        assert_eq!((again.event, again.status), (None, d.status), "nothing new");
    }

    fn reason(s: &GroupState) -> &'static str {
        match s {
            GroupState::Ready { .. } => "Ready",
            GroupState::NotReady { reason, .. } => reason,
        }
    }

    #[test]
    fn paths_run_from_the_top_down() {
        let groups = [
            g("fresno", Some("west")),
            g("west", Some("main")),
            g("main", None),
        ];
        let s = resolve(&groups, |_| true);
        assert_eq!(
            s["fresno"],
            GroupState::Ready {
                path: vec!["main".into(), "west".into(), "fresno".into()]
            }
        );
        assert_eq!(
            s["main"],
            GroupState::Ready {
                path: vec!["main".into()]
            }
        );
        assert_eq!(subtree("west", &s), ["fresno", "west"]);
    }

    #[test]
    fn missing_parents_and_tenants_wait() {
        let s = resolve(
            &[g("west", Some("main")), g("fresno", Some("west"))],
            |_| true,
        );
        assert_eq!(reason(&s["west"]), "ParentNotFound");
        assert_eq!(reason(&s["fresno"]), "ParentNotReady");
        let s = resolve(&[g("main", None)], |_| false);
        assert_eq!(reason(&s["main"]), "TenantNotFound");
    }

    #[test]
    fn a_cycle_marks_every_member_and_blocks_what_hangs_below() {
        let groups = [
            g("a", Some("c")),
            g("b", Some("a")),
            g("c", Some("b")),
            g("leaf", Some("a")),
            g("top", None),
        ];
        let s = resolve(&groups, |_| true);
        for name in ["a", "b", "c"] {
            assert_eq!(reason(&s[name]), "Cycle", "{name}");
        }
        assert_eq!(reason(&s["leaf"]), "ParentNotReady");
        assert_eq!(reason(&s["top"]), "Ready");
        assert!(
            subtree("a", &s).is_empty(),
            "nothing is granted through a cycle"
        );
    }

    #[test]
    fn the_older_group_keeps_a_location_id() {
        let t0: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut old = g("old", None);
        old.locations = vec!["fresno-01".into()];
        old.created = Some(t0);
        let mut new = g("new", None);
        new.locations = vec!["fresno-01".into()];
        new.created = Some(t0 + jiff::SignedDuration::from_secs(1));
        let s = resolve(&[new, old], |_| true);
        assert_eq!(reason(&s["old"]), "Ready");
        assert_eq!(reason(&s["new"]), "DuplicateLocation");
    }

    #[test]
    fn a_parent_of_another_tenant_is_refused() {
        let mut child = g("west", Some("main"));
        child.tenant = "globex".into();
        let s = resolve(&[g("main", None), child], |_| true);
        assert_eq!(reason(&s["west"]), "ParentInOtherTenant");
    }
}
