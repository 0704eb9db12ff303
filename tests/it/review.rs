//! Issue 17, the periodic access review: `usher review` reads the cluster (with usher running)
//! and reports, per tenant, who holds which role where, what it reaches and permits, who is
//! suspended and whose access ends soon — as a table, CSV and JSON.

use std::time::Duration;

use kube::api::Api;
use usher::crd::{SystemUser, UserPhase};

use crate::support::{Usher, apply_yaml, client, namespace, usher_cli, wait_for};

fn usher(args: &[&str]) -> (bool, String) {
    let (code, out, err) = usher_cli(args);
    (code == 0, out + &err)
}

#[tokio::test]
async fn the_review_lists_access_with_its_reach_suspensions_and_what_ends_soon() {
    let client = client().await;
    let ns = namespace(&client, "review").await;
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 10))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec:\n  displayName: Acme\n  roles:\n    - {{name: Manager, permissions: [pricing, reports]}}\n    - {{name: Support, permissions: [tickets]}}\n---\n\
apiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {{name: main}}\nspec: {{tenantRef: {{name: acme}}, displayName: Main}}\n---\n\
apiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {{name: west}}\nspec: {{tenantRef: {{name: acme}}, displayName: West, parentRef: {{name: main}}}}\n---\n\
apiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {{name: fresno}}\nspec: {{tenantRef: {{name: acme}}, displayName: Fresno, parentRef: {{name: west}}}}\n---\n\
apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: dana}}\nspec: {{tenantRef: {{name: acme}}, email: dana@acme.example}}\n---\n\
apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: pat}}\nspec: {{tenantRef: {{name: acme}}, email: pat@acme.example, suspended: true}}\n---\n\
apiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: dana-manager}}\nspec: {{userRef: {{name: dana}}, role: Manager, scope: {{locationGroup: west}}}}\n---\n\
apiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: dana-support}}\nspec: {{userRef: {{name: dana}}, role: Support, expiresAt: \"{soon}\"}}\n"
        ),
    )
    .await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let _usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "dana", "Pending with two roles", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(UserPhase::Pending) && s.roles.len() == 2)
    })
    .await;
    wait_for(&users, "pat", "Suspended", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Suspended)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (ok, json) = usher(&["review", "-n", &ns, "-o", "json"]);
    assert!(ok, "{json}");
    let reviews: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let acme = &reviews[0];
    assert_eq!(acme["tenant"], "acme");
    let access = acme["access"].as_array().unwrap();
    assert_eq!(access.len(), 2, "{json}");
    let manager = access.iter().find(|g| g["role"] == "Manager").unwrap();
    assert_eq!(manager["scope"], "west");
    assert_eq!(
        manager["reaches"],
        serde_json::json!(["main/west", "main/west/fresno"])
    );
    assert_eq!(
        manager["permissions"],
        serde_json::json!(["pricing", "reports"])
    );
    assert_eq!(manager["phase"], "Pending");
    assert_eq!(acme["suspended"][0]["person"], "pat");
    assert_eq!(acme["expiring"][0]["binding"], "dana-support");
    assert_eq!(acme["expiring"][0]["expiresAt"], soon.as_str());

    let (ok, csv) = usher(&["review", "-n", &ns, "-o", "csv"]);
    assert!(ok, "{csv}");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let sections: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[2].to_string())
        .collect();
    assert_eq!(
        sections,
        ["access", "access", "expiring", "suspended"],
        "{csv}"
    );

    let (ok, table) = usher(&["review", "-n", &ns]);
    assert!(ok, "{table}");
    let header = format!("TENANT {ns}/acme (Acme)");
    for expected in [
        header.as_str(),
        "Access (2 roles in effect):",
        "main/west,main/west/fresno",
        "Suspended: 1",
        "Access ending within 30 days: 1",
    ] {
        assert!(table.contains(expected), "{expected:?} missing:\n{table}");
    }
}
