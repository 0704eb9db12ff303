//! What the user store holds, as plain types. Backends convert to and from these, so the
//! decisions never depend on a backend.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::crd::{Address, SystemUserSpec, Tenant};
use crate::token::TokenHash;

/// A tenant as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRecord {
    /// `<namespace>/<name>` of the Tenant object.
    pub key: String,
    /// The name people see.
    pub display_name: String,
}

impl TenantRecord {
    /// The record a Tenant object should have in the store.
    pub fn desired(tenant: &Tenant, namespace: &str, name: &str) -> Self {
        Self {
            key: object_key(namespace, name),
            display_name: tenant.spec.display_name.clone(),
        }
    }
}

/// A namespaced object's key: how the store names the object a record came from (a
/// SystemUser's account, a Tenant, a LocationGroup, a RoleBinding's assignment). Its text form
/// is `<namespace>/<name>`; this type is the one place that writes and reads it. A namespace
/// never contains `/` (it is a DNS label), so the first `/` splits the two.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// The key of object `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Read a key's text form; None when it is not `<namespace>/<name>` (a record usher did not
    /// write, say).
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty()).then(|| Self::new(namespace, name))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The text form of [`ObjectKey`] `namespace/name`, as store records hold it.
pub fn object_key(namespace: &str, name: &str) -> String {
    ObjectKey::new(namespace, name).to_string()
}

/// The person's details the store keeps beside the email; all from the SystemUser spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Employer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// Postal address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// Id in the customer's accounting system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounting_id: Option<String>,
    /// Location ids the person is responsible for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<String>,
    /// Notes for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
    /// Per-person options by name (spec.attributes). Kept out of the profile's JSON: the SQL
    /// stores give them a column of their own, for the product to read.
    #[serde(skip)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl From<&SystemUserSpec> for Profile {
    fn from(spec: &SystemUserSpec) -> Self {
        Self {
            first_name: spec.first_name.clone(),
            last_name: spec.last_name.clone(),
            phone: spec.phone.clone(),
            company: spec.company.clone(),
            address: spec.address.clone(),
            accounting_id: spec.accounting_id.clone(),
            locations: spec.locations.clone(),
            comments: spec.comments.clone(),
            attributes: spec.attributes.clone(),
        }
    }
}

/// A person's account in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The store's id for the person (shown as status.userId).
    pub id: String,
    /// The tenant's key, `<namespace>/<name>`.
    pub tenant: String,
    /// The SystemUser's key, `<namespace>/<name>`.
    pub external_id: String,
    /// Where invitations go.
    pub email: String,
    /// Everything else about the person.
    pub profile: Profile,
    /// Whether the person may sign in: false while invited, suspended or offboarded.
    pub active: bool,
    /// When the person first accepted an invitation.
    pub activated_at: Option<Timestamp>,
}

/// What a new or changed account should hold (the store assigns the id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserFields {
    /// The tenant's key.
    pub tenant: String,
    /// The SystemUser's key.
    pub external_id: String,
    /// Where invitations go.
    pub email: String,
    /// Everything else about the person.
    pub profile: Profile,
}

impl UserRecord {
    /// A new account `id` holding `fields`, inactive and never accepted: what a store has just
    /// created.
    pub fn created(id: String, fields: &UserFields) -> Self {
        Self {
            id,
            tenant: fields.tenant.clone(),
            external_id: fields.external_id.clone(),
            email: fields.email.clone(),
            profile: fields.profile.clone(),
            active: false,
            activated_at: None,
        }
    }

    /// Whether the stored details already match.
    pub fn matches(&self, fields: &UserFields) -> bool {
        self.tenant == fields.tenant
            && self.external_id == fields.external_id
            && self.email == fields.email
            && self.profile == fields.profile
    }
}

/// One invitation: a token (by hash) for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvitationRecord {
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// The account it activates.
    pub user_id: String,
    /// 1 for the first invitation, then one more per resend.
    pub attempt: i32,
    /// The value of the resend annotation this invitation answered, if any.
    pub trigger: Option<String>,
    /// When it was recorded.
    pub created_at: Timestamp,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
    /// When the mail went out; None between recording and sending.
    pub sent_at: Option<Timestamp>,
    /// When it was redeemed.
    pub used_at: Option<Timestamp>,
    /// When it was revoked (resent, suspended, offboarded).
    pub revoked_at: Option<Timestamp>,
}

impl InvitationRecord {
    /// Neither used nor revoked.
    pub fn open(&self) -> bool {
        self.used_at.is_none() && self.revoked_at.is_none()
    }

    /// Open but past its expiry.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.open() && now >= self.expires_at
    }
}

/// What a successful redemption returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redeemed {
    /// The account that became active.
    pub user_id: String,
    /// Its SystemUser's key, to wake its reconcile.
    pub external_id: String,
    /// Its tenant's key.
    pub tenant: String,
    /// Its email.
    pub email: String,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedeemRefusal {
    /// No invitation has this token.
    #[error("this invitation code is not known")]
    Unknown,
    /// It was redeemed before.
    #[error("this invitation has already been accepted")]
    AlreadyUsed,
    /// It expired, or a newer invitation replaced it.
    #[error("this invitation has expired; ask your administrator for a new one")]
    Expired,
}

/// A location group as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    /// `<namespace>/<name>` of the LocationGroup.
    pub key: String,
    /// The tenant's key.
    pub tenant: String,
    /// The parent's key; None at the top level.
    pub parent: Option<String>,
    /// The name people see.
    pub display_name: String,
    /// Names from the top level down, joined by "/".
    pub path: String,
    /// Its locations.
    pub locations: Vec<crate::crd::Location>,
}

/// A role of a tenant's catalogue as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRecord {
    /// The role's name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Whether it excludes every other role.
    pub exclusive: bool,
    /// The modules it opens.
    pub permissions: Vec<String>,
}

impl From<&crate::crd::Role> for RoleRecord {
    fn from(r: &crate::crd::Role) -> Self {
        Self {
            name: r.name.clone(),
            description: r.description.clone(),
            exclusive: r.exclusive,
            permissions: r.permissions.clone(),
        }
    }
}

/// One Bound RoleBinding in the store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assignment {
    /// The RoleBinding's key, `<namespace>/<name>`.
    pub binding: String,
    /// The role.
    pub role: String,
    /// The group's key; None for tenant-wide.
    pub group: Option<String>,
}

/// A (role, group) pair a person holds, inherited ones included; what an application asks at
/// sign-in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// The role.
    pub role: String,
    /// The group's key; None for tenant-wide.
    pub group: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::ObjectKey;

    #[test]
    fn a_key_reads_back_what_it_writes_and_nothing_else() {
        let key = ObjectKey::new("acme", "jo.smith");
        assert_eq!(key.to_string(), "acme/jo.smith");
        assert_eq!(ObjectKey::parse(&key.to_string()), Some(key));
        for not_a_key in ["", "acme", "/jo", "acme/", "jo@acme.example"] {
            assert_eq!(ObjectKey::parse(not_a_key), None, "{not_a_key:?}");
        }
    }
}
