use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{EMAIL_MESSAGE, EMAIL_RULE, FROM_MESSAGE, FROM_RULE, KEY_MESSAGE, KEY_RULE};

/// A customer account of the product: the people, locations and roles below it belong to it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "usher.dev",
    version = "v1alpha1",
    kind = "Tenant",
    namespaced,
    status = "TenantStatus",
    shortname = "tn",
    category = "usher",
    doc = "A customer account of the product. SystemUsers, LocationGroups and RoleBindings name it in tenantRef; usher writes it to the user store and counts its users by phase.",
    validation = Rule::new("has(self.spec.store) == has(oldSelf.spec.store)").message("spec.store cannot be added, removed or pointed elsewhere: the tenant's people live in that store; create a new Tenant to move them").field_path(".spec.store"),
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName"
    ),
    printcolumn(name = "Users", type_ = "integer", json_path = ".status.users.total"),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.users.pending"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// The name people see in invitation mails and in the product, e.g. "Acme Charging".
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("must not be empty or blank"))]
    #[schemars(length(max = 200))]
    pub display_name: String,

    /// How to reach the customer's operations team. Informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,

    /// How invitations to this tenant's people are issued. Every field has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitations: Option<InvitationPolicy>,

    /// The role catalogue of this tenant. When absent: Administrator, Manager, CustomerService and
    /// Technician (exclusive). Role names are unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(min = 1, max = 64))]
    pub roles: Option<Vec<Role>>,

    /// What happens to a person's store account when their SystemUser is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offboarding: Option<OffboardingSpec>,

    /// This tenant's own user store, such as the SCIM endpoint the product gives this customer
    /// organisation. Default: the operator's store (`usher run --store`). Set when the Tenant is
    /// created and not changed after: a tenant's people live in one store (create a new Tenant
    /// to move them). Tenants that name the same URL share that store, and a person in several
    /// of them is one identity there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.url == oldSelf.url").message("spec.store cannot be added, removed or pointed elsewhere: the tenant's people live in that store; create a new Tenant to move them"))]
    pub store: Option<TenantStore>,
}

/// A tenant's own user store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantStore {
    /// Where the store is: `scim+https://HOST/BASE` (a SCIM 2.0 server, RFC 7644; its bearer
    /// token in credentialsSecretRef) or `postgres://USER@HOST/DB` (its password in
    /// credentialsSecretRef). `scim+http://` is allowed on loopback only. No password in the URL.
    #[x_kube(
        validation = Rule::new(r"self.matches('^(scim\\+https://[^\\s/]+(/[^\\s]*)?|scim\\+http://(localhost|127\\.0\\.0\\.1|\\[::1\\])(:[0-9]+)?(/[^\\s]*)?|postgres(ql)?://[^\\s/]+(/[^\\s]*)?)$')").message("must be scim+https://HOST/BASE or postgres://USER@HOST/DB (scim+http:// on loopback only)"),
        validation = Rule::new(r"!self.matches('^[a-z+]+://[^/@]*:[^/@]*@')").message("must hold no password; put it in the Secret credentialsSecretRef names")
    )]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// The Secret, in the Tenant's namespace, holding the store's credential: the SCIM bearer
    /// token (key `token` by default) or the PostgreSQL password (key `password` by default).
    /// usher reads it by name only, so its ServiceAccount must be allowed to `get` that name
    /// (the installed RBAC allows the name `usher-store`). Re-read at every reconcile of the
    /// Tenant: a rotated credential takes effect within about two `--resync` periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

/// One key of a Secret in the object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    #[schemars(length(max = 253))]
    pub name: String,
    /// The key within the Secret. Default: `token` for a SCIM store, `password` for PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// How to reach a customer's operations team.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    /// Email address of the customer's operations contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(EMAIL_RULE).message(EMAIL_MESSAGE))]
    #[schemars(length(max = 254))]
    pub email: Option<String>,
    /// Phone number of the customer's operations contact, free form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub phone: Option<String>,
}

