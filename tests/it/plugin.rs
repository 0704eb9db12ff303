//! The same binary as a kubectl plugin, run by the real kubectl against the real control plane:
//! `kubectl usher status | resend | release | find`, found on PATH as `kubectl-usher`; and the
//! offline `usher version` and `usher completions`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use usher::crd::{SystemUser, Tenant, UserPhase};
use usher_testenv::Smtp;

use crate::support::{Usher, apply_yaml, client, eventually, namespace, usher_cli, wait_for};

/// A folder holding `kubectl-usher`, a link to the usher binary, as an admin installs it.
fn plugin_dir() -> PathBuf {
    let dir = usher_testenv::scratch_dir("kubectl-plugin").expect("scratch dir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_usher"), dir.join("kubectl-usher"))
        .expect("link kubectl-usher");
    dir
}

/// `kubectl usher ARGS` with the plugin on PATH: (success, stdout, stderr).
fn kubectl_usher(plugins: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(usher_testenv::kubectl())
        .arg("usher")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", &usher_testenv::shared().kubeconfig)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn phase(u: &SystemUser) -> Option<UserPhase> {
    u.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn kubectl_usher_shows_resends_releases_and_finds() {
    let client = client().await;
    let ns = namespace(&client, "plugin").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let mut yaml = String::from(
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme Charging\n  offboarding: {policy: Deactivate, maxPerHour: 1}\n",
    );
    for (name, domain) in [
        ("carl", "acme.example"),
        ("dora", "acme.example"),
        ("eli", "elsewhere.example"),
    ] {
        yaml.push_str(&format!("---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {name}}}\nspec: {{tenantRef: {{name: acme}}, email: {name}@{domain}}}\n"));
    }
    apply_yaml(&client, &ns, &yaml).await;
    let _usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    for name in ["carl", "dora", "eli"] {
        wait_for(&users, name, "Pending", |u| {
            phase(u) == Some(UserPhase::Pending)
        })
        .await;
    }
    let plugins = plugin_dir();

    // Help names the plugin as it was called.
    let (ok, help, _) = kubectl_usher(&plugins, &["--help"]);
    assert!(ok && help.contains("kubectl usher"), "{help}");

    // status: the tenant's counts, and who has not accepted yet.
    let (ok, page, err) = kubectl_usher(&plugins, &["status", "-n", &ns]);
    assert!(ok, "{err}");
    assert!(
        page.contains(&format!(
            "Tenant {ns}/acme (Acme Charging): 3 people: 3 Pending"
        )),
        "{page}"
    );
    for name in ["carl", "dora", "eli"] {
        assert!(page.contains(name), "{name} is not listed:\n{page}");
    }

    // find: the same search as `usher find`.
    let (ok, found, err) = kubectl_usher(&plugins, &["find", "elsewhere", "-n", &ns]);
    assert!(ok, "{err}");
    assert!(
        found.contains("eli@elsewhere.example") && !found.contains("carl"),
        "{found}"
    );

    // resend: a second invitation, and a second mail.
    let (ok, said, err) = kubectl_usher(&plugins, &["resend", "carl", "-n", &ns]);
    assert!(ok && said.contains("systemuser/carl"), "{said}{err}");
    wait_for(&users, "carl", "attempt 2", |u| {
        u.status
            .as_ref()
            .and_then(|s| s.invitation.as_ref())
            .is_some_and(|i| i.attempts == 2)
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        let to_carl = smtp
            .messages()
            .iter()
            .filter(|m| crate::support::recipient(m) == "carl@acme.example")
            .count();
        (to_carl == 2).then_some(())
    })
    .await
    .expect("a second mail to carl");

    // A name that does not exist: a clear error and a failing exit status.
    let (ok, _, err) = kubectl_usher(&plugins, &["resend", "nobody", "-n", &ns]);
    assert!(!ok && err.contains("no SystemUser \"nobody\""), "{err}");

    // release: with one offboarding per hour, deleting two people holds one until released.
    for name in ["dora", "eli"] {
        users
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    wait_for(&tenants, "acme", "OffboardingThrottled", |t| {
        t.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "OffboardingThrottled" && c.status == "True")
        })
    })
    .await;
    let (ok, said, err) = kubectl_usher(&plugins, &["release", "acme", "-n", &ns]);
    assert!(ok && said.contains("tenant/acme"), "{said}{err}");
    eventually(Duration::from_secs(60), || async {
        let left = users.list(&Default::default()).await.ok()?.items.len();
        (left == 1).then_some(())
    })
    .await
    .expect("the held offboarding went after the release");
}

#[test]
fn version_and_completions() {
    let (code, out, err) = usher_cli(&["version", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let version: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["apiVersions"][0], "usher.dev/v1alpha1");
    let (code, line, _) = usher_cli(&["version"]);
    assert_eq!(code, 0);
    assert!(
        line.starts_with(&format!("usher {} (revision ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );

    // A completion script each shell accepts: bash parses it, and it completes the commands.
    let (code, script, err) = usher_cli(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = usher_testenv::scratch_dir("completions").unwrap();
    let file = dir.join("usher.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p usher >/dev/null && COMP_WORDS=(usher re); COMP_CWORD=1; COMP_LINE='usher re'; COMP_POINT=8; _usher usher re usher && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .expect("bash runs");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for command in ["resend", "release", "review"] {
        assert!(
            said.lines().any(|l| l == command),
            "{command} not completed: {said}"
        );
    }
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let (code, script, err) = usher_cli(&["completions", shell]);
        assert!(code == 0 && script.contains("usher"), "{shell}: {err}");
    }
    let (code, _, err) = usher_cli(&["completions", "tcsh"]);
    assert_ne!(code, 0);
    assert!(err.contains("tcsh"), "{err}");
}
