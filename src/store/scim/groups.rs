//! The Groups of the SCIM store: location groups and role Groups (named as in the table of
//! `mod.rs`), created, renamed, a member taken out, deleted; a person's role assignments
//! become memberships of role Groups (`sync_roles`). The [`Catalogue`] port is here, as most of
//! its writes reach the Groups; the catalogue itself (tenants, roles, the group tree,
//! assignments) is kept in the local store.

use std::collections::BTreeSet;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::client::{Filter, id_of, quoted};
use super::identity::Identity;
use super::{CORE_GROUP, PATCH_OP, ScimStore};
use crate::plan::records::{Assignment, Grant, GroupRecord, RoleRecord, TenantRecord};
use crate::store::{Catalogue, StoreError};

impl ScimStore {
    /// Every Group with this externalId (servers need not keep it unique).
    async fn find_groups(&self, external_id: &str) -> Result<Vec<Value>, StoreError> {
        self.list(
            "/Groups",
            &Filter::Eq("externalId", external_id),
            "&excludedAttributes=members",
        )
        .await
    }

    /// The Group's id, creating it (with `members`) when missing; whether it was created.
    async fn ensure_group(
        &self,
        external_id: &str,
        display: &str,
        members: &[&str],
    ) -> Result<(String, bool), StoreError> {
        if let Some(g) = self.find_groups(external_id).await?.into_iter().next() {
            let id = id_of(&g)?;
            if g["displayName"].as_str() != Some(display) {
                self.rename_group(&id, external_id, display).await?;
            }
            return Ok((id, false));
        }
        let members: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
        let body = json!({
            "schemas": [CORE_GROUP],
            "displayName": display,
            "externalId": external_id,
            "members": members,
        });
        let created = match self
            .send(Method::POST, "/Groups", Some(&body), None)
            .await?
            .ok()
        {
            Ok(created) => created,
            // Taken: usher's own Group, which a server that cannot filter on externalId hid
            // (its members are then synced as for any existing Group), or someone else's.
            Err(StoreError::Refused {
                status: 409,
                detail,
            }) => {
                let ours = self
                    .list(
                        "/Groups",
                        &Filter::EqIgnoreCase("displayName", display),
                        "&excludedAttributes=members",
                    )
                    .await?
                    .into_iter()
                    .find(|g| g["externalId"].as_str() == Some(external_id));
                return match ours {
                    Some(g) => Ok((id_of(&g)?, false)),
                    None => Err(StoreError::Refused {
                        status: 409,
                        detail,
                    }),
                };
            }
            Err(e) => return Err(e),
        };
        let id = id_of(&created)?;
        // Some servers create the Group and drop the `members` they were sent (and say so in
        // their answer, or answer without members at all): add them, so that nobody holds a
        // role in usher's books and not in the product's.
        let kept = |m: &Value| {
            created["members"]
                .as_array()
                .is_some_and(|list| list.iter().any(|x| x["value"] == m["value"]))
        };
        let missing: Vec<Value> = members.into_iter().filter(|m| !kept(m)).collect();
        if !missing.is_empty() {
            tracing::debug!(group = %external_id, missing = missing.len(), "the server created the Group without its members; adding them");
            self.patch_group(
                &id,
                json!({"op": "add", "path": "members", "value": missing}),
            )
            .await?;
        }
        Ok((id, true))
    }

