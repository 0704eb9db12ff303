use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{KEY_MESSAGE, KEY_RULE, ObjectRef};

/// A role of the tenant's catalogue granted to one SystemUser, tenant-wide or on a LocationGroup.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "usher.dev",
    version = "v1alpha1",
    kind = "RoleBinding",
    namespaced,
    status = "RoleBindingStatus",
    shortname = "urb",
    category = "usher",
    doc = "Grants a role of the tenant's catalogue to one SystemUser, tenant-wide or on a LocationGroup and every group below it. When two bindings break exclusivity, the older stays Bound and the newer is Conflict. Not to be confused with rbac.authorization.k8s.io RoleBinding: use rolebindings.usher.dev or the short name urb.",
    selectable = ".spec.userRef.name",
    selectable = ".spec.role",
    printcolumn(name = "User", type_ = "string", json_path = ".spec.userRef.name"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(
        name = "Scope",
        type_ = "string",
        json_path = ".spec.scope.locationGroup"
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RoleBindingSpec {
    /// The SystemUser who receives the role, in the same namespace.
    pub user_ref: ObjectRef,

    /// The name of a role of the user's tenant catalogue, e.g. "Technician".
    #[x_kube(validation = Rule::new(KEY_RULE).message(KEY_MESSAGE))]
    #[schemars(length(min = 1, max = 63))]
    pub role: String,

    /// Where the role applies. Absent: the whole tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<BindingScope>,

    /// Access until then (RFC 3339, e.g. 2027-03-31T23:59:59Z), for a contractor or a stand-in.
    /// From that moment the binding is Expired: its role leaves the user store, it no longer
    /// blocks the person's other roles, and an Event says so. Absent: no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Where a role applies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct BindingScope {
    /// A LocationGroup of the same tenant; the role applies to it and every group below it.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty; omit scope for a tenant-wide role"))]
    #[schemars(length(max = 253))]
    pub location_group: String,
}

/// Whether a binding is in effect.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingPhase {
    /// In effect and written to the store.
    Bound,
    /// Breaks the exclusivity of an older binding of the same user; see conflictsWith.
    Conflict,
    /// Cannot ever be in effect as written (unknown role, user of another tenant).
    Invalid,
    /// The user or group does not exist (yet).
    Waiting,
    /// Its spec.expiresAt has passed: nothing is granted any more.
    Expired,
}

/// The observed state of a RoleBinding.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleBindingStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Bound, Conflict, Invalid, Waiting or Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BindingPhase>,
    /// The names of the bindings that keep this one from being Bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts_with: Vec<String>,
    /// Whether its role was exclusive when usher last decided it. Kept while the role is missing
    /// from the tenant's catalogue (removed, or renamed in two steps), so that such a binding
    /// keeps blocking the person's other roles until it is fixed or removed: no moment between
    /// two applies grants what the exclusive role kept away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,
    /// Ready, with a reason saying why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
