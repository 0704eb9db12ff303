//! The Users of the SCIM store: finding, reading, writing and (de)activating a person's SCIM
//! User, its JSON both ways (core attributes and usher's extension), and the [`Accounts`] port on
//! top. Each account also has a shadow row in the local store, which the invitations hang from
//! and which keeps what the server has no attribute for.

use std::collections::HashMap;

use async_trait::async_trait;
use jiff::Timestamp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::client::{Filter, id_of, refusal};
use super::identity::{Account, Identity};
use super::{CORE_USER, Held, PATCH_OP, ScimStore, USER_EXTENSION};
use crate::crd::Address;
use crate::plan::records::{ObjectKey, Profile, UserFields, UserRecord};
use crate::plan::system_user::same_address;
use crate::store::{Accounts, Catalogue, StoreError};

impl ScimStore {
    /// The User with this externalId, with the local account of that SystemUser when usher has
    /// one: by the SCIM id the local store keeps first (a server need not store `externalId`,
    /// nor filter on it), then by filter, each answer checked.
    async fn find_user(
        &self,
        external_id: &str,
    ) -> Result<Option<(Value, Option<UserRecord>)>, StoreError> {
        if let Some(account) = self.local.user_by_external_id(external_id).await?
            && let Some(identity) = self.identity(&account.id, false).await?
            && let Some((user, _)) = self.get_user(&identity.scim_id).await?
            && identity.holds(&user)
        {
            return Ok(Some((user, Some(account))));
        }
        let found = self
            .list("/Users", &Filter::Eq("externalId", external_id), "")
            .await?;
        // externalId need not be unique on the server; prefer the account usher knows.
        for u in &found {
            if let Some(id) = u["id"].as_str()
                && let Some(account) = self.local.user(id).await?
                && account.external_id == external_id
            {
                return Ok(Some((u.clone(), Some(account))));
            }
        }
        Ok(found.into_iter().next().map(|u| (u, None)))
    }

    /// The SCIM User `scim_id` and the local accounts that share it, oldest first, with their
    /// role assignments when `assignments` (else none are read).
    pub(super) async fn identity_of_user(
        &self,
        scim_id: &str,
        assignments: bool,
    ) -> Result<Identity, StoreError> {
        let mut accounts = Vec::new();
        for record in self.local.accounts_of_scim_user(scim_id).await? {
            let assignments = match assignments {
                true => self.local.assignments(&record.id).await?,
                false => Vec::new(),
            };
            accounts.push(Account {
                record,
                assignments,
            });
        }
        Ok(Identity {
            scim_id: scim_id.to_string(),
            accounts,
        })
    }

    /// The identity of the local account `id` (see [`Self::identity_of_user`]); None when the
    /// local store has no such account.
    pub(super) async fn identity(
        &self,
        id: &str,
        assignments: bool,
    ) -> Result<Option<Identity>, StoreError> {
        match self.local.scim_id_of(id).await? {
            Some(scim) => Ok(Some(self.identity_of_user(&scim, assignments).await?)),
            None => Ok(None),
        }
    }

    /// The identity of the local account `id`, read under its lock (see [`ScimStore::lock`]),
    /// with the lock; None when the local store has no such account.
    pub(super) async fn locked_identity(
        &self,
        id: &str,
    ) -> Result<Option<(Held<'_>, Identity)>, StoreError> {
        let Some(scim_id) = self.local.scim_id_of(id).await? else {
            return Ok(None);
        };
        let held = self.lock(&scim_id).await;
        let identity = self.identity_of_user(&scim_id, true).await?;
        Ok(Some((held, identity)))
    }

    /// The record of the local `account` whose SCIM User reads `user` (see `identity.rs`).
    async fn view(&self, user: &Value, account: &UserRecord) -> Result<UserRecord, StoreError> {
        let server = self.record(user, Some(account));
        let identity = self.identity_of_user(&id_of(user)?, false).await?;
        Ok(match identity.account(&account.id) {
            Some(_) => identity.view(user, server, account),
            None => UserRecord {
                id: account.id.clone(),
                ..server
            },
        })
    }

