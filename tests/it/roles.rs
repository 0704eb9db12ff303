//! Location groups, role bindings and exclusivity against the real control plane, and the
//! equivalence of `usher validate` with what the cluster shows.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use usher::crd::{BindingPhase, LocationGroup, RoleBinding, SystemUser, Tenant, UserPhase};

use crate::support::{
    Usher, apply, apply_yaml, client, discovery, documents, events_of, eventually, namespace, repo,
    wait_for, yaml_files,
};

fn ready_reason<K>(
    conditions: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
    _: &K,
) -> Option<(String, String)> {
    conditions
        .and_then(|c| c.first())
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn group_reason(g: &LocationGroup) -> Option<(String, String)> {
    ready_reason(g.status.as_ref().map(|s| &s.conditions), g)
}

fn phase(b: &RoleBinding) -> Option<BindingPhase> {
    b.status.as_ref().and_then(|s| s.phase)
}

/// The store's role assignments of a person, read from the SQLite file itself.
fn assignments(db: &Path, external_id: &str) -> Vec<String> {
    crate::support::sql(
        db,
        &format!("SELECT a.role || '@' || COALESCE(a.group_key, 'tenant') FROM role_assignments a JOIN users u ON u.id = a.user_id WHERE u.external_id = '{external_id}' ORDER BY 1"),
    )
    .into_iter()
    .map(|row| row[0].as_str().unwrap_or_default().to_string())
    .collect()
}

#[tokio::test]
async fn groups_wait_for_a_missing_parent_and_recover_from_a_cycle() {
    let client = client().await;
    let ns = namespace(&client, "groups").await;
    let tenant = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n";
    let group = |name: &str, parent: Option<&str>| {
        let parent = parent
            .map(|p| format!("  parentRef: {{name: {p}}}\n"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {{name: {name}}}\nspec:\n  tenantRef: {{name: acme}}\n  displayName: {name}\n{parent}"
        )
    };
    apply_yaml(
        &client,
        &ns,
        &(tenant.to_string() + &group("fresno", Some("west")) + &group("west", Some("main"))),
    )
    .await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let groups: Api<LocationGroup> = Api::namespaced(client.clone(), &ns);
    let reason = |want: &'static str| {
        move |g: &LocationGroup| group_reason(g).is_some_and(|(_, r)| r == want)
    };
    wait_for(&groups, "west", "ParentNotFound", reason("ParentNotFound")).await;
    wait_for(
        &groups,
        "fresno",
        "ParentNotReady",
        reason("ParentNotReady"),
    )
    .await;

    // The parent appears: the tree heals by itself.
    apply_yaml(&client, &ns, &group("main", None)).await;
    let fresno = wait_for(&groups, "fresno", "Ready", reason("Reconciled")).await;
    let status = fresno.status.unwrap();
    assert_eq!(
        (status.path.as_deref(), status.depth),
        (Some("main/west/fresno"), Some(3))
    );

    // A cycle: every member not Ready, and what hangs below waits.
    apply_yaml(&client, &ns, &group("main", Some("fresno"))).await;
    for name in ["main", "west", "fresno"] {
        wait_for(&groups, name, "Cycle", reason("Cycle")).await;
    }
    // Repaired: Ready again, paths back.
    apply_yaml(&client, &ns, &group("main", None)).await;
    let fresno = wait_for(&groups, "fresno", "Ready again", reason("Reconciled")).await;
    assert_eq!(
        fresno.status.unwrap().path.as_deref(),
        Some("main/west/fresno")
    );

    // A group deleted from git: gone from the store, its children wait for a parent again and
    // a binding scoped below it waits too.
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: ann}\nspec: {tenantRef: {name: acme}, email: ann@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: ann-fresno}\nspec: {userRef: {name: ann}, role: Manager, scope: {locationGroup: fresno}}\n").await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    wait_for(&bindings, "ann-fresno", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
    groups
        .delete("main", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(&groups, "west", "ParentNotFound", reason("ParentNotFound")).await;
    let waiting = wait_for(&bindings, "ann-fresno", "Waiting", |b| {
        phase(b) == Some(BindingPhase::Waiting)
    })
    .await;
    let why = waiting.status.unwrap().conditions[0].reason.clone();
    assert_eq!(why, "GroupNotReady");
    let mut left = vec!["?".to_string()];
    for _ in 0..50 {
        left = assignments(&usher.db, &format!("{ns}/ann"));
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.is_empty(),
        "the assignment through the deleted group stayed: {left:?}"
    );
}

#[tokio::test]
async fn the_older_technician_binding_wins_and_its_deletion_promotes_the_manager() {
    let client = client().await;
    let ns = namespace(&client, "exclusive").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n---\napiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {name: west}\nspec: {tenantRef: {name: acme}, displayName: West}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: alice}\nspec: {tenantRef: {name: acme}, email: alice@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: alice-technician}\nspec: {userRef: {name: alice}, role: Technician, scope: {locationGroup: west}}\n",
    )
    .await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&bindings, "alice-technician", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
    // Created at least a second later, so it is younger by creationTimestamp too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: alice-manager}\nspec: {userRef: {name: alice}, role: Manager}\n").await;
    let conflict = wait_for(&bindings, "alice-manager", "Conflict", |b| {
        phase(b) == Some(BindingPhase::Conflict)
    })
    .await;
    assert_eq!(
        conflict.status.unwrap().conflicts_with,
        ["alice-technician"]
    );
    wait_for(&users, "alice", "roles Technician@west", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.roles == ["Technician@west"])
    })
    .await;
    assert_eq!(
        assignments(&usher.db, &format!("{ns}/alice")),
        [format!("Technician@{ns}/west")],
        "the store holds only the winner"
    );

    bindings
        .delete("alice-technician", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(&bindings, "alice-manager", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
    wait_for(&users, "alice", "roles Manager@tenant", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.roles == ["Manager@tenant"])
    })
    .await;
    let mut promoted = Vec::new();
    for _ in 0..50 {
        promoted = assignments(&usher.db, &format!("{ns}/alice"));
        if promoted == ["Manager@tenant"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(promoted, ["Manager@tenant"]);

    // Bound after Conflict is an Event; a new binding found Bound (the technician's) was not,
    // though it was Bound seconds before the manager's Event was published.
    let freed = events_of(&client, &ns, "alice-manager", "Bound").await;
    assert_eq!(freed.len(), 1, "one Event for the promotion: {freed:?}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let first_bound = events
        .list(&Default::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("alice-technician")
        })
        .filter(|e| e.reason.as_deref() == Some("Bound"))
        .count();
    assert_eq!(
        first_bound, 0,
        "a new binding found Bound publishes no Event"
    );
}

/// Issue 17, access until a date: an exclusive Technician binding with `expiresAt` holds its
/// role, and blocks the Manager, until that moment; then it turns Expired (with an Event), its
/// role leaves the store, and the Manager is granted — by a requeue at the expiry, not by the
/// resync (10 minutes here).
#[tokio::test]
async fn a_binding_with_an_end_grants_until_then_and_not_a_moment_longer() {
    let client = client().await;
    let ns = namespace(&client, "expiry").await;
    let ends = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(8);
    let ends_text = ends.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    // The API server keeps seconds: this is the moment access ends.
    let ends: jiff::Timestamp = ends_text.parse().unwrap();
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec: {{displayName: Acme}}\n---\napiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {{name: west}}\nspec: {{tenantRef: {{name: acme}}, displayName: West}}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: pat}}\nspec: {{tenantRef: {{name: acme}}, email: pat@contractor.example}}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: pat-technician}}\nspec: {{userRef: {{name: pat}}, role: Technician, scope: {{locationGroup: west}}, expiresAt: \"{ends_text}\"}}\n"),
    )
    .await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    wait_for(&bindings, "pat-technician", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
    // Younger by a second, so the Technician is the older binding and blocks it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: pat-manager}\nspec: {userRef: {name: pat}, role: Manager}\n").await;
    wait_for(&bindings, "pat-manager", "Conflict", |b| {
        phase(b) == Some(BindingPhase::Conflict)
    })
    .await;
    let pat = format!("{ns}/pat");
    let technician = [format!("Technician@{ns}/west")];
    let held = eventually(Duration::from_secs(5), || async {
        (assignments(&usher.db, &pat) == technician).then_some(())
    })
    .await;
    assert!(held.is_some(), "the store holds the Technician role");

    // Until the end, the role stays and nothing else is granted.
    while jiff::Timestamp::now() < ends - jiff::SignedDuration::from_millis(1500) {
        assert_eq!(assignments(&usher.db, &pat), technician, "before {ends}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expired = wait_for(&bindings, "pat-technician", "Expired", |b| {
        phase(b) == Some(BindingPhase::Expired)
    })
    .await;
    let condition = &expired.status.unwrap().conditions[0];
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "BindingExpired")
    );
    wait_for(&bindings, "pat-manager", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
    let after = eventually(Duration::from_secs(10), || async {
        (assignments(&usher.db, &pat) == ["Manager@tenant"]).then_some(jiff::Timestamp::now())
    })
    .await
    .expect("the Technician role left the store and the Manager came in");
    assert!(after >= ends, "changed at {after}, before the end {ends}");
    let said = events_of(&client, &ns, "pat-technician", "BindingExpired").await;
    assert!(
        said.iter().any(|m| m.contains(&ends_text)),
        "an Event says when access ended: {said:?}"
    );
    // The printer column shows the end.
    let (ok, table) = crate::support::kubectl(&["get", "rolebindings.usher.dev", "-n", &ns]);
    assert!(
        ok && table.contains("EXPIRES") && table.contains(&ends_text),
        "{table}"
    );
}

