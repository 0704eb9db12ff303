//! Offboarding: a person whose file is deleted loses access, even when usher was down at that
//! moment; re-adding them restores the same account; the Delete policy removes it.

use std::path::Path;
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply_yaml, client, eventually, first_mail, invitation_in, namespace, wait_for,
};

/// An account's (active, assignments, open invitations) straight from the SQLite file; None
/// when it does not exist.
fn account(db: &Path, email: &str) -> Option<(bool, u32, u32)> {
    let rows = crate::support::sql(
        db,
        &format!(
            "SELECT u.active, (SELECT COUNT(*) FROM role_assignments a WHERE a.user_id = u.id), (SELECT COUNT(*) FROM invitations i WHERE i.user_id = u.id AND i.used_us IS NULL AND i.revoked_us IS NULL) FROM users u WHERE u.email_lower = '{email}'"
        ),
    );
    let row = rows.first()?;
    let n = |i: usize| row[i].as_u64().unwrap_or_default() as u32;
    Some((n(0) == 1, n(1), n(2)))
}

fn manifests(policy: &str) -> String {
    format!(
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec:\n  displayName: Acme\n  offboarding: {{policy: {policy}}}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: alice}}\nspec: {{tenantRef: {{name: acme}}, email: alice@acme.example}}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: alice-admin}}\nspec: {{userRef: {{name: alice}}, role: Administrator}}\n"
    )
}

