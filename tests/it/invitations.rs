//! Invitations end to end against the real control plane, a real SMTP server and the embedded
//! store: SystemUser → account → token → mail → Pending → redeem → Active.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use usher::crd::{SystemUser, Tenant, UserPhase};
use usher_testenv::{Smtp, SmtpTls};

use crate::support::{
    Usher, apply_yaml, client, events_of, eventually, invitation_in, namespace, recipient,
    short_code_in, wait_for,
};

fn tenant(extra: &str) -> String {
    format!(
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec:\n  displayName: Acme Charging\n  invitations:\n    from: \"Acme Portal <no-reply@acme.example>\"\n{extra}"
    )
}

fn user(name: &str, email: &str, first: &str) -> String {
    format!(
        "---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {name}}}\nspec:\n  tenantRef: {{name: acme}}\n  email: {email}\n  firstName: {first}\n  lastName: Ng\n"
    )
}

fn phase(u: &SystemUser) -> Option<UserPhase> {
    u.status.as_ref().and_then(|s| s.phase)
}

async fn mails(smtp: &Smtp, count: usize) -> Vec<Vec<u8>> {
    eventually(Duration::from_secs(30), || async {
        let m = smtp.messages();
        (m.len() >= count).then_some(m)
    })
    .await
    .unwrap_or_else(|| panic!("expected {count} mails, got {}", smtp.messages().len()))
}

#[tokio::test]
async fn invited_person_redeems_and_becomes_active() {
    let client = client().await;
    let ns = namespace(&client, "invite-flow").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("") + &user("alice", "alice@acme.example", "Alice")),
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);

    let pending = wait_for(&users, "alice", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let status = pending.status.clone().unwrap();
    let invitation = status.invitation.clone().expect("invitation status");
    assert_eq!(invitation.attempts, 1);
    assert!(invitation.sent_at.is_some() && invitation.expires_at.is_some());
    assert!(status.user_id.is_some());
    let ready = &status.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "True"),
        "{ready:?}"
    );

    let mail = mails(&smtp, 1).await;
    assert_eq!(mail.len(), 1, "one invitation, one mail");
    assert_eq!(recipient(&mail[0]), "alice@acme.example");
    let (link, token) = invitation_in(&mail[0]);
    assert!(
        link.starts_with(&format!("{}/accept?token=", usher.url)),
        "{link}"
    );
    let fingerprint = invitation.fingerprint.clone().expect("fingerprint");
    assert_eq!(
        fingerprint,
        usher::token::TokenHash::of(&token).fingerprint()
    );

    // The token is a secret: not in status, not in the logs.
    let shown = serde_json::to_string(&pending).unwrap();
    assert!(!shown.contains(&token), "token leaked into the object");
    assert!(!usher.log().contains(&token), "token leaked into the log");

    let clicked = std::time::Instant::now();
    let (code, body) = usher.redeem(&token).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["email"], "alice@acme.example");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["userId"], json!(status.user_id.clone().unwrap()));

    let active = wait_for(&users, "alice", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    // Reported, not asserted: speed is measured in `make bench`.
    println!("redeem → Active observed after {:?}", clicked.elapsed());
    assert!(active.status.as_ref().unwrap().activated_at.is_some());

    assert_eq!(usher.redeem(&token).await.0, 409, "a token is single use");
    assert_eq!(usher.redeem(&"A".repeat(43)).await.0, 404, "unknown token");
    assert_eq!(usher.redeem("not a token").await.0, 400, "malformed token");

    // Every transition left an Event on the SystemUser.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let reasons = eventually(Duration::from_secs(10), || async {
        let list = events.list(&Default::default()).await.ok()?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("alice"))
            .filter_map(|e| e.reason.clone())
            .collect();
        reasons
            .contains(&"InvitationRedeemed".to_string())
            .then_some(reasons)
    })
    .await
    .expect("an InvitationRedeemed Event");
    assert!(
        reasons.contains(&"InvitationSent".to_string()),
        "{reasons:?}"
    );

    // Guessing tokens is throttled within a few tries per client.
    let mut throttled_after = None;
    for i in 1..=12 {
        if usher.redeem(&format!("{i:0>43}")).await.0 == 429 {
            throttled_after = Some(i);
            break;
        }
    }
    assert!(
        throttled_after.is_some_and(|n| n <= 10),
        "no 429 within 10 guesses: {throttled_after:?}"
    );

    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    let t = wait_for(&tenants, "acme", "counting one active user", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.users.as_ref())
            .is_some_and(|c| c.active == 1)
    })
    .await;
    assert_eq!(t.status.unwrap().users.unwrap().total, 1);
}

