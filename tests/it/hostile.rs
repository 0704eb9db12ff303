//! Hostile requests over real HTTP: oversized, undecodable, mistyped and deeply nested bodies
//! and an oversized link each get a 4xx that says why, and usher goes on serving: ready, and a
//! real invitation is still accepted afterwards.

use reqwest::header::CONTENT_TYPE;
use usher_testenv::Smtp;

use crate::support::{Usher, apply_yaml, client, first_mail, invitation_in, namespace};

const PEOPLE: &str = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme Charging\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: hana}\nspec:\n  tenantRef: {name: acme}\n  email: hana@acme.example\n";

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// What a refusal says: the JSON `error`, or the message of the HTML page.
fn reason(content_type: &str, body: &str) -> Option<String> {
    let text = if content_type.starts_with(JSON) {
        serde_json::from_str::<serde_json::Value>(body).ok()?["error"]
            .as_str()?
            .to_string()
    } else {
        let start = body.find("id=\"message\"")?;
        let rest = &body[start..];
        rest[rest.find('>')? + 1..rest.find("</p>")?].to_string()
    };
    (text.split_whitespace().count() >= 2).then_some(text)
}

#[tokio::test]
async fn hostile_requests_get_a_clear_4xx_and_usher_keeps_serving() {
    let client = client().await;
    let ns = namespace(&client, "hostile").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, PEOPLE).await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let raw = first_mail(&smtp).await;
    let (_, token) = invitation_in(&raw);

    let api = format!("{}/api/v1/invitations/redeem", usher.url);
    let accept = format!("{}/accept", usher.url);
    // A connection each: a refused request may end its connection, and reusing one the server
    // is closing fails on the client's side, whatever the server answered.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");
    let post = |url: &str, content_type: Option<&str>, body: Vec<u8>| {
        let request = http.post(url).body(body);
        match content_type {
            Some(ct) => request.header(CONTENT_TYPE, ct),
            None => request,
        }
    };
    let nested = |depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
    let bad_utf8 = b"{\"token\": \"\xff\xfe\"}".to_vec();
    let cases = [
        (
            "1 MB of JSON",
            post(&api, Some(JSON), vec![b' '; 1 << 20]),
            413,
        ),
        (
            "1 MB form",
            post(&accept, Some(FORM), vec![b'a'; 1 << 20]),
            413,
        ),
        ("bad UTF-8 in JSON", post(&api, Some(JSON), bad_utf8), 400),
        (
            "bad UTF-8 in a form",
            post(&accept, Some(FORM), b"token=\xff\xfe".to_vec()),
            400,
        ),
        (
            "text/plain to the API",
            post(&api, Some("text/plain"), b"{}".to_vec()),
            415,
        ),
        (
            "no content type to the API",
            post(&api, None, b"{}".to_vec()),
            415,
        ),
        (
            "a form to the API",
            post(&api, Some(FORM), b"token=a".to_vec()),
            415,
        ),
        (
            "JSON to the form",
            post(&accept, Some(JSON), b"{\"token\": \"a\"}".to_vec()),
            415,
        ),
        (
            "a form without token",
            post(&accept, Some(FORM), b"name=x".to_vec()),
            400,
        ),
        (
            "JSON without token",
            post(&api, Some(JSON), b"{\"name\": \"x\"}".to_vec()),
            400,
        ),
        (
            "JSON nested 10,000 deep",
            post(&api, Some(JSON), nested(10_000)),
            413,
        ),
        (
            "JSON nested 4,000 deep, within the limit",
            post(&api, Some(JSON), nested(4_000)),
            400,
        ),
        ("DELETE on the API", http.delete(&api), 405),
    ];
    for (what, request, expected) in cases {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let status = response.status().as_u16();
        let ct = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.expect("a text body");
        assert_eq!(status, expected, "{what}: {text}");
        assert!(
            reason(&ct, &text).is_some() || ct.starts_with("text/plain") && !text.trim().is_empty(),
            "{what}: {status} says nothing readable: {text}"
        );
    }

    // A link with 10 KB where the code goes: the page says so and offers an empty form.
    let page = http
        .get(format!("{accept}?token={}", "A".repeat(10_000)))
        .send()
        .await
        .expect("the page answers");
    assert_eq!(page.status(), 400);
    let text = page.text().await.expect("page text");
    assert!(
        reason("text/html", &text).is_some_and(|r| r.contains("malformed")),
        "{text}"
    );
    assert!(
        !text.contains(&"A".repeat(129)),
        "the oversized code is echoed"
    );

    // Still alive, ready, and accepting the real invitation.
    let ready = http
        .get(format!("{}/readyz", usher.url))
        .send()
        .await
        .expect("readyz answers");
    assert_eq!(ready.status(), 200);
    let (status, body) = usher.redeem(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "hana@acme.example");
    assert!(!usher.log().contains("panicked"), "{}", usher.log());
}
