//! deploy/ installs, and its RBAC is enough for the whole invitation flow and offboarding, and
//! no more: usher, running with its ServiceAccount's own token, reads one Secret (its token key,
//! by name) and no other.

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply_yaml, assert_least_privilege, client, eventually, first_mail, invitation_in,
    kubectl, namespace, service_account_kubeconfig, wait_for,
};

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
    assert_least_privilege("usher-system", "usher", "usher-token-key", &ns);

    let kubeconfig = service_account_kubeconfig("usher-system", "usher");
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
