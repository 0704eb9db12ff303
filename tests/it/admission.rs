use std::collections::BTreeMap;
use std::path::Path;

use crate::support::{client, kubectl, namespace, repo, yaml_files};

/// The expectations a corpus file states in its leading comments.
fn expectations(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect-"))
        .filter_map(|l| l.split_once(": "))
        .collect()
}

/// `spec.roles[1]` → `spec.roles`: server-side apply names the list, not the index.
fn without_index(field: &str) -> &str {
    field.split('[').next().unwrap_or(field)
}

/// Apply one corpus file the way a user or GitOps tool does; None when it was accepted.
fn rejection(file: &Path, ns: &str, server_side: bool) -> Option<String> {
    let file = file.display().to_string();
    let mut args = vec!["apply", "-n", ns, "-f", &file];
    if server_side {
        args.push("--server-side");
    }
    let (ok, output) = kubectl(&args);
    (!ok).then_some(output)
}

/// Each manifest of tests/invalid/ is rejected by the API server itself (OpenAPI schema and CEL
/// rules of the CRDs), with a message that names the offending field — through `kubectl apply`
/// (Argo CD, scripts) and through server-side apply (Flux).
#[tokio::test]
async fn invalid_manifests_are_rejected_at_admission_naming_the_field() {
    let client = client().await;
    let files = yaml_files(&repo().join("tests/invalid"));
    assert!(
        files.len() >= 20,
        "the corpus holds only {} manifests",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let expect = expectations(&text);
        let field = *expect
            .get("field")
            .unwrap_or_else(|| panic!("{} lacks '# expect-field:'", file.display()));
        for server_side in [false, true] {
            let ns = namespace(&client, "invalid").await;
            let mode = if server_side {
                "server-side"
            } else {
                "client-side"
            };
            let Some(output) = rejection(file, &ns, server_side) else {
                failures.push(format!("{} ({mode}): accepted", file.display()));
                continue;
            };
            // What a file shows admitted beside what it shows refused is admitted too.
            let documents = text.split("\n---\n").count();
            let admitted = output
                .lines()
                .filter(|l| l.ends_with(" created") || l.ends_with(" serverside-applied"))
                .count();
            if admitted != documents - 1 {
                failures.push(format!(
                    "{} ({mode}): {admitted} of the {} documents before the last admitted: {}",
                    file.display(),
                    documents - 1,
                    output.trim()
                ));
                continue;
            }
            let names_field = if server_side {
                output.contains(without_index(field))
            } else {
                output.contains(&format!("{field}:")) || output.contains(&format!("\"{field}\""))
            };
            let says_why = expect.get("message").is_none_or(|m| output.contains(m));
            // Server-side apply reports duplicate keys and unknown fields while building the
            // patch, with its own wording; the field is what matters there.
            let says_why = says_why || server_side;
            if !(names_field && says_why) {
                failures.push(format!("{} ({mode}): {}", file.display(), output.trim()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "not rejected as expected:\n{}",
        failures.join("\n")
    );
}
