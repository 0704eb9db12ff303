//! What a person's status and Events say after the writes, and when to look again.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::{Blocked, Decision, RESEND_ANNOTATION};
use crate::crd::{InvitationStatus, SystemUser, SystemUserStatus, UserPhase};
use crate::plan::condition::{Note, conditions, to_time};
use crate::plan::records::{InvitationRecord, UserRecord};

/// Everything the status is derived from, after the plan was carried out.
pub struct StatusInput<'a> {
    /// The object, for generation, suspension and the previous status.
    pub user: &'a SystemUser,
    /// Why it cannot be provisioned, if so.
    pub blocked: Option<&'a Blocked>,
    /// Its account.
    pub account: Option<&'a UserRecord>,
    /// Its newest invitation.
    pub latest: Option<&'a InvitationRecord>,
    /// The invitation Secret's name, when the tenant exposes tokens and one is open.
    pub secret_name: Option<String>,
    /// The clock.
    pub now: Timestamp,
}

/// The status a SystemUser should show. Equal inputs give an equal status (timestamps are
/// truncated to seconds, as the API server stores them), so a no-op reconcile patches nothing.
pub fn status(input: &StatusInput<'_>) -> SystemUserStatus {
    let user = input.user;
    let generation = user.metadata.generation;
    let previous: &[Condition] = user
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut status = SystemUserStatus {
        observed_generation: generation,
        roles: user
            .status
            .as_ref()
            .map(|s| s.roles.clone())
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(blocked) = input.blocked {
        let message = blocked.message(&user.spec.email);
        if !matches!(
            blocked,
            Blocked::TenantNotFound(_) | Blocked::TenantTerminating(_)
        ) {
            status.phase = Some(UserPhase::Failed);
        }
        status.conditions = conditions(
            false,
            blocked.reason(),
            &message,
            generation,
            previous,
            input.now,
        );
        return status;
    }
    status.user_id = input.account.map(|a| a.id.clone());
    status.activated_at = input.account.and_then(|a| a.activated_at).map(to_time);
    status.invitation = input.latest.map(|inv| InvitationStatus {
        sent_at: inv.sent_at.map(to_time),
        expires_at: Some(to_time(inv.expires_at)),
        fingerprint: Some(inv.token_hash.fingerprint()),
        attempts: inv.attempt,
        secret_name: input.secret_name.clone(),
    });
    let email = &user.spec.email;
    let (phase, ok, reason, message) = match (input.account, input.latest) {
        (_, _) if user.spec.suspended => (
            UserPhase::Suspended,
            true,
            "Suspended",
            "spec.suspended is true: the account is deactivated and open invitations are revoked"
                .to_string(),
        ),
        (Some(acc), _) if acc.active => (
            UserPhase::Active,
            true,
            "Active",
            format!("{email} accepted the invitation and can sign in"),
        ),
        (_, Some(inv)) if inv.expired(input.now) => (
            UserPhase::Expired,
            false,
            "InvitationExpired",
            format!(
                "the invitation expired at {}; set the annotation {RESEND_ANNOTATION} to a new value to send another",
                inv.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
        ),
        (_, Some(inv)) if inv.open() && inv.sent_at.is_some() => (
            UserPhase::Pending,
            true,
            "InvitationSent",
            format!(
                "invitation {} sent to {email}; valid until {}",
                inv.attempt,
                inv.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
        ),
        _ => (
            UserPhase::Pending,
            false,
            "InvitationNotSent",
            format!("the invitation to {email} has not been sent yet; retrying"),
        ),
    };
    status.phase = Some(phase);
    status.conditions = conditions(ok, reason, &message, generation, previous, input.now);
    status
}

/// The status of a person whose offboarding took access away but could not finish (a store
/// refusing to remove a role, say): the previous status with Ready False, reason
/// `OffboardingIncomplete`, and `message` saying what is left. The second value: whether this
/// is news (the condition said something else before), so that it gets one Warning Event.
pub fn offboarding_incomplete(
    user: &SystemUser,
    message: &str,
    now: Timestamp,
) -> (SystemUserStatus, bool) {
    let mut status = user.status.clone().unwrap_or_default();
    let news = status
        .conditions
        .first()
        .is_none_or(|c| c.reason != "OffboardingIncomplete");
    status.conditions = conditions(
        false,
        "OffboardingIncomplete",
        message,
        user.metadata.generation,
        &status.conditions,
        now,
    );
    (status, news)
}

/// When to look at the user again without a change: at expiry while Pending.
pub fn requeue_at(latest: Option<&InvitationRecord>, now: Timestamp) -> Option<Timestamp> {
    latest
        .filter(|i| i.open() && i.sent_at.is_some() && now < i.expires_at)
        .map(|i| i.expires_at)
}

/// How long until the person needs looking at again without any change: just after the open
/// invitation expires (so that Expired shows on time); `horizon` when nothing falls due before
/// it (the controller then leaves the person to the paced resync).
pub fn requeue_after(
    latest: Option<&InvitationRecord>,
    now: Timestamp,
    horizon: std::time::Duration,
) -> std::time::Duration {
    requeue_at(latest, now)
        .and_then(|at| std::time::Duration::try_from(at.duration_since(now)).ok())
        .map_or(horizon, |d| {
            (d + std::time::Duration::from_millis(500)).min(horizon)
        })
}

/// The Events a status change deserves: one per transition, none when nothing changed.
/// `blocked` is the refusal the new status shows, if any: its reason is the Event's, typed, so
/// that it never has to be read back from the condition's text.
pub fn events(
    old: Option<&SystemUserStatus>,
    new: &SystemUserStatus,
    blocked: Option<&Blocked>,
) -> Vec<Note> {
    let old_phase = old.and_then(|s| s.phase);
    let old_attempts = old.and_then(|s| s.invitation.as_ref()).map(|i| i.attempts);
    let new_invitation = new.invitation.as_ref();
    let message = new
        .conditions
        .first()
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let reason = new.conditions.first().map(|c| c.reason.as_str());
    let mut notes = Vec::new();
    let note = |warning, reason, message| Note {
        warning,
        reason,
        message,
    };
    match new.phase {
        Some(UserPhase::Pending)
            if new_invitation.is_some_and(|i| i.sent_at.is_some())
                && (old_phase != Some(UserPhase::Pending)
                    || old_attempts != new_invitation.map(|i| i.attempts)
                    || old
                        .and_then(|s| s.invitation.as_ref())
                        .is_some_and(|i| i.sent_at.is_none())) =>
        {
            notes.push(note(false, "InvitationSent", message))
        }
        Some(UserPhase::Active) if old_phase != Some(UserPhase::Active) => {
            notes.push(note(false, "InvitationRedeemed", message))
        }
        Some(UserPhase::Expired) if old_phase != Some(UserPhase::Expired) => {
            notes.push(note(true, "InvitationExpired", message))
        }
        Some(UserPhase::Suspended) if old_phase != Some(UserPhase::Suspended) => {
            notes.push(note(false, "Suspended", message))
        }
        Some(UserPhase::Failed) | None
            if let Some(blocked) = blocked
                && old
                    .and_then(|s| s.conditions.first())
                    .map(|c| c.reason.as_str())
                    != reason =>
        {
            notes.push(note(true, blocked.reason(), message))
        }
        _ => {}
    }
    notes
}

/// What carrying out a [`Decision`] left in the store, as the report needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome<'a> {
    /// The account after the writes (None when blocked).
    pub account: Option<&'a UserRecord>,
    /// Its newest invitation after the writes (None when blocked).
    pub latest: Option<&'a InvitationRecord>,
    /// The store refused the account: what it said.
    pub refused: Option<&'a str>,
    /// The invitation could not be mailed: what the mailer said.
    pub mail_failed: Option<&'a str>,
    /// Whether the role assignments were written.
    pub assigned: bool,
    /// The SystemUser fields the store does not keep ([`crate::store::Accounts::unkept_fields`]).
    pub unkept: &'a [String],
}

/// What the last step of a reconcile shows and publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The status to apply (unchanged: nothing is patched).
    pub status: SystemUserStatus,
    /// The Events to publish, in order.
    pub notes: Vec<Note>,
    /// What was repaired behind usher's back (for the drift metric and log); also one of
    /// `notes`.
    pub repaired: Vec<&'static str>,
    /// The invitation Secret to delete: the token it holds is no longer open.
    pub delete_secret: Option<String>,
    /// The invitation expired since the status last said so (counted once).
    pub newly_expired: bool,
    /// How long until the person is looked at again without a change (the horizon passed to
    /// [`report`]: nothing falls due before it).
    pub requeue: std::time::Duration,
}

/// The condition type that names the fields of a person the user store does not keep.
pub const FIELDS_NOT_KEPT: &str = "FieldsNotKept";

/// `FieldsNotKept=True` when the person's file sets fields the store does not keep (a SCIM
/// product without a phone attribute, say): said once in the status rather than repaired for
/// ever. None when every field set is kept.
fn unkept(
    user: &SystemUser,
    unkept: &[String],
    previous: &[Condition],
    now: Timestamp,
) -> Option<Condition> {
    let spec = &user.spec;
    let set = [
        ("firstName", spec.first_name.is_some()),
        ("lastName", spec.last_name.is_some()),
        ("phone", spec.phone.is_some()),
        ("address", spec.address.is_some()),
    ];
    let fields: Vec<&str> = set
        .iter()
        .filter(|(field, is_set)| *is_set && unkept.iter().any(|u| u == field))
        .map(|(field, _)| *field)
        .collect();
    if fields.is_empty() {
        return None;
    }
    Some(Condition {
        type_: FIELDS_NOT_KEPT.into(),
        status: "True".into(),
        reason: "StoreDoesNotKeep".into(),
        message: format!(
            "the user store does not keep {}: set in git, kept in usher's own record, not written to the product",
            fields
                .iter()
                .map(|f| format!("spec.{f}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        observed_generation: user.metadata.generation,
        last_transition_time: crate::plan::condition::since(previous, FIELDS_NOT_KEPT, "True", now),
    })
}

/// The reason a person shows while their tenant's own store (`Tenant.spec.store`) cannot be used.
pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";

/// The status of a person whose tenant's own store cannot be used (`why`, which names the tenant
/// and what is missing): Ready False `StoreUnavailable` (kstatus Reconciling: usher retries by
/// itself), and everything else as the status last said, since nothing of the person could be
/// read or changed; and a Warning Event when the condition is new.
pub fn store_unavailable(
    user: &SystemUser,
    why: &str,
    now: Timestamp,
) -> (SystemUserStatus, Option<Note>) {
    let previous = user.status.clone().unwrap_or_default();
    let message = format!(
        "{why}; nothing of this person is read or written until it can be used, and their access in the product stays as it was"
    );
    let new = previous
        .conditions
        .first()
        .is_none_or(|c| c.reason != STORE_UNAVAILABLE);
    let status = SystemUserStatus {
        observed_generation: user.metadata.generation,
        conditions: conditions(
            false,
            STORE_UNAVAILABLE,
            &message,
            user.metadata.generation,
            &previous.conditions,
            now,
        ),
        ..previous
    };
    let note = new.then_some(Note {
        warning: true,
        reason: STORE_UNAVAILABLE,
        message,
    });
    (status, note)
}

/// The status, Events and requeue that follow from a [`Decision`] carried out to `outcome`.
/// `secret_name` is the name the invitation Secret has when the tenant exposes tokens; `horizon`
/// the longest wait a requeue names (at it, nothing falls due sooner).
pub fn report(
    user: &SystemUser,
    decision: &Decision,
    outcome: &Outcome<'_>,
    secret_name: &str,
    now: Timestamp,
    horizon: std::time::Duration,
) -> Report {
    let refused = outcome
        .refused
        .map(|said| Blocked::StoreRefused(said.to_string()));
    let blocked = decision.blocked.as_ref().or(refused.as_ref());
    let pending = outcome
        .latest
        .is_some_and(|i| i.open() && !i.expired(now) && !outcome.account.is_some_and(|a| a.active));
    let secret = decision
        .settings
        .as_ref()
        .filter(|s| s.expose_token && pending)
        .map(|_| secret_name.to_string());
    let mut status = status(&StatusInput {
        user,
        blocked,
        account: outcome.account,
        latest: outcome.latest,
        secret_name: secret.clone(),
        now,
    });
    status.roles = decision.roles.clone();
    let shown: &[Condition] = user
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(c) = unkept(user, outcome.unkept, shown, now) {
        status.conditions.push(c);
    }
    // A refusal is the condition already; a mail failure is added to it.
    // Ready and the kstatus condition beside it (same reason) say it alike.
    if let Some(said) = outcome.mail_failed
        && let Some(reason) = status.conditions.first().map(|c| c.reason.clone())
    {
        for c in status.conditions.iter_mut().filter(|c| c.reason == reason) {
            c.message = format!("{}: {said}", c.message);
        }
    }
    let old = user.status.as_ref();
    let delete_secret = old
        .and_then(|s| s.invitation.as_ref())
        .and_then(|i| i.secret_name.clone())
        .filter(|_| secret.is_none());
    let newly_expired = status.phase == Some(UserPhase::Expired)
        && old.and_then(|s| s.phase) != Some(UserPhase::Expired);
    let mut notes = decision.writes.notes.clone();
    notes.extend(events(old, &status, blocked));
    // Only a repair that held counts: refused by the store, nothing was repaired.
    let mut repaired = if outcome.refused.is_some() {
        Vec::new()
    } else {
        decision.repaired.clone()
    };
    if outcome.assigned && decision.assignments_repair {
        repaired.push("role assignments");
    }
    if !repaired.is_empty() {
        notes.push(Note {
            warning: true,
            reason: "DriftCorrected",
            message: format!(
                "the user store differed from git and was repaired: {}",
                repaired.join(", ")
            ),
        });
    }
    let requeue = if matches!(blocked, Some(Blocked::TenantNotFound(_))) {
        // The Tenant watch wakes the person when it appears; the resync is only a safety net.
        horizon
    } else {
        // The sooner of the invitation's expiry and a binding's.
        requeue_after(outcome.latest, now, horizon).min(crate::plan::bindings::wait_until(
            decision.expires,
            now,
            horizon,
        ))
    };
    Report {
        status,
        notes,
        repaired,
        delete_secret,
        newly_expired,
        requeue,
    }
}
