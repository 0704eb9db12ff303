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

/// One tenant's offboarding budget as the store holds it: offboardings in the last hour, the
/// tenant's `maxPerHour`, and the latest release by [`ALLOW_ANNOTATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The tenant's `maxPerHour`.
    pub max_per_hour: i32,
    /// Offboardings in the last hour ([`WINDOW`]), including those spent since it was read.
    pub done: u64,
    /// When the latest release was recorded, if any.
    pub released: Option<Timestamp>,
}

/// What the guard says about offboarding one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Offboard it. `counted`: it removes something ([`counts`]), so once done it spends one
    /// from the budget.
    Offboard {
        /// Whether it spends the budget.
        counted: bool,
    },
    /// It would remove something, the hour's budget is spent, and no release covers a deletion
    /// asked for then: it waits.
    Hold,
}

impl Budget {
    /// The step for an account whose offboarding `counts`, for a deletion asked for at
    /// `requested` (None: not known, so no release covers it).
    pub fn step(&self, counts: bool, requested: Option<Timestamp>) -> Step {
        if counts && !may_offboard(self.done, self.max_per_hour, requested, self.released) {
            Step::Hold
        } else {
            Step::Offboard { counted: counts }
        }
    }

    /// Count one offboarding done, after it is done: a failed one that is retried must not
    /// count twice.
    pub fn spent(&mut self) {
        self.done += 1;
    }

    /// Why one person's deletion waits, for their status and the reconcile error: the count,
    /// the limit and how to release it.
    pub fn held(&self, tenant: &str) -> String {
        format!(
            "{} people of tenant {tenant:?} were offboarded in the last hour (maxPerHour {}); this deletion waits. Set the annotation {ALLOW_ANNOTATION} on the Tenant to a new value to let it proceed",
            self.done, self.max_per_hour
        )
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
    fn the_budget_holds_only_what_counts_and_spending_fills_it() {
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut budget = Budget {
            max_per_hour: 2,
            done: 1,
            released: None,
        };
        assert_eq!(budget.step(true, Some(t)), Step::Offboard { counted: true });
        budget.spent();
        assert_eq!(budget.step(true, Some(t)), Step::Hold);
        // Nothing left to remove (deactivated before): it goes, and spends nothing.
        assert_eq!(
            budget.step(false, Some(t)),
            Step::Offboard { counted: false }
        );
        // A release after the request lets it through; an unknown request time never is.
        budget.released = Some(t + SignedDuration::from_secs(1));
        assert_eq!(budget.step(true, Some(t)), Step::Offboard { counted: true });
        assert_eq!(budget.step(true, None), Step::Hold);
        let why = budget.held("acme");
        assert!(
            why.contains("2 people") && why.contains("maxPerHour 2"),
            "{why}"
        );
        assert!(why.contains(ALLOW_ANNOTATION), "{why}");
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
