//! The SystemUser decisions: what to write to the store, whether to issue a token, and which
//! status to show. Pure: the controller gathers the inputs and carries out the plan.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::condition::{ready, to_time};
use super::records::{InvitationRecord, UserFields, UserRecord, object_key};
use crate::crd::{InvitationStatus, SystemUser, SystemUserStatus, Tenant, UserPhase};

/// The annotation whose new value revokes the current token and sends a new invitation.
pub const RESEND_ANNOTATION: &str = "usher.dev/resend-invitation";

/// Why a SystemUser cannot be provisioned; each a condition reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// spec.tenantRef names no Tenant (yet).
    TenantNotFound(String),
    /// The Tenant is being deleted: its people are offboarded through the guard, and nothing is
    /// provisioned, restored or repaired meanwhile.
    TenantTerminating(String),
    /// An older SystemUser of the same tenant has this email.
    DuplicateEmail {
        /// The older user's name.
        holder: String,
    },
    /// The tenant restricts invitations to other domains.
    EmailDomainNotAllowed {
        /// The domains the tenant allows.
        allowed: Vec<String>,
    },
    /// The address passed admission but no mail can be addressed to it (RFC 5321/5322 and
    /// RFC 6531 as the mailer parses them): a trailing dot, two dots in a row, a stray `>`.
    EmailUndeliverable {
        /// What the mail parser said.
        reason: String,
    },
    /// The user store refused the account (a SCIM 4xx); what it said.
    StoreRefused(String),
}

impl Blocked {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TenantNotFound(_) => "TenantNotFound",
            Self::TenantTerminating(_) => "TenantTerminating",
            Self::DuplicateEmail { .. } => "DuplicateEmail",
            Self::EmailDomainNotAllowed { .. } => "EmailDomainNotAllowed",
            Self::EmailUndeliverable { .. } => "EmailUndeliverable",
            Self::StoreRefused(_) => "StoreRefused",
        }
    }

    /// What a person reads in the condition and the Event.
    pub fn message(&self, email: &str) -> String {
        match self {
            Self::TenantNotFound(t) => {
                format!("Tenant {t:?} does not exist in this namespace; waiting for it")
            }
            Self::TenantTerminating(t) => format!(
                "Tenant {t:?} is being deleted: its people are offboarded within its offboarding budget, and nothing is sent, restored or repaired meanwhile"
            ),
            Self::DuplicateEmail { holder } => format!(
                "{email} is already used by SystemUser {holder:?} of this tenant; no invitation was sent"
            ),
            Self::EmailDomainNotAllowed { allowed } => format!(
                "the tenant only invites addresses in {}; {email} is not one of them",
                allowed.join(", ")
            ),
            Self::EmailUndeliverable { reason } => {
                format!("no mail can be sent to {email:?} ({reason}); correct spec.email")
            }
            Self::StoreRefused(said) => format!(
                "{said}; no invitation was sent. usher retries; fix the account in the product or this SystemUser"
            ),
        }
    }
}

/// One other SystemUser of the namespace, as the duplicate check needs it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its email.
    pub email: String,
    /// Its creation time, for "who was first".
    pub created: Option<Timestamp>,
}

/// Whether `user` may be provisioned at all, given its tenant and the other users.
pub fn blocked(user: &SystemUser, tenant: Option<&Tenant>, peers: &[Peer]) -> Option<Blocked> {
    let Some(tenant) = tenant else {
        return Some(Blocked::TenantNotFound(user.spec.tenant_ref.name.clone()));
    };
    if tenant.metadata.deletion_timestamp.is_some() {
        return Some(Blocked::TenantTerminating(
            user.spec.tenant_ref.name.clone(),
        ));
    }
    // Checked before anything is written: an address the mailer cannot use would otherwise
    // stay Pending/InvitationNotSent, retried for ever.
    if let Err(e) = user.spec.email.parse::<lettre::Address>() {
        return Some(Blocked::EmailUndeliverable {
            reason: e.to_string(),
        });
    }
    let email = user.spec.email.to_lowercase();
    if let Some(allowed) = tenant
        .spec
        .invitations
        .as_ref()
        .and_then(|i| i.allowed_domains.as_ref())
        .filter(|d| !d.is_empty())
    {
        let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        if !allowed.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Some(Blocked::EmailDomainNotAllowed {
                allowed: allowed.clone(),
            });
        }
    }
    let me = (
        created(user),
        user.metadata.name.clone().unwrap_or_default(),
    );
    peers
        .iter()
        .filter(|p| p.tenant == user.spec.tenant_ref.name && p.email.to_lowercase() == email)
        .filter(|p| (p.created, p.name.clone()) < me)
        .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
        .map(|p| Blocked::DuplicateEmail {
            holder: p.name.clone(),
        })
}