#[tokio::test]
async fn a_person_deleted_while_usher_is_down_is_offboarded_at_restart_and_can_be_restored() {
    let client = client().await;
    let ns = namespace(&client, "offboard").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, &manifests("Deactivate")).await;
    let mut usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "alice", "Pending with a role", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(UserPhase::Pending) && !s.roles.is_empty())
    })
    .await;
    let raw = first_mail(&smtp).await;
    let (_, token) = invitation_in(&raw);
    assert_eq!(usher.redeem(&token).await.0, 200);
    let active = wait_for(&users, "alice", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;
    let user_id = active.status.unwrap().user_id.unwrap();
    let mut settled = None;
    for _ in 0..50 {
        settled = account(&usher.db, "alice@acme.example");
        if settled == Some((true, 1, 0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        settled,
        Some((true, 1, 0)),
        "active, one role, no open token"
    );

    // usher is down when the file is deleted; the finalizer keeps the object until it is back.
    usher.kill();
    users
        .delete("alice", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        users.get_opt("alice").await.unwrap().is_some(),
        "held by the finalizer"
    );
    assert_eq!(
        account(&usher.db, "alice@acme.example"),
        Some((true, 1, 0)),
        "nothing happened yet"
    );
    usher.restart().await;
    eventually(Duration::from_secs(30), || async {
        users.get_opt("alice").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("the object goes once offboarded");
    assert_eq!(
        account(&usher.db, "alice@acme.example"),
        Some((false, 0, 0)),
        "deactivated, roles removed, kept"
    );

    // Re-added (under another name, same email): the same account comes back, active, without
    // a new invitation.
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: alice-ng}\nspec: {tenantRef: {name: acme}, email: Alice@acme.example}\n").await;
    let restored = wait_for(&users, "alice-ng", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;
    assert_eq!(
        restored.status.unwrap().user_id.as_deref(),
        Some(user_id.as_str()),
        "the same store account"
    );
    assert_eq!(
        smtp.messages().len(),
        1,
        "no second invitation for a restored person"
    );
}

#[tokio::test]
async fn the_delete_policy_removes_the_account_and_a_deleted_tenant_offboards_everyone() {
    let client = client().await;
    let ns = namespace(&client, "offboard-delete").await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    apply_yaml(&client, &ns, &(manifests("Delete") + "---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: bob}\nspec: {tenantRef: {name: acme}, email: bob@acme.example}\n")).await;
    let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    for name in ["alice", "bob"] {
        wait_for(&users, name, "Pending", |u| {
            u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Pending)
        })
        .await;
    }
    assert!(account(&usher.db, "alice@acme.example").is_some());
    users
        .delete("alice", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(Duration::from_secs(30), || async {
        users.get_opt("alice").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("offboarded");
    assert_eq!(
        account(&usher.db, "alice@acme.example"),
        None,
        "Delete policy: the account is gone"
    );

    // The tenant goes: bob's account goes with it (Delete policy), his SystemUser waits.
    let tenants: Api<usher::crd::Tenant> = Api::namespaced(client.clone(), &ns);
    tenants
        .delete("acme", &DeleteParams::default())
        .await
        .expect("delete tenant");
    eventually(Duration::from_secs(30), || async {
        tenants.get_opt("acme").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("tenant offboarded");
    assert_eq!(account(&usher.db, "bob@acme.example"), None);
    wait_for(&users, "bob", "TenantNotFound", |u| {
        u.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| c.reason == "TenantNotFound")
    })
    .await;
}

#[tokio::test]
async fn deleting_a_hundred_people_with_max_ten_per_hour_offboards_ten_until_released() {
    let client = client().await;
    let ns = namespace(&client, "guard").await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let mut yaml = String::from(
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme\n  offboarding: {policy: Deactivate, maxPerHour: 10}\n",
    );
    for i in 0..100 {
        yaml.push_str(&format!("---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: p{i:03}}}\nspec: {{tenantRef: {{name: acme}}, email: p{i:03}@acme.example}}\n"));
    }
    apply_yaml(&client, &ns, &yaml).await;
    let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let tenants: Api<usher::crd::Tenant> = Api::namespaced(client.clone(), &ns);
    wait_for(&tenants, "acme", "100 pending", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.users.as_ref())
            .is_some_and(|c| c.pending == 100)
    })
    .await;

    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    users
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .expect("delete all");
    let count = || async {
        users
            .list(&Default::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX)
    };
    let mut remaining = 0;
    for _ in 0..600 {
        remaining = count().await;
        if remaining == 90 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        remaining,
        90,
        "expected 90 held; usher log:\n{}",
        usher
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The guard holds: no more go while the hour's budget is spent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count().await, 90, "the guard let more than 10 through");
    let throttled = wait_for(&tenants, "acme", "OffboardingThrottled", |t| {
        t.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "OffboardingThrottled" && c.status == "True")
        })
    })
    .await;
    let message = throttle_message(&throttled);
    assert!(message.contains("90 deletions wait"), "{message}");
    let deactivated = |db: &Path| {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!("import sqlite3; print(sqlite3.connect('file:{}?mode=ro', uri=True).execute('SELECT COUNT(*) FROM users WHERE active = 0 AND id NOT IN (SELECT user_id FROM invitations WHERE revoked_us IS NULL AND used_us IS NULL)').fetchone()[0])", db.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    assert_eq!(deactivated(&usher.db), 10, "exactly ten offboarded");

    // Released by the annotation: the held ninety go.
    release(&tenants, "incident-42").await;
    eventually(Duration::from_secs(60), || async {
        (count().await == 0).then_some(())
    })
    .await
    .expect("all released");
    assert_eq!(deactivated(&usher.db), 100);
    wait_for(&tenants, "acme", "no longer throttled", |t| {
        t.status.as_ref().is_some_and(|s| {
            !s.conditions
                .iter()
                .any(|c| c.type_ == "OffboardingThrottled")
        })
    })
    .await;
}

/// The message of a Tenant's `OffboardingThrottled` condition.
fn throttle_message(tenant: &usher::crd::Tenant) -> String {
    tenant
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "OffboardingThrottled")
        })
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Release the deletions held by the guard of Tenant `acme`, as an admin would.
async fn release(tenants: &Api<usher::crd::Tenant>, value: &str) {
    tenants
        .patch(
            "acme",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {"usher.dev/allow-mass-offboarding": value}}})),
        )
        .await
        .expect("the release annotation is admitted");
}

/// The accounts of the SQLite store that still give access (active, an open invitation or a
/// role), and all accounts.
fn with_access(db: &Path) -> (u64, u64) {
    let rows = crate::support::sql(
        db,
        "SELECT (SELECT COUNT(*) FROM users u WHERE u.active = 1 OR EXISTS (SELECT 1 FROM role_assignments a WHERE a.user_id = u.id) OR EXISTS (SELECT 1 FROM invitations i WHERE i.user_id = u.id AND i.used_us IS NULL AND i.revoked_us IS NULL)), (SELECT COUNT(*) FROM users)",
    );
    let n = |i: usize| rows[0][i].as_u64().unwrap_or_default();
    (n(0), n(1))
}