    /// Give the Group `id` the name `display`: a PATCH of `displayName`, or, for a server that
    /// does not implement it (501), the Group replaced with PUT, its members read first and kept.
    async fn rename_group(
        &self,
        id: &str,
        external_id: &str,
        display: &str,
    ) -> Result<(), StoreError> {
        let op = json!({"op": "replace", "path": "displayName", "value": display});
        match self.patch_group(id, op).await {
            Err(StoreError::Refused { status: 501, .. }) => {
                let current = self
                    .send(Method::GET, &format!("/Groups/{id}"), None, None)
                    .await?;
                if current.status == StatusCode::NOT_FOUND {
                    return Ok(());
                }
                let current = current.ok()?;
                let members: Vec<Value> = current["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| json!({"value": m["value"]}))
                    .collect();
                let body = json!({
                    "schemas": [CORE_GROUP],
                    "id": id,
                    "displayName": display,
                    "externalId": external_id,
                    "members": members,
                });
                let reply = self
                    .send(Method::PUT, &format!("/Groups/{id}"), Some(&body), None)
                    .await?;
                if reply.status == StatusCode::NOT_FOUND {
                    return Ok(());
                }
                reply.ok().map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// PATCH a Group; false when it is gone.
    async fn patch_group(&self, id: &str, op: Value) -> Result<bool, StoreError> {
        let body = json!({"schemas": [PATCH_OP], "Operations": [op]});
        let reply = self
            .send(Method::PATCH, &format!("/Groups/{id}"), Some(&body), None)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        reply.ok().map(|_| true)
    }

    /// Write the permissions `identity`'s accounts hold (as their role Groups do, see
    /// `identity.rs`) as its User's `entitlements` (RFC 7643 section 4.1.2), when the server's
    /// User schema has them: one per (permission, scope), `value` the permission, `type` the
    /// scope (`tenant`, or the location group's path; for a User shared by several tenants'
    /// accounts, the tenant's key, or `<tenant>: <path>`), `display` the role and scope it comes
    /// from. Written only when they differ from the User's; a server that refuses them (400,
    /// 501) is not asked again, and the role Groups remain the only mapping.
    pub(super) async fn sync_entitlements(&self, identity: &Identity) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.entitlements.load(Relaxed) || identity.accounts.is_empty() {
            return Ok(());
        }
        let shared = identity.shared();
        let mut wanted: BTreeSet<(String, String, String)> = BTreeSet::new();
        for (tenant, held) in identity.written().into_values() {
            let catalogue = self.local.roles(&tenant).await?;
            for a in held {
                let path = match &a.group {
                    Some(key) => Some(self.group_path(key).await?),
                    None => None,
                };
                let scope = match (shared, path) {
                    (false, Some(path)) => path,
                    (false, None) => "tenant".to_string(),
                    (true, Some(path)) => format!("{tenant}: {path}"),
                    (true, None) => tenant.clone(),
                };
                for role in catalogue.iter().filter(|r| r.name == a.role) {
                    for permission in &role.permissions {
                        let display = format!("{} @ {scope}", role.name);
                        wanted.insert((permission.clone(), scope.clone(), display));
                    }
                }
            }
        }
        let user_id = &identity.scim_id;
        let reply = self
            .send(Method::GET, &format!("/Users/{user_id}"), None, None)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let current = reply.ok()?;
        let held_now: BTreeSet<(String, String, String)> = current["entitlements"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (text("value"), text("type"), text("display"))
            })
            .collect();
        if held_now == wanted {
            return Ok(());
        }
        let op = if wanted.is_empty() {
            json!({"op": "remove", "path": "entitlements"})
        } else {
            let values: Vec<Value> = wanted
                .iter()
                .map(|(value, kind, display)| json!({"value": value, "type": kind, "display": display}))
                .collect();
            json!({"op": "replace", "path": "entitlements", "value": values})
        };
        let body = json!({"schemas": [PATCH_OP], "Operations": [op]});
        let reply = self
            .send(
                Method::PATCH,
                &format!("/Users/{user_id}"),
                Some(&body),
                None,
            )
            .await?;
        match reply.status.as_u16() {
            404 => Ok(()),
            400 | 501 => {
                tracing::info!(
                    status = reply.status.as_u16(),
                    "the SCIM server does not take entitlements; permissions reach it through the role Groups only"
                );
                self.entitlements.store(false, Relaxed);
                Ok(())
            }
            _ => reply.ok().map(|_| ()),
        }
    }

    /// The path (`main/west`) of the location group `key`, or the key itself when the local
    /// store no longer has the group: how a role's scope is named in Groups and entitlements.
    async fn group_path(&self, key: &str) -> Result<String, StoreError> {
        Ok(self
            .local
            .group(key)
            .await?
            .map_or_else(|| key.to_string(), |g| g.path))
    }

    /// Take one member out of a Group, in the first form the server takes: the filtered path
    /// of RFC 7644 section 3.5.2.2 (`members[value eq "…"]`); the `value` form that products
    /// refusing filtered paths take instead; or, last, the Group's member list read and replaced
    /// without the member (Group writes are serialized, so no concurrent change is lost). A
    /// refusal (400, 501) moves on to the next form; the last form's refusal is the error.
    async fn remove_member(&self, group: &str, user_id: &str) -> Result<(), StoreError> {
        let path = format!("members[value eq {}]", quoted(user_id));
        let forms = [
            json!({"op": "remove", "path": path}),
            json!({"op": "remove", "path": "members", "value": [{"value": user_id}]}),
        ];
        for op in forms {
            match self.patch_group(group, op).await {
                Err(StoreError::Refused { status, detail }) if status == 400 || status == 501 => {
                    tracing::debug!(status, %detail, "the server refused this form of member removal; trying the next");
                }
                other => return other.map(|_| ()),
            }
        }
        let reply = self
            .send(
                Method::GET,
                &format!("/Groups/{group}?attributes=members"),
                None,
                None,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let current = reply.ok()?;
        let rest: Vec<Value> = current["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["value"].as_str() != Some(user_id))
            .map(|m| json!({"value": m["value"]}))
            .collect();
        self.patch_group(
            group,
            json!({"op": "replace", "path": "members", "value": rest}),
        )
        .await
        .map(|_| ())
    }

    /// Delete the Groups matching a filter (`externalId eq …` or `sw …`), as checked here.
    async fn delete_groups(&self, filter: &Filter<'_>) -> Result<(), StoreError> {
        let _one_at_a_time = self.groups.lock().await;
        let groups = self
            .list("/Groups", filter, "&excludedAttributes=members")
            .await?;
        for g in groups {
            let id = id_of(&g)?;
            let id = id.as_str();
            let reply = self
                .send(Method::DELETE, &format!("/Groups/{id}"), None, None)
                .await?;
            if reply.status != StatusCode::NOT_FOUND {
                reply.ok()?;
            }
        }
        Ok(())
    }

    /// Make the role Groups follow a change of an identity (see `identity.rs`): what `after`
    /// no longer gives taken away ([`Self::ungroup`]), then what it newly gives added
    /// ([`Self::group`]).
    pub(super) async fn regroup(
        &self,
        before: &Identity,
        after: &Identity,
    ) -> Result<(), StoreError> {
        self.ungroup(before, after).await?;
        self.group(before, after).await
    }

    /// Take away what `after` no longer gives each account whose Groups change (or that is
    /// gone): every role the account holds, not only what its Groups were last written with, so
    /// that a change that failed half-way, or raced another, leaves nothing behind. Taking a
    /// non-member out is harmless.
    pub(super) async fn ungroup(
        &self,
        before: &Identity,
        after: &Identity,
    ) -> Result<(), StoreError> {
        let (old, new) = (before.written(), after.written());
        for account in &before.accounts {
            let id = &account.record.id;
            let kept = new.get(id).map(|(_, list)| pairs(list));
            if kept.as_ref() == old.get(id).map(|(_, list)| pairs(list)).as_ref() {
                continue;
            }
            let gone: BTreeSet<Pair> = pairs(&account.assignments)
                .difference(&kept.unwrap_or_default())
                .cloned()
                .collect();
            self.sync_roles(
                &after.scim_id,
                &account.record.tenant,
                &gone,
                &BTreeSet::new(),
            )
            .await?;
        }
        Ok(())
    }

    /// Add what `after` newly gives each account.
    pub(super) async fn group(
        &self,
        before: &Identity,
        after: &Identity,
    ) -> Result<(), StoreError> {
        let (old, new) = (before.written(), after.written());
        for (id, (tenant, list)) in &new {
            let had = old.get(id).map(|(_, l)| pairs(l)).unwrap_or_default();
            let added: BTreeSet<Pair> = pairs(list).difference(&had).cloned().collect();
            self.sync_roles(&after.scim_id, tenant, &BTreeSet::new(), &added)
                .await?;
        }
        Ok(())
    }

    /// Take the SCIM User `user_id` out of `tenant`'s role Groups `remove` and into `add`.
    async fn sync_roles(
        &self,
        user_id: &str,
        tenant: &str,
        remove: &BTreeSet<Pair>,
        add: &BTreeSet<Pair>,
    ) -> Result<(), StoreError> {
        if remove.is_empty() && add.is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.groups.lock().await;
        for (role, group) in remove {
            let external = role_group_id(tenant, role, group.as_deref());
            for g in self.find_groups(&external).await? {
                self.remove_member(&id_of(&g)?, user_id).await?;
            }
        }
        for (role, group) in add {
            let external = role_group_id(tenant, role, group.as_deref());
            let scope = match group {
                Some(key) => Some(self.group_path(key).await?),
                None => None,
            };
            let display = match scope {
                Some(path) => format!("{tenant}: {role} @ {path}"),
                None => format!("{tenant}: {role}"),
            };
            let add = json!({"op": "add", "path": "members", "value": [{"value": user_id}]});
            let (id, created) = self.ensure_group(&external, &display, &[user_id]).await?;
            // Deleted in the product between the lookup and now: create it again.
            if !created && !self.patch_group(&id, add).await? {
                self.ensure_group(&external, &display, &[user_id]).await?;
            }
        }
        Ok(())
    }
}

/// A (role, location group) pair an assignment gives.
type Pair = (String, Option<String>);

/// The (role, group) pairs of assignments.
fn pairs(list: &[Assignment]) -> BTreeSet<Pair> {
    list.iter()
        .map(|a| (a.role.clone(), a.group.clone()))
        .collect()
}

/// The externalId of a role Group: `role/<tenant>/<role>`, or on a location group
/// `role/<tenant>/<role>/<group ns>/<group name>`.
fn role_group_id(tenant: &str, role: &str, group: Option<&str>) -> String {
    match group {
        Some(g) => format!("role/{tenant}/{role}/{g}"),
        None => format!("role/{tenant}/{role}"),
    }
}

#[async_trait]
impl Catalogue for ScimStore {
    async fn tenant(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.local.tenant(key).await
    }

    async fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.local.put_tenant(tenant).await
    }

    async fn delete_tenant(&self, key: &str) -> Result<(), StoreError> {
        let prefix = format!("role/{key}/");
        self.delete_groups(&Filter::StartsWith("externalId", &prefix))
            .await?;
        self.local.delete_tenant(key).await
    }

    async fn remove_assignment(&self, binding: &str) -> Result<(), StoreError> {
        let Some(holder) = self.local.holder_of(binding).await? else {
            return Ok(());
        };
        let Some((_held, identity)) = self.locked_identity(&holder).await? else {
            return self.local.remove_assignment(binding).await;
        };
        let rest: Vec<Assignment> = identity
            .account(&holder)
            .map(|a| {
                a.assignments
                    .iter()
                    .filter(|x| x.binding != binding)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let next = identity.with_assignments(&holder, &rest);
        self.regroup(&identity, &next).await?;
        self.local.remove_assignment(binding).await?;
        self.sync_entitlements(&next).await
    }

    async fn group(&self, key: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.local.group(key).await
    }

    async fn put_group(&self, group: &GroupRecord) -> Result<(), StoreError> {
        let display = format!("{}: location {}", group.tenant, group.path);
        {
            let _one_at_a_time = self.groups.lock().await;
            self.ensure_group(&format!("location/{}", group.key), &display, &[])
                .await?;
        }
        self.local.put_group(group).await
    }

    async fn delete_group(&self, key: &str) -> Result<(), StoreError> {
        let external_id = format!("location/{key}");
        self.delete_groups(&Filter::Eq("externalId", &external_id))
            .await?;
        self.local.delete_group(key).await
    }

    async fn roles(&self, tenant: &str) -> Result<Vec<RoleRecord>, StoreError> {
        self.local.roles(tenant).await
    }

    async fn put_roles(&self, tenant: &str, roles: &[RoleRecord]) -> Result<(), StoreError> {
        let before = self.local.roles(tenant).await?;
        self.local.put_roles(tenant, roles).await?;
        // A role that gives other permissions now (or is gone): its holders' entitlements
        // follow, so that the product never grants what the catalogue took away.
        // And one new to the catalogue: people may hold it already (their reconcile can run
        // before their Tenant's first one).
        let mut changed: Vec<String> = before
            .iter()
            .filter(|old| {
                roles
                    .iter()
                    .find(|new| new.name == old.name)
                    .is_none_or(|new| new.permissions != old.permissions)
            })
            .map(|r| r.name.clone())
            .collect();
        changed.extend(
            roles
                .iter()
                .filter(|new| before.iter().all(|old| old.name != new.name))
                .map(|r| r.name.clone()),
        );
        if !changed.is_empty() {
            let mut done = BTreeSet::new();
            for holder in self.local.holders(tenant, &changed).await? {
                if let Some((_held, identity)) = self.locked_identity(&holder).await?
                    && done.insert(identity.scim_id.clone())
                {
                    self.sync_entitlements(&identity).await?;
                }
            }
        }
        Ok(())
    }

    async fn assignments(&self, user_id: &str) -> Result<Vec<Assignment>, StoreError> {
        self.local.assignments(user_id).await
    }

    async fn set_assignments(
        &self,
        user_id: &str,
        assignments: &[Assignment],
    ) -> Result<(), StoreError> {
        let Some((_held, identity)) = self.locked_identity(user_id).await? else {
            return self.local.set_assignments(user_id, assignments).await;
        };
        let next = identity.with_assignments(user_id, assignments);
        self.regroup(&identity, &next).await?;
        self.local.set_assignments(user_id, assignments).await?;
        self.sync_entitlements(&next).await
    }

    async fn grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        self.local.grants(user_id).await
    }
}
