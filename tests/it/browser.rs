//! A person accepts in a real browser: headless Chromium, driven through chromedriver, opens
//! the link from the mail the SMTP server received, submits, and sees the success page.

use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use kube::api::Api;
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::{ChromeDriver, Smtp};

use crate::support::{Usher, apply_yaml, client, first_mail, invitation_in, namespace, wait_for};

#[tokio::test]
async fn a_person_accepts_the_invitation_in_chromium() {
    let client = client().await;
    let ns = namespace(&client, "browser").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme Charging\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: frank}\nspec:\n  tenantRef: {name: acme}\n  email: frank@acme.example\n  firstName: Frank\n",
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let raw = first_mail(&smtp).await;
    let (link, token) = invitation_in(&raw);

    // The page protects the token in its URL and cannot be framed.
    let page = reqwest::get(&link).await.expect("page answers");
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
    assert!(
        header("content-security-policy").is_some_and(|c| c.contains("frame-ancestors 'none'"))
    );

    let driver = ChromeDriver::start().expect("chromedriver");
    let profile = usher_testenv::scratch_dir("chromium-profile").expect("profile dir");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    let result = async {
        browser.goto(&link).await?;
        let field = browser.find(Locator::Id("token")).await?;
        let prefilled = field.prop("value").await?.unwrap_or_default();
        let form_title = browser.find(Locator::Id("title")).await?.text().await?;
        browser.find(Locator::Id("accept")).await?.click().await?;
        // The answer page replaces the form's: until it has, the form's elements are found (or
        // go stale under our hands), so read until the title is another.
        let read = || async {
            let title = browser.find(Locator::Id("title")).await?.text().await?;
            let message = browser.find(Locator::Id("message")).await?.text().await?;
            Ok::<_, fantoccini::error::CmdError>((title, message))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match read().await {
                Ok((title, message)) if title != form_title => {
                    break Ok((prefilled, title, message));
                }
                Err(e) if std::time::Instant::now() > deadline => break Err(e),
                Ok((title, message)) if std::time::Instant::now() > deadline => {
                    break Ok((prefilled, title, message));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    .await;
    let _ = browser.close().await;
    let (prefilled, title, message) = result.expect("the browser session");
    assert_eq!(prefilled, token, "the link prefills the token");
    assert_eq!(title, "Invitation accepted", "{message}");
    assert!(message.contains("frank@acme.example"), "{message}");

    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "frank", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;
    assert_eq!(usher.redeem(&token).await.0, 409);
}