/// Set the newest invitation of a user to expire `secs` from now, behind usher's back (the
/// admission floor of 5m is too long to wait for in a test).
fn expire_soon(db: &std::path::Path, secs: i64) {
    let at = jiff::Timestamp::now().as_microsecond() + secs * 1_000_000;
    crate::support::sql(
        db,
        &format!(
            "UPDATE invitations SET expires_us = {at} WHERE revoked_us IS NULL AND used_us IS NULL"
        ),
    );
}

#[tokio::test]
async fn expired_invitation_turns_expired_on_time_and_resend_issues_a_new_token() {
    let client = client().await;
    let ns = namespace(&client, "invite-expiry").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("    exposeToken: true\n    ttl: 5m\n") + &user("bob", "bob@acme.example", "Bob")),
    )
    .await;
    let mut usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "bob", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let first = mails(&smtp, 1).await;
    let (_, old_token) = invitation_in(&first[0]);

    // The exposed Secret holds the same token and belongs to the SystemUser.
    let secret = secrets
        .get("bob-invitation")
        .await
        .expect("invitation Secret");
    let data = secret.data.clone().unwrap();
    assert_eq!(
        String::from_utf8(data["token"].0.clone()).unwrap(),
        old_token
    );
    let owner = &secret.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("SystemUser", "bob")
    );

    // Make it expire in 3 s and restart, so usher's own requeue-at-expiry must notice.
    usher.kill();
    expire_soon(&usher.db, 3);
    usher.restart().await;
    let expired = wait_for(&users, "bob", "Expired", |u| {
        phase(u) == Some(UserPhase::Expired)
    })
    .await;
    let ready = &expired.status.as_ref().unwrap().conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvitationExpired")
    );
    eventually(Duration::from_secs(30), || async {
        secrets
            .get_opt("bob-invitation")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("the Secret goes when the invitation expires");
    assert_eq!(usher.redeem(&old_token).await.0, 410, "an expired token");

    // Resend: a new mail with a new token; the old one stays refused.
    users
        .patch(
            "bob",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"usher.dev/resend-invitation": "1"}}}),
            ),
        )
        .await
        .expect("annotate");
    let pending = wait_for(&users, "bob", "Pending again", |u| {
        phase(u) == Some(UserPhase::Pending)
            && u.status
                .as_ref()
                .and_then(|s| s.invitation.as_ref())
                .is_some_and(|i| i.attempts == 2)
    })
    .await;
    let second = mails(&smtp, 2).await;
    assert_eq!(second.len(), 2);
    let (_, new_token) = invitation_in(&second[1]);
    assert_ne!(new_token, old_token);
    assert_eq!(
        pending
            .status
            .unwrap()
            .invitation
            .unwrap()
            .fingerprint
            .unwrap(),
        usher::token::TokenHash::of(&new_token).fingerprint()
    );
    let secret = wait_for(&secrets, "bob-invitation", "holding the new token", |s| {
        s.data
            .as_ref()
            .and_then(|d| d.get("token"))
            .is_some_and(|t| t.0 == new_token.as_bytes())
    })
    .await;
    assert!(secret.metadata.owner_references.is_some());
    assert_eq!(usher.redeem(&old_token).await.0, 410, "the revoked token");
    assert_eq!(usher.redeem(&new_token).await.0, 200);
    wait_for(&users, "bob", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        secrets
            .get_opt("bob-invitation")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("the Secret goes once redeemed");
    // The same annotation value again changes nothing.
    assert_eq!(smtp.messages().len(), 2);
}

