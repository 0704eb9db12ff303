//! The writes one reconcile of a person makes to the store: the account, its access, and the
//! invitation; and which of them repair drift.

use super::RESEND_ANNOTATION;
use crate::crd::{SystemUser, UserPhase};
use crate::plan::condition::Note;
use crate::plan::records::{InvitationRecord, UserFields, UserRecord, object_key};

/// What to do about the person's account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountAction {
    /// Nothing to write.
    Keep,
    /// Create it, inactive.
    Create(UserFields),
    /// Its details changed in git.
    Update(UserFields),
}

/// What to do about the invitation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvitationAction {
    /// Nothing to do.
    Keep,
    /// Issue attempt `attempt` (revoking any open invitation first) and mail it.
    Issue {
        /// The attempt number.
        attempt: i32,
        /// The resend annotation value this answers.
        trigger: Option<String>,
    },
    /// The invitation of this attempt was recorded but its mail never confirmed sent (a crash
    /// or a mail outage): its token is gone from memory, so rotate it and mail the new one.
    Resend {
        /// The attempt being completed.
        attempt: i32,
    },
}

/// What to do about suspension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessAction {
    /// Nothing to change.
    Keep,
    /// Deactivate the account and revoke open tokens.
    Suspend,
    /// Reactivate an account that had accepted before it was suspended.
    Restore,
    /// Deactivate an account that was activated without a redemption.
    Deactivate,
}

/// The writes one reconcile of a SystemUser should make, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPlan {
    /// Revoke every open invitation before anything else: they went to an address git no
    /// longer declares. Done first, so that a crash after it leaves nothing redeemable there.
    pub revoke_first: bool,
    /// The account.
    pub account: AccountAction,
    /// Suspension.
    pub access: AccessAction,
    /// The invitation.
    pub invitation: InvitationAction,
    /// Events that say why, beyond the status transition (an address change).
    pub notes: Vec<Note>,
}

impl UserPlan {
    /// A plan with nothing to write.
    pub const NOTHING: UserPlan = UserPlan {
        revoke_first: false,
        account: AccountAction::Keep,
        access: AccessAction::Keep,
        invitation: InvitationAction::Keep,
        notes: Vec::new(),
    };
}

/// Whether two addresses name the same mailbox for usher: the domain is case-insensitive
/// (RFC 5321 section 2.4), and so is the local part at every provider people use, so a change
/// of case alone is a correction of spelling, not a new recipient.
pub fn same_address(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// Whether the account was read before a redemption that the invitation was read after. A
/// redemption uses the token and activates the account in one transaction, so a used token beside
/// a never-activated account can only mean the account read is stale.
pub fn read_mid_redemption(account: &UserRecord, latest: Option<&InvitationRecord>) -> bool {
    account.activated_at.is_none() && latest.is_some_and(|i| i.used_at.is_some())
}

/// Decide the writes for a provisionable SystemUser, given what the store holds: its account
/// and its newest invitation.
pub fn plan(
    user: &SystemUser,
    tenant_key: &str,
    account: Option<&UserRecord>,
    latest: Option<&InvitationRecord>,
) -> UserPlan {
    let namespace = user.metadata.namespace.as_deref().unwrap_or_default();
    let name = user.metadata.name.as_deref().unwrap_or_default();
    let fields = UserFields {
        tenant: tenant_key.to_string(),
        external_id: object_key(namespace, name),
        email: user.spec.email.clone(),
        profile: (&user.spec).into(),
    };
    // The address in git is not the one the account (and so the invitation) has: whatever was
    // mailed to the old address must stop working before anything goes to the new one.
    let readdressed = account
        .filter(|a| !same_address(&a.email, &user.spec.email))
        .map(|a| a.email.clone());
    let account_action = match account {
        None => AccountAction::Create(fields),
        Some(rec) if !rec.matches(&fields) => AccountAction::Update(fields),
        Some(_) => AccountAction::Keep,
    };
    let accepted = account.is_some_and(|a| a.activated_at.is_some());
    let active = account.is_some_and(|a| a.active);
    let open = latest.filter(|i| i.open());
    let mut notes = Vec::new();
    let revoke_first = readdressed.is_some() && open.is_some();
    if let Some(old) = &readdressed {
        let new = &user.spec.email;
        let what = if accepted || user.spec.suspended {
            "the account now uses the new address; no invitation is sent".to_string()
        } else {
            format!("the invitation to {old} is revoked and a new one goes to {new}")
        };
        notes.push(Note {
            warning: false,
            reason: "AddressChanged",
            message: format!("spec.email changed from {old} to {new}: {what}"),
        });
    }

    if user.spec.suspended {
        let access = if active || open.is_some() {
            AccessAction::Suspend
        } else {
            AccessAction::Keep
        };
        return UserPlan {
            revoke_first,
            account: account_action,
            access,
            invitation: InvitationAction::Keep,
            notes,
        };
    }
    if accepted {
        let access = if active {
            AccessAction::Keep
        } else {
            AccessAction::Restore
        };
        return UserPlan {
            revoke_first,
            account: account_action,
            access,
            invitation: InvitationAction::Keep,
            notes,
        };
    }

    let trigger = user
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESEND_ANNOTATION))
        .cloned();
    let invitation = match latest {
        None => InvitationAction::Issue {
            attempt: 1,
            trigger,
        },
        // A new annotation value (checked first: a resend asked for while the last mail is
        // still unsent is answered by one new invitation, not two), an invitation revoked by a
        // suspension that has ended or by an address change, or one that went to an address
        // git no longer declares (expired or not: a correction is a reason to invite again).
        Some(inv)
            if (trigger.is_some() && trigger != inv.trigger)
                || !inv.open()
                || readdressed.is_some() =>
        {
            InvitationAction::Issue {
                attempt: inv.attempt + 1,
                trigger,
            }
        }
        Some(inv) if inv.sent_at.is_none() => InvitationAction::Resend {
            attempt: inv.attempt,
        },
        Some(_) => InvitationAction::Keep,
    };
    UserPlan {
        revoke_first,
        account: account_action,
        // Only a redemption activates an account; one activated behind usher's back is not.
        access: if active {
            AccessAction::Deactivate
        } else {
            AccessAction::Keep
        },
        invitation,
        notes,
    }
}

/// What a reconcile repaired that someone changed in the store behind usher's back, given the
/// plan it carried out and the status it had shown before. A change of the object itself is
/// never drift.
pub fn drift(user: &SystemUser, todo: &UserPlan) -> Vec<&'static str> {
    let status = user.status.as_ref();
    let same_generation = status.is_some_and(|s| s.observed_generation == user.metadata.generation);
    let was = status.and_then(|s| s.phase);
    let mut repaired = Vec::new();
    if same_generation && matches!(todo.account, AccountAction::Update(_)) {
        repaired.push("account details");
    }
    let access = match todo.access {
        AccessAction::Keep => false,
        AccessAction::Suspend => same_generation && was == Some(UserPhase::Suspended),
        AccessAction::Restore => was == Some(UserPhase::Active),
        AccessAction::Deactivate => true,
    };
    if access {
        repaired.push("account access");
    }
    repaired
}
