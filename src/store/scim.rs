//! The SCIM 2.0 store (RFC 7643/7644): people are SCIM Users of the product, keyed by
//! `externalId` = `<namespace>/<name>`; role assignments are SCIM Groups the people are members
//! of; location groups are SCIM Groups too. What SCIM has no place for — invitations (only their
//! hashes), the role catalogue, the group tree, the offboarding ledger, and a shadow row per
//! account that the invitations hang from — lives in a small local SQL store (SQLite by default),
//! so it survives restarts.
//!
//! Naming scheme of the Groups usher writes (`<tenant>` is the Tenant's `<namespace>/<name>`):
//!
//! | what | displayName | externalId |
//! |---|---|---|
//! | a role, tenant-wide | `<tenant>: <role>` | `role/<tenant>/<role>` |
//! | a role on a location group | `<tenant>: <role> @ <group path>` | `role/<tenant>/<role>/<group ns>/<group name>` |
//! | a location group | `<tenant>: location <group path>` | `location/<group ns>/<group name>` |

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::sql::SqlStore;
use super::{Accounts, Catalogue, Health, Invitations, OffboardingLedger, StoreError};
use crate::crd::Address;
use crate::plan::records::{
    Assignment, Grant, GroupRecord, InvitationRecord, Profile, RedeemRefusal, Redeemed, RoleRecord,
    TenantRecord, UserFields, UserRecord,
};
use crate::token::TokenHash;

/// usher's extension of the SCIM User: what core SCIM has no attribute for.
pub const USER_EXTENSION: &str = "urn:usher:params:scim:schemas:extension:usher:2.0:User";
const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const CORE_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const MEDIA: &str = "application/scim+json";
/// Tries of one request when the server is busy (429) or failing (5xx).
const TRIES: u32 = 4;
/// The longest Retry-After honoured; a longer one is cut to this.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The SCIM backend.
pub struct ScimStore {
    http: reqwest::Client,
    base: String,
    token: String,
    local: SqlStore,
    /// The server declares [`USER_EXTENSION`]; otherwise those fields stay in the local store.
    extension: bool,
    /// The server supports ETags: updates are conditional (`If-Match`).
    etags: bool,
    /// Group writes one at a time: two reconciles must not both create the same Group.
    groups: tokio::sync::Mutex<()>,
    page_size: u32,
}

/// One answer of the server.
struct Reply {
    status: StatusCode,
    etag: Option<String>,
    body: Value,
}

impl Reply {
    /// The body of a 2xx; a refusal with the server's `detail` otherwise.
    fn ok(self) -> Result<Value, StoreError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(refusal(self.status, &self.body))
        }
    }
}

fn refusal(status: StatusCode, body: &Value) -> StoreError {
    let detail = body["detail"].as_str().unwrap_or("no detail given");
    let detail = match body["scimType"].as_str() {
        Some(kind) => format!("{kind}: {detail}"),
        None => detail.to_string(),
    };
    StoreError::Refused {
        status: status.as_u16(),
        detail,
    }
}

/// The `id` of a resource the server returned; an answer without one is an error, not "".
fn id_of(resource: &Value) -> Result<String, StoreError> {
    resource["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            StoreError::Backend("the SCIM server returned a resource without an id".into())
        })
}

/// A filter value as a SCIM string literal.
fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `Retry-After` as seconds or an HTTP date, capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
            Duration::try_from(at - Timestamp::now()).unwrap_or_default()
        }
    };
    Some(wait.min(MAX_WAIT))
}