/// POST an address and a short code to the acceptance form, as the page's second form does;
/// (status, page).
async fn type_code(usher: &Usher, email: &str, code: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/accept", usher.url))
        .form(&[("email", email), ("code", code)])
        .send()
        .await
        .expect("the form answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_person_types_the_short_code_with_their_address() {
    let client = client().await;
    let ns = namespace(&client, "invite-code").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("    exposeToken: true\n")
            + &user("alice", "alice@acme.example", "Alice")
            + &user("pat", "pat@acme.example", "Pat")),
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sent = mails(&smtp, 2).await;
    let code_of = |to: &str| {
        let mail = sent.iter().find(|m| recipient(m) == to).expect("a mail");
        short_code_in(mail)
    };
    let (alice, pat) = (code_of("alice@acme.example"), code_of("pat@acme.example"));
    assert_ne!(alice, pat);

    // The Secret holds the code the mail shows.
    let secret = wait_for(&secrets, "alice-invitation", "holding a code", |s| {
        s.data.as_ref().is_some_and(|d| d.contains_key("code"))
    })
    .await;
    assert_eq!(secret.data.unwrap()["code"].0, alice.as_bytes());

    // A code is nothing without its address, and the answer says what to check.
    let (status, page) = type_code(&usher, "pat@acme.example", &alice).await;
    assert_eq!(status, 404, "{page}");
    assert!(
        page.contains("no invitation to this address has this code"),
        "{page}"
    );

    // Guessing Pat's code: five tries for the address (the one above was the first), then even
    // the right code waits.
    for guess in ["00000-00000", "11111-11111", "22222-22222", "33333-33333"] {
        assert_eq!(type_code(&usher, "pat@acme.example", guess).await.0, 404);
    }
    assert_eq!(type_code(&usher, "PAT@acme.example", &pat).await.0, 429);

    // Alice types hers as people do: lower case, a space for the hyphen, her address in capitals.
    let typed = alice.to_lowercase().replace('-', " ");
    let (status, page) = type_code(&usher, "Alice@ACME.example", &typed).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Invitation accepted"), "{page}");
    let active = wait_for(&users, "alice", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    // Single use, and never shown: not in the status, not in an Event, not in the log.
    assert_eq!(type_code(&usher, "alice@acme.example", &alice).await.0, 409);
    let status = serde_json::to_string(&active.status).unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let events =
        serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    for code in [&alice, &pat] {
        let compact = code.replace('-', "");
        for (place, text) in [
            ("status", &status),
            ("Events", &events),
            ("log", &usher.log()),
        ] {
            assert!(
                !text.contains(code.as_str()) && !text.contains(&compact),
                "a short code in the {place}"
            );
        }
    }
}

#[tokio::test]
async fn a_crash_between_recording_and_sending_loses_nothing_and_sends_once() {
    let client = client().await;
    let ns = namespace(&client, "invite-crash").await;
    let mut smtp = Smtp::start().expect("SMTP sink");
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    // The mail server is down: usher records the invitation, fails to send, says so.
    smtp.stop();
    apply_yaml(
        &client,
        &ns,
        &(tenant("") + &user("carol", "carol@acme.example", "Carol")),
    )
    .await;
    let mut usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let unsent = wait_for(&users, "carol", "InvitationNotSent", |u| {
        u.status.as_ref().is_some_and(|s| {
            s.conditions
                .first()
                .is_some_and(|c| c.reason == "InvitationNotSent")
        })
    })
    .await;
    let message = &unsent.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("sending mail"), "{message}");
    // Crash now, between "recorded" and "sent"; the mail server comes back; usher restarts.
    usher.kill();
    smtp.resume().expect("SMTP back");
    usher.restart().await;
    let pending = wait_for(&users, "carol", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
            && u.status
                .as_ref()
                .and_then(|s| s.invitation.as_ref())
                .is_some_and(|i| i.sent_at.is_some())
    })
    .await;
    let sent = mails(&smtp, 1).await;
    assert_eq!(sent.len(), 1, "exactly one mail for the attempt");
    let invitation = pending.status.unwrap().invitation.unwrap();
    assert_eq!(invitation.attempts, 1, "the same attempt, completed");
    let (_, token) = invitation_in(&sent[0]);
    assert_eq!(
        invitation.fingerprint.unwrap(),
        usher::token::TokenHash::of(&token).fingerprint()
    );

    // A restart after the mail went out sends nothing more.
    usher.kill();
    usher.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.messages().len(), 1, "no second mail after a restart");
    assert_eq!(usher.redeem(&token).await.0, 200, "the mailed token works");
}

