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
        .get(format!("{}/readyz", usher.probe_url))
        .send()
        .await
        .expect("readyz answers");
    assert_eq!(ready.status(), 200);
    let (status, body) = usher.redeem(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "hana@acme.example");
    assert!(!usher.log().contains("panicked"), "{}", usher.log());
}

/// Behind an ingress every connection comes from the proxy. With `--trusted-proxies`, each client
/// it forwards for has its own redemption limit; without, X-Forwarded-For is not believed, so no
/// client can pick a fresh bucket by writing the header itself. Probes and metrics are served on
/// their own listener only.
#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit() {
    let client = client().await;
    let ns = namespace(&client, "trusted-proxy").await;
    let smtp = usher_testenv::Smtp::start().expect("SMTP sink");
    let http = reqwest::Client::new();
    // Each try another unknown token, so that only the client limit can answer 429.
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let tries = |usher_url: String, forwarded_for: &'static str| {
        let http = http.clone();
        let token = format!(
            "{:A>43}",
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        async move {
            http.post(format!("{usher_url}/api/v1/invitations/redeem"))
                .header("x-forwarded-for", forwarded_for)
                .json(&serde_json::json!({ "token": token }))
                .send()
                .await
                .expect("the API answers")
                .status()
                .as_u16()
        }
    };
    let behind = Usher::start(&ns, &smtp.url(), &["--trusted-proxies", "127.0.0.1"]).await;
    // One client uses up its 10 tries (unknown tokens: 404), then waits.
    for _ in 0..10 {
        assert_eq!(tries(behind.url.clone(), "203.0.113.1").await, 404);
    }
    assert_eq!(tries(behind.url.clone(), "203.0.113.1").await, 429);
    // Another client behind the same proxy is not held back, even if it claims to be a third
    // party further left: the proxy's own entry (the rightmost) is what counts.
    assert_eq!(
        tries(behind.url.clone(), "203.0.113.1, 203.0.113.2").await,
        404
    );

    // Not trusted: the header is the client's own word, and one peer is one bucket.
    let direct = Usher::start(&ns, &smtp.url(), &[]).await;
    let forged = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.5",
    ];
    for i in 0..10 {
        assert_eq!(
            tries(direct.url.clone(), forged[i % forged.len()]).await,
            404
        );
    }
    assert_eq!(tries(direct.url.clone(), "198.51.100.9").await, 429);

    // The public listener has no probes and no metrics; the probe listener has them.
    for path in ["/metrics", "/readyz", "/healthz"] {
        let public = http
            .get(format!("{}{path}", direct.url))
            .send()
            .await
            .unwrap();
        assert_eq!(public.status().as_u16(), 404, "{path} is public");
        let probe = http
            .get(format!("{}{path}", direct.probe_url))
            .send()
            .await
            .unwrap();
        assert_eq!(probe.status().as_u16(), 200, "{path} on the probe listener");
    }
}
