//! The SystemUser decisions, in the four steps every reconcile takes: the controller reads
//! (caches and store) into [`Seen`]; [`decide`] says what to write ([`Decision`]); the
//! controller carries it out; [`report`] says which status and Events follow from what the store
//! then holds. Pure: no I/O here, so most tests of a person's life are unit tests.
//!
//! - this file: who may be provisioned at all ([`blocked`]), the tenant's invitation settings,
//!   and [`decide`];
//! - [`writes`]: account, access and invitation writes ([`plan`]) and what counts as drift;
//! - [`report`]: status, Events and requeue.

mod report;
#[cfg(test)]
mod tests;
mod writes;

use jiff::{SignedDuration, Timestamp};

pub use crate::plan::condition::Note;
pub use report::{
    FIELDS_NOT_KEPT, Outcome, Report, STORE_UNAVAILABLE, StatusInput, events,
    offboarding_incomplete, report, requeue_after, requeue_at, status, store_unavailable,
};
pub use writes::{
    AccessAction, AccountAction, InvitationAction, UserPlan, drift, plan, read_mid_redemption,
    same_address,
};

use super::records::{Assignment, InvitationRecord, UserRecord, object_key};
use crate::crd::{SystemUser, Tenant};

/// The annotation whose new value revokes the current token and sends a new invitation.
pub const RESEND_ANNOTATION: &str = "usher.dev/resend-invitation";

