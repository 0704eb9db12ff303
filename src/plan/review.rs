//! The periodic access review an admin signs off, per tenant: who holds which role where (with
//! the groups a role reaches below its scope) and what it permits; invitations left pending or
//! expired for long; suspended people; access that ends soon. Decided by the same functions as
//! the cluster ([`crate::plan::world`]), so the review shows what is in effect, not what is
//! written.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::groups::GroupState;
use super::world::Namespace;
use crate::crd::{BindingPhase, LocationGroup, RoleBinding, SystemUser, Tenant, UserPhase};

/// One tenant's review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantReview {
    /// The tenant's namespace.
    pub namespace: String,
    /// The Tenant's name.
    pub tenant: String,
    /// Its display name.
    pub display_name: String,
    /// Every role in effect (Bound), by person.
    pub access: Vec<Grant>,
    /// Invitations pending or expired for more than the review's days.
    pub stale_invitations: Vec<Stale>,
    /// People whose access is suspended in git.
    pub suspended: Vec<Person>,
    /// Bound roles whose `expiresAt` falls within the review's days.
    pub expiring: Vec<Grant>,
}

/// A role in effect for a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The SystemUser's name.
    pub person: String,
    /// Their address.
    pub email: String,
    /// Their phase (Pending, Active, …), as the cluster shows it.
    pub phase: String,
    /// The role.
    pub role: String,
    /// The RoleBinding that grants it.
    pub binding: String,
    /// The group it is bound on; `tenant` for tenant-wide.
    pub scope: String,
    /// Every group it reaches (the scope and all below it), as paths; empty for tenant-wide.
    pub reaches: Vec<String>,
    /// What the role permits (the catalogue's permissions).
    pub permissions: Vec<String>,
    /// When it ends (RFC 3339), if it does.
    pub expires_at: Option<String>,
}

/// An invitation left waiting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stale {
    /// The SystemUser's name.
    pub person: String,
    /// Their address.
    pub email: String,
    /// Pending (sent, not accepted) or Expired.
    pub phase: String,
    /// Since when (RFC 3339): when it was sent, or when it expired.
    pub since: String,
    /// Whole days since then.
    pub days: i64,
}

