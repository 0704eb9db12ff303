//! The one builder of what the decisions read, from any slice of objects: the controllers'
//! caches or the files `usher validate` reads. Nothing else assembles these inputs, so the
//! cluster and `usher validate` cannot drift apart in how they see a namespace.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::bindings::{self, Binding, UserRef, Verdict, World};
use super::groups::{self, Group, GroupState};
use super::system_user::Peer;
use crate::crd::{LocationGroup, Role, RoleBinding, SystemUser, Tenant};

/// One namespace as the decisions see it.
pub struct Namespace {
    /// Role catalogues by tenant name; a tenant absent here does not exist (or is being
    /// deleted).
    pub catalogues: BTreeMap<String, Vec<Role>>,
    /// Every group's state by name, with its tenant's name.
    pub groups: BTreeMap<String, (String, GroupState)>,
    /// The bindings given.
    pub bindings: Vec<Binding>,
    /// Their verdicts by name.
    pub verdicts: BTreeMap<String, Verdict>,
}

/// Whether an object still counts: one being deleted does not (its finalizer cleans up, and the
/// rest moves on without it).
fn live(meta: &kube::api::ObjectMeta) -> bool {
    meta.deletion_timestamp.is_none()
}

impl Namespace {
    /// Decide the groups and the bindings of one namespace from its objects. `users` and
    /// `bindings` may be a subset (one person and their bindings): exclusivity is decided
    /// between one person's bindings, so the verdicts are those of the whole namespace. `now`
    /// decides which bindings have expired.
    pub fn build<'a>(
        tenants: impl IntoIterator<Item = &'a Tenant>,
        groups: impl IntoIterator<Item = &'a LocationGroup>,
        users: impl IntoIterator<Item = &'a SystemUser>,
        bindings: impl IntoIterator<Item = &'a RoleBinding>,
        now: Timestamp,
    ) -> Self {
        let catalogues: BTreeMap<String, Vec<Role>> = tenants
            .into_iter()
            .filter(|t| live(&t.metadata))
            .map(|t| (t.metadata.name.clone().unwrap_or_default(), t.catalogue()))
            .collect();
        let group_list: Vec<Group> = groups
            .into_iter()
            .filter(|g| live(&g.metadata))
            .map(Group::from)
            .collect();
        let states = groups::resolve(&group_list, |t| catalogues.contains_key(t));
        let groups = groups::with_tenants(&group_list, &states);
        let users: BTreeMap<String, UserRef> = users
            .into_iter()
            .filter(|u| live(&u.metadata))
            .map(|u| {
                (
                    u.metadata.name.clone().unwrap_or_default(),
                    UserRef {
                        tenant: u.spec.tenant_ref.name.clone(),
                    },
                )
            })
            .collect();
        let bindings: Vec<Binding> = bindings
            .into_iter()
            .filter(|b| live(&b.metadata))
            .map(Binding::from)
            .collect();
        let verdicts = bindings::evaluate(&World {
            bindings: &bindings,
            users: &users,
            catalogues: &catalogues,
            groups: &groups,
            now,
        });
        Self {
            catalogues,
            groups,
            bindings,
            verdicts,
        }
    }
}

/// The other SystemUsers among `candidates` that compete with `user` for its address (same
/// address, case-insensitively; not `user` itself), as [`super::system_user::blocked`] takes
/// them.
pub fn peers<'a>(
    user: &SystemUser,
    candidates: impl IntoIterator<Item = &'a SystemUser>,
) -> Vec<Peer> {
    let email = user.spec.email.to_lowercase();
    candidates
        .into_iter()
        .filter(|p| p.metadata.name != user.metadata.name)
        .filter(|p| p.spec.email.to_lowercase() == email)
        .map(|p| Peer {
            name: p.metadata.name.clone().unwrap_or_default(),
            tenant: p.spec.tenant_ref.name.clone(),
            email: p.spec.email.clone(),
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::{RoleBindingSpec, SystemUserSpec, TenantSpec};

    fn tenant() -> Tenant {
        Tenant::new(
            "acme",
            TenantSpec {
                display_name: "Acme".into(),
                contact: None,
                invitations: None,
                roles: None,
                store: None,
                offboarding: None,
            },
        )
    }

    fn user(name: &str, email: &str) -> SystemUser {
        let spec: SystemUserSpec = serde_json::from_value(serde_json::json!({
            "tenantRef": {"name": "acme"}, "email": email
        }))
        .unwrap();
        SystemUser::new(name, spec)
    }

    fn binding(name: &str, role: &str) -> RoleBinding {
        let spec: RoleBindingSpec = serde_json::from_value(serde_json::json!({
            "userRef": {"name": "rita"}, "role": role
        }))
        .unwrap();
        RoleBinding::new(name, spec)
    }

    #[test]
    fn objects_being_deleted_do_not_count() {
        let mut gone = tenant();
        gone.metadata.deletion_timestamp = deleted();
        let users = [user("rita", "rita@acme.example")];
        let bindings = [binding("rita-manager", "Manager")];
        let live = Namespace::build(&[tenant()], [], &users, &bindings, Timestamp::UNIX_EPOCH);
        assert_eq!(live.verdicts["rita-manager"].reason, "Bound");
        let dying = Namespace::build(&[gone], [], &users, &bindings, Timestamp::UNIX_EPOCH);
        assert_eq!(dying.verdicts["rita-manager"].reason, "TenantNotFound");
        let mut leaving = binding("rita-manager", "Manager");
        leaving.metadata.deletion_timestamp = deleted();
        let without = Namespace::build(&[tenant()], [], &users, &[leaving], Timestamp::UNIX_EPOCH);
        assert!(without.verdicts.is_empty());
    }

    fn deleted() -> Option<Time> {
        Some(Time("2026-11-22T10:00:00Z".parse().unwrap()))
    }

    #[test]
    fn peers_share_the_address_in_any_case_and_exclude_the_person() {
        let all = [
            user("zoe", "shared@acme.example"),
            user("adam", "Shared@ACME.example"),
            user("rita", "rita@acme.example"),
        ];
        let found: Vec<String> = peers(&all[0], &all).into_iter().map(|p| p.name).collect();
        assert_eq!(found, ["adam"]);
        assert!(peers(&all[2], &all).is_empty());
    }
}