#[tokio::test]
async fn resyncs_with_nothing_to_do_write_nothing_and_send_nothing() {
    let client = client().await;
    let ns = namespace(&client, "invite-quiet").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("    exposeToken: true\n")
            + &user("dan", "dan@acme.example", "Dan")
            + &user("erin", "erin@acme.example", "Erin")),
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &["--resync", "1s"]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    for name in ["dan", "erin"] {
        wait_for(&users, name, "Pending", |u| {
            phase(u) == Some(UserPhase::Pending)
        })
        .await;
    }
    wait_for(&tenants, "acme", "counting two pending", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.users.as_ref())
            .is_some_and(|c| c.pending == 2)
    })
    .await;
    mails(&smtp, 2).await;
    // Let the last Events and cache updates settle, then take the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let versions = || async {
        let mut v = Vec::new();
        for u in users.list(&Default::default()).await.unwrap() {
            v.push(u.metadata.resource_version.unwrap());
        }
        v.push(
            tenants
                .get("acme")
                .await
                .unwrap()
                .metadata
                .resource_version
                .unwrap(),
        );
        v
    };
    let before = (
        usher.metric("usher_store_writes_total").await,
        usher.metric("usher_api_writes_total").await,
        usher.metric("usher_reconciles_total").await,
        versions().await,
        smtp.messages().len(),
    );
    // Three resync periods and then some.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = (
        usher.metric("usher_store_writes_total").await,
        usher.metric("usher_api_writes_total").await,
        usher.metric("usher_reconciles_total").await,
        versions().await,
        smtp.messages().len(),
    );
    assert!(
        after.2 >= before.2 + 9.0,
        "resyncs did happen: {} → {} reconciles",
        before.2,
        after.2
    );
    assert_eq!(after.0, before.0, "store writes during resyncs");
    assert_eq!(after.1, before.1, "API writes during resyncs");
    assert_eq!(after.3, before.3, "resourceVersions changed during resyncs");
    assert_eq!(after.4, before.4, "mails during resyncs");
}

/// Issue 17, throwaway addresses: a tenant with `refuseDisposable` fails a person at a disposable
/// provider (a subdomain of one included) with its own reason and Event, and mails only the
/// others; lifting the refusal invites them.
#[tokio::test]
async fn a_tenant_that_refuses_throwaway_addresses_mails_only_lasting_ones() {
    let client = client().await;
    let ns = namespace(&client, "invite-disposable").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("    refuseDisposable: true\n")
            + &user("temp", "temp@eu.mailinator.com", "Temp")
            + &user("real", "real@acme.example", "Real")),
    )
    .await;
    let _usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let temp = wait_for(&users, "temp", "Failed", |u| {
        phase(u) == Some(UserPhase::Failed)
    })
    .await;
    let condition = &temp.status.unwrap().conditions[0];
    assert_eq!(condition.reason, "DisposableEmail");
    assert!(
        condition.message.contains("mailinator.com"),
        "{}",
        condition.message
    );
    wait_for(&users, "real", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let said = events_of(&client, &ns, "temp", "DisposableEmail").await;
    assert_eq!(said.len(), 1, "{said:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent: Vec<String> = smtp.messages().iter().map(|m| recipient(m)).collect();
    assert_eq!(sent, ["real@acme.example"]);

    // Lifted: the Tenant's change is decided again for its people.
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    tenants
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"invitations": {"refuseDisposable": false}}}),
            ),
        )
        .await
        .expect("patch");
    wait_for(&users, "temp", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
}

