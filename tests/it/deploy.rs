//! deploy/ installs, and its RBAC is enough for the whole invitation flow and offboarding, and
//! no more: usher, running with its ServiceAccount's own token, reads one Secret (its token key,
//! by name) and no other.

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply_yaml, client, eventually, first_mail, invitation_in, kubectl, namespace, wait_for,
};

/// A kubeconfig for the usher ServiceAccount of deploy/, with a fresh token.
fn service_account_kubeconfig() -> std::path::PathBuf {
    let (ok, token) = kubectl(&[
        "create",
        "token",
        "usher",
        "-n",
        "usher-system",
        "--duration=1h",
    ]);
    assert!(ok, "{token}");
    let shared = usher_testenv::shared();
    let admin: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&shared.kubeconfig).unwrap()).unwrap();
    let ca = admin["clusters"][0]["cluster"]["certificate-authority"]
        .as_str()
        .unwrap();
    let path = usher_testenv::scratch_dir("sa").unwrap().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority: \"{ca}\"}}\nusers:\n- name: usher\n  user: {{token: \"{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: usher}}\ncurrent-context: c\n",
            shared.server,
            token.trim()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn deploy_rbac_runs_the_whole_flow_and_nothing_more() {
    let client = client().await;
    let (ok, out) = kubectl(&[
        "apply",
        "-k",
        &crate::support::repo().join("deploy").display().to_string(),
    ]);
    assert!(ok, "kubectl apply -k deploy/: {out}");
    let ns = namespace(&client, "deploy-rbac").await;
    let sa = "system:serviceaccount:usher-system:usher";
    for (verb, resource, allowed) in [
        ("get", "secrets", false),
        ("list", "secrets", false),
        ("watch", "secrets", false),
        ("create", "deployments.apps", false),
        ("delete", "namespaces", false),
        ("update", "configmaps", false),
        ("create", "rolebindings.rbac.authorization.k8s.io", false),
        ("patch", "systemusers.usher.dev", true),
        ("patch", "systemusers.usher.dev/status", true),
        ("create", "secrets", true),
        ("create", "events.events.k8s.io", true),
    ] {
        let (_, answer) = kubectl(&["auth", "can-i", verb, resource, "-n", &ns, "--as", sa]);
        let yes = answer.trim().starts_with("yes");
        assert_eq!(yes, allowed, "can-i {verb} {resource}: {answer}");
    }

    // One Secret is readable, by name only: the token key, in usher's own namespace.
    for (what, ns_, allowed) in [
        ("secrets/usher-token-key", "usher-system", true),
        ("secrets/other", "usher-system", false),
        ("secrets/usher-token-key", ns.as_str(), false),
    ] {
        let (_, answer) = kubectl(&["auth", "can-i", "get", what, "-n", ns_, "--as", sa]);
        assert_eq!(
            answer.trim().starts_with("yes"),
            allowed,
            "can-i get {what} in {ns_}: {answer}"
        );
    }

    for (ns_, allowed) in [("usher-system", true), (ns.as_str(), false)] {
        let (_, answer) = kubectl(&[
            "auth",
            "can-i",
            "patch",
            "leases.coordination.k8s.io",
            "-n",
            ns_,
            "--as",
            sa,
        ]);
        assert_eq!(
            answer.trim().starts_with("yes"),
            allowed,
            "can-i patch leases in {ns_}: {answer}"
        );
    }

    let kubeconfig = service_account_kubeconfig();
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme\n  invitations: {exposeToken: true}\n---\napiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {name: main}\nspec: {tenantRef: {name: acme}, displayName: Main}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: rita}\nspec: {tenantRef: {name: acme}, email: rita@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: rita-tech}\nspec: {userRef: {name: rita}, role: Technician, scope: {locationGroup: main}}\n",
    )
    .await;
    let kc = kubeconfig.display().to_string();
    let usher = Usher::start_with_env(
        &ns,
        &smtp.url(),
        &[],
        &[("KUBECONFIG", &kc), ("POD_NAMESPACE", "usher-system")],
    )
    .await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "rita", "Pending with a role", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(UserPhase::Pending) && s.roles == ["Technician@main"])
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets.get_opt("rita-invitation").await.unwrap().is_some(),
        "the Secret was written"
    );
    let raw = first_mail(&smtp).await;
    assert_eq!(usher.redeem(&invitation_in(&raw).1).await.0, 200);
    wait_for(&users, "rita", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        secrets
            .get_opt("rita-invitation")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("the Secret is deleted once redeemed");
    users
        .delete("rita", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        users.get_opt("rita").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("offboarded with the ServiceAccount's rights");
    assert!(
        !usher.log().to_lowercase().contains("forbidden"),
        "a request was refused:\n{}",
        usher.log()
    );
}
