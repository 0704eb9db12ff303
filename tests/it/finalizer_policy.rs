//! deploy/finalizer-policy.yaml on the real API server: usher's finalizer is on every Tenant,
//! LocationGroup and SystemUser from its create, before usher sees it, so usher writes none; an
//! apply or patch that drops it from a live object gets it back; an object being deleted can
//! still be released by hand. Where no policy is served, usher adds the finalizer itself.

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use usher::controller::FINALIZER;
use usher::crd::{LocationGroup, RoleBinding, SystemUser, Tenant, UserPhase};
use usher_testenv::Smtp;

use crate::support::{
    RITA, Usher, apply_yaml, client, client_of, eventually, install_crds, namespace, wait_for,
};
use std::time::Duration;

/// The field managers of this file's own requests.
const TESTS: [&str; 3] = [crate::support::FIELD_MANAGER, "flux", "by-hand"];

fn held<K: Resource>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

/// The field managers whose entries in managedFields own `metadata.finalizers`.
fn finalizer_owners<K: Resource>(obj: &K) -> Vec<String> {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:metadata/f:finalizers").is_some())
        })
        .map(|m| m.manager.clone().unwrap_or_default())
        .collect()
}

/// Whether `K` `name` in `ns` holds usher's finalizer.
async fn holds<K>(client: &Client, ns: &str, name: &str) -> bool
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    held(
        &Api::<K>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .unwrap(),
    )
}

/// Rita's four objects as applied: the finalizer on the three kinds that hold one, none on the
/// RoleBinding.
async fn finalizers_as_created(client: &Client, ns: &str) -> [bool; 4] {
    [
        holds::<Tenant>(client, ns, "acme").await,
        holds::<LocationGroup>(client, ns, "main").await,
        holds::<SystemUser>(client, ns, "rita").await,
        holds::<RoleBinding>(client, ns, "rita-tech").await,
    ]
}

#[tokio::test]
async fn the_policy_adds_the_finalizer_at_create_and_keeps_it_on_live_objects() {
    let client = client().await;
    let ns = namespace(&client, "finalizer-policy").await;
    apply_yaml(&client, &ns, RITA).await;
    assert_eq!(
        finalizers_as_created(&client, &ns).await,
        [true, true, true, false],
        "Tenant, LocationGroup and SystemUser are created holding usher's finalizer, with no usher running"
    );
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    // Another controller's finalizer stays, and usher's is added after it.
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: sam, finalizers: [example.com/keep]}\nspec: {tenantRef: {name: acme}, email: sam@acme.example}\n").await;
    assert_eq!(
        users.get("sam").await.unwrap().finalizers(),
        ["example.com/keep", FINALIZER]
    );

    // A GitOps tool's apply without the finalizer, with a changed spec: kept.
    let flux = PatchParams::apply("flux").force();
    let reapplied = users
        .patch(
            "rita",
            &flux,
            &Patch::Apply(json!({
                "apiVersion": "usher.dev/v1alpha1", "kind": "SystemUser",
                "metadata": {"name": "rita"},
                "spec": {"tenantRef": {"name": "acme"}, "email": "rita@acme.example", "firstName": "Rita"},
            })),
        )
        .await
        .expect("apply");
    assert!(held(&reapplied), "an apply without it keeps the finalizer");
    // The finalizer taken off a live object by hand: put back in the same request.
    let unheld = json!({"metadata": {"finalizers": null}});
    let by_hand = PatchParams {
        field_manager: Some("by-hand".into()),
        ..PatchParams::default()
    };
    let patched = users
        .patch("rita", &by_hand, &Patch::Merge(&unheld))
        .await
        .expect("patch");
    assert_eq!(
        patched.finalizers(),
        [FINALIZER],
        "dropped from a live object, it is back, once"
    );

    // usher adds no finalizer of its own: no entry of its managers owns the list.
    let smtp = Smtp::start().expect("SMTP sink");
    let mut usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let pending = wait_for(&users, "rita", "Pending", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
    })
    .await;
    let owners = finalizer_owners(&pending);
    assert!(
        owners.iter().all(|m| TESTS.contains(&m.as_str())),
        "only the test's own requests touched the finalizers, never usher's: {owners:?}"
    );
    assert_eq!(pending.finalizers(), [FINALIZER]);

    // With usher down, a deleted person waits; released by hand, they go (the policy leaves an
    // object being deleted alone).
    usher.kill();
    users
        .delete("rita", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        users.get_opt("rita").await.unwrap().is_some(),
        "held by the finalizer while usher is down"
    );
    users
        .patch("rita", &PatchParams::default(), &Patch::Merge(&unheld))
        .await
        .expect("release");
    eventually(Duration::from_secs(10), || async {
        users.get_opt("rita").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("released by hand, the object goes");
}

/// Where the policy is not served or not installed (a control plane of this test's own, with
/// only the CRDs), usher adds the finalizer itself and offboarding works as before.
#[tokio::test]
async fn without_the_policy_usher_adds_the_finalizer_itself() {
    let dir = usher_testenv::scratch_dir("no-finalizer-policy").expect("scratch dir");
    let cp = usher_testenv::ControlPlane::start(&dir).expect("control plane");
    let client = client_of(&cp.kubeconfig).await;
    install_crds(client.clone()).await;
    let ns = namespace(&client, "no-finalizer-policy").await;
    apply_yaml(&client, &ns, RITA).await;
    assert_eq!(
        finalizers_as_created(&client, &ns).await,
        [false, false, false, false],
        "no policy: created without the finalizer"
    );
    let smtp = Smtp::start().expect("SMTP sink");
    let kubeconfig = cp.kubeconfig.display().to_string();
    let _usher = Usher::start_with_env(&ns, &smtp.url(), &[], &[("KUBECONFIG", &kubeconfig)]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let pending = wait_for(&users, "rita", "Pending, holding the finalizer", |u| {
        held(u) && u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
    })
    .await;
    // What the other test's check would see had usher written the finalizer: usher's manager.
    let owners = finalizer_owners(&pending);
    assert!(
        owners.iter().any(|m| !TESTS.contains(&m.as_str())),
        "usher's own patch owns the finalizer: {owners:?}"
    );
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    wait_for(&tenants, "acme", "holding the finalizer", held).await;
    users
        .delete("rita", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(Duration::from_secs(30), || async {
        users.get_opt("rita").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("offboarded and gone");
}