fn created(user: &SystemUser) -> Option<Timestamp> {
    user.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Invitation settings after defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvitationSettings {
    /// How long a token stays valid.
    pub ttl: SignedDuration,
    /// Whether to keep the token in a Secret.
    pub expose_token: bool,
}

/// The default token lifetime when a tenant sets none.
pub const DEFAULT_TTL: SignedDuration = SignedDuration::from_hours(72);

impl InvitationSettings {
    /// The tenant's settings with defaults filled in.
    pub fn of(tenant: &Tenant) -> Self {
        let policy = tenant.spec.invitations.as_ref();
        Self {
            ttl: policy
                .and_then(|p| p.ttl.as_deref())
                .and_then(parse_duration)
                .unwrap_or(DEFAULT_TTL),
            expose_token: policy.and_then(|p| p.expose_token).unwrap_or(false),
        }
    }
}

/// Parse a duration of the shape admission allows: `48h`, `90m`, `1h30m`, `300s`.
pub fn parse_duration(text: &str) -> Option<SignedDuration> {
    let mut total: i64 = 0;
    let mut number: Option<i64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(i64::from(d))?,
            );
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    (number.is_none() && total > 0).then(|| SignedDuration::from_secs(total))
}

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
        status.conditions = vec![ready(
            false,
            blocked.reason(),
            &message,
            generation,
            previous,
            input.now,
        )];
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
    status.conditions = vec![ready(ok, reason, &message, generation, previous, input.now)];
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
    status.conditions = vec![ready(
        false,
        "OffboardingIncomplete",
        message,
        user.metadata.generation,
        &status.conditions,
        now,
    )];
    (status, news)
}

/// When to look at the user again without a change: at expiry while Pending.
pub fn requeue_at(latest: Option<&InvitationRecord>, now: Timestamp) -> Option<Timestamp> {
    latest
        .filter(|i| i.open() && i.sent_at.is_some() && now < i.expires_at)
        .map(|i| i.expires_at)
}

/// How long until the person needs looking at again without any change: just after the open
/// invitation expires (so that Expired shows on time), and at the latest after `resync`.
pub fn requeue_after(
    latest: Option<&InvitationRecord>,
    now: Timestamp,
    resync: std::time::Duration,
) -> std::time::Duration {
    requeue_at(latest, now)
        .and_then(|at| std::time::Duration::try_from(at.duration_since(now)).ok())
        .map_or(resync, |d| {
            (d + std::time::Duration::from_millis(500)).min(resync)
        })
}

/// An Event to publish about a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
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

/// Addresses the tests of admission (`validate`) and of the mailer's check (here) share.
#[cfg(test)]
pub(crate) mod examples {
    /// Real addresses, international ones included: admitted, and mailable.
    pub const REAL_ADDRESSES: &[&str] = &[
        "alice@acme.example",
        "o'brien@acme.example",
        "first.last+tag@sub.acme.example",
        "x_y-z!#$%&*=?^`{|}~@acme-charging.example",
        "Jo@Acme.Example",
        "jürgen@müller.example",
        "用户@例子.广告",
        "δοκιμή@παράδειγμα.δοκιμή",
        "अजय@डाटामेल.भारत",
    ];
    /// Malformed addresses: refused at admission, and by the mailer's parser.
    pub const MALFORMED_ADDRESSES: &[&str] = &[
        "ana@acme.example.",
        "ben..ito@acme.example",
        "cy@acme.example>",
        ".dot@acme.example",
        "dot.@acme.example",
        "a b@acme.example",
        "x@acme..example",
        "x@-acme.example",
        "<x@acme.example",
    ];
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::ToSpan;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::crd::{InvitationPolicy, ObjectRef, SystemUserSpec, TenantSpec};
    use crate::plan::records::Profile;
    use crate::token::TokenHash;

