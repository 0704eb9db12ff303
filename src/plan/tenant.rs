//! The Tenant decisions: its status from the phases of its users, and the condition shown while
//! the mass-offboarding guard holds offboardings back.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::condition::{Note, conditions, ready};
use super::offboarding;
use crate::crd::{OffboardingPolicy, SystemUser, Tenant, TenantStatus, UserCounts, UserPhase};

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
    // The counts are `status.users` (kept current by the census between reconciles), not in
    // the message: a message that repeated them would be stale between the two.
    let message = "the tenant and its role catalogue are in its store; its people are counted in status.users";
    TenantStatus {
        observed_generation: generation,
        conditions: conditions(true, "Reconciled", message, generation, previous, now),
        users: Some(users),
    }
}

/// Ready=False reason of a Tenant whose own store (`spec.store`) cannot be used now.
pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";

/// The status of a Tenant whose own store cannot be used now: Ready False with reason
/// [`STORE_UNAVAILABLE`] and `why` (which names the tenant, and the Secret or the store's
/// answer), `Reconciling=True` beside it, as usher retries by itself; the counts kept as they
/// were.
pub fn store_unavailable(tenant: &Tenant, why: &str, now: Timestamp) -> TenantStatus {
    let generation = tenant.metadata.generation;
    let previous = tenant.status.as_ref();
    TenantStatus {
        observed_generation: generation,
        conditions: conditions(
            false,
            STORE_UNAVAILABLE,
            why,
            generation,
            previous
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            now,
        ),
        users: previous.and_then(|s| s.users.clone()),
    }
}

/// How many of a tenant's people are being deleted (their SystemUsers Terminating): the
/// deletions the guard may hold back. Only when there are some is the hour's count read.
pub fn deleting(members: &[&SystemUser]) -> usize {
    members
        .iter()
        .filter(|u| u.metadata.deletion_timestamp.is_some())
        .count()
}

/// A recount of a Tenant's people (the census, between the Tenant's own reconciles): `users`
/// counted again from `members`, for `status.users`. None when there is nothing to change, or
/// nothing the census may change: no status yet, the Tenant or one of its people being deleted
/// (the guard's status is the Tenant reconcile's to write).
pub fn recount(tenant: &Tenant, members: &[&SystemUser]) -> Option<UserCounts> {
    let current = tenant.status.as_ref()?;
    if tenant.metadata.deletion_timestamp.is_some() || deleting(members) > 0 {
        return None;
    }
    let users = count(
        members
            .iter()
            .map(|u| u.status.as_ref().and_then(|s| s.phase)),
    );
    (current.users.as_ref() != Some(&users)).then_some(users)
}

/// What a Tenant's reconcile shows: its status, a Warning when the guard starts holding
/// deletions back, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The status to apply.
    pub status: TenantStatus,
    /// The Event to publish, if any.
    pub note: Option<Note>,
    /// How long until the Tenant is looked at again without a change.
    pub requeue: std::time::Duration,
    /// How many people's deletions the guard holds back now (0 unless the status shows
    /// `OffboardingThrottled`), for `usher_offboardings_held`.
    pub held: usize,
}

/// The status and Events of a Tenant written to the store, from its people (`members`, the
/// SystemUsers naming it) and `done`, the offboardings of the last hour (0 when none is being
/// deleted). While deletions are held, it looks again after 30 s to clear the condition once
/// they are released; otherwise `horizon` (nothing due before it).
pub fn report(
    tenant: &Tenant,
    members: &[&SystemUser],
    done: u64,
    now: Timestamp,
    horizon: std::time::Duration,
) -> Report {
    let phases = members
        .iter()
        .map(|u| u.status.as_ref().and_then(|s| s.phase));
    let mut status = status(tenant, count(phases), now);
    let held = deleting(members);
    let max = tenant
        .spec
        .offboarding
        .clone()
        .unwrap_or_default()
        .max_per_hour;
    if !holds_back(held, done, max) {
        return Report {
            status,
            note: None,
            requeue: horizon,
            held: 0,
        };
    }
    let condition = throttled(tenant, "deletions", held, done, max, now);
    let note = was_throttled(tenant).is_none().then(|| Note {
        warning: true,
        reason: THROTTLED,
        message: condition.message.clone(),
    });
    status.conditions.push(condition);
    Report {
        status,
        note,
        // Held deletions are retried by their own requeues; look again soon to clear this.
        requeue: std::time::Duration::from_secs(30),
        held,
    }
}