/// Issue 14, kind 2: deleting a Tenant, or its whole namespace, is offboarding too. Its 20
/// people (8 Active) go through the guard (maxPerHour 5): five are offboarded, the Tenant stays
/// Terminating with OffboardingThrottled, and a person added meanwhile is not invited, until the
/// release.
async fn deleting_a_tenant_goes_through_the_guard(policy: &str, whole_namespace: bool) {
    let client = client().await;
    let ns = namespace(
        &client,
        &format!("tenant-guard-{}-{whole_namespace}", policy.to_lowercase()),
    )
    .await;
    let smtp = Smtp::start().expect("SMTP sink");
    let mut yaml = format!(
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec:\n  displayName: Acme\n  offboarding: {{policy: {policy}, maxPerHour: 5}}\n"
    );
    for i in 0..20 {
        yaml.push_str(&format!("---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: p{i:02}}}\nspec: {{tenantRef: {{name: acme}}, email: p{i:02}@acme.example}}\n"));
    }
    apply_yaml(&client, &ns, &yaml).await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let mails = eventually(Duration::from_secs(60), || async {
        let m = smtp.messages();
        (m.len() >= 20).then_some(m)
    })
    .await
    .expect("20 invitations");
    for mail in &mails[..8] {
        let (_, token) = invitation_in(mail);
        assert_eq!(usher.redeem(&token).await.0, 200);
    }
    assert_eq!(with_access(&usher.db), (20, 20));

    let tenants: Api<usher::crd::Tenant> = Api::namespaced(client.clone(), &ns);
    if whole_namespace {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(&ns, &DeleteParams::default())
            .await
            .expect("delete the namespace");
    } else {
        tenants
            .delete("acme", &DeleteParams::default())
            .await
            .expect("delete the tenant");
    }
    // In a namespace deletion the people may be deleted before their Tenant, and their own
    // deletions are what is held at first; once the Tenant is Terminating, its cleanup holds
    // the rest and says so.
    let throttled = wait_for(
        &tenants,
        "acme",
        "Terminating and OffboardingThrottled",
        |t| {
            t.metadata.deletion_timestamp.is_some()
                && t.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "OffboardingThrottled"
                            && c.status == "True"
                            && c.message.contains("deleted tenant")
                    })
                })
        },
    )
    .await;
    let message = throttle_message(&throttled);
    assert!(message.contains("15 offboardings"), "{message}");
    let expected = if policy == "Delete" {
        (15, 15)
    } else {
        (15, 20)
    };
    assert_eq!(with_access(&usher.db), expected, "five offboarded, no more");
    // A person added to the dying tenant is not invited; nothing is restored or repaired. (A
    // namespace being deleted takes no new objects.)
    if !whole_namespace {
        person_added_to_a_dying_tenant_is_not_invited(&client, &ns, &smtp).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        smtp.count(),
        20,
        "no invitation while the tenant is being deleted"
    );
    assert_eq!(with_access(&usher.db), expected, "the guard still holds");
    assert!(tenants.get_opt("acme").await.unwrap().is_some());

    release(&tenants, "closing-acme").await;
    eventually(Duration::from_secs(60), || async {
        tenants.get_opt("acme").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("the released tenant goes");
    let left = with_access(&usher.db);
    assert_eq!(left.0, 0, "nobody keeps access");
    if policy == "Delete" {
        assert_eq!(left.1, 0, "every account deleted");
    }
    assert_eq!(smtp.count(), 20);
}

async fn person_added_to_a_dying_tenant_is_not_invited(
    client: &kube::Client,
    ns: &str,
    smtp: &Smtp,
) {
    apply_yaml(
        client,
        ns,
        "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: late}\nspec: {tenantRef: {name: acme}, email: late@acme.example}\n",
    )
    .await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), ns);
    wait_for(&users, "late", "TenantTerminating", |u| {
        u.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| c.reason == "TenantTerminating")
    })
    .await;
    assert_eq!(
        smtp.count(),
        20,
        "no invitation while the tenant is being deleted"
    );
}

#[tokio::test]
async fn deleting_a_tenant_deactivates_through_the_guard() {
    deleting_a_tenant_goes_through_the_guard("Deactivate", false).await;
}

#[tokio::test]
async fn deleting_a_tenant_under_delete_goes_through_the_guard() {
    deleting_a_tenant_goes_through_the_guard("Delete", false).await;
}

#[tokio::test]
async fn deleting_a_namespace_goes_through_the_guard() {
    deleting_a_tenant_goes_through_the_guard("Deactivate", true).await;
}
