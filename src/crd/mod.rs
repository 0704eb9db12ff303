//! The four kinds of `usher.dev/v1alpha1`: pure data with doc comments.
//!
//! The doc comments become the CRD descriptions that `kubectl explain` shows, and the
//! `x_kube(validation = …)` rules become `x-kubernetes-validations`, so the API server rejects at
//! admission whatever one object can get wrong on its own. What needs more than one object
//! (references, cycles, exclusivity, duplicate emails) is decided later and shown as a condition.

// clippy reads the repeated `printcolumn(type_ = …)` arguments of the derive as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

mod location_group;
mod role_binding;
mod system_user;
mod tenant;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
pub use location_group::{Location, LocationGroup, LocationGroupSpec, LocationGroupStatus};
pub use role_binding::{
    BindingPhase, BindingScope, RoleBinding, RoleBindingSpec, RoleBindingStatus,
};
pub use system_user::{
    Address, InvitationStatus, SystemUser, SystemUserSpec, SystemUserStatus, UserPhase,
};
pub use tenant::{
    Contact, InvitationPolicy, OffboardingPolicy, OffboardingSpec, Role, SecretKeyRef, Tenant,
    TenantSpec, TenantStatus, TenantStore, UserCounts, default_roles,
};

/// The API group of every usher kind.
pub const GROUP: &str = "usher.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The category that makes `kubectl get usher` list all four kinds.
pub const CATEGORY: &str = "usher";
/// The condition type every kind carries, following the kstatus conventions.
pub const READY: &str = "Ready";

/// What usher says of an object the API server admitted but it cannot read (its Warning Event
/// `Unreadable`, and `usher validate`): `error` names the field at fault.
pub fn unreadable(kind: &str, error: &str) -> String {
    format!("usher cannot read this {kind} and skips it until it is fixed: {error}")
}

/// A reference to another object of this namespace, by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// The name of the referenced object, in the same namespace.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    #[schemars(length(max = 253))]
    pub name: String,
}

impl ObjectRef {
    /// A reference to `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// The CustomResourceDefinitions of all four kinds, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Tenant::crd(),
        LocationGroup::crd(),
        SystemUser::crd(),
        RoleBinding::crd(),
    ]
}

/// The file name under `crds/` for a CRD, kubebuilder style: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// The YAML of one CRD exactly as it is checked in under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(crd)
}

/// The CEL rule and message for an email address, shared by every kind that holds one.
///
/// A dot-atom local part (no leading, trailing or doubled dot, none of `<>()[]\,;:"`, no
/// space) and a domain of at least two labels of letters, marks and digits (any script, for
/// international addresses) with inner hyphens, and no trailing dot. Everything it admits that
/// the mailer still cannot address is refused later, as `EmailUndeliverable`
/// ([`crate::plan::system_user::Blocked`]); a test checks that the examples of both agree.
pub(crate) const EMAIL_RULE: &str = r#"self.matches('^[^@\\s.<>()\\[\\]\\\\,;:"]+(\\.[^@\\s.<>()\\[\\]\\\\,;:"]+)*@([\\p{L}\\p{M}\\p{N}]([\\p{L}\\p{M}\\p{N}-]*[\\p{L}\\p{M}\\p{N}])?\\.)+[\\p{L}\\p{M}\\p{N}]([\\p{L}\\p{M}\\p{N}-]*[\\p{L}\\p{M}\\p{N}])?$')"#;
pub(crate) const EMAIL_MESSAGE: &str = "must be an email address such as alice@example.com: no trailing dot, no two dots in a row, no spaces, quotes or brackets";

