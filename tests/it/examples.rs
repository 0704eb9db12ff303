use kube::api::{Api, DynamicObject, ListParams};
use kube::core::GroupVersionKind;

use crate::support::{apply, client, discovery, documents, namespace, repo, yaml_files};

/// Every manifest of examples/ applies cleanly with strict field validation, and what was
/// applied is what the cluster holds.
#[tokio::test]
async fn examples_apply_cleanly() {
    let client = client().await;
    let ns = namespace(&client, "examples").await;
    let discovery = discovery(&client).await;
    let mut applied = 0;
    for file in yaml_files(&repo().join("examples")) {
        for doc in documents(&file) {
            if doc["kind"] == "Namespace" {
                continue; // the test's own namespace stands in for it
            }
            apply(&client, &discovery, &ns, &doc)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {} {}: {e}",
                        file.display(),
                        doc["kind"],
                        doc["metadata"]["name"]
                    )
                });
            applied += 1;
        }
    }
    assert!(applied >= 10, "examples/ holds only {applied} objects");

    // The shape the examples promise: a tenant, a two-level group tree, four users, and
    // role bindings including a Technician.
    let count = |kind: &'static str| {
        let client = client.clone();
        let ns = ns.clone();
        let discovery = &discovery;
        async move {
            let gvk = GroupVersionKind::gvk("usher.dev", "v1alpha1", kind);
            let (ar, _) = discovery.resolve_gvk(&gvk).expect("served");
            let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar);
            api.list(&ListParams::default()).await.expect("list").items
        }
    };
    assert_eq!(count("Tenant").await.len(), 1);
    let groups = count("LocationGroup").await;
    assert!(
        groups
            .iter()
            .any(|g| g.data["spec"].get("parentRef").is_none()),
        "a top-level group"
    );
    assert!(
        groups
            .iter()
            .any(|g| g.data["spec"].get("parentRef").is_some()),
        "a sub-group"
    );
    assert_eq!(count("SystemUser").await.len(), 4);
    let bindings = count("RoleBinding").await;
    assert!(
        bindings
            .iter()
            .any(|b| b.data["spec"]["role"] == "Technician")
    );
}
