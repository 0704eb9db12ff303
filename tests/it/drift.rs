//! Suspension and drift repair: the store follows git, also when someone edits it by hand.

use std::path::Path;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{Usher, apply_yaml, client, eventually, invitation_in, namespace, wait_for};

/// The rows of a statement, as text, e.g. `[[1]]`.
fn sql(db: &Path, statement: &str) -> String {
    serde_json::to_string(&crate::support::sql(db, statement)).expect("rows")
}

fn phase(u: &SystemUser) -> Option<UserPhase> {
    u.status.as_ref().and_then(|s| s.phase)
}

async fn suspend(users: &Api<SystemUser>, name: &str, on: bool) {
    users
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": on}})),
        )
        .await
        .expect("patch suspended");
}

#[tokio::test]
async fn suspension_and_hand_edits_of_the_store_are_set_right() {
    let client = client().await;
    let ns = namespace(&client, "drift").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: alice}\nspec: {tenantRef: {name: acme}, email: alice@acme.example, firstName: Alice}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: bob}\nspec: {tenantRef: {name: acme}, email: bob@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: alice-admin}\nspec: {userRef: {name: alice}, role: Administrator}\n",
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &["--resync", "1s"]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    for name in ["alice", "bob"] {
        wait_for(&users, name, "Pending", |u| {
            phase(u) == Some(UserPhase::Pending)
        })
        .await;
    }
    let mails = eventually(Duration::from_secs(30), || async {
        let m = smtp.messages();
        (m.len() == 2).then_some(m)
    })
    .await
    .expect("two invitations");
    let alice_mail = mails
        .iter()
        .find(|m| crate::support::recipient(m) == "alice@acme.example")
        .unwrap();
    assert_eq!(usher.redeem(&invitation_in(alice_mail).1).await.0, 200);
    wait_for(&users, "alice", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;

    // Suspension: deactivated and revoked; lifting it restores Alice (accepted) and re-invites
    // Bob (never accepted).
    suspend(&users, "alice", true).await;
    suspend(&users, "bob", true).await;
    wait_for(&users, "alice", "Suspended", |u| {
        phase(u) == Some(UserPhase::Suspended)
    })
    .await;
    wait_for(&users, "bob", "Suspended", |u| {
        phase(u) == Some(UserPhase::Suspended)
    })
    .await;
    let active = |email: &str| {
        sql(
            &usher.db,
            &format!("SELECT active FROM users WHERE email = '{email}'"),
        )
    };
    assert_eq!(active("alice@acme.example"), "[[0]]");
    assert_eq!(
        sql(
            &usher.db,
            "SELECT COUNT(*) FROM invitations i JOIN users u ON u.id = i.user_id WHERE u.email = 'bob@acme.example' AND i.revoked_us IS NULL AND i.used_us IS NULL"
        ),
        "[[0]]",
        "Bob's open token is revoked"
    );
    suspend(&users, "alice", false).await;
    suspend(&users, "bob", false).await;
    wait_for(&users, "alice", "Active again", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    wait_for(&users, "bob", "re-invited", |u| {
        phase(u) == Some(UserPhase::Pending)
            && u.status
                .as_ref()
                .and_then(|s| s.invitation.as_ref())
                .is_some_and(|i| i.attempts == 2)
    })
    .await;
    assert_eq!(
        smtp.messages().len(),
        3,
        "Bob got a new invitation, Alice none"
    );

    // Behind usher's back: Alice deactivated, her name changed, her role removed; Bob activated.
    let before = usher.metric("usher_drift_corrected_total").await;
    sql(
        &usher.db,
        "UPDATE users SET active = 0, profile = '{\"firstName\": \"Mallory\"}' WHERE email = 'alice@acme.example'",
    );
    sql(&usher.db, "DELETE FROM role_assignments");
    sql(
        &usher.db,
        "UPDATE users SET active = 1 WHERE email = 'bob@acme.example'",
    );
    let repaired = eventually(Duration::from_secs(15), || async {
        let a = active("alice@acme.example");
        let b = active("bob@acme.example");
        let roles = sql(&usher.db, "SELECT COUNT(*) FROM role_assignments");
        let name = sql(
            &usher.db,
            "SELECT profile FROM users WHERE email = 'alice@acme.example'",
        );
        (a == "[[1]]" && b == "[[0]]" && roles == "[[1]]" && name.contains("Alice")).then_some(())
    })
    .await;
    assert!(repaired.is_some(), "the resync did not repair the store");
    assert!(usher.metric("usher_drift_corrected_total").await >= before + 2.0);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let drift_events = eventually(Duration::from_secs(10), || async {
        let n = events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("DriftCorrected"))
            .count();
        (n >= 2).then_some(n)
    })
    .await;
    assert!(
        drift_events.is_some(),
        "DriftCorrected Events for both people"
    );
}
