use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

use crate::support::{client, established};

#[tokio::test]
async fn all_four_crds_are_established_with_status_and_category() {
    let client = client().await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for kind in ["tenants", "locationgroups", "systemusers", "rolebindings"] {
        let crd = api
            .get(&format!("{kind}.usher.dev"))
            .await
            .expect("CRD exists");
        assert!(established(&crd), "{kind} not Established");
        assert_eq!(crd.spec.scope, "Namespaced", "{kind}");
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        assert!(
            categories.contains(&"usher".to_string()),
            "{kind} lacks category usher"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{kind} lacks a short name"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} lacks the status subresource"
        );
    }
}

#[tokio::test]
async fn system_users_are_selectable_by_email_and_tenant() {
    let client = client().await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let crd = api.get("systemusers.usher.dev").await.expect("CRD exists");
    let paths: Vec<String> = crd.spec.versions[0]
        .selectable_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.json_path)
        .collect();
    assert!(paths.contains(&".spec.email".to_string()), "{paths:?}");
    assert!(
        paths.contains(&".spec.tenantRef.name".to_string()),
        "{paths:?}"
    );
}
