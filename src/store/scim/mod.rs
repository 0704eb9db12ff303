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
//!
//! The code is split by what it speaks to: this file holds the type, its connection and the ports
//! that route to the local store (health, invitations, the offboarding ledger); `client.rs` the
//! HTTP exchange every request goes through (retries, paging, refusals); `users.rs` the Users and
//! the accounts port; `groups.rs` the Groups and the catalogue port, whose role assignments are
//! Group memberships; `identity.rs` the rules for one User shared by a person's accounts in
//! several tenants.

mod client;
mod groups;
mod identity;
mod users;

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use reqwest::{Method, StatusCode};

use self::client::refusal;
use super::sql::SqlStore;
use super::{Health, Invitations, OffboardingLedger, StoreError};
use crate::plan::records::{InvitationRecord, RedeemRefusal, Redeemed};
use crate::token::TokenHash;

/// usher's extension of the SCIM User: what core SCIM has no attribute for.
pub const USER_EXTENSION: &str = "urn:usher:params:scim:schemas:extension:usher:2.0:User";
/// The core User schema (RFC 7643 section 4.1).
const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The core Group schema (RFC 7643 section 4.2).
const CORE_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// The message schema of a PATCH body (RFC 7644 section 3.5.2).
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// How many locks the Users' identities are striped over.
const IDENTITY_STRIPES: usize = 64;

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
    /// The server's User schema has `entitlements` (RFC 7643 section 4.1.2): a person's
    /// permissions are written there. Cleared when the server refuses them.
    entitlements: std::sync::atomic::AtomicBool,
    /// The server declares filtering (`filter.supported`); otherwise lists are read whole and
    /// filtered here (a server may answer an unsupported filter with nothing at all).
    filtering: bool,
    /// Group writes one at a time: two reconciles must not both create the same Group.
    groups: tokio::sync::Mutex<()>,
    /// A User's accounts are read, decided on and written one change at a time (see
    /// [`ScimStore::lock`]): striped by SCIM id, so that unrelated people do not wait.
    identities: Box<[tokio::sync::Mutex<()>]>,
    /// The SystemUser fields the server was seen not to keep (see `users.rs`), as the local
    /// store remembers them.
    unkept: std::sync::Mutex<std::collections::BTreeSet<String>>,
    page_size: u32,
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
            filtering: true,
            entitlements: Default::default(),
            groups: tokio::sync::Mutex::new(()),
            identities: (0..IDENTITY_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            unkept: Default::default(),
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
        let limits = store.local.limits().await?;
        *store.unkept.lock().unwrap_or_else(|p| p.into_inner()) = limits.into_iter().collect();
        store.filtering = config["filter"]["supported"] != false;
        // Both /Schemas and the token are checked here, so a bad token shows in /readyz.
        let schemas = store.send(Method::GET, "/Schemas", None, None).await?;
        if schemas.status == StatusCode::UNAUTHORIZED || schemas.status == StatusCode::FORBIDDEN {
            return Err(refusal(schemas.status, &schemas.body));
        }
        store.extension = schemas.status.is_success()
            && schemas.body["Resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["id"] == USER_EXTENSION));
        let entitlements = schemas.status.is_success()
            && schemas.body["Resources"].as_array().is_some_and(|r| {
                r.iter().any(|s| {
                    s["id"] == CORE_USER
                        && s["attributes"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|a| a["name"] == "entitlements"))
                })
            });
        store
            .entitlements
            .store(entitlements, std::sync::atomic::Ordering::Relaxed);
        // Servers may answer both without authentication: a resource endpoint tells a wrong
        // token at once.
        store.ping_users().await?;
        tracing::info!(
            extension = store.extension,
            etags = store.etags,
            filtering = store.filtering,
            entitlements,
            "SCIM server reached"
        );
        Ok(store)
    }
}

/// The identity locks one change holds (see [`ScimStore::lock`]).
pub(super) struct Held<'a> {
    stripes: Vec<usize>,
    _guards: Vec<tokio::sync::MutexGuard<'a, ()>>,
}

impl ScimStore {
    /// Hold the lock of the SCIM User `scim_id` for one read-decide-write of its accounts
    /// (`identity.rs`): two reconciles of one person's tenants, or a redemption racing a
    /// suspension, must not each decide from what the other is changing.
    pub(super) async fn lock(&self, scim_id: &str) -> Held<'_> {
        let stripe = stripe(scim_id);
        Held {
            stripes: vec![stripe],
            _guards: vec![self.identities[stripe].lock().await],
        }
    }

    /// Also hold the lock of `scim_id` (a second User one change moves an account to). Taken
    /// out of order, so given up after 10 s rather than waiting on a change that waits on this
    /// one: the error is retried by the reconcile.
    pub(super) async fn lock_also<'a>(
        &'a self,
        held: &mut Held<'a>,
        scim_id: &str,
    ) -> Result<(), StoreError> {
        let stripe = stripe(scim_id);
        if held.stripes.contains(&stripe) {
            return Ok(());
        }
        let guard = tokio::time::timeout(Duration::from_secs(10), self.identities[stripe].lock())
            .await
            .map_err(|_| {
                StoreError::Backend(format!(
                    "SCIM User {scim_id} is being changed by another reconcile; retried"
                ))
            })?;
        held.stripes.push(stripe);
        held._guards.push(guard);
        Ok(())
    }

    /// One page of one User id: a resource endpoint, not /ServiceProviderConfig, which many
    /// servers answer without authentication, so that a wrong token does not pass for ready.
    async fn ping_users(&self) -> Result<(), StoreError> {
        self.send(
            Method::GET,
            "/Users?startIndex=1&count=1&attributes=id",
            None,
            None,
        )
        .await?
        .ok()
        .map(|_| ())
    }
}

/// The lock stripe of a SCIM User id.
fn stripe(scim_id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    scim_id.hash(&mut h);
    (h.finish() % IDENTITY_STRIPES as u64) as usize
}

#[async_trait]
impl Health for ScimStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_users().await?;
        self.local.ping().await
    }
}

#[async_trait]
impl Invitations for ScimStore {
    async fn invitations_for_address(&self, email: &str) -> Result<Vec<TokenHash>, StoreError> {
        self.local.invitations_for_address(email).await
    }

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
            && let Err(e) = self.activate_redeemed(&r.user_id).await
        {
            tracing::warn!(error = %e, "activating the SCIM User after a redemption failed; the reconcile retries");
        }
        Ok(outcome)
    }
}

impl ScimStore {
    /// The SCIM side of a redemption of account `id`'s invitation: its User active, and, on a
    /// User other tenants' accounts share, this tenant's role Groups opened to it (see
    /// `identity.rs`).
    async fn activate_redeemed(&self, id: &str) -> Result<(), StoreError> {
        let Some(scim_id) = self.local.scim_id_of(id).await? else {
            return Ok(());
        };
        let _held = self.lock(&scim_id).await;
        // Read again under the lock: suspended or offboarded meanwhile, it stays closed.
        let identity = self.identity_of_user(&scim_id, true).await?;
        if !identity.account(id).is_some_and(|a| a.record.active) {
            return Ok(());
        }
        self.set_scim_active(&scim_id, identity.any_active())
            .await?;
        if identity.shared() {
            let before = identity.with_active(id, false);
            self.regroup(&before, &identity).await?;
            self.sync_entitlements(&identity).await?;
        }
        Ok(())
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
