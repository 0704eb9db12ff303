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
