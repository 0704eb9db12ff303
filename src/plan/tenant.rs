//! The Tenant decisions: its status from the phases of its users.

use jiff::Timestamp;

use super::condition::ready;
use crate::crd::{Tenant, TenantStatus, UserCounts, UserPhase};

/// Count users by phase; users without a phase yet count in the total only.
pub fn count(phases: impl IntoIterator<Item = Option<UserPhase>>) -> UserCounts {
    let mut c = UserCounts::default();
    for phase in phases {
        c.total += 1;
        match phase {
            Some(UserPhase::Pending) => c.pending += 1,
            Some(UserPhase::Active) => c.active += 1,
            Some(UserPhase::Expired) => c.expired += 1,
            Some(UserPhase::Suspended) => c.suspended += 1,
            Some(UserPhase::Failed) => c.failed += 1,
            None => {}
        }
    }
    c
}

/// The status a Tenant should show once it is written to the store.
pub fn status(tenant: &Tenant, users: UserCounts, now: Timestamp) -> TenantStatus {
    let generation = tenant.metadata.generation;
    let previous = tenant
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let message = format!(
        "{} users: {} active, {} pending, {} expired, {} suspended, {} failed",
        users.total, users.active, users.pending, users.expired, users.suspended, users.failed
    );
    TenantStatus {
        observed_generation: generation,
        conditions: vec![ready(
            true,
            "Reconciled",
            &message,
            generation,
            previous,
            now,
        )],
        users: Some(users),
    }
}