/// What the deletion of a Tenant comes to once each of its accounts was offered to the guard.
#[derive(Clone, Debug, PartialEq)]
pub enum Cleanup {
    /// `held` people wait for the budget: the Tenant stays Terminating with this status (the
    /// `OffboardingThrottled` condition), and the Event when that is news.
    Held {
        /// The status to apply.
        status: TenantStatus,
        /// The Warning to publish, when the condition is new.
        note: Option<Note>,
        /// Why it waits, for the reconcile error.
        message: String,
    },
    /// Everyone is offboarded: the tenant leaves the store, and this Event says so.
    Done {
        /// The Event.
        note: Note,
    },
}

/// The end of a Tenant's deletion: `held` accounts wait for `budget`, `offboarded` were
/// offboarded now under `policy`.
pub fn cleanup(
    tenant: &Tenant,
    held: usize,
    offboarded: u64,
    budget: &offboarding::Budget,
    policy: OffboardingPolicy,
    now: Timestamp,
) -> Cleanup {
    if held == 0 {
        return Cleanup::Done {
            note: Note {
                warning: false,
                reason: "Offboarded",
                message: format!(
                    "tenant removed from the store; {offboarded} people offboarded ({policy:?})"
                ),
            },
        };
    }
    let condition = throttled(
        tenant,
        "offboardings of this deleted tenant's people",
        held,
        budget.done,
        budget.max_per_hour,
        now,
    );
    let message = condition.message.clone();
    let mut status = tenant.status.clone().unwrap_or_default();
    let note = was_throttled(tenant).is_none().then(|| Note {
        warning: true,
        reason: THROTTLED,
        message: message.clone(),
    });
    status.conditions.retain(|c| c.type_ != THROTTLED);
    status.conditions.push(condition);
    Cleanup::Held {
        status,
        note,
        message,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::{ObjectRef, OffboardingSpec, SystemUserSpec, TenantSpec};

    fn now() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    fn acme(max_per_hour: i32) -> Tenant {
        let mut t = Tenant::new(
            "acme",
            TenantSpec {
                display_name: "Acme".into(),
                contact: None,
                invitations: None,
                roles: None,
                store: None,
                offboarding: Some(OffboardingSpec {
                    max_per_hour,
                    ..Default::default()
                }),
            },
        );
        t.metadata.generation = Some(1);
        t
    }

    fn person(name: &str, phase: Option<UserPhase>, leaving: bool) -> SystemUser {
        let mut u = SystemUser::new(
            name,
            SystemUserSpec {
                tenant_ref: ObjectRef::new("acme"),
                email: format!("{name}@acme.example"),
                ..Default::default()
            },
        );
        u.status = Some(crate::crd::SystemUserStatus {
            phase,
            ..Default::default()
        });
        if leaving {
            u.metadata.deletion_timestamp = Some(Time(now()));
        }
        u
    }

    #[test]
    fn the_report_counts_people_and_warns_once_when_deletions_are_held() {
        let people = [
            person("a", Some(UserPhase::Active), false),
            person("b", Some(UserPhase::Pending), false),
            person("c", Some(UserPhase::Active), true),
            person("d", None, true),
        ];
        let members: Vec<&SystemUser> = people.iter().collect();
        assert_eq!(deleting(&members), 2);
        let horizon = std::time::Duration::from_secs(600);
        // Budget left: no condition, no Event, nothing due before the horizon.
        let quiet = report(&acme(5), &members, 4, now(), horizon);
        let users = quiet.status.users.clone().unwrap();
        assert_eq!((users.total, users.active, users.pending), (4, 2, 1));
        assert_eq!(quiet.note, None);
        assert_eq!(quiet.requeue, horizon);
        assert_eq!(quiet.held, 0, "two are being deleted, none held");
        // Spent: the condition, one Warning, and a look again soon.
        let mut tenant = acme(5);
        let held = report(&tenant, &members, 5, now(), horizon);
        let condition = held.status.conditions.last().unwrap();
        assert_eq!(condition.type_, THROTTLED);
        assert!(
            condition.message.starts_with("2 deletions wait"),
            "{}",
            condition.message
        );
        assert_eq!(
            held.note.as_ref().map(|n| (n.warning, n.reason)),
            Some((true, THROTTLED))
        );
        assert!(held.requeue < horizon);
        assert_eq!(held.held, 2);
        // Shown already: no second Warning.
        tenant.status = Some(held.status.clone());
        assert_eq!(report(&tenant, &members, 6, now(), horizon).note, None);
    }

    #[test]
    fn the_census_counts_again_only_on_a_status_and_leaves_deletions_to_the_reconcile() {
        let mut t = acme(5);
        let pending = person("a", Some(UserPhase::Pending), false);
        let active = person("b", Some(UserPhase::Active), false);
        assert_eq!(
            recount(&t, &[&pending]),
            None,
            "no status yet: the reconcile's"
        );
        let first = report(
            &t,
            &[&pending],
            0,
            now(),
            std::time::Duration::from_secs(60),
        );
        t.status = Some(first.status.clone());
        assert_eq!(recount(&t, &[&pending]), None, "nothing changed");
        let counted = recount(&t, &[&pending, &active]).expect("one more person");
        assert_eq!((counted.total, counted.active, counted.pending), (2, 1, 1));
        let leaving = person("c", Some(UserPhase::Active), true);
        assert_eq!(
            recount(&t, &[&pending, &leaving]),
            None,
            "the guard's status"
        );
    }

    #[test]
    fn a_deleted_tenant_is_removed_only_once_nobody_is_held() {
        let budget = offboarding::Budget {
            max_per_hour: 5,
            done: 5,
            released: None,
        };
        let mut tenant = acme(5);
        let Cleanup::Held {
            status,
            note,
            message,
        } = cleanup(
            &tenant,
            15,
            5,
            &budget,
            OffboardingPolicy::Deactivate,
            now(),
        )
        else {
            panic!("15 people wait");
        };
        assert!(message.starts_with("15 offboardings"), "{message}");
        assert_eq!(status.conditions.last().unwrap().type_, THROTTLED);
        assert!(note.is_some_and(|n| n.warning && n.reason == THROTTLED));
        tenant.status = Some(status);
        let Cleanup::Held { note, .. } = cleanup(
            &tenant,
            10,
            0,
            &budget,
            OffboardingPolicy::Deactivate,
            now(),
        ) else {
            panic!("10 people wait");
        };
        assert_eq!(note, None, "the condition is shown already");
        let Cleanup::Done { note } =
            cleanup(&tenant, 0, 10, &budget, OffboardingPolicy::Delete, now())
        else {
            panic!("nobody waits");
        };
        assert_eq!(note.reason, "Offboarded");
        assert!(
            note.message.contains("10 people offboarded (Delete)"),
            "{}",
            note.message
        );
    }

    #[test]
    fn deletions_are_held_once_the_budget_is_spent_and_only_then() {
        assert!(!holds_back(0, 100, 10), "nothing waits");
        assert!(!holds_back(3, 9, 10), "budget left");
        assert!(holds_back(3, 10, 10));
        assert!(holds_back(1, 11, 10));
    }
}
