//! People accept in a real browser: headless Chromium, driven through chromedriver. One opens
//! the link from the mail the SMTP server received and submits; another types their address and
//! the short code from their mail. Both see the success page.

use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use kube::api::Api;
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::{ChromeDriver, Smtp};

use crate::support::{
    Usher, apply_yaml, client, invitation_in, namespace, recipient, short_code_in, wait_for,
};

/// Click `button` and read the page that answers: (title, message). The answer replaces the
/// form's page; until it has, the form's elements are found (or go stale under our hands), so
/// read until the title is another, for up to 30 s.
async fn submit(
    browser: &fantoccini::Client,
    button: &str,
) -> Result<(String, String), fantoccini::error::CmdError> {
    let form_title = browser.find(Locator::Id("title")).await?.text().await?;
    browser.find(Locator::Id(button)).await?.click().await?;
    let read = || async {
        let title = browser.find(Locator::Id("title")).await?.text().await?;
        let message = browser.find(Locator::Id("message")).await?.text().await?;
        Ok::<_, fantoccini::error::CmdError>((title, message))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match read().await {
            Ok((title, message)) if title != form_title => break Ok((title, message)),
            Err(e) if std::time::Instant::now() > deadline => break Err(e),
            Ok(answer) if std::time::Instant::now() > deadline => break Ok(answer),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn a_person_accepts_the_invitation_in_chromium() {
    let client = client().await;
    let ns = namespace(&client, "browser").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme Charging\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: frank}\nspec:\n  tenantRef: {name: acme}\n  email: frank@acme.example\n  firstName: Frank\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: gina}\nspec:\n  tenantRef: {name: acme}\n  email: gina@acme.example\n  firstName: Gina\n",
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let mails = crate::support::eventually(Duration::from_secs(30), || async {
        let m = smtp.messages();
        (m.len() >= 2).then_some(m)
    })
    .await
    .expect("two invitation mails");
    let mail_to = |to: &str| mails.iter().find(|m| recipient(m) == to).expect("a mail");
    let (link, token) = invitation_in(mail_to("frank@acme.example"));
    let code = short_code_in(mail_to("gina@acme.example"));

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
        let by_link = submit(&browser, "accept").await?;
        // Gina has no link at hand: she types her address and the code, as people do.
        browser.goto(&format!("{}/accept", usher.url)).await?;
        let email = browser.find(Locator::Id("email")).await?;
        email.send_keys("gina@acme.example").await?;
        let typed = browser.find(Locator::Id("code")).await?;
        typed.send_keys(&code.to_lowercase()).await?;
        let by_code = submit(&browser, "accept-code").await?;
        Ok::<_, fantoccini::error::CmdError>((prefilled, by_link, by_code))
    }
    .await;
    let _ = browser.close().await;
    let (prefilled, (title, message), (code_title, code_message)) =
        result.expect("the browser session");
    assert_eq!(prefilled, token, "the link prefills the token");
    assert_eq!(title, "Invitation accepted", "{message}");
    assert!(message.contains("frank@acme.example"), "{message}");
    assert_eq!(code_title, "Invitation accepted", "{code_message}");
    assert!(code_message.contains("gina@acme.example"), "{code_message}");

    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    for person in ["frank", "gina"] {
        wait_for(&users, person, "Active", |u| {
            u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
        })
        .await;
    }
    assert_eq!(usher.redeem(&token).await.0, 409);
}