/// A person, by name and address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    /// The SystemUser's name.
    pub person: String,
    /// Their address.
    pub email: String,
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The review of every tenant of one namespace, from its objects, at `now`; `days` is how long
/// an invitation may wait before it is listed, and how far ahead ending access is shown.
pub fn review(
    namespace: &str,
    tenants: &[Tenant],
    groups: &[LocationGroup],
    users: &[SystemUser],
    bindings: &[RoleBinding],
    now: Timestamp,
    days: i64,
) -> Vec<TenantReview> {
    let world = Namespace::build(tenants, groups, users, bindings, now);
    let window = SignedDuration::from_hours(24 * days);
    let phase_of = |u: &SystemUser| {
        u.status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or_else(|| "Unknown".to_string(), |p| format!("{p:?}"))
    };
    let path_of = |name: &str| match world.groups.get(name) {
        Some((_, GroupState::Ready { path })) => Some(path.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for tenant in tenants
        .iter()
        .filter(|t| t.metadata.deletion_timestamp.is_none())
    {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        let members: Vec<&SystemUser> = users
            .iter()
            .filter(|u| u.spec.tenant_ref.name == name)
            .collect();
        let catalogue = world.catalogues.get(&name).cloned().unwrap_or_default();
        let mut access = Vec::new();
        for b in bindings {
            let bname = b.metadata.name.clone().unwrap_or_default();
            let bound = world
                .verdicts
                .get(&bname)
                .is_some_and(|v| v.phase == BindingPhase::Bound);
            let Some(user) = members
                .iter()
                .find(|u| u.metadata.name.as_deref() == Some(b.spec.user_ref.name.as_str()))
            else {
                continue;
            };
            if !bound {
                continue;
            }
            let scope = b.spec.scope.as_ref().map(|s| s.location_group.clone());
            let reaches = match scope.as_deref().and_then(path_of) {
                Some(top) => {
                    let mut below: Vec<String> = world
                        .groups
                        .keys()
                        .filter_map(|g| path_of(g))
                        .filter(|p| p.starts_with(&top))
                        .map(|p| p.join("/"))
                        .collect();
                    below.sort();
                    below
                }
                None => Vec::new(),
            };
            access.push(Grant {
                person: b.spec.user_ref.name.clone(),
                email: user.spec.email.clone(),
                phase: phase_of(user),
                role: b.spec.role.clone(),
                binding: bname,
                scope: scope.unwrap_or_else(|| "tenant".into()),
                reaches,
                permissions: catalogue
                    .iter()
                    .find(|r| r.name == b.spec.role)
                    .map(|r| r.permissions.clone())
                    .unwrap_or_default(),
                expires_at: b.spec.expires_at.as_ref().map(|t| rfc3339(t.0)),
            });
        }
        access.sort_by(|a, b| (&a.person, &a.role, &a.scope).cmp(&(&b.person, &b.role, &b.scope)));
        let expiring = access
            .iter()
            .filter(|g| {
                g.expires_at
                    .as_deref()
                    .and_then(|e| e.parse::<Timestamp>().ok())
                    .is_some_and(|e| e > now && e <= now + window)
            })
            .cloned()
            .collect();
        let mut stale = Vec::new();
        for u in &members {
            let invitation = u.status.as_ref().and_then(|s| s.invitation.as_ref());
            let since = match u.status.as_ref().and_then(|s| s.phase) {
                Some(UserPhase::Pending) => invitation.and_then(|i| i.sent_at.as_ref()),
                Some(UserPhase::Expired) => invitation.and_then(|i| i.expires_at.as_ref()),
                _ => None,
            };
            if let Some(since) = since.map(|t| t.0).filter(|t| *t + window < now) {
                stale.push(Stale {
                    person: u.metadata.name.clone().unwrap_or_default(),
                    email: u.spec.email.clone(),
                    phase: phase_of(u),
                    since: rfc3339(since),
                    days: now.duration_since(since).as_hours() / 24,
                });
            }
        }
        let suspended = members
            .iter()
            .filter(|u| u.spec.suspended)
            .map(|u| Person {
                person: u.metadata.name.clone().unwrap_or_default(),
                email: u.spec.email.clone(),
            })
            .collect();
        out.push(TenantReview {
            namespace: namespace.to_string(),
            tenant: name,
            display_name: tenant.spec.display_name.clone(),
            access,
            stale_invitations: stale,
            suspended,
            expiring,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_review_shows_access_with_its_reach_and_what_needs_a_look() {
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let t = |secs: i64| (now + SignedDuration::from_secs(secs)).to_string();
        let day = 86_400;
        let tenants: Vec<Tenant> = vec![obj(serde_json::json!({
            "apiVersion": "usher.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "acme"},
            "spec": {"displayName": "Acme", "roles": [
                {"name": "Manager", "permissions": ["pricing", "reports"]},
                {"name": "Technician", "exclusive": true, "permissions": ["work-orders"]}]}
        }))];
        let group = |name: &str, parent: Option<&str>| -> LocationGroup {
            let mut spec = serde_json::json!({"tenantRef": {"name": "acme"}, "displayName": name});
            if let Some(p) = parent {
                spec["parentRef"] = serde_json::json!({"name": p});
            }
            obj(
                serde_json::json!({"apiVersion": "usher.dev/v1alpha1", "kind": "LocationGroup",
                "metadata": {"name": name}, "spec": spec}),
            )
        };
        let groups = vec![
            group("main", None),
            group("west", Some("main")),
            group("fresno", Some("west")),
            group("east", Some("main")),
        ];
        let user = |name: &str, status: serde_json::Value, suspended: bool| -> SystemUser {
            obj(
                serde_json::json!({"apiVersion": "usher.dev/v1alpha1", "kind": "SystemUser",
                "metadata": {"name": name, "creationTimestamp": t(-100 * day)},
                "spec": {"tenantRef": {"name": "acme"}, "email": format!("{name}@acme.example"),
                         "suspended": suspended},
                "status": status}),
            )
        };
        let users = vec![
            user("dana", serde_json::json!({"phase": "Active"}), false),
            user(
                "old",
                serde_json::json!({"phase": "Pending", "invitation": {"sentAt": t(-40 * day), "attempts": 1}}),
                false,
            ),
            user(
                "new",
                serde_json::json!({"phase": "Pending", "invitation": {"sentAt": t(-2 * day), "attempts": 1}}),
                false,
            ),
            user(
                "gone",
                serde_json::json!({"phase": "Expired", "invitation": {"expiresAt": t(-31 * day), "attempts": 1}}),
                false,
            ),
            user("paused", serde_json::json!({"phase": "Suspended"}), true),
        ];
        let binding = |name: &str,
                       user: &str,
                       role: &str,
                       scope: Option<&str>,
                       expires: Option<String>|
         -> RoleBinding {
            let mut spec = serde_json::json!({"userRef": {"name": user}, "role": role});
            if let Some(s) = scope {
                spec["scope"] = serde_json::json!({"locationGroup": s});
            }
            if let Some(e) = expires {
                spec["expiresAt"] = serde_json::json!(e);
            }
            obj(
                serde_json::json!({"apiVersion": "usher.dev/v1alpha1", "kind": "RoleBinding",
                "metadata": {"name": name, "creationTimestamp": t(-50 * day)}, "spec": spec}),
            )
        };
        let bindings = vec![
            binding(
                "dana-manager",
                "dana",
                "Manager",
                Some("west"),
                Some(t(10 * day)),
            ),
            binding(
                "dana-later",
                "dana",
                "Manager",
                Some("east"),
                Some(t(90 * day)),
            ),
            binding("old-tech", "old", "Technician", None, None),
            binding("old-gone", "old", "Manager", None, Some(t(-day))),
        ];
        let r = review("acme", &tenants, &groups, &users, &bindings, now, 30);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        let west = r
            .access
            .iter()
            .find(|g| g.binding == "dana-manager")
            .unwrap();
        assert_eq!(west.reaches, ["main/west", "main/west/fresno"]);
        assert_eq!(west.permissions, ["pricing", "reports"]);
        assert_eq!(west.phase, "Active");
        // The expired binding grants nothing, so it is not access.
        assert!(r.access.iter().all(|g| g.binding != "old-gone"));
        let tech = r.access.iter().find(|g| g.binding == "old-tech").unwrap();
        assert_eq!((tech.scope.as_str(), tech.reaches.len()), ("tenant", 0));
        assert_eq!(
            r.expiring
                .iter()
                .map(|g| g.binding.as_str())
                .collect::<Vec<_>>(),
            ["dana-manager"],
            "within 30 days only"
        );
        assert_eq!(
            r.stale_invitations
                .iter()
                .map(|s| (s.person.as_str(), s.days))
                .collect::<Vec<_>>(),
            [("old", 40), ("gone", 31)]
        );
        assert_eq!(
            r.suspended
                .iter()
                .map(|p| p.person.as_str())
                .collect::<Vec<_>>(),
            ["paused"]
        );
    }
}
