//! What operators watch: Prometheus metrics that parse and say what happened, JSON log lines
//! with the reconcile's kind/namespace/name, and no secret in either.

use kube::api::Api;
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply_yaml, client, first_mail, invitation_in, namespace, parse_metrics as parse,
    wait_for,
};

#[tokio::test]
async fn metrics_parse_and_logs_are_json_without_secrets() {
    let client = client().await;
    let ns = namespace(&client, "observe").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: olga}\nspec: {tenantRef: {name: acme}, email: olga@acme.example}\n").await;
    let usher = Usher::start(&ns, &smtp.url(), &["--log-format", "json"]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "olga", "Pending", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
    })
    .await;
    let raw = first_mail(&smtp).await;
    let token = invitation_in(&raw).1;
    assert_eq!(usher.redeem(&token).await.0, 200);
    wait_for(&users, "olga", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;

    let text = reqwest::get(format!("{}/metrics", usher.probe_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse(&text);
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert!(
        value("usher_reconciles_total{kind=\"SystemUser\",result=\"ok\"}")
            .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        value("usher_reconciles_total{kind=\"Tenant\",result=\"ok\"}").is_some_and(|v| v >= 1.0)
    );
    assert_eq!(value("usher_invitations_issued_total"), Some(1.0));
    assert_eq!(value("usher_invitations_sent_total"), Some(1.0));
    assert_eq!(value("usher_invitations_redeemed_total"), Some(1.0));
    assert_eq!(value("usher_mail_errors_total"), Some(0.0));
    // Every store call is timed by operation; one invitation was recorded and one redeemed.
    assert_eq!(
        value("usher_store_duration_seconds_count{op=\"record_invitation\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("usher_store_duration_seconds_count{op=\"redeem\"}"),
        Some(1.0)
    );
    assert_eq!(value("usher_store_errors_total"), Some(0.0));
    // The one mail was timed, and the API requests behind all this counted by method.
    assert_eq!(value("usher_mail_duration_seconds_count"), Some(1.0));
    assert!(
        value("usher_kube_requests_total{method=\"PATCH\"}").is_some_and(|n| n >= 1.0),
        "API requests by method"
    );
    assert!(
        samples
            .iter()
            .any(|(s, _)| s.starts_with("usher_reconcile_duration_seconds_bucket{")),
        "histogram missing"
    );
    for secret in [token.as_str(), "olga@acme.example"] {
        assert!(!text.contains(secret), "{secret} in metrics");
    }

    let log = usher.log();
    let mut spans = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["span"]["kind"] == "SystemUser"
            && v["span"]["namespace"] == ns.as_str()
            && v["span"]["object"] == "olga"
        {
            spans += 1;
        }
    }
    assert!(
        spans >= 1,
        "no log line inside a SystemUser reconcile span:\n{log}"
    );
    assert!(!log.contains(&token), "the token is in the log");
}
