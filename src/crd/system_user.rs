use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{EMAIL_MESSAGE, EMAIL_RULE, ObjectRef};

/// A person with access to a tenant: invited by mail, Pending until they accept, then Active.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "usher.dev",
    version = "v1alpha1",
    kind = "SystemUser",
    namespaced,
    status = "SystemUserStatus",
    shortname = "su",
    category = "usher",
    doc = "A person with access to a tenant. usher creates the account in the user store, mails an invitation with a single-use token, shows Pending until the person accepts and Active after; deleting the object offboards the person.",
    selectable = ".spec.email",
    selectable = ".spec.tenantRef.name",
    selectable = ".spec.firstName",
    selectable = ".spec.lastName",
    selectable = ".spec.company",
    selectable = ".spec.phone",
    selectable = ".spec.address.city",
    selectable = ".spec.address.postalCode",
    printcolumn(name = "Email", type_ = "string", json_path = ".spec.email"),
    printcolumn(
        name = "Tenant",
        type_ = "string",
        json_path = ".spec.tenantRef.name",
        priority = 1
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Roles", type_ = "string", json_path = ".status.roles"),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.invitation.expiresAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SystemUserSpec {
    /// The Tenant this person belongs to. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenantRef cannot be changed; create the user in the other tenant instead"))]
    pub tenant_ref: ObjectRef,

    /// The person's email address; invitations go here. Unique per tenant, case-insensitive.
    #[x_kube(validation = Rule::new(EMAIL_RULE).message(EMAIL_MESSAGE))]
    #[schemars(length(max = 254))]
    pub email: String,

    /// Given name, used in the invitation mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub first_name: Option<String>,

    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub last_name: Option<String>,

    /// Phone number, free form, e.g. "+1 555 0101".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^[0-9+()./ -]*$')").message("may contain only digits, spaces and + ( ) . / -"))]
    #[schemars(length(max = 64))]
    pub phone: Option<String>,

    /// The company the person works for (a contractor's, or the tenant's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub company: Option<String>,

    /// Postal address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,

    /// The person's id in the customer's accounting system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub accounting_id: Option<String>,

    /// Per-person options the product reads, e.g. {allowTickets: "true"}: at most 16, each named
    /// in camelCase (a lowercase letter, then letters and digits, up to 63 characters) with a
    /// value of up to 256 characters. Written to every store: the `attributes` column (JSON) of
    /// the SQL stores, `attributes` ({name, value} pairs) in usher's SCIM User extension.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[x_kube(
        validation = Rule::new(r"self.all(k, size(k) <= 63 && k.matches('^[a-z][A-Za-z0-9]*$'))").message("each attribute name must be camelCase: a lowercase letter, then letters and digits, at most 63 characters"),
        validation = Rule::new(r"self.all(k, size(self[k]) <= 256)").message("each attribute value must be at most 256 characters")
    )]
    #[schemars(extend("maxProperties" = 16))]
    pub attributes: std::collections::BTreeMap<String, String>,

    /// Ids of the locations this person is responsible for (see LocationGroup spec.locations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new(r"self.all(l, l.matches('^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$'))").message("each location id must start and end with a letter or digit and contain only letters, digits, '.', '_' or '-'")
    )]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 63)))]
    pub locations: Vec<String>,

    /// true: the account is deactivated in the store and pending tokens are revoked, while the
    /// person stays in git. Back to false restores access (or re-invites if never accepted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,

    /// Free-form notes for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub comments: Option<String>,
}

/// A postal address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// Street and number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub street: Option<String>,
    /// City.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub city: Option<String>,
    /// State, province or region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub region: Option<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code, e.g. "US".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{2}$')").message("must be a two-letter ISO 3166-1 country code such as US"))]
    #[schemars(length(max = 2))]
    pub country: Option<String>,
}

/// Where a person is in their lifecycle.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserPhase {
    /// Invited; has not accepted yet.
    Pending,
    /// Accepted the invitation; the store account is active.
    Active,
    /// The invitation expired before it was accepted; set the annotation
    /// usher.dev/resend-invitation to a new value to send a new one.
    Expired,
    /// Deactivated with spec.suspended.
    Suspended,
    /// Could not be provisioned (duplicate email, domain not allowed, …); see the Ready condition.
    Failed,
}

/// The observed state of a SystemUser.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SystemUserStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Active, Expired, Suspended or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<UserPhase>,
    /// The person's id in the user store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The current invitation. Never holds the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<InvitationStatus>,
    /// When the person accepted their invitation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<Time>,
    /// The roles bound to this person, as role@scope (scope "tenant" when tenant-wide).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Ready, with a reason saying why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The current invitation of a person. The token itself is never shown here.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InvitationStatus {
    /// When the invitation mail was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Time>,
    /// When the token stops being accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The first 8 hex characters of the token's SHA-256, to match a mail to its invitation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// How many invitations have been issued to this person so far.
    #[serde(default)]
    pub attempts: i32,
    /// The Secret holding the token, when the tenant exposes tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}
