//! Which store a tenant's people live in: the operator's (`usher run --store`), or the one the
//! Tenant names in `spec.store`. [`Stores`] holds a connection per store URL, shared by the
//! tenants that name it, and answers for each tenant with a store whose errors name it
//! ([`TenantStore`]). What has no tenant in hand — a redemption, a short code, `/readyz` — asks
//! every store.
//!
//! Fail closed: a tenant that names a store of its own is never served by another. Until that
//! store is attached (its credential read, see `controller::tenant_store`), the tenant's calls
//! fail with a message saying so, and nothing of its people is written anywhere.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use sha2::Digest;

use super::{StoreConfig, StoreError, StoreHandle, UserStore};
use crate::metrics::Metrics;
use crate::plan::records::{RedeemRefusal, Redeemed};
use crate::token::TokenHash;

/// The operator's store and every Tenant's own, connected.
pub struct Stores {
    default: Arc<dyn UserStore>,
    /// The operator's `--store` URL: a Tenant naming it uses the operator's connection.
    default_url: String,
    /// The operator's `--local-store` URL, which a SCIM tenant store's local store derives from.
    local: String,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// A connection per store URL.
    connections: BTreeMap<String, Connection>,
    /// The URL each tenant with a store of its own is attached to, by tenant key.
    tenants: BTreeMap<String, String>,
    /// Tenants whose store could not be attached, by tenant key: the store's URL and why
    /// (for `/readyz`; the Tenant's status says it too).
    unattached: BTreeMap<String, (String, String)>,
}

struct Connection {
    handle: Arc<StoreHandle>,
    /// The SHA-256 of the credential it was opened with: another credential reconnects.
    credential: [u8; 32],
}

/// How a store shows in `/readyz` and in errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreState {
    /// `store` for the operator's, `store <url>` for a tenant store (its URL without any
    /// credential).
    pub name: String,
    /// The tenants attached to it, sorted (empty for the operator's store).
    pub tenants: Vec<String>,
    /// None when it answers; otherwise why not.
    pub failure: Option<String>,
}

