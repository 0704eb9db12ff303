//! `usher find WORD`: the keyword search of a product's admin pages, over the fields people
//! search by — first and last name, email, company, street, city, region, postal code, country
//! and phone. Case-insensitive (Unicode), ignoring surrounding blanks; a phone number matches on
//! its digits alone, so `555-0100`, `5550100` and `(559) 555 0100` find `+1 559 555 0100`.

use crate::crd::SystemUser;

/// Whether `user` matches `word`: some searched field contains it, case-insensitively, or, when
/// `word` has at least three digits, the phone's digits contain its digits. An empty word
/// matches everyone.
pub fn matches(user: &SystemUser, word: &str) -> bool {
    let word = word.trim().to_lowercase();
    if word.is_empty() {
        return true;
    }
    let s = &user.spec;
    let address = s.address.as_ref();
    let fields = [
        s.first_name.as_deref(),
        s.last_name.as_deref(),
        Some(s.email.as_str()),
        s.company.as_deref(),
        address.and_then(|a| a.street.as_deref()),
        address.and_then(|a| a.city.as_deref()),
        address.and_then(|a| a.region.as_deref()),
        address.and_then(|a| a.postal_code.as_deref()),
        address.and_then(|a| a.country.as_deref()),
        s.phone.as_deref(),
    ];
    if fields
        .iter()
        .flatten()
        .any(|f| f.to_lowercase().contains(&word))
    {
        return true;
    }
    // A full name typed as one phrase ("Dana Lee") is the first and last name together.
    let full = [s.first_name.as_deref(), s.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    if full.contains(&word) {
        return true;
    }
    let digits: String = word.chars().filter(char::is_ascii_digit).collect();
    digits.len() >= 3
        && s.phone.as_deref().is_some_and(|p| {
            p.chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .contains(&digits)
        })
}

/// One row of `usher find`'s table, as `kubectl get` prints it: namespace, name, email, full
/// name, company, city, phone, phase (`<none>` where empty).
pub fn row(user: &SystemUser) -> [String; 8] {
    let none = || "<none>".to_string();
    let s = &user.spec;
    let name = [s.first_name.as_deref(), s.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    [
        user.metadata.namespace.clone().unwrap_or_else(none),
        user.metadata.name.clone().unwrap_or_else(none),
        s.email.clone(),
        if name.is_empty() { none() } else { name },
        s.company.clone().unwrap_or_else(none),
        s.address
            .as_ref()
            .and_then(|a| a.city.clone())
            .unwrap_or_else(none),
        s.phone.clone().unwrap_or_else(none),
        user.status
            .as_ref()
            .and_then(|st| st.phase)
            .map_or_else(none, |p| format!("{p:?}")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(value: serde_json::Value) -> SystemUser {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "usher.dev/v1alpha1", "kind": "SystemUser",
            "metadata": {"name": "dana", "namespace": "acme"},
            "spec": value,
        }))
        .unwrap()
    }

    #[test]
    fn every_searched_field_is_found_whatever_the_case_and_blanks() {
        let dana = person(serde_json::json!({
            "tenantRef": {"name": "acme"}, "email": "Dana.Lee@Acme.example",
            "firstName": "Dana", "lastName": "Lee-Müller", "company": "Fresno Charging Co.",
            "phone": "+1 (559) 555-0100",
            "address": {"street": "12 Olive Ave", "city": "Fresno", "region": "CA",
                        "postalCode": "93701", "country": "US"}
        }));
        for word in [
            "dana",
            "LEE",
            "müller",
            "MÜLLER",
            "dana lee",
            "  acme.example ",
            "charging co",
            "olive",
            "fresno",
            "93701",
            "us",
            "555-0100",
            "5550100",
            "(559) 555 0100",
            "+15595550100",
            "",
        ] {
            assert!(matches(&dana, word), "{word:?} should find Dana");
        }
        for word in ["bob", "sacramento", "12345", "777", "globex"] {
            assert!(!matches(&dana, word), "{word:?} should not find Dana");
        }
    }

    #[test]
    fn a_row_shows_what_is_there_and_none_for_what_is_not() {
        let bare =
            person(serde_json::json!({"tenantRef": {"name": "acme"}, "email": "x@acme.example"}));
        assert_eq!(
            row(&bare),
            [
                "acme",
                "dana",
                "x@acme.example",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
                "<none>"
            ]
            .map(String::from)
        );
    }
}
