//! The Tenant decisions: its status from the phases of its users, and the condition shown while
//! the mass-offboarding guard holds offboardings back.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::condition::ready;
use super::offboarding;
use crate::crd::{Tenant, TenantStatus, UserCounts, UserPhase};

/// The Tenant condition type shown while the mass-offboarding guard holds offboardings back.
pub const THROTTLED: &str = "OffboardingThrottled";

/// The `OffboardingThrottled` condition (status True, reason `MaxPerHourReached`): `held`
/// offboardings wait because `done` happened in the last hour and the tenant allows `max`.
/// `what` says which offboardings wait ("deletions", "offboardings of the deleted tenant's
/// accounts"). Its transition time is kept from the previous status, so a repeat patches nothing.
pub fn throttled(
    tenant: &Tenant,
    what: &str,
    held: usize,
    done: u64,
    max: i32,
    now: Timestamp,
) -> Condition {
    let mut c = ready(
        true,
        "MaxPerHourReached",
        &format!(
            "{held} {what} wait: {done} people were offboarded in the last hour (maxPerHour {max}); set the annotation {} to a new value to release them",
            offboarding::ALLOW_ANNOTATION
        ),
        tenant.metadata.generation,
        &[],
        now,
    );
    c.type_ = THROTTLED.into();
    if let Some(p) = was_throttled(tenant) {
        c.last_transition_time = p.last_transition_time.clone();
    }
    c
}

/// Whether the guard holds `held` deletions back: there are some, and the hour's budget is
/// spent (the rule of [`offboarding::may_offboard`] for a deletion no release covers).
pub fn holds_back(held: usize, done: u64, max: i32) -> bool {
    held > 0 && !offboarding::may_offboard(done, max, None, None)
}

/// The `OffboardingThrottled` condition the Tenant shows now, if it is True.
pub fn was_throttled(tenant: &Tenant) -> Option<&Condition> {
    tenant
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == THROTTLED && c.status == "True")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_are_held_once_the_budget_is_spent_and_only_then() {
        assert!(!holds_back(0, 100, 10), "nothing waits");
        assert!(!holds_back(3, 9, 10), "budget left");
        assert!(holds_back(3, 10, 10));
        assert!(holds_back(1, 11, 10));
    }
}
