//! One object that does not decode (stored under an older schema, or written behind admission's
//! back) must not stop usher for everyone else: it is reported and skipped until it is fixed.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{Usher, apply_yaml, client, eventually, kubectl, namespace, wait_for};

/// Store `object` under `key` in etcd directly, as an older version of usher's schema (or a
/// restore from backup) would have left it; admission never sees it.
async fn put_in_etcd(key: &str, object: &serde_json::Value) {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let body = serde_json::json!({
        "key": b64(key.as_bytes()),
        "value": b64(object.to_string().as_bytes()),
    });
    let r = reqwest::Client::new()
        .post(format!("{}/v3/kv/put", usher_testenv::shared().etcd))
        .json(&body)
        .send()
        .await
        .expect("etcd answers");
    assert!(r.status().is_success(), "etcd put: {}", r.status());
}

fn pending(u: &SystemUser) -> bool {
    u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
}

#[tokio::test]
async fn one_unreadable_user_is_reported_and_the_others_proceed() {
    let client = client().await;
    let ns = namespace(&client, "unreadable").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: olga}\nspec: {tenantRef: {name: acme}, email: olga@acme.example}\n").await;
    // An email that is a number: the schema refuses it today, usher's types cannot read it.
    put_in_etcd(
        &format!("/registry/usher.dev/systemusers/{ns}/broken"),
        &serde_json::json!({
            "apiVersion": "usher.dev/v1alpha1",
            "kind": "SystemUser",
            "metadata": {
                "name": "broken",
                "namespace": ns,
                "uid": "6f1f4f4e-0b4e-4c2a-9d51-2f0e8f0d7a11",
                "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"tenantRef": {"name": "acme"}, "email": 42},
        }),
    )
    .await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let seen = eventually(Duration::from_secs(20), || async {
        let (ok, out) = kubectl(&["get", "systemuser", "broken", "-n", &ns, "-o", "json"]);
        (ok && out.contains("\"email\": 42")).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the API server serves the stored object");

    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    wait_for(&users, "olga", "Pending", pending).await;
    // The watch goes on after the bad object: a person added now is invited too.
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: nina}\nspec: {tenantRef: {name: acme}, email: nina@acme.example}\n").await;
    wait_for(&users, "nina", "Pending", pending).await;

    // Said where an admin looks: an Event on the object, a metric, a log line.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let event = eventually(Duration::from_secs(20), || async {
        events
            .list(&ListParams::default().fields("involvedObject.name=broken"))
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Unreadable"))
    })
    .await
    .expect("a Warning Event on the unreadable object");
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.message.unwrap_or_default();
    assert!(note.contains("email"), "the Event names the field: {note}");
    assert_eq!(usher.metric("usher_invalid_objects_total").await, 1.0);
    assert!(usher.log().contains("does not match usher's schema"));
    // Nobody was invited twice, and the unreadable person not at all.
    assert_eq!(smtp.messages().len(), 2);

    // Fixed in git (here: patched), it is read and invited like anyone else.
    let (ok, out) = kubectl(&[
        "patch",
        "systemuser",
        "broken",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"email":"bruno@acme.example"}}"#,
    ]);
    assert!(ok, "{out}");
    wait_for(&users, "broken", "Pending", pending).await;
    let mails = eventually(Duration::from_secs(20), || async {
        let n = smtp.messages().len();
        (n == 3).then_some(n)
    })
    .await;
    assert_eq!(mails, Some(3), "the fixed person is invited once");
}
