use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use usher::crd::SystemUser;

use crate::support::{
    FIELD_MANAGER, apply, client, discovery, documents, eventually, kubectl, namespace, repo,
};

/// What admins do today in the product's admin UI: list people with their phase, roles and
/// expiry, find one by email, and read what a field means.
#[tokio::test]
async fn kubectl_shows_columns_finds_by_email_and_explains_fields() {
    let client = client().await;
    let ns = namespace(&client, "kubectl").await;
    let discovery = discovery(&client).await;
    for file in ["examples/10-tenant.yaml", "examples/30-users.yaml"] {
        for doc in documents(&repo().join(file)) {
            apply(&client, &discovery, &ns, &doc)
                .await
                .expect("example applies");
        }
    }
    // A status as the controller will write it, through the status subresource.
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    users
        .patch_status(
            "alice",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "usher.dev/v1alpha1",
                "kind": "SystemUser",
                "status": {
                    "phase": "Pending",
                    "roles": ["Technician@west"],
                    "invitation": {"expiresAt": "2026-11-24T10:00:00Z", "attempts": 1}
                }
            })),
        )
        .await
        .expect("status subresource accepts a status");

    let (ok, table) = kubectl(&["get", "systemusers", "-n", &ns]);
    assert!(ok, "{table}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for column in ["NAME", "EMAIL", "PHASE", "ROLES", "EXPIRES", "AGE"] {
        assert!(
            header.contains(&column),
            "column {column} missing in:\n{table}"
        );
    }
    let alice = table
        .lines()
        .find(|l| l.starts_with("alice "))
        .expect("alice listed");
    assert!(
        alice.contains("alice@acme.example") && alice.contains("Pending"),
        "{alice}"
    );
    assert!(
        alice.contains("Technician@west") && alice.contains("2026-11-24T10:00:00Z"),
        "{alice}"
    );

    let (ok, found) = kubectl(&[
        "get",
        "systemusers",
        "-n",
        &ns,
        "--field-selector",
        "spec.email=bob@acme.example",
        "-o",
        "name",
    ]);
    assert!(ok, "{found}");
    assert_eq!(found.trim(), "systemuser.usher.dev/bob");

    let (ok, all) = kubectl(&["get", "usher", "-n", &ns, "-o", "name"]);
    assert!(ok, "{all}");
    assert!(
        all.contains("tenant.usher.dev/acme") && all.contains("systemuser.usher.dev/dave"),
        "{all}"
    );

    // kubectl caches discovery; a CRD installed a moment ago may take a few tries to explain.
    let explained = eventually(Duration::from_secs(30), || async {
        let (ok, text) = kubectl(&["explain", "systemuser.spec.email"]);
        ok.then_some(text)
    })
    .await
    .expect("kubectl explain systemuser.spec.email succeeds");
    assert!(
        explained.contains("The person's email address; invitations go here."),
        "doc comment not shown:\n{explained}"
    );
    let (ok, tenant) = kubectl(&["explain", "tenant.spec.invitations.ttl"]);
    assert!(ok && tenant.contains("between 5m and 720h"), "{tenant}");
}