#[tokio::test]
async fn duplicate_emails_and_foreign_domains_fail_without_a_mail() {
    let client = client().await;
    let ns = namespace(&client, "invite-reject").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("    allowedDomains: [acme.example]\n")
            + &user("first", "Same@Acme.example", "First")),
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "first", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    apply_yaml(
        &client,
        &ns,
        &(user("second", "same@acme.EXAMPLE", "Second")
            + &user("outsider", "eve@evil.example", "Eve")),
    )
    .await;
    let reason = |u: &SystemUser| {
        u.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .map(|c| c.reason.clone())
    };
    let dup = wait_for(&users, "second", "Failed", |u| {
        phase(u) == Some(UserPhase::Failed)
    })
    .await;
    assert_eq!(reason(&dup).as_deref(), Some("DuplicateEmail"));
    assert!(
        dup.status.as_ref().unwrap().conditions[0]
            .message
            .contains("\"first\"")
    );
    let out = wait_for(&users, "outsider", "Failed", |u| {
        phase(u) == Some(UserPhase::Failed)
    })
    .await;
    assert_eq!(reason(&out).as_deref(), Some("EmailDomainNotAllowed"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent: Vec<String> = smtp.messages().iter().map(|m| recipient(m)).collect();
    assert_eq!(
        sent,
        ["Same@Acme.example"],
        "only the first user is invited"
    );

    // The tenant narrows its domains after "first" was invited: refused now, and the mailed
    // token no longer works.
    let token = invitation_in(&smtp.messages()[0]).1;
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    tenants
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"invitations": {"allowedDomains": ["other.example"]}}})),
        )
        .await
        .expect("narrow the domains");
    let refused = wait_for(&users, "first", "Failed", |u| {
        phase(u) == Some(UserPhase::Failed)
    })
    .await;
    assert_eq!(reason(&refused).as_deref(), Some("EmailDomainNotAllowed"));
    let code = eventually(Duration::from_secs(10), || async {
        let code = usher.redeem(&token).await.0;
        (code == 410).then_some(code)
    })
    .await;
    assert_eq!(
        code,
        Some(410),
        "the refused person's token was not revoked"
    );
}

#[tokio::test]
async fn hostile_names_inject_no_header_and_no_markup() {
    let client = client().await;
    let ns = namespace(&client, "invite-hostile").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let yaml = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: \"<b>Acme</b> \\\"Charging\\\"\\r\\nBcc: all@evil.example\"\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: mallory}\nspec:\n  tenantRef: {name: acme}\n  email: mallory@acme.example\n  firstName: \"<script>alert('x')</script>\\r\\nBcc: victim@evil.example\"\n  lastName: \"\\\"Quote\\\" & <img src=x>\"\n";
    apply_yaml(&client, &ns, yaml).await;
    let _usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let raw = mails(&smtp, 1).await.remove(0);
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert!(msg.bcc().is_none(), "a Bcc header was injected");
    let to: Vec<_> = msg
        .to()
        .unwrap()
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(
        to,
        ["mallory@acme.example"],
        "only the person is a recipient"
    );
    assert!(!msg.subject().unwrap_or_default().contains('\n'));
    let html = msg.body_html(0).unwrap();
    for raw_markup in ["<script>", "<img", "<b>Acme"] {
        assert!(
            !html.contains(raw_markup),
            "{raw_markup} reached the HTML part:\n{html}"
        );
    }
    assert!(
        html.contains("&lt;script&gt;") && html.contains("&lt;b&gt;Acme"),
        "{html}"
    );
}

