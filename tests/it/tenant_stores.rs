//! A store per tenant (`spec.store`), end to end: two tenants in two namespaces, each with its
//! own SCIM server (scim2-server) and bearer token in a Secret, and one contractor in both. A
//! third tenant whose credential is missing is blocked alone, says so, shows in `/readyz`, and
//! recovers when its Secret appears.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;
use usher::crd::{SystemUser, Tenant, UserPhase};
use usher_testenv::{Scim, Smtp};

use crate::support::{
    Usher, apply_yaml, client, eventually, invitation_in, namespace, recipient, scim_get, wait_for,
};

const SHARD: &str = "sharding.fluxcd.io/key";
const PAT: &str = "pat@contractor.example";

/// A Tenant with its own store (credential in Secret `secret`) and one person, labelled for
/// this test's usher only.
fn tenant(name: &str, shard: &str, url: &str, secret: &str, person: &str, email: &str) -> String {
    format!(
        "---\napiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}, labels: {{{SHARD}: {shard}}}}}\nspec:\n  displayName: {name}\n  store:\n    url: {url}\n    credentialsSecretRef: {{name: {secret}}}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {person}, labels: {{{SHARD}: {shard}}}}}\nspec: {{tenantRef: {{name: {name}}}, email: {email}}}\n"
    )
}

async fn put_secret(client: &kube::Client, ns: &str, name: &str, token: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"token": token},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the store Secret");
}

/// The userNames of the server's SCIM Users.
async fn user_names(scim: &Scim) -> Vec<String> {
    scim_get(scim, "/Users?count=1000").await["Resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["userName"].as_str().map(str::to_string))
        .collect()
}

fn ready(t: &Tenant) -> Option<(String, String, String)> {
    let c = t
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn phase(u: &SystemUser) -> Option<UserPhase> {
    u.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_on_two_scim_servers_share_a_contractor_and_a_broken_store_blocks_its_tenant_only()
 {
    let client = client().await;
    let (ns_a, ns_b) = (
        namespace(&client, "tstore-a").await,
        namespace(&client, "tstore-b").await,
    );
    let shard = ns_a.clone();
    let smtp = Smtp::start().expect("SMTP sink");
    let (acme, globex, initech) = (
        Scim::start(false).expect("scim2-server for acme"),
        Scim::start(false).expect("scim2-server for globex"),
        Scim::start(false).expect("scim2-server for initech"),
    );
    put_secret(&client, &ns_a, "usher-store", &acme.token).await;
    put_secret(&client, &ns_b, "usher-store", &globex.token).await;
    apply_yaml(
        &client,
        &ns_a,
        &tenant("acme", &shard, &acme.url(), "usher-store", "pat", PAT),
    )
    .await;
    apply_yaml(
        &client,
        &ns_b,
        &(tenant("globex", &shard, &globex.url(), "usher-store", "pat", PAT)
            + &tenant(
                "initech",
                &shard,
                &initech.url(),
                "initech-store",
                "sam",
                "sam@initech.example",
            )),
    )
    .await;
    // Every namespace, but only this test's objects.
    let selector = format!("{SHARD}={shard}");
    let usher = Usher::start("", &smtp.url(), &["--shard-selector", &selector]).await;

    // The contractor is Pending in both tenants, each in its tenant's own product.
    let users_a: Api<SystemUser> = Api::namespaced(client.clone(), &ns_a);
    let users_b: Api<SystemUser> = Api::namespaced(client.clone(), &ns_b);
    for users in [&users_a, &users_b] {
        wait_for(users, "pat", "Pending", |u| {
            phase(u) == Some(UserPhase::Pending)
        })
        .await;
    }
    assert_eq!(user_names(&acme).await, [PAT]);
    assert_eq!(user_names(&globex).await, [PAT]);

    // The broken tenant is blocked alone, naming the missing Secret; its person is nowhere.
    let tenants_b: Api<Tenant> = Api::namespaced(client.clone(), &ns_b);
    let blocked = wait_for(&tenants_b, "initech", "StoreUnavailable", |t| {
        ready(t).is_some_and(|(s, r, _)| s == "False" && r == "StoreUnavailable")
    })
    .await;
    let (_, _, message) = ready(&blocked).unwrap();
    assert!(
        message.contains(&format!("{ns_b}/initech")) && message.contains("initech-store"),
        "names the tenant and the Secret: {message}"
    );
    assert!(user_names(&initech).await.is_empty());
    let sam = users_b.get("sam").await.unwrap();
    assert_ne!(phase(&sam), Some(UserPhase::Pending));
    wait_for(&tenants_b, "globex", "Ready", |t| {
        ready(t).is_some_and(|(s, _, _)| s == "True")
    })
    .await;

    // `/readyz` reports each store; a tenant store's failure leaves usher ready.
    let probe = reqwest::get(format!("{}/readyz", usher.probe_url))
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    let body = probe.text().await.unwrap();
    for line in [
        "[+]store ok\n".to_string(),
        format!("[+]store {} ok (Tenant {ns_a}/acme)\n", acme.url()),
        format!("[+]store {} ok (Tenant {ns_b}/globex)\n", globex.url()),
    ] {
        assert!(body.contains(&line), "{line:?} in:\n{body}");
    }
    assert!(
        body.lines().any(
            |l| l.starts_with(&format!("[-]store {} failed: ", initech.url()))
                && l.contains("initech-store")
                && l.ends_with(&format!("(Tenant {ns_b}/initech)"))
        ),
        "initech's store failed, in:\n{body}"
    );
    assert!(!body.contains(&acme.token) && !body.contains(&globex.token));

    // Pat redeems both invitations on one page; both accounts turn Active.
    let mails = eventually(Duration::from_secs(30), || async {
        let m: Vec<Vec<u8>> = smtp
            .messages()
            .into_iter()
            .filter(|raw| recipient(raw) == PAT)
            .collect();
        (m.len() == 2).then_some(m)
    })
    .await
    .expect("two invitations to the contractor, one per tenant");
    for raw in &mails {
        assert_eq!(usher.redeem(&invitation_in(raw).1).await.0, 200);
    }
    for users in [&users_a, &users_b] {
        wait_for(users, "pat", "Active", |u| {
            phase(u) == Some(UserPhase::Active)
        })
        .await;
    }

    // The credential appears: initech recovers by itself and its person is invited.
    put_secret(&client, &ns_b, "initech-store", &initech.token).await;
    wait_for(&users_b, "sam", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    assert_eq!(user_names(&initech).await, ["sam@initech.example"]);
    wait_for(&tenants_b, "initech", "Ready", |t| {
        ready(t).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert!(
        !usher.log().contains(&acme.token) && !usher.log().contains(&globex.token),
        "no credential in the log"
    );
}