impl Stores {
    /// The operator's store `default`, opened from `default_url`; tenant SCIM stores keep their
    /// local records beside `local` (see [`StoreConfig::for_tenant`]).
    pub fn new(
        default: Arc<dyn UserStore>,
        default_url: &str,
        local: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            default,
            default_url: default_url.to_string(),
            local: local.to_string(),
            metrics,
            inner: Mutex::default(),
        }
    }

    /// Only `store`, for every tenant (tools and tests).
    pub fn single(store: Arc<dyn UserStore>) -> Self {
        Self::new(store, "", "sqlite://usher-local.db", Arc::default())
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attach `tenant` (its key, `<namespace>/<name>`) to the store at `url` with `credential`
    /// (see [`StoreConfig::for_tenant`]), connecting in the background when no tenant uses that
    /// store yet or its credential changed. Errors: [`StoreError::Url`] for a URL or credential
    /// usher cannot use; the tenant is then attached to nothing, and its calls fail.
    pub fn attach(
        &self,
        tenant: &str,
        url: &str,
        credential: Option<&str>,
    ) -> Result<(), StoreError> {
        if url == self.default_url {
            let mut inner = self.inner();
            inner.tenants.remove(tenant);
            inner.unattached.remove(tenant);
            return Ok(());
        }
        let config = match StoreConfig::for_tenant(url, credential, &self.local) {
            Ok(c) => c,
            Err(e) => {
                self.unattached(tenant, url, &e.to_string());
                return Err(e);
            }
        };
        let fingerprint: [u8; 32] =
            sha2::Sha256::digest(credential.unwrap_or_default().as_bytes()).into();
        let mut inner = self.inner();
        let current = inner
            .connections
            .get(url)
            .is_some_and(|c| c.credential == fingerprint);
        if !current {
            tracing::info!(%tenant, store = %super::redact(url), "connecting a tenant's store");
            inner.connections.insert(
                url.to_string(),
                Connection {
                    handle: StoreHandle::connect(config, self.metrics.clone()),
                    credential: fingerprint,
                },
            );
        }
        inner.tenants.insert(tenant.to_string(), url.to_string());
        inner.unattached.remove(tenant);
        Ok(())
    }

    /// `tenant`'s store at `url` cannot be used (`why`: its credential is missing or
    /// unreadable, say): the tenant is attached to nothing, so its calls fail, and `/readyz`
    /// shows the store failed for it until a later [`Stores::attach`] succeeds.
    pub fn unattached(&self, tenant: &str, url: &str, why: &str) {
        let mut inner = self.inner();
        inner.tenants.remove(tenant);
        inner
            .unattached
            .insert(tenant.to_string(), (url.to_string(), why.to_string()));
    }

    /// Forget `tenant` (its Tenant is gone); a store no tenant uses any more is closed.
    pub fn detach(&self, tenant: &str) {
        let mut inner = self.inner();
        inner.unattached.remove(tenant);
        if let Some(url) = inner.tenants.remove(tenant)
            && !inner.tenants.values().any(|u| *u == url)
        {
            inner.connections.remove(&url);
        }
    }

    /// The store of `tenant`, whose Tenant names `declared` (its `spec.store.url`; None: the
    /// operator's). Errors: [`StoreError::Backend`] when the tenant names a store that is not
    /// attached, so that nothing of the tenant goes anywhere else.
    pub fn of(
        &self,
        tenant: &str,
        declared: Option<&str>,
    ) -> Result<Arc<dyn UserStore>, StoreError> {
        let Some(url) = declared.filter(|u| *u != self.default_url) else {
            return Ok(self.default.clone());
        };
        let inner = self.inner();
        match inner.tenants.get(tenant) {
            Some(attached) if attached == url => Ok(self.scoped(&inner, tenant, url)),
            _ => Err(StoreError::Backend(format!(
                "Tenant {tenant}'s store {} is not attached yet (its credential is read when the Tenant is reconciled)",
                super::redact(url)
            ))),
        }
    }

    /// The store `tenant` was last attached to in this process, else the operator's: for
    /// offboarding a person whose Tenant is already gone.
    pub fn remembered(&self, tenant: &str) -> Arc<dyn UserStore> {
        let inner = self.inner();
        match inner.tenants.get(tenant) {
            Some(url) => self.scoped(&inner, tenant, url),
            None => self.default.clone(),
        }
    }

    fn scoped(&self, inner: &Inner, tenant: &str, url: &str) -> Arc<dyn UserStore> {
        match inner.connections.get(url) {
            Some(c) => Arc::new(TenantStore {
                tenant: tenant.to_string(),
                store: c.handle.clone(),
            }),
            None => self.default.clone(),
        }
    }

    /// Every store, the operator's first, with the tenants using each.
    fn all(&self) -> Vec<(String, Vec<String>, Arc<dyn UserStore>)> {
        let inner = self.inner();
        let mut out = vec![("store".to_string(), Vec::new(), self.default.clone())];
        for (url, c) in &inner.connections {
            let tenants: Vec<String> = inner
                .tenants
                .iter()
                .filter(|(_, u)| *u == url)
                .map(|(t, _)| t.clone())
                .collect();
            out.push((
                format!("store {}", super::redact(url)),
                tenants,
                c.handle.clone() as Arc<dyn UserStore>,
            ));
        }
        out
    }

    /// Whether each store answers, the operator's first, then each tenant store that could not
    /// be attached (with why).
    pub async fn states(&self) -> Vec<StoreState> {
        let mut out = Vec::new();
        for (name, tenants, store) in self.all() {
            let failure = store.ping().await.err().map(|e| e.to_string());
            out.push(StoreState {
                name,
                tenants,
                failure,
            });
        }
        let unattached = self.inner().unattached.clone();
        for (tenant, (url, why)) in unattached {
            out.push(StoreState {
                name: format!("store {}", super::redact(&url)),
                tenants: vec![tenant],
                failure: Some(why),
            });
        }
        out
    }

    /// Redeem a token in whichever store holds it (a hash is in one store at most). A store
    /// that fails is skipped while the others are asked; when none holds the token and one
    /// failed, that failure is the answer, since the token may be there.
    pub async fn redeem(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Result<Redeemed, RedeemRefusal>, StoreError> {
        let mut failed = None;
        for (_, _, store) in self.all() {
            match store.redeem(hash, now).await {
                Ok(Err(RedeemRefusal::Unknown)) => {}
                Err(e) => failed = Some(e),
                answer => return answer,
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(Err(RedeemRefusal::Unknown)),
        }
    }

    /// The token hashes of the newest invitations to `email` in every store (see
    /// [`super::Invitations::invitations_for_address`]), and the failure of a store that did
    /// not answer, if one did not.
    pub async fn invitations_for_address(
        &self,
        email: &str,
    ) -> (Vec<TokenHash>, Option<StoreError>) {
        let mut found = Vec::new();
        let mut failed = None;
        for (_, _, store) in self.all() {
            match store.invitations_for_address(email).await {
                Ok(hashes) => found.extend(hashes),
                Err(e) => failed = Some(e),
            }
        }
        (found, failed)
    }
}

/// A tenant's own store, as that tenant's reconciles use it: every failure names the tenant.
pub struct TenantStore {
    pub(super) tenant: String,
    pub(super) store: Arc<StoreHandle>,
}

impl StoreError {
    /// This error as the store of `tenant` gave it: its message names the tenant; its kind (and
    /// a refusal's status) is kept, so callers decide as before.
    pub(super) fn of_tenant(self, tenant: &str) -> Self {
        match self {
            Self::Backend(why) => Self::Backend(format!("Tenant {tenant}'s store: {why}")),
            Self::Refused { status, detail } => Self::Refused {
                status,
                detail: format!("{detail} (the store of Tenant {tenant})"),
            },
            Self::NotFound(what) => {
                Self::NotFound(format!("{what} (the store of Tenant {tenant})"))
            }
            other @ Self::Url { .. } => other,
        }
    }
}
