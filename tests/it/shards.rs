//! Shards: two `usher run` instances split the tenants by a label, as Flux shards its
//! controllers (`--shard-selector sharding.fluxcd.io/key=…`), sharing one PostgreSQL store. Each
//! reconciles only its share and elects its own leader; a redemption that reaches the other
//! instance still turns the person Active at once.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{Usher, apply_yaml, client, eventually, invitation_in, namespace, recipient};

const KEY: &str = "sharding.fluxcd.io/key";

/// A tenant with one person, every object labelled for `shard`.
fn tenant(name: &str, shard: &str, person: &str) -> String {
    let labels = format!("labels: {{{KEY}: {shard}}}");
    format!(
        "---\napiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}, {labels}}}\nspec: {{displayName: {name}}}\n{}",
        user(name, shard, person)
    )
}

fn user(tenant: &str, shard: &str, person: &str) -> String {
    format!(
        "---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {person}, labels: {{{KEY}: {shard}}}}}\nspec: {{tenantRef: {{name: {tenant}}}, email: {person}@{tenant}.example}}\n"
    )
}

fn phase(u: &SystemUser) -> Option<UserPhase> {
    u.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn two_shards_split_the_tenants_and_a_redemption_reaches_the_right_one() {
    let client = client().await;
    let ns = namespace(&client, "shards").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let store = usher_testenv::postgres()
        .database("shards")
        .expect("a database");
    apply_yaml(
        &client,
        &ns,
        &(tenant("acme", "a", "ann") + &tenant("globex", "b", "bob")),
    )
    .await;
    let shard = |selector: &str| {
        vec![
            "--store".to_string(),
            store.clone(),
            "--shard-selector".into(),
            selector.to_string(),
            "--leader-election".into(),
            "--lease-namespace".into(),
            ns.clone(),
        ]
    };
    let (args_a, args_b) = (shard(&format!("{KEY}=a")), shard(&format!("{KEY}=b")));
    let a = Usher::start(&ns, &smtp.url(), &as_str(&args_a)).await;
    let b = Usher::start(&ns, &smtp.url(), &as_str(&args_b)).await;
    fn as_str(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    for person in ["ann", "bob"] {
        crate::support::wait_for(&users, person, "Pending", |u| {
            phase(u) == Some(UserPhase::Pending)
        })
        .await;
    }
    // Each shard elected its own leader: two Leases, each held.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = leases
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|l| l.metadata.name)
        .collect();
    let expected = [
        usher::run::lease_name(Some(&ns), Some(&format!("{KEY}=a"))),
        usher::run::lease_name(Some(&ns), Some(&format!("{KEY}=b"))),
    ];
    assert_ne!(expected[0], expected[1]);
    for lease in &expected {
        assert!(names.contains(lease), "no Lease {lease} in {names:?}");
    }

    // Each reconciles only its share: with B stopped, a new person of B's tenant waits, while one
    // of A's, created at the same time, is invited.
    let mut b = b;
    b.stop();
    apply_yaml(
        &client,
        &ns,
        &(user("globex", "b", "bea") + &user("acme", "a", "amy")),
    )
    .await;
    crate::support::wait_for(&users, "amy", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let bea = users.get("bea").await.unwrap();
    assert_eq!(phase(&bea), None, "shard A reconciled a person of shard B");
    b.restart().await;
    crate::support::wait_for(&users, "bea", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;

    // Bob redeems through shard A's page (one ingress in front of both): B turns him Active at
    // once, not at its resync ten minutes later.
    let mail = eventually(std::time::Duration::from_secs(30), || async {
        smtp.messages()
            .into_iter()
            .find(|m| recipient(m) == "bob@globex.example")
    })
    .await
    .expect("Bob's mail");
    let (_, token) = invitation_in(&mail);
    assert_eq!(a.redeem(&token).await.0, 200);
    crate::support::wait_for(&users, "bob", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    // Every person got exactly one mail: no shard invited another's people.
    let mut to: Vec<String> = smtp.messages().iter().map(|m| recipient(m)).collect();
    to.sort();
    assert_eq!(
        to,
        [
            "amy@acme.example",
            "ann@acme.example",
            "bea@globex.example",
            "bob@globex.example"
        ]
    );
}

#[test]
fn a_shard_has_its_own_lease_name_the_same_in_every_replica() {
    assert_eq!(usher::run::lease_name(None, None), "usher");
    assert_eq!(usher::run::lease_name(Some("ops"), None), "usher-ops");
    let a = usher::run::lease_name(None, Some("sharding.fluxcd.io/key=a"));
    assert!(
        a.starts_with("usher-shard-") && a.len() == "usher-shard-".len() + 10,
        "{a}"
    );
    assert_eq!(
        a,
        usher::run::lease_name(None, Some(" sharding.fluxcd.io/key=a "))
    );
    assert_ne!(
        a,
        usher::run::lease_name(None, Some("sharding.fluxcd.io/key=b"))
    );
}
