//! A store per tenant (`spec.store`), end to end: two tenants in two namespaces, each with its
//! own SCIM server (scim2-server) and bearer token in a Secret, and one contractor in both. A
//! third tenant whose credential is missing is blocked alone, says so, shows in `/readyz`, and
//! recovers when its Secret appears. And two tenants that share one SCIM server, with the same
//! contractor: one User in the product, with access in each tenant.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;
use usher::crd::{SystemUser, Tenant, UserPhase};
use usher_testenv::{Scim, Smtp};

use crate::support::{
    Usher, apply_yaml, client, eventually, invitation_in, namespace, recipient, scim_get,
    scim_group_members, wait_for,
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

/// The contractor's two invitations, one per tenant.
async fn invitations_to_pat(smtp: &Smtp) -> Vec<Vec<u8>> {
    eventually(Duration::from_secs(30), || async {
        let m: Vec<Vec<u8>> = smtp
            .messages()
            .into_iter()
            .filter(|raw| recipient(raw) == PAT)
            .collect();
        (m.len() == 2).then_some(m)
    })
    .await
    .expect("two invitations to the contractor, one per tenant")
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
    // Its person says so too, naming the Secret.
    let sam = wait_for(&users_b, "sam", "StoreUnavailable", |u| {
        u.status.as_ref().is_some_and(|s| {
            s.conditions.first().is_some_and(|c| {
                c.reason == "StoreUnavailable" && c.message.contains("initech-store")
            })
        })
    })
    .await;
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
    let mails = invitations_to_pat(&smtp).await;
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

/// Two tenants that share the operator's one SCIM server, and a contractor in both: one User
/// in the product (not a refused duplicate), with access in each tenant once pat accepts that
/// tenant's invitation; offboarding pat from acme leaves globex's access intact, and the
/// User goes inactive only with pat's last account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_in_two_tenants_on_one_scim_server_is_one_user_with_access_in_each() {
    let client = client().await;
    let (ns_a, ns_b) = (
        namespace(&client, "shared-a").await,
        namespace(&client, "shared-b").await,
    );
    let shard = ns_a.clone();
    let smtp = Smtp::start().expect("SMTP sink");
    let scim = Scim::start(true).expect("scim2-server");
    let person = |tenant: &str, policy: &str| {
        format!(
            "---\napiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {tenant}, labels: {{{SHARD}: {shard}}}}}\nspec: {{displayName: {tenant}, offboarding: {{policy: {policy}}}}}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: pat, labels: {{{SHARD}: {shard}}}}}\nspec: {{tenantRef: {{name: {tenant}}}, email: {PAT}}}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: pat-manager, labels: {{{SHARD}: {shard}}}}}\nspec: {{userRef: {{name: pat}}, role: Manager}}\n"
        )
    };
    apply_yaml(&client, &ns_a, &person("acme", "Delete")).await;
    apply_yaml(&client, &ns_b, &person("globex", "Deactivate")).await;
    let selector = format!("{SHARD}={shard}");
    let usher = Usher::start_with_env(
        "",
        &smtp.url(),
        &["--shard-selector", &selector, "--store", &scim.url()],
        &[("USHER_STORE_TOKEN", &scim.token)],
    )
    .await;
    let users_a: Api<SystemUser> = Api::namespaced(client.clone(), &ns_a);
    let users_b: Api<SystemUser> = Api::namespaced(client.clone(), &ns_b);
    for users in [&users_a, &users_b] {
        wait_for(users, "pat", "Pending with its role", |u| {
            phase(u) == Some(UserPhase::Pending)
                && u.status.as_ref().is_some_and(|s| !s.roles.is_empty())
        })
        .await;
    }
    assert_eq!(user_names(&scim).await, [PAT], "one User for the person");
    let id = scim_get(&scim, "/Users?count=10").await["Resources"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (role_a, role_b) = (
        format!("role/{ns_a}/acme/Manager"),
        format!("role/{ns_b}/globex/Manager"),
    );

    // Pat accepts acme's invitation: active for acme, and globex's role not opened by it.
    let mails = invitations_to_pat(&smtp).await;
    let mut tokens: Vec<String> = mails.iter().map(|raw| invitation_in(raw).1).collect();
    let first = tokens.remove(0);
    assert_eq!(usher.redeem(&first).await.0, 200);
    let accepted = eventually(Duration::from_secs(30), || async {
        let a = users_a.get("pat").await.ok()?;
        let b = users_b.get("pat").await.ok()?;
        match (phase(&a), phase(&b)) {
            (Some(UserPhase::Active), Some(UserPhase::Pending)) => {
                Some((&users_a, &role_a, &users_b, &role_b))
            }
            (Some(UserPhase::Pending), Some(UserPhase::Active)) => {
                Some((&users_b, &role_b, &users_a, &role_a))
            }
            _ => None,
        }
    })
    .await
    .expect("one tenant's account Active, the other's Pending");
    let (_, open_role, _, closed_role) = accepted;
    assert_eq!(
        scim_get(&scim, &format!("/Users/{id}")).await["active"],
        true
    );
    assert_eq!(
        scim_group_members(&scim, open_role).await,
        std::slice::from_ref(&id)
    );
    assert!(
        scim_group_members(&scim, closed_role).await.is_empty(),
        "the other tenant's role waits for its invitation"
    );

    // The second invitation: both Active, both roles.
    assert_eq!(usher.redeem(&tokens[0]).await.0, 200);
    for users in [&users_a, &users_b] {
        wait_for(users, "pat", "Active", |u| {
            phase(u) == Some(UserPhase::Active)
        })
        .await;
    }
    let both = eventually(Duration::from_secs(30), || async {
        let (a, b) = (
            scim_group_members(&scim, &role_a).await,
            scim_group_members(&scim, &role_b).await,
        );
        (a == [id.clone()] && b == [id.clone()]).then_some(())
    })
    .await;
    assert!(both.is_some(), "pat holds Manager in both tenants");

    // Acme offboards pat (its file leaves git): globex's access stays.
    users_a.delete("pat", &Default::default()).await.unwrap();
    let gone = eventually(Duration::from_secs(30), || async {
        users_a.get_opt("pat").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "acme's pat offboarded:\n{}", usher.log());
    assert!(scim_group_members(&scim, &role_a).await.is_empty());
    assert_eq!(
        scim_group_members(&scim, &role_b).await,
        std::slice::from_ref(&id)
    );
    let u = scim_get(&scim, &format!("/Users/{id}")).await;
    assert_eq!(
        (&u["active"], &u["externalId"]),
        (&json!(true), &json!(format!("{ns_b}/pat"))),
        "{u}"
    );
    assert_eq!(
        phase(&users_b.get("pat").await.unwrap()),
        Some(UserPhase::Active)
    );

    // Globex offboards pat too (Deactivate): the User goes inactive, no role left.
    users_b.delete("pat", &Default::default()).await.unwrap();
    let gone = eventually(Duration::from_secs(30), || async {
        users_b.get_opt("pat").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "globex's pat offboarded:\n{}", usher.log());
    let u = scim_get(&scim, &format!("/Users/{id}")).await;
    assert_eq!(
        u["active"], false,
        "deactivated with pat's last account: {u}"
    );
    assert!(scim_group_members(&scim, &role_b).await.is_empty());
}