/// Mail goes out over STARTTLS (required) and implicit TLS, verified against the relay's CA; a
/// relay whose certificate is not trusted gets nothing, and the condition says why.
#[tokio::test]
async fn mail_goes_over_verified_tls() {
    let client = client().await;
    for (i, tls) in [SmtpTls::StartTls, SmtpTls::Implicit]
        .into_iter()
        .enumerate()
    {
        let ns = namespace(&client, "invite-tls").await;
        let smtp = Smtp::start_with(tls).expect("TLS SMTP sink");
        let ca = smtp.ca().unwrap().display().to_string();
        let name = format!("tls{i}");
        apply_yaml(
            &client,
            &ns,
            &(tenant("") + &user(&name, &format!("{name}@acme.example"), "Tess")),
        )
        .await;
        let _usher =
            Usher::start_with_env(&ns, &smtp.url(), &[], &[("USHER_MAIL_CA_FILE", &ca)]).await;
        let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
        wait_for(&users, &name, "Pending", |u| {
            phase(u) == Some(UserPhase::Pending)
        })
        .await;
        let got = mails(&smtp, 1).await;
        assert_eq!(
            recipient(&got[0]),
            format!("{name}@acme.example"),
            "{tls:?}"
        );
    }

    let ns = namespace(&client, "invite-untrusted").await;
    let smtp = Smtp::start_with(SmtpTls::Implicit).expect("TLS SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("") + &user("uma", "uma@acme.example", "Uma")),
    )
    .await;
    let _usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let unsent = wait_for(&users, "uma", "InvitationNotSent", |u| {
        u.status.as_ref().is_some_and(|s| {
            s.conditions
                .first()
                .is_some_and(|c| c.reason == "InvitationNotSent")
        })
    })
    .await;
    let message = &unsent.status.unwrap().conditions[0].message;
    assert!(message.contains("sending mail"), "{message}");
    assert!(
        smtp.messages().is_empty(),
        "nothing may go to an unverified relay"
    );
}

async fn set_email(users: &Api<SystemUser>, name: &str, email: &str) {
    users
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"email": email}})),
        )
        .await
        .expect("the new address is admitted");
}

fn attempts(u: &SystemUser) -> i32 {
    u.status
        .as_ref()
        .and_then(|s| s.invitation.as_ref())
        .map_or(0, |i| i.attempts)
}

