//! The mass-offboarding guard: a bad commit must not wipe a tenant.

use jiff::{SignedDuration, Timestamp};

/// Set to a new value on a Tenant to let the deletions waiting at that moment proceed.
pub const ALLOW_ANNOTATION: &str = "usher.dev/allow-mass-offboarding";

/// The window `maxPerHour` counts in.
pub const WINDOW: SignedDuration = SignedDuration::from_hours(1);

/// Whether one more person may be offboarded now: fewer than `max_per_hour` were in the last
/// hour, or the deletion was requested before the latest release.
pub fn may_offboard(
    done_in_window: u64,
    max_per_hour: i32,
    requested_at: Option<Timestamp>,
    released_at: Option<Timestamp>,
) -> bool {
    let released = matches!((requested_at, released_at), (Some(q), Some(r)) if q <= r);
    released || done_in_window < u64::try_from(max_per_hour).unwrap_or(0)
}

/// Whether offboarding an account under `policy` removes something, and so counts against the
/// guard: access (an active account, an open invitation, a role) under Deactivate; the account
/// itself under Delete. An account offboarded before (deactivated and kept) counts no more.
pub fn counts(policy: crate::crd::OffboardingPolicy, has_access: bool) -> bool {
    match policy {
        crate::crd::OffboardingPolicy::Deactivate => has_access,
        crate::crd::OffboardingPolicy::Delete => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_until_a_release_covers_the_request() {
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        assert!(may_offboard(9, 10, Some(t), None));
        assert!(!may_offboard(10, 10, Some(t), None));
        assert!(
            may_offboard(10, 10, Some(t), Some(t + SignedDuration::from_secs(1))),
            "released"
        );
        assert!(
            !may_offboard(10, 10, Some(t), Some(t - SignedDuration::from_secs(1))),
            "a release covers only earlier deletions"
        );
        assert!(!may_offboard(0, 0, Some(t), None));
    }

    #[test]
    fn only_what_removes_something_counts() {
        use crate::crd::OffboardingPolicy::{Deactivate, Delete};
        assert!(counts(Deactivate, true));
        assert!(
            !counts(Deactivate, false),
            "already offboarded, kept for restore"
        );
        assert!(
            counts(Delete, true) && counts(Delete, false),
            "deleting wipes data"
        );
    }
}