/// Issue 14, kind 7: fail closed. The exclusive Technician leaves the catalogue (a rename done
/// in two applies, the catalogue first): its binding turns Invalid and keeps blocking the
/// Manager binding it blocked, so at no moment does the person hold Manager; the Manager is
/// granted only when a person removes the stale binding.
#[tokio::test]
async fn an_exclusive_role_leaving_the_catalogue_grants_nothing_it_blocked() {
    let client = client().await;
    let ns = namespace(&client, "retired-role").await;
    let catalogue = |technician: &str| {
        format!(
            "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec:\n  displayName: Acme\n  roles:\n  - {{name: Manager}}\n  - {{name: {technician}, exclusive: true}}\n"
        )
    };
    apply_yaml(
        &client,
        &ns,
        &(catalogue("Technician") + "---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: rita}\nspec: {tenantRef: {name: acme}, email: rita@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: rita-technician}\nspec: {userRef: {name: rita}, role: Technician}\n"),
    )
    .await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    wait_for(&bindings, "rita-technician", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
            && b.status.as_ref().and_then(|s| s.exclusive) == Some(true)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: rita-manager}\nspec: {userRef: {name: rita}, role: Manager}\n").await;
    wait_for(&bindings, "rita-manager", "Conflict", |b| {
        phase(b) == Some(BindingPhase::Conflict)
    })
    .await;

    // The catalogue's half of the rename lands first.
    apply_yaml(&client, &ns, &catalogue("FieldTechnician")).await;
    let stale = wait_for(&bindings, "rita-technician", "Invalid", |b| {
        phase(b) == Some(BindingPhase::Invalid)
    })
    .await;
    let message = &stale.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("keeps blocking"), "{message}");
    // Watched for a while: the Manager is never granted, in the cluster or the store.
    let rita = format!("{ns}/rita");
    for _ in 0..30 {
        let manager = bindings.get("rita-manager").await.unwrap();
        assert_eq!(phase(&manager), Some(BindingPhase::Conflict));
        assert!(
            !assignments(&usher.db, &rita)
                .iter()
                .any(|a| a.starts_with("Manager")),
            "Manager granted while the stale exclusive binding stood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The binding's half: the new name is exclusive and known, and still the only role.
    bindings
        .patch(
            "rita-technician",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"role": "FieldTechnician"}})),
        )
        .await
        .unwrap();
    wait_for(&bindings, "rita-technician", "Bound again", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
    assert_eq!(
        phase(&bindings.get("rita-manager").await.unwrap()),
        Some(BindingPhase::Conflict)
    );
    // A person decides: the technician binding goes, the Manager follows.
    bindings
        .delete("rita-technician", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&bindings, "rita-manager", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
}

#[tokio::test]
async fn a_binding_deleted_while_usher_is_down_leaves_the_store_at_restart() {
    let client = client().await;
    let ns = namespace(&client, "binding-down").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: alice}\nspec: {tenantRef: {name: acme}, email: alice@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: alice-admin}\nspec: {userRef: {name: alice}, role: Administrator}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: alice-manager}\nspec: {userRef: {name: alice}, role: Manager}\n",
    )
    .await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let mut usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "alice", "two roles", |u| {
        u.status.as_ref().is_some_and(|s| s.roles.len() == 2)
    })
    .await;
    assert!(
        bindings
            .get("alice-admin")
            .await
            .unwrap()
            .metadata
            .finalizers
            .is_none_or(|f| f.is_empty()),
        "a RoleBinding carries no finalizer"
    );
    // One left by an earlier version of usher is released when the binding is deleted.
    bindings
        .patch(
            "alice-manager",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": ["usher.dev/cleanup"]}})),
        )
        .await
        .unwrap();
    bindings
        .delete("alice-manager", &DeleteParams::default())
        .await
        .unwrap();
    let released = eventually(Duration::from_secs(20), || async {
        bindings
            .get_opt("alice-manager")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(released.is_some(), "the leftover finalizer was released");

    usher.stop();
    bindings
        .delete("alice-admin", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        bindings.get_opt("alice-admin").await.unwrap().is_none(),
        "gone at once, usher or not"
    );
    assert_eq!(
        assignments(&usher.db, &format!("{ns}/alice")),
        ["Administrator@tenant"]
    );
    usher.restart().await;
    let emptied = eventually(Duration::from_secs(20), || async {
        assignments(&usher.db, &format!("{ns}/alice"))
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        emptied.is_some(),
        "the restart took the deleted binding's role away"
    );
}

/// The objects of a namespace that show a problem, as `Kind/name`: a group not Ready, a binding
/// not Bound, a user refused. None while some object has no status for its generation yet.
async fn cluster_verdict(client: &Client, ns: &str) -> Option<BTreeSet<String>> {
    let groups: Api<LocationGroup> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let users: Api<SystemUser> = Api::namespaced(client.clone(), ns);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), ns);
    let current = |generation: Option<i64>,
                   conditions: Option<
        &Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    >| {
        conditions
            .and_then(|c| c.first())
            .is_some_and(|c| c.observed_generation == generation)
    };
    let mut problems = BTreeSet::new();
    let mut flag = |kind: &str, name: String, bad: bool| {
        if bad {
            problems.insert(format!("{kind}/{name}"));
        }
    };
    for g in groups.list(&Default::default()).await.ok()? {
        let conditions = g.status.as_ref().map(|s| &s.conditions);
        if !current(g.metadata.generation, conditions) {
            return None;
        }
        let bad = conditions
            .and_then(|c| c.first())
            .is_some_and(|c| c.status != "True");
        flag("LocationGroup", g.name_any(), bad);
    }
    for b in bindings.list(&Default::default()).await.ok()? {
        if !current(
            b.metadata.generation,
            b.status.as_ref().map(|s| &s.conditions),
        ) {
            return None;
        }
        let bad = phase(&b) != Some(BindingPhase::Bound);
        flag("RoleBinding", b.name_any(), bad);
    }
    for u in users.list(&Default::default()).await.ok()? {
        let conditions = u.status.as_ref().map(|s| &s.conditions);
        if !current(u.metadata.generation, conditions) {
            return None;
        }
        let failed = u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Failed);
        let waiting = conditions
            .and_then(|c| c.first())
            .is_some_and(|c| c.reason == "TenantNotFound");
        flag("SystemUser", u.name_any(), failed || waiting);
    }
    for t in tenants.list(&Default::default()).await.ok()? {
        if !current(
            t.metadata.generation,
            t.status.as_ref().map(|s| &s.conditions),
        ) {
            return None;
        }
    }
    Some(problems)
}

