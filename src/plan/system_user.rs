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
}

impl Blocked {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TenantNotFound(_) => "TenantNotFound",
            Self::DuplicateEmail { .. } => "DuplicateEmail",
            Self::EmailDomainNotAllowed { .. } => "EmailDomainNotAllowed",
        }
    }

    /// What a person reads in the condition and the Event.
    pub fn message(&self, email: &str) -> String {
        match self {
            Self::TenantNotFound(t) => {
                format!("Tenant {t:?} does not exist in this namespace; waiting for it")
            }
            Self::DuplicateEmail { holder } => format!(
                "{email} is already used by SystemUser {holder:?} of this tenant; no invitation was sent"
            ),
            Self::EmailDomainNotAllowed { allowed } => format!(
                "the tenant only invites addresses in {}; {email} is not one of them",
                allowed.join(", ")
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
}

/// The writes one reconcile of a SystemUser should make, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPlan {
    /// The account.
    pub account: AccountAction,
    /// Suspension.
    pub access: AccessAction,
    /// The invitation.
    pub invitation: InvitationAction,
}

impl UserPlan {
    /// A plan with nothing to write.
    pub const NOTHING: UserPlan = UserPlan {
        account: AccountAction::Keep,
        access: AccessAction::Keep,
        invitation: InvitationAction::Keep,
    };
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
    let account_action = match account {
        None => AccountAction::Create(fields),
        Some(rec) if !rec.matches(&fields) => AccountAction::Update(fields),
        Some(_) => AccountAction::Keep,
    };
    let accepted = account.is_some_and(|a| a.activated_at.is_some());
    let active = account.is_some_and(|a| a.active);
    let open = latest.filter(|i| i.open());

    if user.spec.suspended {
        let access = if active || open.is_some() {
            AccessAction::Suspend
        } else {
            AccessAction::Keep
        };
        return UserPlan {
            account: account_action,
            access,
            invitation: InvitationAction::Keep,
        };
    }
    if accepted {
        let access = if active {
            AccessAction::Keep
        } else {
            AccessAction::Restore
        };
        return UserPlan {
            account: account_action,
            access,
            invitation: InvitationAction::Keep,
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
        Some(inv) if inv.open() && inv.sent_at.is_none() => InvitationAction::Resend {
            attempt: inv.attempt,
        },
        // A new annotation value, or an invitation revoked by a suspension that has ended.
        Some(inv) if (trigger.is_some() && trigger != inv.trigger) || !inv.open() => {
            InvitationAction::Issue {
                attempt: inv.attempt + 1,
                trigger,
            }
        }
        Some(_) => InvitationAction::Keep,
    };
    UserPlan {
        account: account_action,
        access: AccessAction::Keep,
        invitation,
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
        if !matches!(blocked, Blocked::TenantNotFound(_)) {
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

/// When to look at the user again without a change: at expiry while Pending.
pub fn requeue_at(latest: Option<&InvitationRecord>, now: Timestamp) -> Option<Timestamp> {
    latest
        .filter(|i| i.open() && i.sent_at.is_some() && now < i.expires_at)
        .map(|i| i.expires_at)
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

/// The Events a status change deserves: one per transition, none when nothing changed.
pub fn events(old: Option<&SystemUserStatus>, new: &SystemUserStatus) -> Vec<Note> {
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
            if reason.is_some()
                && old
                    .and_then(|s| s.conditions.first())
                    .map(|c| c.reason.as_str())
                    != reason =>
        {
            let reason = match reason {
                Some("DuplicateEmail") => "DuplicateEmail",
                Some("EmailDomainNotAllowed") => "EmailDomainNotAllowed",
                _ => "TenantNotFound",
            };
            notes.push(note(true, reason, message))
        }
        _ => {}
    }
    notes
}