/// Issue 14, kind 1: a corrected address. The link mailed to the mistyped address dies, the
/// next attempt goes to the new one, and an Event says why; a case-only change keeps the link;
/// an Active person's account follows without a mail; a Suspended person is invited at the new
/// address once unsuspended.
#[tokio::test]
async fn an_address_change_sends_the_invitation_to_the_new_address_only() {
    let client = client().await;
    let ns = namespace(&client, "readdress").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("")
            + &user("sam", "sam@acme.exmaple", "Sam")
            + &user("ria", "ria@acme.example", "Ria")
            + &user("uma", "uma@acme.example", "Uma")),
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let first = mails(&smtp, 3).await;
    let token_to = |mails: &[Vec<u8>], to: &str| {
        let m = mails
            .iter()
            .rev()
            .find(|m| recipient(m) == to)
            .unwrap_or_else(|| panic!("no mail to {to}"));
        invitation_in(m).1
    };
    let old_token = token_to(&first, "sam@acme.exmaple");

    // Pending, mistyped domain corrected.
    set_email(&users, "sam", "sam@acme.example").await;
    let sam = wait_for(&users, "sam", "invited again at the new address", |u| {
        attempts(u) == 2 && phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let all = mails(&smtp, 4).await;
    assert_eq!(all.len(), 4, "one new mail");
    assert_eq!(recipient(&all[3]), "sam@acme.example");
    let new_token = token_to(&all, "sam@acme.example");
    let message = &sam.status.as_ref().unwrap().conditions[0].message;
    assert!(
        message.contains("invitation 2 sent to sam@acme.example"),
        "{message}"
    );
    let why = events_of(&client, &ns, "sam", "AddressChanged").await;
    assert!(
        why.iter()
            .any(|m| m.contains("sam@acme.exmaple") && m.contains("sam@acme.example")),
        "{why:?}"
    );
    assert_eq!(
        usher.redeem(&old_token).await.0,
        410,
        "the mistyped mailbox's link"
    );
    // A change of case only: the same mailbox, the same link, no mail.
    set_email(&users, "sam", "Sam@Acme.example").await;
    wait_for(&users, "sam", "observed", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == u.metadata.generation)
    })
    .await;
    assert_eq!(usher.redeem(&new_token).await.0, 200, "the new link works");
    wait_for(&users, "sam", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;

    // Active: the account follows; nothing is mailed.
    let ria_token = token_to(&first, "ria@acme.example");
    assert_eq!(usher.redeem(&ria_token).await.0, 200);
    wait_for(&users, "ria", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    set_email(&users, "ria", "ria.lopez@acme.example").await;
    let email = format!("SELECT email FROM users WHERE external_id = '{ns}/ria'");
    eventually(Duration::from_secs(15), || async {
        (crate::support::sql(&usher.db, &email) == vec![vec![json!("ria.lopez@acme.example")]])
            .then_some(())
    })
    .await
    .expect("the store account follows the address");
    assert!(
        events_of(&client, &ns, "ria", "AddressChanged").await[0].contains("no invitation"),
        "an Event says why"
    );

    // Suspended while Pending: the link dies with the suspension; unsuspended, the new address
    // gets the next attempt.
    let uma_token = token_to(&first, "uma@acme.example");
    users
        .patch(
            "uma",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": true, "email": "uma.b@acme.example"}})),
        )
        .await
        .unwrap();
    wait_for(&users, "uma", "Suspended", |u| {
        phase(u) == Some(UserPhase::Suspended)
    })
    .await;
    assert_eq!(usher.redeem(&uma_token).await.0, 410);
    users
        .patch(
            "uma",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": false}})),
        )
        .await
        .unwrap();
    wait_for(&users, "uma", "Pending at the new address", |u| {
        phase(u) == Some(UserPhase::Pending) && attempts(u) == 2
    })
    .await;
    let all = mails(&smtp, 5).await;
    assert_eq!(all.len(), 5);
    assert_eq!(
        all.iter().map(|m| recipient(m)).collect::<Vec<_>>()[4..],
        ["uma.b@acme.example"],
        "ria's change sent nothing; uma's new address got one"
    );
}

/// Issue 14, kind 3: a duplicate is decided again as soon as the holder of the address goes,
/// whether it is deleted or moves to another address; no waiting for the resync (10 minutes).
#[tokio::test]
async fn a_freed_address_goes_to_the_waiting_duplicate_within_seconds() {
    let client = client().await;
    let ns = namespace(&client, "freed-address").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("")
            + &user("jo", "jo@acme.example", "Jo")
            + &user("lee", "lee@acme.example", "Lee")),
    )
    .await;
    let _usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    mails(&smtp, 2).await;
    // Later arrivals with the same addresses, in other case: refused.
    apply_yaml(
        &client,
        &ns,
        &(user("jo-new", "Jo@Acme.example", "Jo") + &user("lee-new", "LEE@acme.example", "Lee")),
    )
    .await;
    for name in ["jo-new", "lee-new"] {
        wait_for(&users, name, "DuplicateEmail", |u| {
            phase(u) == Some(UserPhase::Failed)
                && u.status.as_ref().unwrap().conditions[0].reason == "DuplicateEmail"
        })
        .await;
    }
    assert_eq!(smtp.count(), 2);

    // jo leaves; lee moves to another address.
    users
        .delete("jo", &Default::default())
        .await
        .expect("delete jo");
    set_email(&users, "lee", "lee.k@acme.example").await;
    for name in ["jo-new", "lee-new"] {
        let started = std::time::Instant::now();
        wait_for(&users, name, "Pending", |u| {
            phase(u) == Some(UserPhase::Pending)
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} waited for a resync"
        );
    }
    let all = mails(&smtp, 5).await;
    let mut to: Vec<String> = all[2..].iter().map(|m| recipient(m)).collect();
    to.sort();
    assert_eq!(
        to,
        ["Jo@Acme.example", "LEE@acme.example", "lee.k@acme.example"],
        "one mail each, as written in git: the freed addresses, and lee's new one"
    );
}