/// How invitations are issued to this tenant's people.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InvitationPolicy {
    /// How long an invitation token stays valid, as a duration such as "48h" or "90m";
    /// between 5m and 720h. Default 72h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new(r"self.matches('^([0-9]+(h|m|s))+$')").message("must be a duration such as 48h, 90m or 1h30m"),
        validation = Rule::new(r"!self.matches('^([0-9]+(h|m|s))+$') || (duration(self) >= duration('5m') && duration(self) <= duration('720h'))").message("must be between 5m and 720h")
    )]
    #[schemars(length(max = 32))]
    pub ttl: Option<String>,

    /// The From header of invitation mails, e.g. "Acme Portal <no-reply@acme.example>".
    /// Default: the operator's --mail-from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(FROM_RULE).message(FROM_MESSAGE))]
    #[schemars(length(max = 320))]
    pub from: Option<String>,

    /// The page invited people open to accept; usher appends `?token=…`.
    /// Default: the operator's own acceptance page (--public-url + /accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^https?://[^\\s?#]+$')").message("must be an http:// or https:// URL without a query or fragment"))]
    #[schemars(length(max = 2048))]
    pub accept_url: Option<String>,

    /// Also keep each token in a Secret `<user>-invitation` for admins who hand it over by other
    /// means. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_token: Option<bool>,

    /// When set, only emails in these domains may be invited; others make the SystemUser Failed
    /// with reason EmailDomainNotAllowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new(r"self.all(d, d.matches('^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$'))").message("each entry must be a domain name such as acme.example")
    )]
    #[schemars(length(max = 100), inner(length(max = 253)))]
    pub allowed_domains: Option<Vec<String>>,

    /// Refuse addresses at disposable (throwaway) mail providers, such as mailinator.com or a
    /// subdomain of one: such a SystemUser is Failed with reason DisposableEmail and gets no
    /// mail. The list is the mailchecker project's (over 55,000 domains), updated with usher.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_disposable: Option<bool>,
}

/// A role of the tenant's catalogue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// The role's name, as RoleBindings name it, e.g. "Technician".
    #[x_kube(validation = Rule::new(KEY_RULE).message(KEY_MESSAGE))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// What the role is for, shown to admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub description: Option<String>,

    /// An exclusive role cannot be held together with any other role by the same user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,

    /// Free-form module names written to the store with the role, so the application can answer
    /// "may this person open Pricing?".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 63)))]
    pub permissions: Vec<String>,
}

impl Tenant {
    /// The tenant's role catalogue: its own, or the default when it names none.
    pub fn catalogue(&self) -> Vec<Role> {
        self.spec.roles.clone().unwrap_or_else(default_roles)
    }
}

/// The default role catalogue, used when a tenant names none.
pub fn default_roles() -> Vec<Role> {
    let role = |name: &str, description: &str, exclusive: bool| Role {
        name: name.into(),
        description: Some(description.into()),
        exclusive,
        permissions: Vec::new(),
    };
    vec![
        role("Administrator", "All settings and data", false),
        role(
            "Manager",
            "Day-to-day management of locations and staff",
            false,
        ),
        role(
            "CustomerService",
            "Customer accounts and support cases",
            false,
        ),
        role("Technician", "Field work orders; holds no other role", true),
    ]
}

/// What happens to a person's store account when their SystemUser is deleted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OffboardingSpec {
    /// Deactivate keeps the account (re-adding the person restores it); Delete removes it.
    #[serde(default)]
    pub policy: OffboardingPolicy,

    /// At most this many people of the tenant are offboarded within an hour; the rest wait until
    /// the annotation usher.dev/allow-mass-offboarding is set to a new value. Guards against a bad
    /// commit wiping a tenant. Default 50.
    #[serde(default = "default_max_per_hour")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_per_hour: i32,
}

impl Default for OffboardingSpec {
    fn default() -> Self {
        Self {
            policy: OffboardingPolicy::default(),
            max_per_hour: default_max_per_hour(),
        }
    }
}

fn default_max_per_hour() -> i32 {
    50
}

/// What offboarding does to the store account.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum OffboardingPolicy {
    /// Deactivate the account and keep it, so the person can be restored.
    #[default]
    Deactivate,
    /// Delete the account from the store.
    Delete,
}

/// The observed state of a Tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, and OffboardingThrottled while the offboarding guard holds deletions back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The tenant's SystemUsers counted by phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<UserCounts>,
}

/// SystemUsers counted by phase.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserCounts {
    /// All SystemUsers of the tenant.
    pub total: i32,
    /// Invited, not accepted yet.
    pub pending: i32,
    /// Accepted their invitation.
    pub active: i32,
    /// Their invitation expired before they accepted.
    pub expired: i32,
    /// Deactivated with spec.suspended.
    pub suspended: i32,
    /// Could not be provisioned; see their Ready condition.
    #[serde(default)]
    pub failed: i32,
}

#[cfg(test)]
impl Tenant {
    /// A Tenant `name` in namespace `ns`, displayed as its name: the least a test needs.
    pub(crate) fn named(ns: &str, name: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "usher.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"displayName": name}
        }))
        .expect("a valid Tenant")
    }
}
