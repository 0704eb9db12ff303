//! deploy/ installs, and its RBAC is enough for the whole invitation flow and offboarding, and
//! no more: usher, running with its ServiceAccount's own token, reads one Secret (its token key,
//! by name) and no other.

use usher_testenv::Smtp;

use crate::support::{
    RITA, Usher, apply_yaml, assert_least_privilege, client, kubectl, namespace,
    rita_is_invited_accepted_and_offboarded, service_account_kubeconfig,
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
    apply_yaml(&client, &ns, RITA).await;
    let kc = kubeconfig.display().to_string();
    let usher = Usher::start_with_env(
        &ns,
        &smtp.url(),
        &[],
        &[("KUBECONFIG", &kc), ("POD_NAMESPACE", "usher-system")],
    )
    .await;
    rita_is_invited_accepted_and_offboarded(&client, &ns, &usher, &smtp).await;
}