/// A From header (`spec.invitations.from`): an address as [`EMAIL_RULE`] admits it, alone or in
/// angle brackets after a one-line display name ("Acme Portal <no-reply@acme.example>"). The
/// name is a quoted string (`"Acme, Inc."`, RFC 5322 §3.2.4) or words without the specials
/// `()<>[]:;@\,"` that do not begin with a dot (what the mailer, lettre, parses). The
/// same address rule as for people: a From the mailer cannot parse would leave every person of
/// the tenant unsent, retried for ever. A test checks that the address part is EMAIL_RULE's.
pub(crate) const FROM_RULE: &str = r#"self.matches('^((?:"(?:[^"\\\\\\r\\n]|\\\\[ -~\\t])*"|[ \\t]*[^ \\t\\r\\n<>()\\[\\]:;@\\\\,".][^\\r\\n<>()\\[\\]:;@\\\\,"]*)?[ \\t]*<[^@\\s.<>()\\[\\]\\\\,;:"]+(\\.[^@\\s.<>()\\[\\]\\\\,;:"]+)*@([\\p{L}\\p{M}\\p{N}]([\\p{L}\\p{M}\\p{N}-]*[\\p{L}\\p{M}\\p{N}])?\\.)+[\\p{L}\\p{M}\\p{N}]([\\p{L}\\p{M}\\p{N}-]*[\\p{L}\\p{M}\\p{N}])?>|[^@\\s.<>()\\[\\]\\\\,;:"]+(\\.[^@\\s.<>()\\[\\]\\\\,;:"]+)*@([\\p{L}\\p{M}\\p{N}]([\\p{L}\\p{M}\\p{N}-]*[\\p{L}\\p{M}\\p{N}])?\\.)+[\\p{L}\\p{M}\\p{N}]([\\p{L}\\p{M}\\p{N}-]*[\\p{L}\\p{M}\\p{N}])?)$')"#;
pub(crate) const FROM_MESSAGE: &str = "must be an address such as no-reply@acme.example or \"Acme Portal <no-reply@acme.example>\": one line, no trailing dot, no two dots in a row, no stray brackets; put a name with any of ()<>[]:;@\\,\" in double quotes";

/// Names used as keys elsewhere (roles, location ids): letters, digits, `.`, `_`, `-`.
pub(crate) const KEY_RULE: &str = r"self.matches('^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$')";
pub(crate) const KEY_MESSAGE: &str =
    "must start and end with a letter or digit and contain only letters, digits, '.', '_' or '-'";

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize;

    use super::*;

    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for crd in all() {
            let path = dir.join(file_name(&crd));
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
            assert!(
                on_disk == to_yaml(&crd).unwrap(),
                "{} differs from what the types generate; run `make crds` and commit the result",
                path.display()
            );
        }
    }

    #[test]
    fn crd_files_are_named_kubebuilder_style() {
        let names: Vec<String> = all().iter().map(file_name).collect();
        assert_eq!(
            names,
            [
                "usher.dev_tenants.yaml",
                "usher.dev_locationgroups.yaml",
                "usher.dev_systemusers.yaml",
                "usher.dev_rolebindings.yaml"
            ]
        );
    }

    /// The examples are what newcomers copy: each document must decode into its Rust type
    /// without losing a field (a typo in an example would otherwise only show at admission).
    #[test]
    fn every_example_decodes_into_its_type_without_unknown_fields() {
        fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut paths = Vec::new();
        // examples/ and examples/products/<product>/ alike.
        files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
            &mut paths,
        );
        let mut decoded = 0;
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = serde_json::Value::deserialize(doc).unwrap();
                let roundtrip = match value["kind"].as_str() {
                    Some("Tenant") => roundtrip::<Tenant>(&value),
                    Some("LocationGroup") => roundtrip::<LocationGroup>(&value),
                    Some("SystemUser") => roundtrip::<SystemUser>(&value),
                    Some("RoleBinding") => roundtrip::<RoleBinding>(&value),
                    _ => continue,
                };
                assert_eq!(roundtrip["spec"], value["spec"], "{}", path.display());
                decoded += 1;
            }
        }
        assert!(decoded >= 13, "only {decoded} usher objects in examples/");
    }

    fn roundtrip<K: serde::de::DeserializeOwned + Serialize>(
        value: &serde_json::Value,
    ) -> serde_json::Value {
        let typed: K = serde_json::from_value(value.clone()).expect("decodes");
        serde_json::to_value(typed).expect("encodes")
    }

    #[test]
    fn default_catalogue_has_technician_as_the_only_exclusive_role() {
        let roles = default_roles();
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["Administrator", "Manager", "CustomerService", "Technician"]
        );
        let exclusive: Vec<&str> = roles
            .iter()
            .filter(|r| r.exclusive)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(exclusive, ["Technician"]);
    }

    #[test]
    fn offboarding_defaults_to_deactivate_fifty_per_hour() {
        let spec: OffboardingSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(spec, OffboardingSpec::default());
        assert_eq!(spec.policy, OffboardingPolicy::Deactivate);
        assert_eq!(spec.max_per_hour, 50);
    }

    #[test]
    fn every_schema_property_has_a_description_for_kubectl_explain() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, sub) in props {
                    let here = format!("{path}.{name}");
                    if sub.get("description").is_none()
                        && !matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        missing.push(here.clone());
                    }
                    walk(&here, sub, missing);
                }
            }
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = Vec::new();
        for crd in all() {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            walk(
                &crd.spec.names.kind,
                &schema["openAPIV3Schema"],
                &mut missing,
            );
        }
        assert!(
            missing.is_empty(),
            "fields without a doc comment: {missing:?}"
        );
    }
}