    /// The User with this id and its version for `If-Match` (the ETag header, else
    /// `meta.version`); None when it is gone.
    async fn get_user(&self, id: &str) -> Result<Option<(Value, Option<String>)>, StoreError> {
        let reply = self
            .send(Method::GET, &format!("/Users/{id}"), None, None)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let etag = reply.etag.clone();
        let body = reply.ok()?;
        let etag = etag.or_else(|| body["meta"]["version"].as_str().map(str::to_string));
        Ok(Some((body, etag)))
    }

    /// The SCIM User for `fields` (everything usher owns; `active` is set separately).
    fn user_json(&self, fields: &UserFields) -> Value {
        let p = &fields.profile;
        let mut name = serde_json::Map::new();
        if let Some(f) = &p.first_name {
            name.insert("givenName".into(), json!(f));
        }
        if let Some(l) = &p.last_name {
            name.insert("familyName".into(), json!(l));
        }
        let display = match (&p.first_name, &p.last_name) {
            (Some(f), Some(l)) => format!("{f} {l}"),
            (Some(n), None) | (None, Some(n)) => n.clone(),
            (None, None) => fields.email.clone(),
        };
        let mut user = json!({
            "schemas": [CORE_USER],
            "userName": fields.email,
            "externalId": fields.external_id,
            "displayName": display,
            "emails": [{"value": fields.email, "type": "work", "primary": true}],
        });
        if !name.is_empty() {
            user["name"] = Value::Object(name);
        }
        if let Some(phone) = &p.phone {
            user["phoneNumbers"] = json!([{"value": phone, "type": "work"}]);
        }
        if let Some(a) = &p.address {
            let mut addr = json!({"type": "work", "primary": true});
            for (key, value) in [
                ("streetAddress", &a.street),
                ("locality", &a.city),
                ("region", &a.region),
                ("postalCode", &a.postal_code),
                ("country", &a.country),
            ] {
                if let Some(v) = value {
                    addr[key] = json!(v);
                }
            }
            user["addresses"] = json!([addr]);
        }
        if self.extension {
            user["schemas"] = json!([CORE_USER, USER_EXTENSION]);
            user[USER_EXTENSION] = extension_json(&fields.tenant, p);
        }
        user
    }

