//! The mass-offboarding guard, as every path that removes access uses it: a person deleted, a
//! Tenant deleted, a namespace deleted (which deletes both). The decision is
//! [`crate::plan::offboarding`]; this reads its inputs and records what was spent.

use jiff::Timestamp;
use kube::ResourceExt;

use super::{Context, Error};
use crate::crd::{OffboardingPolicy, Tenant};
use crate::plan::offboarding;
use crate::plan::records::{UserRecord, object_key};

/// One tenant's offboarding budget, read once under `Context::offboard_lock` and spent one
/// account at a time.
pub(super) struct Budget {
    tenant_key: String,
    /// The tenant's `maxPerHour`.
    pub max: i32,
    /// Offboardings in the last hour, this one's included once spent.
    pub done: u64,
    released: Option<Timestamp>,
    /// The tenant's offboarding policy.
    pub policy: OffboardingPolicy,
}

impl Budget {
    /// Read the budget of `tenant` (in namespace `ns`): the hour's offboardings, and the latest
    /// release by the annotation (recorded now if its value is new).
    pub async fn read(ctx: &Context, tenant: &Tenant, ns: &str) -> Result<Self, Error> {
        let tenant_key = object_key(ns, &tenant.name_any());
        let now = Timestamp::now();
        let settings = tenant.spec.offboarding.clone().unwrap_or_default();
        let done = ctx
            .store
            .offboardings_since(&tenant_key, now - offboarding::WINDOW)
            .await?;
        let released = match tenant.annotations().get(offboarding::ALLOW_ANNOTATION) {
            Some(value) => Some(ctx.store.release(&tenant_key, value, now).await?),
            None => None,
        };
        Ok(Self {
            tenant_key,
            max: settings.max_per_hour,
            done,
            released,
            policy: settings.policy,
        })
    }

    /// Whether one more offboarding, asked for at `requested` (the deletion's time), may go
    /// ahead.
    pub fn allows(&self, requested: Option<Timestamp>) -> bool {
        offboarding::may_offboard(self.done, self.max, requested, self.released)
    }

    /// Count one offboarding that was done. Counted after it is done: a failed attempt that is
    /// retried must not count twice.
    pub async fn spend(&mut self, ctx: &Context) -> Result<(), Error> {
        ctx.store
            .record_offboarding(&self.tenant_key, Timestamp::now())
            .await?;
        self.done += 1;
        Ok(())
    }
}

/// Whether offboarding `account` under `policy` removes something ([`offboarding::counts`]):
/// an active account, an open invitation or a role under Deactivate; anything under Delete.
pub(super) async fn counts(
    ctx: &Context,
    account: &UserRecord,
    policy: OffboardingPolicy,
) -> Result<bool, Error> {
    let has_access = account.active
        || ctx
            .store
            .latest_invitation(&account.id)
            .await?
            .is_some_and(|i| i.open())
        || !ctx.store.assignments(&account.id).await?.is_empty();
    Ok(offboarding::counts(policy, has_access))
}
