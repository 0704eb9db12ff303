//! Issue 17, search: `kubectl get systemusers --field-selector` on the fields admins search by,
//! and `usher find WORD` across all of them, on messy real-world data, against the real control
//! plane.

use crate::support::{apply_yaml, client, kubectl, namespace, usher_cli};

const PEOPLE: &str = "\
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: dana}
spec:
  tenantRef: {name: acme}
  email: Dana.Lee@Acme.example
  firstName: Dana
  lastName: Lee-Müller
  company: Fresno Charging Co.
  phone: +1 (559) 555-0100
  address: {street: 12 Olive Ave, city: Fresno, postalCode: '93701', country: US}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: jose}
spec:
  tenantRef: {name: acme}
  email: jose@acme.example
  firstName: José
  lastName: Álvarez
  company: ACME field service
  phone: 559.555.0199
  address: {city: Fresno, postalCode: '93702'}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: kim}
spec:
  tenantRef: {name: acme}
  email: kim@globex.example
  firstName: Kim
  company: Globex
  address: {city: Sacramento, postalCode: '95814'}
";

fn usher_find(args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = usher_cli(&[&["find"], args].concat());
    (code == 0, out, err)
}

/// The NAME column of a table printed without NAMESPACE.
fn names(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn admins_find_people_by_any_field_and_select_by_the_exact_ones() {
    let client = client().await;
    let ns = namespace(&client, "find").await;
    apply_yaml(&client, &ns, PEOPLE).await;

    for (word, expected) in [
        ("fresno", vec!["dana", "jose"]),
        ("MÜLLER", vec!["dana"]),
        ("josé", vec!["jose"]),
        ("dana lee", vec!["dana"]),
        ("acme.example", vec!["dana", "jose"]),
        ("5550100", vec!["dana"]),
        ("(559) 555", vec!["dana", "jose"]),
        ("9370", vec!["dana", "jose"]),
        ("globex", vec!["kim"]),
    ] {
        let (ok, out, err) = usher_find(&[word, "-n", &ns]);
        assert!(ok, "usher find {word}: {err}");
        assert!(out.starts_with("NAME"), "{out}");
        assert_eq!(names(&out), expected, "usher find {word:?}:\n{out}");
    }
    // The row shows what an admin needs to tell people apart.
    let (_, out, _) = usher_find(&["müller", "-n", &ns]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "EMAIL",
            "FULL NAME",
            "COMPANY",
            "CITY",
            "PHONE",
            "PHASE"
        ]
    );
    assert!(
        out.contains("Dana Lee-Müller") && out.contains("+1 (559) 555-0100"),
        "{out}"
    );
    // Across namespaces, with the namespace first; nothing found is said on stderr, exit 0.
    let (ok, out, _) = usher_find(&["sacramento", "-A"]);
    assert!(
        ok && out.starts_with("NAMESPACE") && out.contains(&ns),
        "{out}"
    );
    let (ok, out, err) = usher_find(&["nobody-is-called-this", "-n", &ns]);
    assert!(
        ok && out.is_empty() && err.contains("No SystemUsers match"),
        "{out}{err}"
    );

    // Field selectors: exact values, on the API server.
    for (selector, expected) in [
        ("spec.address.city=Fresno", "dana\njose"),
        ("spec.address.postalCode=95814", "kim"),
        ("spec.lastName=Álvarez", "jose"),
        ("spec.company=Globex", "kim"),
        ("spec.phone=+1 (559) 555-0100", "dana"),
        ("spec.firstName=Dana,spec.address.city=Fresno", "dana"),
    ] {
        let (ok, out) = kubectl(&[
            "get",
            "systemusers.usher.dev",
            "-n",
            &ns,
            "--field-selector",
            selector,
            "-o",
            "custom-columns=:metadata.name",
            "--no-headers",
        ]);
        assert!(ok, "{selector}: {out}");
        assert_eq!(out.trim(), expected, "{selector}");
    }
}