/// Set by usher on a SystemUser when its invitation was redeemed through an instance that does
/// not watch it (another shard, another namespace), to wake the one that does.
pub const REDEEMED_ANNOTATION: &str = "usher.dev/redeemed-at";

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
    /// The tenant refuses disposable (throwaway) mail providers, and the address is at one.
    DisposableEmail {
        /// The provider's domain that matched (the address's domain or a parent of it).
        domain: String,
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
            Self::DisposableEmail { .. } => "DisposableEmail",
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
            Self::DisposableEmail { domain } => format!(
                "{email} is at {domain}, a disposable (throwaway) mail provider, and the tenant refuses those (spec.invitations.refuseDisposable); no invitation was sent. Use the person's lasting address"
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
    let policy = tenant.spec.invitations.as_ref();
    if let Some(allowed) = policy
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
    if policy.and_then(|i| i.refuse_disposable) == Some(true)
        && let Some(domain) = disposable_provider(&email)
    {
        return Some(Blocked::DisposableEmail { domain });
    }
    let me = rank(user);
    peers
        .iter()
        .filter(|p| p.tenant == user.spec.tenant_ref.name && p.email.to_lowercase() == email)
        .filter(|p| (p.created, p.name.as_str()) < me)
        .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
        .map(|p| Blocked::DuplicateEmail {
            holder: p.name.clone(),
        })
}

/// The disposable (throwaway) mail provider an address is at, if any: its domain or a parent
/// domain of it is on mailchecker's list (so `x@eu.mailinator.com` is caught as `mailinator.com`).
pub fn disposable_provider(email: &str) -> Option<String> {
    static LIST: std::sync::LazyLock<std::collections::HashSet<&'static str>> =
        std::sync::LazyLock::new(|| mailchecker::blacklist().into_iter().collect());
    let domain = email.rsplit_once('@')?.1.to_lowercase();
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    (0..labels.len().saturating_sub(1))
        .map(|i| labels[i..].join("."))
        .find(|d| LIST.contains(d.as_str()))
}

/// Who keeps an address two SystemUsers of a tenant declare: the older, and between two created
/// in the same second the one whose name sorts first. Neither file order nor which object was
/// reconciled first can change it, so the cluster and `usher validate` agree.
fn rank(user: &SystemUser) -> (Option<Timestamp>, &str) {
    (
        user.metadata.creation_timestamp.as_ref().map(|t| t.0),
        user.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Whether `user` may take over `found`, an account of its tenant with its address that is not
/// under its own key. The store keeps one account per (tenant, address), so this is the only
/// way `user` gets one:
/// - no SystemUser holds it (`holder` None): a person offboarded under Deactivate, restored;
/// - its holder declares the same address in the same tenant and loses it to `user` by the
///   duplicate rule: a loser provisioned before the winner was seen (two objects created
///   together). Its access was or is being withdrawn; the account is the address's.
///
/// A holder whose address in git differs (its change not written yet) keeps its account; the
/// store refuses `user`'s until that change lands, and the retry then succeeds.
pub fn restorable(user: &SystemUser, holder: Option<&SystemUser>) -> bool {
    match holder {
        None => true,
        Some(h) => {
            h.metadata.deletion_timestamp.is_none()
                && h.spec.tenant_ref.name == user.spec.tenant_ref.name
                && same_address(&h.spec.email, &user.spec.email)
                && rank(user) < rank(h)
        }
    }
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

/// What the read step found about one person, from the caches and from the store.
pub struct Seen<'a> {
    /// The person's Tenant, if the cache has it.
    pub tenant: Option<&'a Tenant>,
    /// The other SystemUsers of the namespace, as the duplicate check needs them.
    pub peers: &'a [Peer],
    /// The person's account: the one under their key, or else an account of their tenant with
    /// their address that no SystemUser holds (offboarded under Deactivate, to be restored).
    pub account: Option<&'a UserRecord>,
    /// Whether `account` is under the person's own key (not one found by address).
    pub own: bool,
    /// The account's newest invitation.
    pub latest: Option<&'a InvitationRecord>,
    /// The account's role assignments as the store holds them (empty without an account).
    pub assignments: &'a [Assignment],
    /// The roles the person's Bound bindings give, as the status shows them (`role@group`).
    pub roles: Vec<String>,
    /// The assignments those bindings make in the store.
    pub desired: Vec<Assignment>,
    /// When the first of those bindings expires (`spec.expiresAt`), if any.
    pub expires: Option<Timestamp>,
}

/// What one reconcile of a person should do, decided before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Why the person cannot be provisioned; then nothing but [`Decision::withdraw`] is done.
    pub blocked: Option<Blocked>,
    /// The tenant's invitation settings (None when blocked).
    pub settings: Option<InvitationSettings>,
    /// The writes to the account and invitation ([`UserPlan::NOTHING`] when blocked).
    pub writes: UserPlan,
    /// Replace the account's role assignments with these, after the writes; None when the store
    /// already holds them or the person is blocked.
    pub assignments: Option<Vec<Assignment>>,
    /// Whether writing the assignments repairs drift (the bindings did not change).
    pub assignments_repair: bool,
    /// A refused person's account still holds access, an open token or a role: take them away
    /// (as an offboarding under Deactivate).
    pub withdraw: bool,
    /// What [`Decision::writes`] repair that someone changed in the store behind usher's back.
    pub repaired: Vec<&'static str>,
    /// The roles the status shows.
    pub roles: Vec<String>,
    /// When a binding of the person expires: the store's assignments change then, so the person
    /// is looked at again right then.
    pub expires: Option<Timestamp>,
}

/// Decide one reconcile of `user` from what was read: whether it may be provisioned, the
/// writes to its account and invitation, its role assignments, and what a refusal takes away.
pub fn decide(user: &SystemUser, seen: &Seen<'_>) -> Decision {
    let blocked = blocked(user, seen.tenant, seen.peers);
    let shown_roles = user.status.as_ref().map(|s| &s.roles);
    let Some(tenant) = seen.tenant.filter(|_| blocked.is_none()) else {
        // Refused after it had been provisioned (a duplicate that lost, a domain no longer
        // allowed): the account keeps no access, no open token and no role.
        let refusal = matches!(
            blocked,
            Some(
                Blocked::DuplicateEmail { .. }
                    | Blocked::EmailDomainNotAllowed { .. }
                    | Blocked::DisposableEmail { .. }
                    | Blocked::EmailUndeliverable { .. }
            )
        );
        let holds = seen.account.filter(|_| seen.own).is_some_and(|a| {
            a.active || seen.latest.is_some_and(|i| i.open()) || !seen.assignments.is_empty()
        });
        return Decision {
            blocked,
            settings: None,
            writes: UserPlan::NOTHING,
            assignments: None,
            assignments_repair: false,
            withdraw: refusal && holds,
            repaired: Vec::new(),
            roles: seen.roles.clone(),
            expires: None,
        };
    };
    let namespace = user.metadata.namespace.as_deref().unwrap_or_default();
    let tenant_key = object_key(namespace, &user.spec.tenant_ref.name);
    let writes = plan(user, &tenant_key, seen.account, seen.latest);
    let assignments = (seen.assignments != seen.desired.as_slice()).then(|| seen.desired.clone());
    Decision {
        blocked: None,
        settings: Some(InvitationSettings::of(tenant)),
        repaired: drift(user, &writes),
        writes,
        // The bindings said the same last time: the store was changed, not the resources.
        assignments_repair: assignments.is_some() && shown_roles == Some(&seen.roles),
        assignments,
        withdraw: false,
        roles: seen.roles.clone(),
        expires: seen.expires,
    }
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