    fn now() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    fn user(name: &str, email: &str) -> SystemUser {
        SystemUser {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("acme".into()),
                generation: Some(1),
                creation_timestamp: Some(Time(now())),
                ..Default::default()
            },
            spec: SystemUserSpec {
                tenant_ref: ObjectRef::new("acme"),
                email: email.into(),
                first_name: Some("Alice".into()),
                last_name: None,
                phone: None,
                company: None,
                address: None,
                accounting_id: None,
                locations: vec![],
                suspended: false,
                comments: None,
            },
            status: None,
        }
    }

    fn tenant(policy: Option<InvitationPolicy>) -> Tenant {
        Tenant::new(
            "acme",
            TenantSpec {
                display_name: "Acme".into(),
                contact: None,
                invitations: policy,
                roles: None,
                offboarding: None,
            },
        )
    }

    fn account(active: bool, accepted: bool) -> UserRecord {
        UserRecord {
            id: "u1".into(),
            tenant: "acme/acme".into(),
            external_id: "acme/alice".into(),
            email: "alice@acme.example".into(),
            profile: Profile {
                first_name: Some("Alice".into()),
                ..Default::default()
            },
            active,
            activated_at: accepted.then(now),
        }
    }

    fn invitation(attempt: i32) -> InvitationRecord {
        InvitationRecord {
            token_hash: TokenHash::of("t"),
            user_id: "u1".into(),
            attempt,
            trigger: None,
            created_at: now(),
            expires_at: now() + 48.hours(),
            sent_at: Some(now()),
            used_at: None,
            revoked_at: None,
        }
    }

    fn peer(name: &str, email: &str, created: Timestamp) -> Peer {
        Peer {
            name: name.into(),
            tenant: "acme".into(),
            email: email.into(),
            created: Some(created),
        }
    }

    #[test]
    fn a_new_person_gets_an_account_and_a_first_invitation() {
        let p = plan(
            &user("alice", "alice@acme.example"),
            "acme/acme",
            None,
            None,
        );
        assert!(
            matches!(p.account, AccountAction::Create(ref f) if f.external_id == "acme/alice" && f.tenant == "acme/acme")
        );
        assert_eq!(
            p.invitation,
            InvitationAction::Issue {
                attempt: 1,
                trigger: None
            }
        );
        assert_eq!(p.access, AccessAction::Keep);
    }

    #[test]
    fn nothing_to_do_when_the_invitation_is_out_and_the_account_current() {
        let p = plan(
            &user("alice", "alice@acme.example"),
            "acme/acme",
            Some(&account(false, false)),
            Some(&invitation(1)),
        );
        assert_eq!(p, UserPlan::NOTHING);
    }

    #[test]
    fn an_edited_spec_updates_the_account_only() {
        let mut u = user("alice", "alice@acme.example");
        u.spec.last_name = Some("Ng".into());
        let p = plan(
            &u,
            "acme/acme",
            Some(&account(false, false)),
            Some(&invitation(1)),
        );
        assert!(
            matches!(p.account, AccountAction::Update(ref f) if f.profile.last_name.as_deref() == Some("Ng"))
        );
        assert_eq!(p.invitation, InvitationAction::Keep);
    }

    /// Issue 14, kind 1: the invitation follows a corrected address, in every phase.
    #[test]
    fn an_address_change_revokes_what_went_to_the_old_address_first() {
        let moved = |email: &str| user("alice", email);
        let unsent = InvitationRecord {
            sent_at: None,
            ..invitation(1)
        };
        let expired = InvitationRecord {
            expires_at: now() - 1.hours(),
            ..invitation(2)
        };
        // Pending (mailed or not yet), and Expired: revoke, update, invite the next attempt.
        for (what, latest, next) in [
            ("pending", invitation(1), 2),
            ("unsent", unsent, 2),
            ("expired", expired, 3),
        ] {
            for new in [
                "alice@acme.example.org",
                "alicia@acme.example",
                "a@other.example",
            ] {
                let p = plan(
                    &moved(new),
                    "acme/acme",
                    Some(&account(false, false)),
                    Some(&latest),
                );
                assert!(p.revoke_first, "{what} {new}: {p:?}");
                assert!(
                    matches!(&p.account, AccountAction::Update(f) if f.email == new),
                    "{what} {new}: {p:?}"
                );
                assert_eq!(
                    p.invitation,
                    InvitationAction::Issue {
                        attempt: next,
                        trigger: None
                    },
                    "{what} {new}"
                );
                assert_eq!(p.notes.len(), 1, "{what}");
                assert_eq!(p.notes[0].reason, "AddressChanged");
                assert!(
                    p.notes[0].message.contains("alice@acme.example")
                        && p.notes[0].message.contains(new),
                    "{}",
                    p.notes[0].message
                );
            }
        }
        // A crash after the revocation and the update: nothing tells the address changed any
        // more, but the revoked invitation is followed by the next attempt all the same.
        let revoked = InvitationRecord {
            revoked_at: Some(now()),
            ..invitation(1)
        };
        let mut updated = account(false, false);
        updated.email = "alicia@acme.example".into();
        let p = plan(
            &moved("alicia@acme.example"),
            "acme/acme",
            Some(&updated),
            Some(&revoked),
        );
        assert_eq!(
            (p.revoke_first, p.invitation),
            (
                false,
                InvitationAction::Issue {
                    attempt: 2,
                    trigger: None
                }
            )
        );
        // Active: the account follows, nothing is mailed.
        let p = plan(
            &moved("alicia@acme.example"),
            "acme/acme",
            Some(&account(true, true)),
            Some(&InvitationRecord {
                used_at: Some(now()),
                ..invitation(1)
            }),
        );
        assert!(matches!(p.account, AccountAction::Update(_)));
        assert_eq!(
            (p.revoke_first, &p.invitation, p.access),
            (false, &InvitationAction::Keep, AccessAction::Keep)
        );
        assert!(p.notes[0].message.contains("no invitation is sent"));
        // Suspended while Pending: revoked and updated; the unsuspension invites the new address.
        let mut suspended = moved("alicia@acme.example");
        suspended.spec.suspended = true;
        let p = plan(
            &suspended,
            "acme/acme",
            Some(&account(false, false)),
            Some(&invitation(1)),
        );
        assert!(p.revoke_first && matches!(p.account, AccountAction::Update(_)));
        assert_eq!(p.invitation, InvitationAction::Keep);
        // A change of case only is the same mailbox: the account is corrected, the link kept.
        for same in [
            "Alice@acme.example",
            "alice@ACME.example",
            "ALICE@Acme.Example",
        ] {
            let p = plan(
                &moved(same),
                "acme/acme",
                Some(&account(false, false)),
                Some(&invitation(1)),
            );
            assert!(!p.revoke_first && p.notes.is_empty(), "{same}");
            assert!(matches!(p.account, AccountAction::Update(_)), "{same}");
            assert_eq!(p.invitation, InvitationAction::Keep, "{same}");
        }
    }

    #[test]
    fn a_pending_person_is_looked_at_again_when_the_invitation_expires_not_before() {
        let resync = std::time::Duration::from_secs(600);
        let mut inv = invitation(1);
        inv.expires_at = now() + 2.hours();
        // Two hours away: the resync comes first.
        assert_eq!(requeue_after(Some(&inv), now(), resync), resync);
        inv.expires_at = now() + 90.seconds();
        let wait = requeue_after(Some(&inv), now(), resync);
        assert!(
            wait > std::time::Duration::from_secs(89) && wait <= std::time::Duration::from_secs(91),
            "{wait:?}"
        );
        assert_eq!(requeue_after(None, now(), resync), resync);
    }

    #[test]
    fn a_redemption_between_the_reads_is_noticed() {
        let mut used = invitation(1);
        used.used_at = Some(now());
        assert!(read_mid_redemption(&account(false, false), Some(&used)));
        assert!(!read_mid_redemption(&account(true, true), Some(&used)));
        assert!(!read_mid_redemption(
            &account(false, false),
            Some(&invitation(1))
        ));
        assert!(!read_mid_redemption(&account(false, false), None));
    }

    #[test]
    fn an_unsent_invitation_is_completed_not_duplicated() {
        let mut inv = invitation(3);
        inv.sent_at = None;
        let p = plan(
            &user("alice", "alice@acme.example"),
            "acme/acme",
            Some(&account(false, false)),
            Some(&inv),
        );
        assert_eq!(p.invitation, InvitationAction::Resend { attempt: 3 });
    }

    #[test]
    fn the_resend_annotation_issues_the_next_attempt_once() {
        let mut u = user("alice", "alice@acme.example");
        u.metadata.annotations = Some(BTreeMap::from([(
            RESEND_ANNOTATION.to_string(),
            "x".to_string(),
        )]));
        let p = plan(
            &u,
            "acme/acme",
            Some(&account(false, false)),
            Some(&invitation(1)),
        );
        assert_eq!(
            p.invitation,
            InvitationAction::Issue {
                attempt: 2,
                trigger: Some("x".into())
            }
        );
        let mut answered = invitation(2);
        answered.trigger = Some("x".into());
        let again = plan(
            &u,
            "acme/acme",
            Some(&account(false, false)),
            Some(&answered),
        );
        assert_eq!(
            again.invitation,
            InvitationAction::Keep,
            "the same value is not a new request"
        );
    }

    #[test]
    fn an_annotation_present_at_creation_does_not_resend() {
        let mut u = user("alice", "alice@acme.example");
        u.metadata.annotations = Some(BTreeMap::from([(
            RESEND_ANNOTATION.to_string(),
            "x".to_string(),
        )]));
        let p = plan(&u, "acme/acme", None, None);
        assert_eq!(
            p.invitation,
            InvitationAction::Issue {
                attempt: 1,
                trigger: Some("x".into())
            }
        );
    }

    #[test]
    fn a_resend_asked_for_while_the_mail_is_unsent_issues_once() {
        let mut u = user("alice", "alice@acme.example");
        u.metadata.annotations = Some(BTreeMap::from([(
            RESEND_ANNOTATION.to_string(),
            "z".to_string(),
        )]));
        let mut unsent = invitation(1);
        unsent.sent_at = None;
        let p = plan(&u, "acme/acme", Some(&account(false, false)), Some(&unsent));
        assert_eq!(
            p.invitation,
            InvitationAction::Issue {
                attempt: 2,
                trigger: Some("z".into())
            }
        );
    }

    #[test]
    fn resend_is_ignored_once_accepted() {
        let mut u = user("alice", "alice@acme.example");
        u.metadata.annotations = Some(BTreeMap::from([(
            RESEND_ANNOTATION.to_string(),
            "y".to_string(),
        )]));
        let mut used = invitation(1);
        used.used_at = Some(now());
        let p = plan(&u, "acme/acme", Some(&account(true, true)), Some(&used));
        assert_eq!(p, UserPlan::NOTHING);
    }

    #[test]
    fn an_account_activated_behind_usher_s_back_is_deactivated_and_called_drift() {
        let mut u = user("alice", "alice@acme.example");
        let p = plan(
            &u,
            "acme/acme",
            Some(&account(true, false)),
            Some(&invitation(1)),
        );
        assert_eq!(p.access, AccessAction::Deactivate);
        assert_eq!(drift(&u, &p), ["account access"]);
        // A name edited in the store while the spec stayed the same is repaired too.
        u.status = Some(SystemUserStatus {
            observed_generation: Some(1),
            phase: Some(UserPhase::Active),
            ..Default::default()
        });
        let mut edited = account(false, true);
        edited.profile.first_name = Some("Mallory".into());
        let p = plan(&u, "acme/acme", Some(&edited), None);
        assert_eq!(drift(&u, &p), ["account details", "account access"]);
        // A spec change is not drift.
        u.metadata.generation = Some(2);
        let p = plan(&u, "acme/acme", Some(&edited), None);
        assert_eq!(drift(&u, &p), ["account access"]);
    }

    #[test]
    fn suspension_deactivates_and_unsuspension_restores_or_reinvites() {
        let mut u = user("alice", "alice@acme.example");
        u.spec.suspended = true;
        let p = plan(&u, "acme/acme", Some(&account(true, true)), None);
        assert_eq!(p.access, AccessAction::Suspend);
        let p = plan(
            &u,
            "acme/acme",
            Some(&account(false, false)),
            Some(&invitation(1)),
        );
        assert_eq!(
            p.access,
            AccessAction::Suspend,
            "an open token is revoked too"
        );
        u.spec.suspended = false;
        let p = plan(&u, "acme/acme", Some(&account(false, true)), None);
        assert_eq!(
            p.access,
            AccessAction::Restore,
            "accepted before: access comes back"
        );
        let mut revoked = invitation(1);
        revoked.revoked_at = Some(now());
        let p = plan(
            &u,
            "acme/acme",
            Some(&account(false, false)),
            Some(&revoked),
        );
        assert_eq!(
            p.invitation,
            InvitationAction::Issue {
                attempt: 2,
                trigger: None
            },
            "never accepted: a new invitation"
        );
    }

    #[test]
    fn the_oldest_holder_of_an_email_keeps_it_case_insensitively() {
        let me = user("second", "ALICE@acme.example");
        let older = peer("first", "alice@ACME.example", now() - 1.hour());
        let t = tenant(None);
        assert_eq!(
            blocked(&me, Some(&t), std::slice::from_ref(&older)),
            Some(Blocked::DuplicateEmail {
                holder: "first".into()
            })
        );
        let younger = peer("zed", "alice@acme.example", now() + 1.hour());
        assert_eq!(blocked(&me, Some(&t), &[younger]), None);
        // Same creation second: the name decides, so exactly one of the two wins.
        let twin = peer("aaa", "alice@acme.example", now());
        assert!(blocked(&me, Some(&t), &[twin]).is_some());
        let other_tenant = Peer {
            tenant: "globex".into(),
            ..older
        };
        assert_eq!(blocked(&me, Some(&t), &[other_tenant]), None);
    }

    #[test]
    fn a_terminating_tenant_blocks_every_provisioning_but_fails_nobody() {
        let mut t = tenant(None);
        t.metadata.deletion_timestamp = Some(Time(now()));
        let u = user("alice", "alice@acme.example");
        let blocked = blocked(&u, Some(&t), &[]);
        assert_eq!(blocked, Some(Blocked::TenantTerminating("acme".into())));
        let s = status(&StatusInput {
            user: &u,
            blocked: blocked.as_ref(),
            account: Some(&account(true, true)),
            latest: None,
            secret_name: None,
            now: now(),
        });
        assert_eq!(
            s.phase, None,
            "not Failed: nothing is wrong with the person"
        );
        assert_eq!(s.conditions[0].reason, "TenantTerminating");
        assert_eq!(s.user_id, None, "no account is shown as held");
    }

    /// Issue 14, kind 5: what admission lets through and no mail can carry fails with a reason
    /// instead of being retried for ever; real addresses, international ones included, pass.
    #[test]
    fn an_address_no_mail_can_carry_fails_and_real_ones_pass() {
        let t = tenant(None);
        for bad in examples::MALFORMED_ADDRESSES {
            let b = blocked(&user("alice", bad), Some(&t), &[]);
            assert!(
                matches!(b, Some(Blocked::EmailUndeliverable { .. })),
                "{bad}: {b:?}"
            );
            let s = status(&StatusInput {
                user: &user("alice", bad),
                blocked: b.as_ref(),
                account: None,
                latest: None,
                secret_name: None,
                now: now(),
            });
            assert_eq!(s.phase, Some(UserPhase::Failed), "{bad}");
            assert_eq!(s.conditions[0].reason, "EmailUndeliverable");
            assert!(s.conditions[0].message.contains(bad));
        }
        for good in examples::REAL_ADDRESSES {
            assert_eq!(blocked(&user("alice", good), Some(&t), &[]), None, "{good}");
        }
    }

    #[test]
    fn allowed_domains_and_missing_tenants_block() {
        let t = tenant(Some(InvitationPolicy {
            allowed_domains: Some(vec!["Acme.example".into()]),
            ..Default::default()
        }));
        assert_eq!(blocked(&user("a", "a@acme.EXAMPLE"), Some(&t), &[]), None);
        assert!(matches!(
            blocked(&user("a", "a@evil.example"), Some(&t), &[]),
            Some(Blocked::EmailDomainNotAllowed { .. })
        ));
        assert_eq!(
            blocked(&user("a", "a@acme.example"), None, &[]),
            Some(Blocked::TenantNotFound("acme".into()))
        );
    }

    #[test]
    fn durations_parse_as_admission_allows() {
        assert_eq!(parse_duration("48h"), Some(SignedDuration::from_hours(48)));
        assert_eq!(parse_duration("1h30m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("300s"), Some(SignedDuration::from_secs(300)));
        for bad in ["", "h", "10", "5d", "1.5h", "-5m", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let t = tenant(Some(InvitationPolicy {
            ttl: Some("90m".into()),
            expose_token: Some(true),
            ..Default::default()
        }));
        assert_eq!(
            InvitationSettings::of(&t),
            InvitationSettings {
                ttl: SignedDuration::from_mins(90),
                expose_token: true
            }
        );
        assert_eq!(InvitationSettings::of(&tenant(None)).ttl, DEFAULT_TTL);
    }

    fn status_of(
        u: &SystemUser,
        account: Option<&UserRecord>,
        latest: Option<&InvitationRecord>,
        at: Timestamp,
    ) -> SystemUserStatus {
        status(&StatusInput {
            user: u,
            blocked: None,
            account,
            latest,
            secret_name: None,
            now: at,
        })
    }

    #[test]
    fn phases_follow_the_store() {
        let u = user("alice", "alice@acme.example");
        let inv = invitation(1);
        let pending = status_of(&u, Some(&account(false, false)), Some(&inv), now());
        assert_eq!(pending.phase, Some(UserPhase::Pending));
        assert_eq!(pending.conditions[0].status, "True");
        assert_eq!(
            pending.invitation.as_ref().unwrap().fingerprint.as_deref(),
            Some(&inv.token_hash.fingerprint()[..])
        );
        let expired = status_of(&u, Some(&account(false, false)), Some(&inv), inv.expires_at);
        assert_eq!(expired.phase, Some(UserPhase::Expired));
        assert_eq!(
            (
                expired.conditions[0].status.as_str(),
                expired.conditions[0].reason.as_str()
            ),
            ("False", "InvitationExpired")
        );
        let active = status_of(&u, Some(&account(true, true)), Some(&inv), now());
        assert_eq!(active.phase, Some(UserPhase::Active));
        assert!(active.activated_at.is_some());
        let mut unsent = inv.clone();
        unsent.sent_at = None;
        let not_sent = status_of(&u, Some(&account(false, false)), Some(&unsent), now());
        assert_eq!(not_sent.conditions[0].reason, "InvitationNotSent");
    }

    #[test]
    fn the_same_state_gives_the_same_status_so_nothing_is_patched() {
        let mut u = user("alice", "alice@acme.example");
        let inv = invitation(1);
        let first = status_of(&u, Some(&account(false, false)), Some(&inv), now());
        u.status = Some(first.clone());
        let later = status_of(
            &u,
            Some(&account(false, false)),
            Some(&inv),
            now() + 5.minutes(),
        );
        assert_eq!(first, later);
        assert!(events(Some(&first), &later, None).is_empty());
    }

    #[test]
    fn each_refusal_is_announced_with_its_own_reason() {
        // The Warning Event of a store refusal used to read TenantNotFound: the reason was
        // rebuilt from the condition's text and fell back to it.
        let u = user("alice", "alice@acme.example");
        for blocked in [
            Blocked::TenantNotFound("acme".into()),
            Blocked::DuplicateEmail {
                holder: "al".into(),
            },
            Blocked::EmailDomainNotAllowed {
                allowed: vec!["acme.example".into()],
            },
            Blocked::StoreRefused("409 uniqueness: userName taken".into()),
        ] {
            let new = status(&StatusInput {
                user: &u,
                blocked: Some(&blocked),
                account: None,
                latest: None,
                secret_name: None,
                now: now(),
            });
            let notes = events(None, &new, Some(&blocked));
            assert_eq!(notes.len(), 1, "{blocked:?}");
            assert_eq!(notes[0].reason, blocked.reason());
            assert_eq!(notes[0].reason, new.conditions[0].reason);
            assert!(notes[0].warning);
            // The same refusal again is no news.
            assert!(events(Some(&new), &new, Some(&blocked)).is_empty());
        }
    }

    #[test]
    fn a_half_done_offboarding_says_what_is_left_once() {
        let mut u = user("alice", "alice@acme.example");
        u.status = Some(status_of(
            &u,
            Some(&account(true, true)),
            Some(&invitation(1)),
            now(),
        ));
        let (s, news) = offboarding_incomplete(&u, "removing its roles failed", now());
        assert!(news);
        assert_eq!(
            s.phase,
            Some(UserPhase::Active),
            "the phase is left as it was"
        );
        let c = &s.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            (
                "False",
                "OffboardingIncomplete",
                "removing its roles failed"
            )
        );
        u.status = Some(s.clone());
        let (again, news) = offboarding_incomplete(&u, "removing its roles failed", now());
        assert!(!news, "the same news once");
        assert_eq!(again, s, "nothing to patch");
    }

    #[test]
    fn each_transition_has_one_event() {
        let u = user("alice", "alice@acme.example");
        let inv = invitation(1);
        let pending = status_of(&u, Some(&account(false, false)), Some(&inv), now());
        let reasons = |old: Option<&SystemUserStatus>, new: &SystemUserStatus| {
            events(old, new, None)
                .into_iter()
                .map(|n| n.reason)
                .collect::<Vec<_>>()
        };
        assert_eq!(reasons(None, &pending), ["InvitationSent"]);
        let active = status_of(&u, Some(&account(true, true)), Some(&inv), now());
        assert_eq!(reasons(Some(&pending), &active), ["InvitationRedeemed"]);
        let expired = status_of(&u, Some(&account(false, false)), Some(&inv), inv.expires_at);
        assert_eq!(reasons(Some(&pending), &expired), ["InvitationExpired"]);
        let resent = status_of(
            &u,
            Some(&account(false, false)),
            Some(&invitation(2)),
            now(),
        );
        assert_eq!(reasons(Some(&pending), &resent), ["InvitationSent"]);
    }

    #[test]
    fn requeue_lands_on_the_expiry_of_an_open_invitation_only() {
        let inv = invitation(1);
        assert_eq!(requeue_at(Some(&inv), now()), Some(inv.expires_at));
        assert_eq!(requeue_at(Some(&inv), inv.expires_at), None);
        let mut used = inv.clone();
        used.used_at = Some(now());
        assert_eq!(requeue_at(Some(&used), now()), None);
    }
}
