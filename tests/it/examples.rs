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

/// Issue 17: one example per kind of product (examples/products/), each passing `usher validate`
/// and coming up in the cluster with usher running: every group Ready, every binding Bound, every
/// person invited with the roles the example promises.
#[tokio::test]
async fn each_product_example_validates_and_comes_up_whole() {
    use std::time::Duration;

    use usher::crd::{BindingPhase, LocationGroup, RoleBinding, SystemUser, UserPhase};

    use crate::support::{Usher, eventually};

    let client = client().await;
    let discovery = discovery(&client).await;
    let mut products: Vec<_> = std::fs::read_dir(repo().join("examples/products"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    products.sort();
    let names: Vec<String> = products
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "call-tracking",
            "customer-portal",
            "ev-charging",
            "field-service"
        ]
    );
    for product in &products {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
            .arg("validate")
            .arg(product)
            .output()
            .expect("usher validate runs");
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{}: {}",
            product.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        let ns = namespace(&client, "product").await;
        for file in yaml_files(product) {
            for doc in documents(&file) {
                apply(&client, &discovery, &ns, &doc)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
        }
        let mail = usher_testenv::scratch_dir("mail").unwrap();
        let _usher = Usher::start(&ns, &format!("file://{}", mail.display()), &[]).await;
        let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
        let groups: Api<LocationGroup> = Api::namespaced(client.clone(), &ns);
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        let whole = eventually(Duration::from_secs(60), || async {
            let g = groups.list(&ListParams::default()).await.ok()?.items;
            let b = bindings.list(&ListParams::default()).await.ok()?.items;
            let u = users.list(&ListParams::default()).await.ok()?.items;
            let ready = g.iter().all(|g| {
                g.status
                    .as_ref()
                    .and_then(|s| s.conditions.first())
                    .is_some_and(|c| c.status == "True")
            });
            let bound = b
                .iter()
                .all(|b| b.status.as_ref().and_then(|s| s.phase) == Some(BindingPhase::Bound));
            let invited = u.iter().all(|u| {
                let s = u.status.as_ref();
                s.and_then(|s| s.phase) == Some(UserPhase::Pending)
                    && s.is_some_and(|s| !s.roles.is_empty())
            });
            (ready && bound && invited && !u.is_empty()).then_some((g.len(), b.len(), u.len()))
        })
        .await;
        let (g, b, u) =
            whole.unwrap_or_else(|| panic!("{} did not come up whole", product.display()));
        assert!(
            g >= 3 && b >= 3 && u >= 3,
            "{}: {g} groups, {b} bindings, {u} people",
            product.display()
        );
    }
}
