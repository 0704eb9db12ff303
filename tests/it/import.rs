//! Issue 17, inviting a list: `usher import` turns a messy spreadsheet export into manifests;
//! `usher validate` passes them, and applied to the real control plane with usher running, the
//! people are invited with their role.

use kube::api::Api;
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply, client, discovery, documents, namespace, usher_cli, wait_for, yaml_files,
};

/// An export as spreadsheets write them: a BOM, `;` separators, CRLF line ends, quoted fields, a
/// blank line, a duplicate, a row without an address and one whose address admission refuses.
const EXPORT: &str = "\u{feff}E-Mail;Vorname;First name;Last Name;Company;ZIP;City\r\n\
    nora@acme.example;x;Nora;\"Nguyen; Jr.\";\"Acme \"\"Field\"\" Service\";93701;Fresno\r\n\
    \r\n\
    Omar@Acme.example;x;Omar;Haddad;;93702;Fresno\r\n\
    NORA@acme.example;x;Nora;Again;;;\r\n\
    ;x;Nobody;;;;\r\n\
    ana@acme.example.;x;Ana;;;;\r\n";

fn usher(args: &[&str]) -> (i32, String) {
    let (code, out, err) = usher_cli(args);
    (code, out + &err)
}

#[tokio::test]
async fn a_spreadsheet_export_becomes_manifests_that_invite_its_people() {
    let client = client().await;
    let ns = namespace(&client, "import").await;
    let dir = usher_testenv::scratch_dir("import").unwrap();
    let out = dir.join("tenants/acme");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("tenant.yaml"),
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme\n  invitations: {allowedDomains: [acme.example]}\n",
    )
    .unwrap();
    let csv = dir.join("people.csv");
    std::fs::write(&csv, EXPORT).unwrap();
    let args = |out: &std::path::Path| {
        vec![
            "import".to_string(),
            csv.display().to_string(),
            "--tenant".into(),
            "acme".into(),
            "-n".into(),
            ns.clone(),
            "--role".into(),
            "Manager".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let run = |out: &std::path::Path| {
        let a = args(out);
        usher(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, said) = run(&out);
    assert_eq!(code, 1, "a refused row makes the exit status 1:\n{said}");
    for expected in [
        "people.csv:2: written",
        "people.csv:4: written",
        "people.csv:5: refused: DuplicateEmail",
        "people.csv:6: refused: no email",
        "people.csv:7: refused: SystemUser/",
        "2 written, 0 already declared, 3 refused",
    ] {
        assert!(said.contains(expected), "{expected:?} missing in:\n{said}");
    }
    assert!(said.contains("spec.email"), "the admission reason: {said}");

    // Idempotent: a second run writes nothing and says who is already there.
    let before: Vec<_> = yaml_files(&out)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let (_, again) = run(&out);
    assert!(
        again.contains("0 written, 3 already declared, 2 refused"),
        "{again}"
    );
    let after: Vec<_> = yaml_files(&out)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(before, after, "nothing rewritten");

    // What git would hold passes `usher validate`, and the cluster invites the people.
    let (code, said) = usher(&["validate", &out.display().to_string()]);
    assert_eq!(code, 0, "{said}");
    let discovery = discovery(&client).await;
    for file in yaml_files(&out) {
        for doc in documents(&file) {
            apply(&client, &discovery, &ns, &doc)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
    let smtp = Smtp::start().expect("SMTP sink");
    let _usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let listed = users.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    for u in listed.items {
        let name = u.metadata.name.clone().unwrap();
        let invited = wait_for(&users, &name, "Pending with Manager", |u| {
            u.status.as_ref().is_some_and(|s| {
                s.phase == Some(UserPhase::Pending) && s.roles == ["Manager@tenant"]
            })
        })
        .await;
        if invited.spec.email == "nora@acme.example" {
            assert_eq!(invited.spec.last_name.as_deref(), Some("Nguyen; Jr."));
            assert_eq!(
                invited.spec.company.as_deref(),
                Some("Acme \"Field\" Service")
            );
        }
    }
}