impl ScimStore {
    /// Reach the server at `base` (its `ServiceProviderConfig` says what it supports) and open
    /// the local store at `local`.
    pub async fn connect(
        base: &str,
        token: &str,
        local: SqlStore,
        page_size: u32,
    ) -> Result<Self, StoreError> {
        // reqwest is built without a crypto provider; usher uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("usher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Backend(format!("SCIM client: {e}")))?;
        let mut store = Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            local,
            extension: false,
            etags: false,
            groups: tokio::sync::Mutex::new(()),
            page_size: page_size.max(1),
        };
        let config = store
            .send(Method::GET, "/ServiceProviderConfig", None, None)
            .await?
            .ok()?;
        if config["patch"]["supported"] == false {
            return Err(StoreError::Backend(
                "the SCIM server does not support PATCH, which usher needs".into(),
            ));
        }
        store.etags = config["etag"]["supported"] == true;
        // Both /Schemas and the token are checked here, so a bad token shows in /readyz.
        let schemas = store.send(Method::GET, "/Schemas", None, None).await?;
        if schemas.status == StatusCode::UNAUTHORIZED || schemas.status == StatusCode::FORBIDDEN {
            return Err(refusal(schemas.status, &schemas.body));
        }
        store.extension = schemas.status.is_success()
            && schemas.body["Resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["id"] == USER_EXTENSION));
        tracing::info!(
            extension = store.extension,
            etags = store.etags,
            "SCIM server reached"
        );
        Ok(store)
    }