    /// The record of a SCIM User, with what only the local store knows.
    fn record(&self, scim: &Value, shadow: Option<&UserRecord>) -> UserRecord {
        // An empty string is how some products (django-scim2) say "not set".
        let text = |v: &Value| v.as_str().filter(|t| !t.is_empty()).map(str::to_string);
        let ext = &scim[USER_EXTENSION];
        let kept = shadow.map(|s| s.profile.clone()).unwrap_or_default();
        let address = scim["addresses"].get(0).map(|a| Address {
            street: text(&a["streetAddress"]),
            city: text(&a["locality"]),
            region: text(&a["region"]),
            postal_code: text(&a["postalCode"]),
            country: text(&a["country"]),
        });
        let unkept = self.unkept();
        // What the server does not keep is what usher wrote (its shadow): no drift to repair.
        let or_written = |field: &str, server: Option<String>, written: &Option<String>| {
            if unkept.contains(field) {
                written.clone()
            } else {
                server
            }
        };
        let mut profile = Profile {
            first_name: or_written(
                "firstName",
                text(&scim["name"]["givenName"]),
                &kept.first_name,
            ),
            last_name: or_written(
                "lastName",
                text(&scim["name"]["familyName"]),
                &kept.last_name,
            ),
            phone: or_written(
                "phone",
                scim["phoneNumbers"]
                    .as_array()
                    .and_then(|p| p.iter().find_map(|n| text(&n["value"]))),
                &kept.phone,
            ),
            address: if unkept.contains("address") {
                kept.address.clone()
            } else {
                address
            },
            ..kept
        };
        if self.extension {
            profile.company = text(&ext["company"]);
            profile.accounting_id = text(&ext["accountingId"]);
            profile.comments = text(&ext["comments"]);
            profile.locations = ext["locations"]
                .as_array()
                .map(|l| l.iter().filter_map(text).collect())
                .unwrap_or_default();
            profile.attributes = ext["attributes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|pair| Some((text(&pair["name"])?, text(&pair["value"])?)))
                        .collect()
                })
                .unwrap_or_default();
        }
        UserRecord {
            id: text(&scim["id"]).unwrap_or_default(),
            tenant: shadow
                .map(|s| s.tenant.clone())
                .or_else(|| text(&ext["tenant"]))
                .unwrap_or_default(),
            external_id: text(&scim["externalId"]).unwrap_or_default(),
            email: same_address_as_written(
                scim["emails"]
                    .as_array()
                    .and_then(|e| {
                        e.iter()
                            .find(|m| m["primary"] == true)
                            .or(e.first())
                            .and_then(|m| text(&m["value"]))
                    })
                    .or_else(|| text(&scim["userName"]))
                    .unwrap_or_default(),
                shadow,
            ),
            profile,
            active: scim["active"].as_bool().unwrap_or(false),
            activated_at: shadow.and_then(|s| s.activated_at),
        }
    }

    /// The record of a SCIM User and its local `account` (as the caller read it), making sure the
    /// local store has one (after a crash between creating it there and here, or a lost local
    /// store): the User's own, or, when other accounts share the User, one joining them.
    async fn known(
        &self,
        scim: &Value,
        account: Option<UserRecord>,
    ) -> Result<UserRecord, StoreError> {
        if let Some(account) = account {
            return self.view(scim, &account).await;
        }
        let id = id_of(scim)?;
        let mut record = self.record(scim, None);
        let _held = self.lock(&id).await;
        let identity = self.identity_of_user(&id, true).await?;
        if !identity.accounts.is_empty() {
            return self.link(scim, &identity, &fields_of(&record)).await;
        }
        // An active User had accepted (usher only activates on a redemption): it keeps its
        // access rather than being deactivated and invited again.
        let accepted = record.active.then(Timestamp::now);
        self.local
            .adopt_user(&id, &fields_of(&record), accepted)
            .await?;
        record.activated_at = accepted;
        Ok(record)
    }

    /// PATCH a User, conditionally on its ETag when the server has them; retried on a lost race.
    /// The User as the server answered, and whether that is its answer (a 204 leaves the User
    /// as read before the PATCH).
    async fn patch_user(
        &self,
        id: &str,
        operations: Vec<Value>,
    ) -> Result<(Value, bool), StoreError> {
        let body = json!({"schemas": [PATCH_OP], "Operations": operations});
        for _ in 0..3 {
            let Some((current, etag)) = self.get_user(id).await? else {
                return Err(StoreError::NotFound(format!("SCIM User {id}")));
            };
            let reply = self
                .send(
                    Method::PATCH,
                    &format!("/Users/{id}"),
                    Some(&body),
                    etag.as_deref(),
                )
                .await?;
            match reply.status {
                StatusCode::PRECONDITION_FAILED => continue,
                StatusCode::NOT_FOUND => {
                    return Err(StoreError::NotFound(format!("SCIM User {id}")));
                }
                // Many servers answer 204 without a body.
                s if s.is_success() && reply.body.is_object() => return Ok((reply.body, true)),
                s if s.is_success() => return Ok((current, false)),
                _ => return Err(refusal(reply.status, &reply.body)),
            }
        }
        Err(StoreError::Backend(format!(
            "SCIM User {id} kept changing under usher (412 three times)"
        )))
    }

    /// Make the User `id` hold `fields`: a PATCH (one replace, removals of what is unset), or,
    /// for a server that does not implement that PATCH (501, as django-scim2 for most
    /// attributes), the whole User replaced with PUT (RFC 7644 section 3.5.1), keeping its
    /// `active`. The User as the server answered.
    async fn write_user(&self, id: &str, fields: &UserFields) -> Result<Value, StoreError> {
        match self.patch_user(id, self.update_operations(fields)).await {
            Err(StoreError::Refused {
                status: 501,
                detail,
            }) => {
                tracing::debug!(%detail, "the server does not implement this PATCH; replacing the User");
                let Some((current, etag)) = self.get_user(id).await? else {
                    return Err(StoreError::NotFound(format!("SCIM User {id}")));
                };
                let mut body = self.user_json(fields);
                body["id"] = json!(id);
                body["active"] = json!(current["active"].as_bool().unwrap_or(false));
                let reply = self
                    .send(
                        Method::PUT,
                        &format!("/Users/{id}"),
                        Some(&body),
                        etag.as_deref(),
                    )
                    .await?;
                match reply.status {
                    StatusCode::NOT_FOUND => Err(StoreError::NotFound(format!("SCIM User {id}"))),
                    s if s.is_success() && reply.body.is_object() => {
                        self.learn_unkept(fields, &reply.body).await?;
                        Ok(reply.body)
                    }
                    s if s.is_success() => Ok(body),
                    _ => Err(refusal(reply.status, &reply.body)),
                }
            }
            Ok((answer, true)) => {
                self.learn_unkept(fields, &answer).await?;
                Ok(answer)
            }
            Ok((current, false)) => Ok(current),
            Err(e) => Err(e),
        }
    }

    /// The fields the server was seen not to keep.
    fn unkept(&self) -> std::collections::BTreeSet<String> {
        self.unkept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Learn from the server's answer to a write of `fields` (a created or replaced User, as
    /// it now holds it) which of the fields usher sent it did not keep, and remember them.
    async fn learn_unkept(&self, fields: &UserFields, answer: &Value) -> Result<(), StoreError> {
        let p = &fields.profile;
        let empty = |v: &Value| match v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        };
        let sent = [
            (
                "firstName",
                p.first_name.is_some(),
                &answer["name"]["givenName"],
            ),
            (
                "lastName",
                p.last_name.is_some(),
                &answer["name"]["familyName"],
            ),
            ("phone", p.phone.is_some(), &answer["phoneNumbers"]),
            ("address", p.address.is_some(), &answer["addresses"]),
        ];
        for (field, _, kept) in sent.into_iter().filter(|(_, was_sent, _)| *was_sent) {
            let dropped = empty(kept);
            let changed = {
                let mut unkept = self.unkept.lock().unwrap_or_else(|p| p.into_inner());
                if dropped {
                    unkept.insert(field.to_string())
                } else {
                    unkept.remove(field)
                }
            };
            // A field kept again (the product learned it, or the store changed) is unlearned,
            // so that changes made in the product are seen again.
            match (changed, dropped) {
                (true, true) => {
                    tracing::info!(
                        field,
                        "the SCIM server does not keep this field; it stays in git and usher's record"
                    );
                    self.local.remember_limit(field).await?;
                }
                (true, false) => {
                    tracing::info!(field, "the SCIM server keeps this field again");
                    self.local.forget_limit(field).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The Users whose userName is `email`, in any case (each answer checked): where a 409 on
    /// an address is explained, by usher's own User ([`carrying`]) or a person's User in another
    /// tenant ([`Self::identity_for_address`]).
    async fn named(&self, email: &str) -> Result<Vec<Value>, StoreError> {
        self.list("/Users", &Filter::EqIgnoreCase("userName", email), "")
            .await
    }

    /// Operations that make a User hold `fields`: one replace, and removals of what is unset.
    fn update_operations(&self, fields: &UserFields) -> Vec<Value> {
        let mut value = self.user_json(fields);
        if let Some(obj) = value.as_object_mut() {
            obj.remove("schemas");
        }
        let p = &fields.profile;
        let mut ops = vec![json!({"op": "replace", "value": value})];
        let mut remove = |path: &str| ops.push(json!({"op": "remove", "path": path}));
        if p.first_name.is_none() {
            remove("name.givenName");
        }
        if p.last_name.is_none() {
            remove("name.familyName");
        }
        if p.phone.is_none() {
            remove("phoneNumbers");
        }
        if p.address.is_none() {
            remove("addresses");
        }
        // A replace merges key by key: what git no longer says must be removed.
        if self.extension {
            for (key, value) in [
                ("company", &p.company),
                ("accountingId", &p.accounting_id),
                ("comments", &p.comments),
            ] {
                if value.is_none() {
                    remove(&format!("{USER_EXTENSION}:{key}"));
                }
            }
            if p.attributes.is_empty() {
                remove(&format!("{USER_EXTENSION}:attributes"));
            }
        }
        ops
    }

    /// Activate or deactivate the SCIM User `id` (a PATCH of `active`, as [`Self::patch_user`]
    /// does it); [`StoreError::NotFound`] when it is gone.
    pub(super) async fn set_scim_active(&self, id: &str, active: bool) -> Result<(), StoreError> {
        self.patch_user(
            id,
            vec![json!({"op": "replace", "path": "active", "value": active})],
        )
        .await
        .map(|_| ())
    }
}

/// The address as usher wrote it (the shadow's) when the server's is the same address in
/// another case: products lowercase addresses, and that is no change to repair. Any other
/// difference is the server's.
fn same_address_as_written(server: String, shadow: Option<&UserRecord>) -> String {
    match shadow {
        Some(s) if crate::plan::system_user::same_address(&s.email, &server) => s.email.clone(),
        _ => server,
    }
}

/// usher's extension of a User for `tenant` and profile `p` (only the fields that are set).
fn extension_json(tenant: &str, p: &Profile) -> Value {
    // SCIM has no map: attributes are {name, value} pairs, written whole each time (a replace of
    // a multi-valued attribute replaces all its values), so one removed in git goes here too.
    let attributes: Vec<Value> = p
        .attributes
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut ext = json!({"tenant": tenant, "locations": p.locations});
    // An empty array is "unassigned" to many servers, which then keep the old values: none is
    // sent, and an update removes the attribute instead (see `update_operations`).
    if !attributes.is_empty() {
        ext["attributes"] = json!(attributes);
    }
    for (key, value) in [
        ("company", &p.company),
        ("accountingId", &p.accounting_id),
        ("comments", &p.comments),
    ] {
        if let Some(v) = value {
            ext[key] = json!(v);
        }
    }
    ext
}

/// What usher writes of an account, from its record.
fn fields_of(r: &UserRecord) -> UserFields {
    UserFields {
        tenant: r.tenant.clone(),
        external_id: r.external_id.clone(),
        email: r.email.clone(),
        profile: r.profile.clone(),
    }
}

impl ScimStore {
    /// Of `found` (the Users [`Self::named`] `fields.email`), the User of another tenant's
    /// account, which the account of `fields` can share: a User usher keeps accounts for, still
    /// theirs, with no account of `fields.tenant` yet (one account per tenant and address).
    /// None when the address is nobody's, or someone else's (not usher's to share).
    async fn identity_for_address(
        &self,
        found: Vec<Value>,
        fields: &UserFields,
    ) -> Result<Option<(Value, Identity)>, StoreError> {
        for user in found {
            let Ok(scim_id) = id_of(&user) else { continue };
            let identity = self.identity_of_user(&scim_id, true).await?;
            let usable = !identity.accounts.is_empty()
                && identity.holds(&user)
                && identity
                    .accounts
                    .iter()
                    .all(|a| a.record.tenant != fields.tenant);
            if usable {
                return Ok(Some((user, identity)));
            }
        }
        Ok(None)
    }

    /// A new account for `fields` sharing the User of another tenant's account with the same
    /// address, of `found`; None when there is none to share (see
    /// [`Self::identity_for_address`]).
    async fn join(
        &self,
        found: Vec<Value>,
        fields: &UserFields,
    ) -> Result<Option<UserRecord>, StoreError> {
        let Some((user, found)) = self.identity_for_address(found, fields).await? else {
            return Ok(None);
        };
        let _held = self.lock(&found.scim_id).await;
        // Read again under the lock: its accounts may have changed since.
        let identity = self.identity_of_user(&found.scim_id, true).await?;
        if identity.accounts.is_empty()
            || identity
                .accounts
                .iter()
                .any(|a| a.record.tenant == fields.tenant)
        {
            return Ok(None);
        }
        tracing::info!(tenant = %fields.tenant,
            "this person already has a User in the product, through another tenant; this tenant's account shares it");
        self.link(&user, &identity, fields).await.map(Some)
    }

    /// A new account for `fields` on the User `user`, which `identity`'s accounts share (the
    /// caller holds its lock): the Groups of an account that now shares the User and is pending
    /// taken away first (see `identity.rs`), then the account recorded, inactive, then the
    /// User's entitlements.
    async fn link(
        &self,
        user: &Value,
        identity: &Identity,
        fields: &UserFields,
    ) -> Result<UserRecord, StoreError> {
        let account = crate::store::new_id()?;
        let joined = identity.with_account(&account, fields);
        self.ungroup(identity, &joined).await?;
        self.local
            .link_user(&account, &identity.scim_id, fields)
            .await?;
        self.sync_entitlements(&joined).await?;
        let linked = self.local.user(&account).await?.ok_or_else(|| {
            StoreError::Backend(format!(
                "the account just linked to SCIM User {} is gone",
                identity.scim_id
            ))
        })?;
        self.view(user, &linked).await
    }

    /// Take the account `id` out of `identity`'s User: its tenant's role Groups first, then the
    /// User deleted with its last account, or else handed to the oldest account left when `id`
    /// owned it, and active as the accounts left are. The local account is left to the caller.
    async fn leave(&self, identity: &Identity, id: &str) -> Result<(), StoreError> {
        let rest = identity.without(id);
        self.ungroup(identity, &rest).await?;
        let scim_id = &identity.scim_id;
        if rest.accounts.is_empty() {
            let reply = self
                .send(Method::DELETE, &format!("/Users/{scim_id}"), None, None)
                .await?;
            if reply.status != StatusCode::NOT_FOUND {
                reply.ok()?;
            }
            return Ok(());
        }
        let Some((user, _)) = self.get_user(scim_id).await? else {
            return Ok(());
        };
        if !identity.holds(&user) {
            return Ok(());
        }
        if identity.owner(&user).is_some_and(|o| o.record.id == id)
            && let Some(heir) = rest.heir()
        {
            self.write_user(scim_id, &fields_of(&heir.record)).await?;
        }
        if user["active"].as_bool() != Some(rest.any_active()) {
            self.set_scim_active(scim_id, rest.any_active()).await?;
        }
        // What the accounts left gain (one alone again keeps its Groups while pending) comes
        // after the User's state: never onto a User still active for the one that left.
        self.group(identity, &rest).await?;
        self.sync_entitlements(&rest).await
    }

    /// Give the account `id` of `identity` (whose lock `held` is) the new address of `fields`:
    /// it leaves that User (the others keep it) for the User of its new address: another
    /// tenant's account's, its own from an earlier attempt, or a new one.
    async fn readdress<'a>(
        &'a self,
        held: &mut Held<'a>,
        identity: &Identity,
        id: &str,
        fields: &UserFields,
    ) -> Result<UserRecord, StoreError> {
        let found = self.named(&fields.email).await?;
        let target = match carrying(&found, &fields.external_id) {
            // Its own, from an earlier attempt.
            Some(user) => id_of(user)?,
            None => match self.identity_for_address(found, fields).await? {
                Some((_, target)) => target.scim_id,
                None => self.new_user_for(fields).await?,
            },
        };
        self.lock_also(held, &target).await?;
        self.leave(identity, id).await?;
        let before = self.identity_of_user(&target, true).await?;
        // One statement: an account is never half moved.
        self.local.move_user(id, &target, fields).await?;
        let after = self.identity_of_user(&target, true).await?;
        self.set_scim_active(&target, after.any_active()).await?;
        self.regroup(&before, &after).await?;
        self.sync_entitlements(&after).await?;
        let Some((user, _)) = self.get_user(&target).await? else {
            return Err(StoreError::NotFound(format!("SCIM User {target}")));
        };
        let account = self
            .local
            .user(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        self.view(&user, &account).await
    }

    /// The record of account `id` after `fields` were written to it (`scim`, the User as the
    /// server answered or as read).
    async fn written(
        &self,
        id: &str,
        scim: &Value,
        fields: &UserFields,
    ) -> Result<UserRecord, StoreError> {
        let account = self
            .local
            .user(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        let mut record = self.view(scim, &account).await?;
        // A 204 answer carried the User as it was before: what was written is `fields`.
        record.email = fields.email.clone();
        record.external_id = fields.external_id.clone();
        record.profile = fields.profile.clone();
        Ok(record)
    }

    /// The id of a new, inactive User for `fields`. A 409 is the server's refusal (the callers
    /// looked for usher's own User with the address first).
    async fn new_user_for(&self, fields: &UserFields) -> Result<String, StoreError> {
        let mut body = self.user_json(fields);
        body["active"] = json!(false);
        let created = self
            .send(Method::POST, "/Users", Some(&body), None)
            .await?
            .ok()?;
        self.learn_unkept(fields, &created).await?;
        id_of(&created)
    }
}

/// Of `found`, the User carrying `key` as its `externalId`: usher's own account, which a server
/// that cannot filter on externalId did not show. None for anyone else's.
fn carrying<'a>(found: &'a [Value], key: &str) -> Option<&'a Value> {
    found.iter().find(|u| u["externalId"].as_str() == Some(key))
}

#[async_trait]
impl Accounts for ScimStore {
    async fn unkept_fields(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.unkept().into_iter().collect())
    }

    async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self.find_user(external_id).await? {
            Some((u, account)) => Ok(Some(self.known(&u, account).await?)),
            None => Ok(None),
        }
    }

    async fn create_user(&self, fields: &UserFields) -> Result<UserRecord, StoreError> {
        // Created before a crash, or by someone else for this person: take it over.
        if let Some((existing, account)) = self.find_user(&fields.external_id).await? {
            let account = self.known(&existing, account).await?;
            return self.update_user(&account.id, fields).await;
        }
        let mut body = self.user_json(fields);
        body["active"] = json!(false);
        let created = match self
            .send(Method::POST, "/Users", Some(&body), None)
            .await?
            .ok()
        {
            Ok(created) => created,
            // Taken: ours after all (a server that cannot filter on externalId hid it), this
            // person's through another tenant (shared), or someone else's, which stays refused.
            Err(StoreError::Refused {
                status: 409,
                detail,
            }) => {
                let found = self.named(&fields.email).await?;
                if let Some(existing) = carrying(&found, &fields.external_id) {
                    let account = self.known(existing, None).await?;
                    return self.update_user(&account.id, fields).await;
                }
                return match self.join(found, fields).await? {
                    Some(joined) => Ok(joined),
                    None => Err(StoreError::Refused {
                        status: 409,
                        detail,
                    }),
                };
            }
            Err(e) => return Err(e),
        };
        self.learn_unkept(fields, &created).await?;
        let id = id_of(&created)?;
        self.local.adopt_user(&id, fields, None).await?;
        let shadow = self.local.user(&id).await?;
        Ok(self.record(&created, shadow.as_ref()))
    }

    async fn update_user(&self, id: &str, fields: &UserFields) -> Result<UserRecord, StoreError> {
        let Some((mut held, identity)) = self.locked_identity(id).await? else {
            // No local account (lost): `id` is the User's own, as it always was before accounts
            // could share one.
            let scim = self.write_user(id, fields).await?;
            self.local.adopt_user(id, fields, None).await?;
            return self.written(id, &scim, fields).await;
        };
        let scim_id = identity.scim_id.clone();
        let readdressed = identity
            .account(id)
            .is_some_and(|a| !same_address(&a.record.email, &fields.email));
        // A shared User is one address: an account that takes another one leaves it.
        if identity.shared() && readdressed {
            return self.readdress(&mut held, &identity, id, fields).await;
        }
        let owner = match identity.shared() {
            true => {
                let Some((user, _)) = self.get_user(&scim_id).await? else {
                    return Err(StoreError::NotFound(format!("SCIM User {scim_id}")));
                };
                match identity.owner(&user).is_some_and(|o| o.record.id == id) {
                    true => None,
                    false => Some(user),
                }
            }
            false => None,
        };
        let scim = match owner {
            None => match self.write_user(&scim_id, fields).await {
                // The new address is another tenant's person's User: this account joins it.
                Err(StoreError::Refused { status: 409, .. }) if readdressed => {
                    return self.readdress(&mut held, &identity, id, fields).await;
                }
                written => written?,
            },
            // Another account owns the User: this one's details stay in git and usher's record.
            Some(user) => user,
        };
        self.local.update_account(id, fields).await?;
        self.written(id, &scim, fields).await
    }

    async fn users_of_tenant(&self, tenant: &str) -> Result<Vec<UserRecord>, StoreError> {
        let accounts = self.local.accounts_of_tenant(tenant).await?;
        let namespace = ObjectKey::parse(tenant).map_or(tenant.to_string(), |k| k.namespace);
        let prefix = format!("{namespace}/");
        let scim: HashMap<String, Value> = self
            .list("/Users", &Filter::StartsWith("externalId", &prefix), "")
            .await?
            .into_iter()
            .filter_map(|u| Some((u["id"].as_str()?.to_string(), u)))
            .collect();
        let mut out = Vec::with_capacity(accounts.len());
        for (account, scim_id) in &accounts {
            // Not in the filtered list: a server that does not store or filter externalId, or a
            // User another tenant's account owns. Its id still finds it; only a User gone from
            // the server is left out.
            let user = match scim.get(scim_id) {
                Some(u) => Some(u.clone()),
                None => self.get_user(scim_id).await?.map(|(u, _)| u),
            };
            let Some(user) = user else { continue };
            let identity = self.identity_of_user(scim_id, false).await?;
            if identity.holds(&user) {
                let server = self.record(&user, Some(account));
                out.push(identity.view(&user, server, account));
            }
        }
        // People of this tenant the local store lost (the extension names their tenant).
        for (id, u) in &scim {
            if accounts.iter().all(|(_, s)| s != id) && u[USER_EXTENSION]["tenant"] == tenant {
                out.push(self.known(u, None).await?);
            }
        }
        out.sort_by(|a, b| a.external_id.cmp(&b.external_id));
        Ok(out)
    }

    async fn user_by_email(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let Some(account) = self.local.user_by_email(tenant, email).await? else {
            return Ok(None);
        };
        let Some(identity) = self.identity(&account.id, false).await? else {
            return Ok(None);
        };
        match self.get_user(&identity.scim_id).await? {
            Some((u, _)) if identity.holds(&u) => Ok(Some(self.view(&u, &account).await?)),
            _ => Ok(None),
        }
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        match self.locked_identity(id).await? {
            // The server need not drop a deleted User from its Groups; `leave` does.
            Some((_held, identity)) => self.leave(&identity, id).await?,
            None => {
                let reply = self
                    .send(Method::DELETE, &format!("/Users/{id}"), None, None)
                    .await?;
                if reply.status != StatusCode::NOT_FOUND {
                    reply.ok()?;
                }
            }
        }
        self.local.delete_user(id).await
    }

    async fn set_active(&self, id: &str, active: bool, now: Timestamp) -> Result<(), StoreError> {
        let Some((_held, identity)) = self.locked_identity(id).await? else {
            self.local.set_active(id, active, now).await?;
            return self.set_scim_active(id, active).await;
        };
        let next = identity.with_active(id, active);
        // Access goes from the product before usher's books say so, and comes after the User's
        // state.
        self.ungroup(&identity, &next).await?;
        // Local first: a redemption racing a deactivation reads it and leaves SCIM alone.
        self.local.set_active(id, active, now).await?;
        self.set_scim_active(&identity.scim_id, next.any_active())
            .await?;
        self.group(&identity, &next).await?;
        // The person's profile follows an account that is in use.
        if !active
            && identity.shared()
            && let Some(heir) = next.heir().filter(|a| a.record.active)
            && let Some((user, _)) = self.get_user(&identity.scim_id).await?
            && identity.owner(&user).is_some_and(|o| o.record.id == id)
        {
            self.write_user(&identity.scim_id, &fields_of(&heir.record))
                .await?;
        }
        if identity.shared() {
            self.sync_entitlements(&next).await?;
        }
        Ok(())
    }
}
