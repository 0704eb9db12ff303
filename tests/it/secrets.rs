//! Secrets stay secret: a plaintext token is in the mail and nowhere else usher writes — not in
//! its log (at trace level), Events, statuses, Secrets, metrics or store rows — and used and
//! replaced tokens are refused.

use std::time::Duration;

use base64::Engine;
use kube::api::{Api, Patch, PatchParams};
use usher::crd::{SystemUser, UserPhase};
use usher::token::TokenHash;
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply_yaml, client, eventually, invitation_in, kubectl, namespace, recipient, sql,
    wait_for,
};

const PEOPLE: &str = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme Charging\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: alice}\nspec:\n  tenantRef: {name: acme}\n  email: alice@acme.example\n  firstName: Alice\n  lastName: Ng\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: bob}\nspec:\n  tenantRef: {name: acme}\n  email: bob@acme.example\n  firstName: Bob\n  lastName: Ng\n";

/// The newest token mailed to `to`, waiting for the `n`-th mail to them.
async fn token_for(smtp: &Smtp, to: &str, n: usize) -> String {
    eventually(Duration::from_secs(30), || async {
        let mine: Vec<Vec<u8>> = smtp
            .messages()
            .into_iter()
            .filter(|m| recipient(m) == to)
            .collect();
        (mine.len() >= n).then(|| invitation_in(&mine[n - 1]).1)
    })
    .await
    .unwrap_or_else(|| panic!("no mail number {n} to {to}"))
}

#[tokio::test]
async fn a_plaintext_token_is_in_the_mail_and_nowhere_else() {
    let client = client().await;
    let ns = namespace(&client, "secrets").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, PEOPLE).await;
    // Everything usher can log, logged.
    let usher = Usher::start_with_env(&ns, &smtp.url(), &[], &[("RUST_LOG", "trace")]).await;

    // Alice views the page, accepts through the form, and tries again.
    let alice = token_for(&smtp, "alice@acme.example", 1).await;
    let page = reqwest::get(format!("{}/accept?token={alice}", usher.url))
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let accepted = reqwest::Client::new()
        .post(format!("{}/accept", usher.url))
        .form(&[("token", alice.as_str())])
        .send()
        .await
        .expect("form");
    assert_eq!(accepted.status(), 200);
    assert_eq!(usher.redeem(&alice).await.0, 409, "a used token is refused");

    // Bob's first token is replaced by a resend and refused from then on; the second is open.
    let bob_first = token_for(&smtp, "bob@acme.example", 1).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    users
        .patch(
            "bob",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"usher.dev/resend-invitation": "1"}}
            })),
        )
        .await
        .expect("resend");
    let bob_second = token_for(&smtp, "bob@acme.example", 2).await;
    assert_ne!(bob_first, bob_second);
    assert_eq!(usher.redeem(&bob_first).await.0, 410, "a replaced token");
    wait_for(&users, "alice", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;
    // A guess, refused, and its answer logged at trace level.
    assert_eq!(usher.redeem(&"A".repeat(43)).await.0, 404);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Everything usher wrote.
    let mut places: Vec<(String, String)> = vec![("log".into(), usher.log())];
    for what in ["events", "systemusers", "tenants", "secrets", "leases"] {
        let (ok, text) = kubectl(&["get", what, "-n", &ns, "-o", "json"]);
        assert!(ok, "kubectl get {what}: {text}");
        places.push((what.into(), text));
    }
    let metrics = reqwest::get(format!("{}/metrics", usher.probe_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    places.push(("metrics".into(), metrics));
    // The store's files byte for byte: every row, index, free page and the write-ahead log.
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", usher.db.display());
        if let Ok(bytes) = std::fs::read(&path) {
            places.push((
                format!("store file {path}"),
                String::from_utf8_lossy(&bytes).into(),
            ));
        }
    }
    assert!(
        !sql(&usher.db, "SELECT token_hash FROM invitations").is_empty(),
        "the store holds invitations"
    );
    let everything: String = places.iter().map(|(_, text)| text.as_str()).collect();
    assert!(
        usher.log().lines().count() > 100,
        "the log holds little; is trace on?"
    );

    for (who, token) in [
        ("alice (used)", &alice),
        ("bob (replaced)", &bob_first),
        ("bob (open)", &bob_second),
    ] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(token);
        for (place, text) in &places {
            assert!(
                !text.contains(token.as_str()),
                "{who}'s token appears in the {place}"
            );
            assert!(
                !text.contains(&encoded),
                "{who}'s token appears base64-encoded in the {place}"
            );
        }
        // The search can find things: what usher keeps instead is there.
        let hash = TokenHash::of(token);
        assert!(
            everything.contains(hash.as_str()),
            "{who}'s token hash is not in the store"
        );
    }
    assert!(
        smtp.messages()
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains(bob_second.as_str())),
        "the mail holds the token"
    );
}

/// A token key Secret that holds no usable key stops `usher run` with an error that says so,
/// rather than leave it serving with nobody reconciling (and `/healthz` saying all is well).
#[tokio::test]
async fn a_broken_token_key_stops_usher_with_a_reason() {
    let client = client().await;
    let ns = namespace(&client, "broken-key").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let broken: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "usher-token-key"},
        "data": {"key": base64::engine::general_purpose::STANDARD.encode([7u8; 16])},
    }))
    .unwrap();
    secrets
        .create(&Default::default(), &broken)
        .await
        .expect("the broken key Secret");
    let smtp = Smtp::start().expect("SMTP sink");
    let usher = Usher::start_unready(&ns, &smtp.url(), &["--token-key-namespace", &ns], &[]).await;
    let pid = usher.pid().expect("usher started") as i32;
    eventually(Duration::from_secs(60), || async {
        (!usher_testenv::Supervised::pid_is_alive(pid)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("usher kept running with a broken key:\n{}", usher.log()));
    let log = usher.log();
    assert!(log.contains("token key"), "{log}");
}
