use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{KEY_MESSAGE, KEY_RULE, ObjectRef};

/// A group of a tenant's locations; groups form a tree through parentRef.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "usher.dev",
    version = "v1alpha1",
    kind = "LocationGroup",
    namespaced,
    status = "LocationGroupStatus",
    shortname = "lg",
    category = "usher",
    doc = "A group of a tenant's locations (depots, sites, charging parks). Groups form a tree through parentRef; a role granted on a group applies to every group below it.",
    selectable = ".spec.tenantRef.name",
    validation = Rule::new("!has(self.spec.parentRef) || self.spec.parentRef.name != self.metadata.name").message("spec.parentRef must not name the group itself").field_path(".spec.parentRef"),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name"),
    printcolumn(name = "Path", type_ = "string", json_path = ".status.path"),
    printcolumn(name = "Locations", type_ = "integer", json_path = ".status.locations", priority = 1),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct LocationGroupSpec {
    /// The Tenant this group belongs to. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenantRef cannot be changed; create a new group in the other tenant"))]
    pub tenant_ref: ObjectRef,

    /// The name people see, e.g. "West Region".
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("must not be empty or blank"))]
    #[schemars(length(max = 200))]
    pub display_name: String,

    /// The group this one sits below, in the same tenant. Absent: top level of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<ObjectRef>,

    /// The locations of this group. Location ids are unique within the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    #[schemars(length(max = 5000))]
    pub locations: Vec<Location>,
}

/// One location (a depot, a site, a charging park).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// The location's id, unique within the tenant, e.g. "fresno-01". SystemUsers name it in
    /// spec.locations.
    #[x_kube(validation = Rule::new(KEY_RULE).message(KEY_MESSAGE))]
    #[schemars(length(min = 1, max = 63))]
    pub id: String,
    /// The location's name people see, e.g. "Fresno Depot".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub name: Option<String>,
}

/// The observed state of a LocationGroup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocationGroupStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The group names from the top level down to this group, joined by "/", e.g. "main/west".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How deep the group sits; 1 at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i32>,
    /// How many locations the group holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<i32>,
    /// Ready; False with reason TenantNotFound, ParentNotFound or Cycle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