    /// One request, retried with backoff (honouring `Retry-After`) while the server answers 429
    /// or 5xx or cannot be reached.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, StoreError> {
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        for attempt in 0..TRIES {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .header(reqwest::header::ACCEPT, MEDIA);
            if let Some(body) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, MEDIA)
                    .body(body.to_string());
            }
            if let (Some(tag), true) = (if_match, self.etags) {
                req = req.header(reqwest::header::IF_MATCH, tag);
            }
            let backoff = Duration::from_millis(250 << attempt);
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    // A POST that may have been carried out is not repeated (it would create a
                    // second resource); 429 and 503 say it was not.
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE
                        || (status.is_server_error()
                            && status != StatusCode::NOT_IMPLEMENTED
                            && method != Method::POST);
                    let etag = resp
                        .headers()
                        .get(reqwest::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let wait = retry_after(resp.headers()).unwrap_or(backoff);
                    let text = resp.text().await.unwrap_or_default();
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if !retryable {
                        return Ok(Reply { status, etag, body });
                    }
                    last = refusal(status, &body).to_string();
                    wait
                }
                Err(e) => {
                    last = format!("SCIM server unreachable: {e}");
                    if method == Method::POST && !e.is_connect() {
                        break;
                    }
                    backoff
                }
            };
            if attempt + 1 < TRIES {
                tracing::debug!(%method, path, wait = ?wait, error = %last, "SCIM request retried");
                tokio::time::sleep(wait).await;
            }
        }
        Err(StoreError::Backend(format!(
            "{method} {path} failed: {last}"
        )))
    }

    /// The resources of a filtered list, every page.
    async fn list(
        &self,
        endpoint: &str,
        filter: &str,
        extra: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        let mut start = 1;
        loop {
            let path = format!(
                "{endpoint}?filter={}&startIndex={start}&count={}{extra}",
                urlencode(filter),
                self.page_size
            );
            let page = self.send(Method::GET, &path, None, None).await?.ok()?;
            let items = page["Resources"].as_array().cloned().unwrap_or_default();
            let total = page["totalResults"].as_u64().unwrap_or(0) as usize;
            let got = items.len();
            out.extend(items);
            if got == 0 || out.len() >= total {
                return Ok(out);
            }
            start += got;
        }
    }

    /// The User with this externalId, with its local shadow when usher has one.
    async fn find_user(
        &self,
        external_id: &str,
    ) -> Result<Option<(Value, Option<UserRecord>)>, StoreError> {
        let found = self
            .list(
                "/Users",
                &format!("externalId eq {}", quoted(external_id)),
                "",
            )
            .await?;
        // externalId need not be unique on the server; prefer the account usher knows.
        for u in &found {
            if let Some(id) = u["id"].as_str()
                && let Some(shadow) = self.local.user(id).await?
            {
                return Ok(Some((u.clone(), Some(shadow))));
            }
        }
        Ok(found.into_iter().next().map(|u| (u, None)))
    }

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
        let text = |v: &Value| v.as_str().map(str::to_string);
        let ext = &scim[USER_EXTENSION];
        let kept = shadow.map(|s| s.profile.clone()).unwrap_or_default();
        let address = scim["addresses"].get(0).map(|a| Address {
            street: text(&a["streetAddress"]),
            city: text(&a["locality"]),
            region: text(&a["region"]),
            postal_code: text(&a["postalCode"]),
            country: text(&a["country"]),
        });
        let mut profile = Profile {
            first_name: text(&scim["name"]["givenName"]),
            last_name: text(&scim["name"]["familyName"]),
            phone: scim["phoneNumbers"]
                .as_array()
                .and_then(|p| p.iter().find_map(|n| text(&n["value"]))),
            address,
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
        }
        UserRecord {
            id: text(&scim["id"]).unwrap_or_default(),
            tenant: shadow
                .map(|s| s.tenant.clone())
                .or_else(|| text(&ext["tenant"]))
                .unwrap_or_default(),
            external_id: text(&scim["externalId"]).unwrap_or_default(),
            // The address usher wrote; a product may normalise userName's case.
            email: scim["emails"]
                .as_array()
                .and_then(|e| {
                    e.iter()
                        .find(|m| m["primary"] == true)
                        .or(e.first())
                        .and_then(|m| text(&m["value"]))
                })
                .or_else(|| text(&scim["userName"]))
                .unwrap_or_default(),
            profile,
            active: scim["active"].as_bool().unwrap_or(false),
            activated_at: shadow.and_then(|s| s.activated_at),
        }
    }

    /// The record of a SCIM User and its local `shadow` (as the caller read it), making sure the
    /// local store has one (after a crash between creating it there and here, or a lost local
    /// store).
    async fn known(
        &self,
        scim: &Value,
        shadow: Option<UserRecord>,
    ) -> Result<UserRecord, StoreError> {
        let id = id_of(scim)?;
        let mut record = self.record(scim, shadow.as_ref());
        if shadow.is_none() {
            // An active User had accepted (usher only activates on a redemption): it keeps its
            // access rather than being deactivated and invited again.
            let accepted = record.active.then(Timestamp::now);
            self.local
                .adopt_user(&id, &fields_of(&record), accepted)
                .await?;
            record.activated_at = accepted;
        }
        Ok(record)
    }

    /// PATCH a User, conditionally on its ETag when the server has them; retried on a lost race.
    async fn patch_user(&self, id: &str, operations: Vec<Value>) -> Result<Value, StoreError> {
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
                s if s.is_success() && reply.body.is_object() => return Ok(reply.body),
                s if s.is_success() => return Ok(current),
                _ => return Err(refusal(reply.status, &reply.body)),
            }
        }
        Err(StoreError::Backend(format!(
            "SCIM User {id} kept changing under usher (412 three times)"
        )))
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
        }
        ops
    }

    async fn set_scim_active(&self, id: &str, active: bool) -> Result<(), StoreError> {
        self.patch_user(
            id,
            vec![json!({"op": "replace", "path": "active", "value": active})],
        )
        .await
        .map(|_| ())
    }

    /// Every Group with this externalId (servers need not keep it unique).
    async fn find_groups(&self, external_id: &str) -> Result<Vec<Value>, StoreError> {
        self.list(
            "/Groups",
            &format!("externalId eq {}", quoted(external_id)),
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
                self.patch_group(
                    &id,
                    json!({"op": "replace", "path": "displayName", "value": display}),
                )
                .await?;
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
        let created = self
            .send(Method::POST, "/Groups", Some(&body), None)
            .await?
            .ok()?;
        Ok((id_of(&created)?, true))
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

    /// Delete the Groups matching a filter (`externalId eq …` or `sw …`).
    async fn delete_groups(&self, filter: &str) -> Result<(), StoreError> {
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

    /// Make the role Groups' memberships of one person follow a change of their assignments.
    async fn sync_roles(
        &self,
        user_id: &str,
        before: &[Assignment],
        after: &[Assignment],
    ) -> Result<(), StoreError> {
        let tenant = match self.local.user(user_id).await? {
            Some(u) => u.tenant,
            None => return Ok(()),
        };
        let pairs = |list: &[Assignment]| -> BTreeSet<(String, Option<String>)> {
            list.iter()
                .map(|a| (a.role.clone(), a.group.clone()))
                .collect()
        };
        let (old, new) = (pairs(before), pairs(after));
        let _one_at_a_time = self.groups.lock().await;
        for (role, group) in old.difference(&new) {
            let external = role_group_id(&tenant, role, group.as_deref());
            for g in self.find_groups(&external).await? {
                self.remove_member(&id_of(&g)?, user_id).await?;
            }
        }
        for (role, group) in new.difference(&old) {
            let external = role_group_id(&tenant, role, group.as_deref());
            let scope = match group {
                Some(key) => Some(
                    self.local
                        .group(key)
                        .await?
                        .map_or_else(|| key.clone(), |g| g.path),
                ),
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

fn extension_json(tenant: &str, p: &Profile) -> Value {
    let mut ext = json!({"tenant": tenant, "locations": p.locations});
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

fn fields_of(r: &UserRecord) -> UserFields {
    UserFields {
        tenant: r.tenant.clone(),
        external_id: r.external_id.clone(),
        email: r.email.clone(),
        profile: r.profile.clone(),
    }
}

fn role_group_id(tenant: &str, role: &str, group: Option<&str>) -> String {
    match group {
        Some(g) => format!("role/{tenant}/{role}/{g}"),
        None => format!("role/{tenant}/{role}"),
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[async_trait]
impl Health for ScimStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.send(Method::GET, "/ServiceProviderConfig", None, None)
            .await?
            .ok()?;
        self.local.ping().await
    }
}

#[async_trait]
impl Accounts for ScimStore {
    async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self.find_user(external_id).await? {
            Some((u, shadow)) => Ok(Some(self.known(&u, shadow).await?)),
            None => Ok(None),
        }
    }

    async fn create_user(&self, fields: &UserFields) -> Result<UserRecord, StoreError> {
        // Created before a crash, or by someone else for this person: take it over.
        let scim = match self.find_user(&fields.external_id).await? {
            Some((existing, _)) => {
                self.patch_user(&id_of(&existing)?, self.update_operations(fields))
                    .await?
            }
            None => {
                let mut body = self.user_json(fields);
                body["active"] = json!(false);
                self.send(Method::POST, "/Users", Some(&body), None)
                    .await?
                    .ok()?
            }
        };
        let id = id_of(&scim)?;
        self.local.adopt_user(&id, fields, None).await?;
        let shadow = self.local.user(&id).await?;
        Ok(self.record(&scim, shadow.as_ref()))
    }

    async fn update_user(&self, id: &str, fields: &UserFields) -> Result<UserRecord, StoreError> {
        let scim = self.patch_user(id, self.update_operations(fields)).await?;
        self.local.adopt_user(id, fields, None).await?;
        let shadow = self.local.user(id).await?;
        let mut record = self.record(&scim, shadow.as_ref());
        // A 204 answer carried the User as it was before: what was written is `fields`.
        record.email = fields.email.clone();
        record.external_id = fields.external_id.clone();
        record.profile = fields.profile.clone();
        Ok(record)
    }

    async fn users_of_tenant(&self, tenant: &str) -> Result<Vec<UserRecord>, StoreError> {
        let shadows = self.local.users_of_tenant(tenant).await?;
        let namespace = tenant.split_once('/').map_or(tenant, |(ns, _)| ns);
        let scim: HashMap<String, Value> = self
            .list(
                "/Users",
                &format!("externalId sw {}", quoted(&format!("{namespace}/"))),
                "",
            )
            .await?
            .into_iter()
            .filter_map(|u| Some((u["id"].as_str()?.to_string(), u)))
            .collect();
        let mut out: Vec<UserRecord> = shadows
            .iter()
            .filter_map(|s| scim.get(&s.id).map(|u| self.record(u, Some(s))))
            .collect();
        // People of this tenant the local store lost (the extension names their tenant).
        for (id, u) in &scim {
            if shadows.iter().all(|s| &s.id != id) && u[USER_EXTENSION]["tenant"] == tenant {
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
        let Some(shadow) = self.local.user_by_email(tenant, email).await? else {
            return Ok(None);
        };
        Ok(self
            .get_user(&shadow.id)
            .await?
            .map(|(u, _)| self.record(&u, Some(&shadow))))
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        // The server need not drop a deleted User from its Groups; usher does.
        let held = self.local.assignments(id).await?;
        self.sync_roles(id, &held, &[]).await?;
        let reply = self
            .send(Method::DELETE, &format!("/Users/{id}"), None, None)
            .await?;
        if reply.status != StatusCode::NOT_FOUND {
            reply.ok()?;
        }
        self.local.delete_user(id).await
    }

    async fn set_active(&self, id: &str, active: bool, now: Timestamp) -> Result<(), StoreError> {
        // Local first: a redemption racing a deactivation reads it and leaves SCIM alone.
        self.local.set_active(id, active, now).await?;
        self.set_scim_active(id, active).await
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
        let filter = format!("externalId sw {}", quoted(&format!("role/{key}/")));
        self.delete_groups(&filter).await?;
        self.local.delete_tenant(key).await
    }

    async fn remove_assignment(&self, binding: &str) -> Result<(), StoreError> {
        let Some(holder) = self.local.holder_of(binding).await? else {
            return Ok(());
        };
        let before = self.local.assignments(&holder).await?;
        self.local.remove_assignment(binding).await?;
        let after = self.local.assignments(&holder).await?;
        self.sync_roles(&holder, &before, &after).await
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
        let filter = format!("externalId eq {}", quoted(&format!("location/{key}")));
        self.delete_groups(&filter).await?;
        self.local.delete_group(key).await
    }

    async fn roles(&self, tenant: &str) -> Result<Vec<RoleRecord>, StoreError> {
        self.local.roles(tenant).await
    }

    async fn put_roles(&self, tenant: &str, roles: &[RoleRecord]) -> Result<(), StoreError> {
        self.local.put_roles(tenant, roles).await
    }

    async fn assignments(&self, user_id: &str) -> Result<Vec<Assignment>, StoreError> {
        self.local.assignments(user_id).await
    }

    async fn set_assignments(
        &self,
        user_id: &str,
        assignments: &[Assignment],
    ) -> Result<(), StoreError> {
        let before = self.local.assignments(user_id).await?;
        self.sync_roles(user_id, &before, assignments).await?;
        self.local.set_assignments(user_id, assignments).await
    }

    async fn grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        self.local.grants(user_id).await
    }
}

#[async_trait]
impl Invitations for ScimStore {
    async fn latest_invitation(
        &self,
        user_id: &str,
    ) -> Result<Option<InvitationRecord>, StoreError> {
        self.local.latest_invitation(user_id).await
    }

    async fn record_invitation(&self, invitation: &InvitationRecord) -> Result<(), StoreError> {
        self.local.record_invitation(invitation).await
    }

    async fn rotate_unsent(
        &self,
        user_id: &str,
        attempt: i32,
        new_hash: &TokenHash,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.local
            .rotate_unsent(user_id, attempt, new_hash, expires_at)
            .await
    }

    async fn mark_sent(&self, hash: &TokenHash, at: Timestamp) -> Result<(), StoreError> {
        self.local.mark_sent(hash, at).await
    }

    async fn revoke_open(&self, user_id: &str, at: Timestamp) -> Result<u64, StoreError> {
        self.local.revoke_open(user_id, at).await
    }

    async fn redeem(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Result<Redeemed, RedeemRefusal>, StoreError> {
        // Single use is decided locally, in one transaction; the account follows in SCIM. Should
        // that fail, the reconcile this redemption wakes activates it (accepted but inactive).
        let outcome = self.local.redeem(hash, now).await?;
        // Deactivated (suspended, offboarded) since the redemption committed: leave it.
        let still = match &outcome {
            Ok(r) => self.local.user(&r.user_id).await?.is_some_and(|u| u.active),
            Err(_) => false,
        };
        if let (Ok(r), true) = (&outcome, still)
            && let Err(e) = self.set_scim_active(&r.user_id, true).await
        {
            tracing::warn!(error = %e, "activating the SCIM User after a redemption failed; the reconcile retries");
        }
        Ok(outcome)
    }
}

#[async_trait]
impl OffboardingLedger for ScimStore {
    async fn record_offboarding(&self, tenant: &str, at: Timestamp) -> Result<(), StoreError> {
        self.local.record_offboarding(tenant, at).await
    }

    async fn offboardings_since(&self, tenant: &str, since: Timestamp) -> Result<u64, StoreError> {
        self.local.offboardings_since(tenant, since).await
    }

    async fn release(
        &self,
        tenant: &str,
        value: &str,
        at: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        self.local.release(tenant, value, at).await
    }
}
