//! The control plane behaves like a real cluster: the controller manager collects garbage and
//! finishes namespace deletion, which usher relies on for invitation Secrets and tenant cleanup.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::support::{client, eventually, namespace};

#[tokio::test]
async fn owner_reference_cascade_deletes_dependents() {
    let client = client().await;
    let ns = namespace(&client, "gc").await;
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap();
    let owner = owners
        .create(&PostParams::default(), &owner)
        .await
        .expect("owner created");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let dependent: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner.metadata.uid.clone().expect("uid"),
            }]
        },
        "stringData": {"k": "v"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &dependent)
        .await
        .expect("dependent created");
    owners
        .delete("owner", &DeleteParams::background())
        .await
        .expect("owner deleted");
    let gone = eventually(Duration::from_secs(60), || async {
        secrets
            .get_opt("dependent")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the garbage collector did not delete the dependent Secret"
    );
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let client = client().await;
    let ns = namespace(&client, "nsdel").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "content"}})).unwrap();
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("created");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete accepted");
    let gone = eventually(Duration::from_secs(90), || async {
        namespaces.get_opt(&ns).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "namespace {ns} stuck in Terminating: the namespace controller is not running"
    );
}
