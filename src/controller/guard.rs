//! The mass-offboarding guard, as every path that removes access uses it: a person deleted, a
//! Tenant deleted, a namespace deleted (which deletes both). The decision is
//! [`crate::plan::offboarding`]; this reads its inputs and records what was spent.

use jiff::Timestamp;
use kube::ResourceExt;

use super::Error;
use crate::crd::{OffboardingPolicy, Tenant};
use crate::plan::offboarding;
use crate::plan::records::{UserRecord, object_key};
use crate::store::UserStore;

/// One tenant's offboarding budget ([`offboarding::Budget`]), read once under
/// `Context::offboard_lock` and spent one account at a time.
pub(super) struct Budget {
    tenant_key: String,
    /// The budget as the decisions see it.
    pub plan: offboarding::Budget,
    /// The tenant's offboarding policy.
    pub policy: OffboardingPolicy,
}

impl Budget {
    /// Read the budget of `tenant` (in namespace `ns`): the hour's offboardings, and the latest
    /// release by the annotation (recorded now if its value is new).
    pub async fn read(store: &dyn UserStore, tenant: &Tenant, ns: &str) -> Result<Self, Error> {
        let tenant_key = object_key(ns, &tenant.name_any());
        let now = Timestamp::now();
        let settings = tenant.spec.offboarding.clone().unwrap_or_default();
        let done = store
            .offboardings_since(&tenant_key, now - offboarding::WINDOW)
            .await?;
        let released = match tenant.annotations().get(offboarding::ALLOW_ANNOTATION) {
            Some(value) => Some(store.release(&tenant_key, value, now).await?),
            None => None,
        };
        Ok(Self {
            tenant_key,
            plan: offboarding::Budget {
                max_per_hour: settings.max_per_hour,
                done,
                released,
            },
            policy: settings.policy,
        })
    }

    /// The guard's step for `account`, for a deletion asked for at `requested`: whether it
    /// removes something is read from the store ([`counts`]), the rest is
    /// [`offboarding::Budget::step`].
    pub async fn step(
        &self,
        store: &dyn UserStore,
        account: &UserRecord,
        requested: Option<Timestamp>,
    ) -> Result<offboarding::Step, Error> {
        let counts = counts(store, account, self.policy).await?;
        Ok(self.plan.step(counts, requested))
    }

    /// Record one offboarding that was done. Recorded after it is done: a failed attempt that
    /// is retried must not count twice.
    pub async fn spend(&mut self, store: &dyn UserStore) -> Result<(), Error> {
        store
            .record_offboarding(&self.tenant_key, Timestamp::now())
            .await?;
        self.plan.spent();
        Ok(())
    }
}

/// Whether offboarding `account` under `policy` removes something ([`offboarding::counts`]):
/// an active account, an open invitation or a role under Deactivate; anything under Delete.
async fn counts(
    store: &dyn UserStore,
    account: &UserRecord,
    policy: OffboardingPolicy,
) -> Result<bool, Error> {
    let has_access = account.active
        || store
            .latest_invitation(&account.id)
            .await?
            .is_some_and(|i| i.open())
        || !store.assignments(&account.id).await?.is_empty();
    Ok(offboarding::counts(policy, has_access))
}
