//! Leader election: of two `usher run` processes only the Lease holder reconciles (and mails);
//! killed, the other takes over within the lease duration; stopped with SIGTERM, it exits 0 and
//! hands over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{Usher, apply_yaml, client, eventually, namespace, recipient, wait_for};

fn user(name: &str) -> String {
    format!(
        "---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {name}}}\nspec: {{tenantRef: {{name: acme}}, email: {name}@acme.example}}\n"
    )
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "leader").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, &("apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n".to_string() + &user("ann") + &user("ben"))).await;
    let args = [
        "--leader-election",
        "--lease-namespace",
        &ns,
        "--lease-duration",
        "4s",
    ];
    let mut a = Usher::start(&ns, &smtp.url(), &args).await;
    let mut b = Usher::start(&ns, &smtp.url(), &args).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    for name in ["ann", "ben"] {
        wait_for(&users, name, "Pending", |u| {
            u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each process has its own store: had both reconciled, each person would have two mails.
    assert_eq!(smtp.messages().len(), 2, "only the leader sends");

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease = format!("usher-{ns}");
    let first = holder(&leases, &lease).await.expect("a holder");
    let (leader, standby) = if first.ends_with(&format!("-{}", a.pid().unwrap())) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        first.ends_with(&format!("-{}", leader.pid().unwrap())),
        "{first}"
    );

    // The leader crashes: the standby takes over once the lease runs out.
    let killed = Instant::now();
    leader.kill();
    apply_yaml(&client, &ns, &user("cem")).await;
    wait_for(&users, "cem", "Pending", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
    })
    .await;
    println!(
        "standby took over {:?} after the leader was killed (lease 4s)",
        killed.elapsed()
    );
    let to: Vec<String> = smtp.messages().iter().map(|m| recipient(m)).collect();
    assert!(to.contains(&"cem@acme.example".to_string()), "{to:?}");
    let second = holder(&leases, &lease).await.expect("a new holder");
    assert!(
        second.ends_with(&format!("-{}", standby.pid().unwrap())),
        "{second}"
    );

    // A clean stop releases the Lease and exits 0.
    assert_eq!(standby.stop(), Some(0), "SIGTERM exits 0");
    let released = eventually(Duration::from_secs(5), || async {
        holder(&leases, &lease).await.is_none().then_some(())
    })
    .await;
    assert!(released.is_some(), "the Lease was not released on SIGTERM");
}

/// Two replicas behind one Service share a PostgreSQL store: a person who redeems through the
/// standby (which runs no controllers) turns Active at once, not at the leader's resync, because
/// the standby announces the redemption on the SystemUser.
#[tokio::test]
async fn a_redemption_at_the_standby_turns_the_person_active_at_once() {
    let client = client().await;
    let ns = namespace(&client, "standby-redeem").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let store = usher_testenv::postgres()
        .database("standby")
        .expect("a database");
    apply_yaml(&client, &ns, &("apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n".to_string() + &user("dia"))).await;
    let args = [
        "--store",
        &store,
        "--leader-election",
        "--lease-namespace",
        &ns,
        "--lease-duration",
        "4s",
    ];
    let a = Usher::start(&ns, &smtp.url(), &args).await;
    let b = Usher::start(&ns, &smtp.url(), &args).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "dia", "Pending", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let leader = holder(&leases, &format!("usher-{ns}"))
        .await
        .expect("a holder");
    let standby = if leader.ends_with(&format!("-{}", a.pid().unwrap())) {
        &b
    } else {
        &a
    };
    let mail = eventually(Duration::from_secs(30), || async {
        smtp.messages()
            .into_iter()
            .find(|m| recipient(m) == "dia@acme.example")
    })
    .await
    .expect("Dia's mail");
    let (_, token) = crate::support::invitation_in(&mail);
    assert_eq!(standby.redeem(&token).await.0, 200);
    // The leader's resync is ten minutes away: only the announcement can make this in time.
    let active = wait_for(&users, "dia", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;
    assert!(
        active
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("usher.dev/redeemed-at")),
        "announced on the object"
    );
}