/// Issue 14, kind 4: two people with one address created together. Whichever usher reconciles
/// first, the older keeps the address and, created in the same second, the name decides (adam);
/// the other fails as DuplicateEmail within seconds, and whatever was mailed to it no longer
/// redeems: one account with access at most.
#[tokio::test]
async fn two_holders_of_one_address_created_together_leave_one_way_in() {
    let client = client().await;
    let ns = namespace(&client, "same-second").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    // creationTimestamp has whole seconds: start the creates just after one begins, so that
    // both fall in it and the name decides. A machine slow enough to straddle a second still
    // gets the rule's answer, the older first, below.
    let into_second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1_050 - into_second))).await;
    apply_yaml(
        &client,
        &ns,
        &(tenant("")
            + &user("zoe", "shared@acme.example", "Zoe")
            + &user("adam", "Shared@acme.example", "Adam")),
    )
    .await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let created = |name: &'static str| {
        let users = users.clone();
        async move {
            let u = users.get(name).await.unwrap();
            (u.metadata.creation_timestamp.unwrap().0, name)
        }
    };
    let (keeper, other) = {
        let (adam, zoe) = (created("adam").await, created("zoe").await);
        if adam <= zoe {
            ("adam", "zoe")
        } else {
            ("zoe", "adam")
        }
    };
    wait_for(&users, keeper, "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    wait_for(&users, other, "DuplicateEmail", |u| {
        phase(u) == Some(UserPhase::Failed)
            && u.status.as_ref().unwrap().conditions[0].reason == "DuplicateEmail"
    })
    .await;
    // Every token mailed: only adam's redeems.
    let mut redeemed = Vec::new();
    for mail in smtp.messages() {
        let (_, token) = invitation_in(&mail);
        let (status, body) = usher.redeem(&token).await;
        if status == 200 {
            redeemed.push(body["userId"].clone());
        } else {
            assert!(status == 410 || status == 404, "{status}: {body}");
        }
    }
    let kept = users.get(keeper).await.unwrap();
    assert_eq!(
        redeemed,
        [json!(kept.status.unwrap().user_id.unwrap())],
        "exactly one way in, {keeper}'s"
    );
}

/// Issue 17, per-person options: `spec.attributes` reach the store's `attributes` column, follow
/// edits (one removed in git goes from the store too), and `kubectl explain` documents them.
#[tokio::test]
async fn per_person_options_are_written_to_the_store_and_follow_edits() {
    let client = client().await;
    let ns = namespace(&client, "attributes").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(
        &client,
        &ns,
        &(tenant("")
            + &user("sam", "sam@acme.example", "Sam")
            + "  attributes: {allowTickets: \"true\", costCenter: CC-17}\n"),
    )
    .await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "sam", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let column = || {
        let rows = crate::support::sql(
            &usher.db,
            &format!("SELECT attributes FROM users WHERE external_id = '{ns}/sam'"),
        );
        serde_json::from_str::<serde_json::Value>(rows[0][0].as_str().unwrap()).unwrap()
    };
    assert_eq!(
        column(),
        serde_json::json!({"allowTickets": "true", "costCenter": "CC-17"})
    );
    users
        .patch(
            "sam",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"attributes": {"costCenter": null, "allowTickets": "false"}}})),
        )
        .await
        .expect("patch");
    let followed = eventually(Duration::from_secs(30), || async {
        (column() == serde_json::json!({"allowTickets": "false"})).then_some(())
    })
    .await;
    assert!(
        followed.is_some(),
        "the store follows the edit: {}",
        column()
    );
    let (ok, explained) = crate::support::kubectl(&["explain", "systemusers.spec.attributes"]);
    assert!(ok && explained.contains("camelCase"), "{explained}");
}