/// The objects `usher validate` printed a problem for, as `Kind/name` (its lines read
/// `<file>: <Kind>/<name>: <Reason>: <message>`).
fn validate_verdict(printed: &str) -> BTreeSet<String> {
    printed
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(str::to_string)
        .collect()
}

/// Each manifest set of tests/validate/ is given to `usher validate` and applied to the cluster
/// with usher running; the verdicts agree (clean ↔ everything Ready and Bound; a warning ↔ the
/// object the cluster shows Expired).
#[tokio::test]
async fn usher_validate_agrees_with_the_cluster() {
    let client = client().await;
    let discovery = discovery(&client).await;
    let mut sets: Vec<_> = std::fs::read_dir(repo().join("tests/validate"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    assert!(sets.len() >= 15, "only {} manifest sets", sets.len());

    let mut running = Vec::new();
    for set in &sets {
        let expect = std::fs::read_to_string(set.join("EXPECT"))
            .unwrap()
            .trim()
            .to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
            .arg("validate")
            .arg(set)
            .output()
            .expect("usher validate runs");
        let offline_problem = !out.status.success();
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        let offline = validate_verdict(&printed);
        // Warnings (a binding past its end) are printed, and leave the exit status 0.
        let errors = printed
            .lines()
            .filter(|l| !l.contains(": warning: "))
            .count();
        assert_eq!(
            offline_problem,
            errors > 0,
            "exit code and output disagree for {}",
            set.display()
        );
        assert_eq!(
            (offline_problem, errors == 0 && !printed.trim().is_empty()),
            (expect == "problem", expect == "warning"),
            "{}: validate says\n{printed}",
            set.display()
        );

        let ns = namespace(&client, "equiv").await;
        for file in yaml_files(set) {
            for doc in documents(&file) {
                apply(&client, &discovery, &ns, &doc)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
        }
        let dir = usher_testenv::scratch_dir("mail").unwrap();
        let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
        running.push((set.clone(), ns, offline, printed, usher));
    }

    let mut disagreements = Vec::new();
    for (set, ns, offline, printed, _usher) in &running {
        let mut last = None;
        let mut stable = 0;
        for _ in 0..300 {
            let v = cluster_verdict(&client, ns).await;
            if v.is_some() && v == last {
                stable += 1;
                if stable >= 5 {
                    break;
                }
            } else {
                stable = 0;
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match last {
            // The same objects at fault, not only the same yes or no.
            Some(cluster) if cluster == *offline => {}
            other => disagreements.push(format!(
                "{}: cluster {other:?}, validate said:\n{printed}",
                set.display()
            )),
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn validate_flags_every_manifest_admission_rejects() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
        .arg("validate")
        .arg(repo().join("tests/invalid"))
        .output()
        .expect("usher validate runs");
    assert_eq!(out.status.code(), Some(1));
    let printed = String::from_utf8_lossy(&out.stdout);
    for file in yaml_files(&repo().join("tests/invalid")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-field: "))
            .unwrap();
        let line = printed
            .lines()
            .find(|l| l.starts_with(&file.display().to_string()))
            .unwrap_or_else(|| panic!("{} not flagged:\n{printed}", file.display()));
        // Transition rules (tenantRef immutable) need the old object, which files do not have;
        // the file then shows the same object defined twice instead.
        let base = field.split('[').next().unwrap();
        assert!(
            line.contains(base) || line.contains("defined twice"),
            "{line} does not name {field}"
        );
    }
    let examples = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
        .arg("validate")
        .arg(repo().join("examples"))
        .output()
        .unwrap();
    assert!(
        examples.status.success(),
        "{}",
        String::from_utf8_lossy(&examples.stdout)
    );
}

/// Issue 14, day two: a binding pointed at another person (`spec.userRef` edited). The person it
/// left loses the role within seconds, not at the resync (10 minutes here), and a binding of
/// theirs it blocked is promoted.
#[tokio::test]
async fn a_binding_moved_to_another_person_leaves_the_first_at_once() {
    let client = client().await;
    let ns = namespace(&client, "moved").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: alice}\nspec: {tenantRef: {name: acme}, email: alice@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: bob}\nspec: {tenantRef: {name: acme}, email: bob@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: aa-technician}\nspec: {userRef: {name: alice}, role: Technician}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: bb-alice-manager}\nspec: {userRef: {name: alice}, role: Manager}\n",
    )
    .await;
    let dir = usher_testenv::scratch_dir("mail").unwrap();
    let usher = Usher::start(&ns, &format!("file://{}", dir.display()), &[]).await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&bindings, "bb-alice-manager", "Conflict", |b| {
        phase(b) == Some(BindingPhase::Conflict)
    })
    .await;
    wait_for(&users, "alice", "roles Technician@tenant", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.roles == ["Technician@tenant"])
    })
    .await;
    let alice = format!("{ns}/alice");
    let holds = |want: &'static str| {
        let (db, alice) = (usher.db.clone(), alice.clone());
        eventually(Duration::from_secs(10), move || {
            let got = assignments(&db, &alice);
            async move { (got == [want]).then_some(()) }
        })
    };
    assert!(
        holds("Technician@tenant").await.is_some(),
        "alice's store holds the technician role"
    );

    // The technician role goes to bob: one edit of the binding's userRef.
    bindings
        .patch(
            "aa-technician",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"userRef": {"name": "bob"}}})),
        )
        .await
        .expect("patch");
    wait_for(&users, "bob", "roles Technician@tenant", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.roles == ["Technician@tenant"])
    })
    .await;
    // Within seconds: before, alice kept the role in the store until her resync visit.
    assert!(
        holds("Manager@tenant").await.is_some(),
        "alice still holds the technician role in the store: {:?}",
        assignments(&usher.db, &alice)
    );
    wait_for(&bindings, "bb-alice-manager", "Bound", |b| {
        phase(b) == Some(BindingPhase::Bound)
    })
    .await;
    assert_eq!(
        assignments(&usher.db, &format!("{ns}/bob")),
        ["Technician@tenant"]
    );
}
