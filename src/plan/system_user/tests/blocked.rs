//! Who may be provisioned at all: tenant, address, domain, duplicates; and durations.

use super::*;

#[test]
fn the_oldest_holder_of_an_email_keeps_it_case_insensitively() {
    let me = user("second", "ALICE@acme.example");
    let older = peer("first", "alice@ACME.example", now() - 1.hour());
    let t = tenant(None);
    assert_eq!(
        blocked(&me, Some(&t), std::slice::from_ref(&older)),
        Some(Blocked::DuplicateEmail {
            holder: "first".into()
        })
    );
    let younger = peer("zed", "alice@acme.example", now() + 1.hour());
    assert_eq!(blocked(&me, Some(&t), &[younger]), None);
    // Same creation second: the name decides, so exactly one of the two wins.
    let twin = peer("aaa", "alice@acme.example", now());
    assert!(blocked(&me, Some(&t), &[twin]).is_some());
    let other_tenant = Peer {
        tenant: "globex".into(),
        ..older
    };
    assert_eq!(blocked(&me, Some(&t), &[other_tenant]), None);
}

#[test]
fn a_terminating_tenant_blocks_every_provisioning_but_fails_nobody() {
    let mut t = tenant(None);
    t.metadata.deletion_timestamp = Some(Time(now()));
    let u = user("alice", "alice@acme.example");
    let blocked = blocked(&u, Some(&t), &[]);
    assert_eq!(blocked, Some(Blocked::TenantTerminating("acme".into())));
    let s = status(&StatusInput {
        user: &u,
        blocked: blocked.as_ref(),
        account: Some(&account(true, true)),
        latest: None,
        secret_name: None,
        now: now(),
    });
    assert_eq!(
        s.phase, None,
        "not Failed: nothing is wrong with the person"
    );
    assert_eq!(s.conditions[0].reason, "TenantTerminating");
    assert_eq!(s.user_id, None, "no account is shown as held");
}

/// Issue 14, kind 5: what admission lets through and no mail can carry fails with a reason
/// instead of being retried for ever; real addresses, international ones included, pass.

#[test]
fn an_address_no_mail_can_carry_fails_and_real_ones_pass() {
    let t = tenant(None);
    for bad in examples::MALFORMED_ADDRESSES {
        let b = blocked(&user("alice", bad), Some(&t), &[]);
        assert!(
            matches!(b, Some(Blocked::EmailUndeliverable { .. })),
            "{bad}: {b:?}"
        );
        let s = status(&StatusInput {
            user: &user("alice", bad),
            blocked: b.as_ref(),
            account: None,
            latest: None,
            secret_name: None,
            now: now(),
        });
        assert_eq!(s.phase, Some(UserPhase::Failed), "{bad}");
        assert_eq!(s.conditions[0].reason, "EmailUndeliverable");
        assert!(s.conditions[0].message.contains(bad));
    }
    for good in examples::REAL_ADDRESSES {
        assert_eq!(blocked(&user("alice", good), Some(&t), &[]), None, "{good}");
    }
}

#[test]
fn allowed_domains_and_missing_tenants_block() {
    let t = tenant(Some(InvitationPolicy {
        allowed_domains: Some(vec!["Acme.example".into()]),
        ..Default::default()
    }));
    assert_eq!(blocked(&user("a", "a@acme.EXAMPLE"), Some(&t), &[]), None);
    assert!(matches!(
        blocked(&user("a", "a@evil.example"), Some(&t), &[]),
        Some(Blocked::EmailDomainNotAllowed { .. })
    ));
    assert_eq!(
        blocked(&user("a", "a@acme.example"), None, &[]),
        Some(Blocked::TenantNotFound("acme".into()))
    );
}

#[test]
fn durations_parse_as_admission_allows() {
    assert_eq!(parse_duration("48h"), Some(SignedDuration::from_hours(48)));
    assert_eq!(parse_duration("1h30m"), Some(SignedDuration::from_mins(90)));
    assert_eq!(parse_duration("300s"), Some(SignedDuration::from_secs(300)));
    for bad in ["", "h", "10", "5d", "1.5h", "-5m", "99999999999999999999h"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    let t = tenant(Some(InvitationPolicy {
        ttl: Some("90m".into()),
        expose_token: Some(true),
        ..Default::default()
    }));
    assert_eq!(
        InvitationSettings::of(&t),
        InvitationSettings {
            ttl: SignedDuration::from_mins(90),
            expose_token: true
        }
    );
    assert_eq!(InvitationSettings::of(&tenant(None)).ttl, DEFAULT_TTL);
}

#[test]
fn an_account_by_address_is_taken_over_only_from_nobody_or_from_the_loser_of_the_address() {
    let winner = user("jo", "jo@acme.example");
    let at = |name: &str, email: &str, created: Timestamp| {
        let mut u = user(name, email);
        u.metadata.creation_timestamp = Some(Time(created));
        u
    };
    // Kept for restore: nobody holds it.
    assert!(restorable(&winner, None));
    // A loser provisioned before the winner was seen: later, or the same second and a later
    // name; the case of the address does not matter.
    assert!(restorable(
        &winner,
        Some(&at("jo-new", "Jo@Acme.example", now() + 1.second()))
    ));
    assert!(restorable(
        &winner,
        Some(&at("zz-jo", "jo@acme.example", now()))
    ));
    // Not from someone who keeps the address by the rule.
    assert!(!restorable(
        &winner,
        Some(&at("al", "jo@acme.example", now()))
    ));
    assert!(!restorable(
        &winner,
        Some(&at("jo-old", "jo@acme.example", now() - 1.second()))
    ));
    // Not from a holder whose address in git is another (its change is not written yet), nor one
    // of another tenant, nor one whose offboarding is under way.
    assert!(!restorable(
        &winner,
        Some(&at("zz-jo", "jo@other.example", now()))
    ));
    let mut elsewhere = at("zz-jo", "jo@acme.example", now());
    elsewhere.spec.tenant_ref = ObjectRef::new("globex");
    assert!(!restorable(&winner, Some(&elsewhere)));
    let mut leaving = at("zz-jo", "jo@acme.example", now());
    leaving.metadata.deletion_timestamp = Some(Time(now()));
    assert!(!restorable(&winner, Some(&leaving)));
    // Both sides agree: whoever may take it over, the other may not.
    let loser = at("zz-jo", "jo@acme.example", now());
    assert!(!restorable(&loser, Some(&winner)));
}

#[test]
fn a_tenant_that_refuses_throwaway_addresses_fails_them_and_only_them() {
    let refusing = tenant(Some(InvitationPolicy {
        refuse_disposable: Some(true),
        ..Default::default()
    }));
    for (email, provider) in [
        ("sam@mailinator.com", "mailinator.com"),
        ("Sam@Mailinator.COM", "mailinator.com"),
        ("sam@eu.mailinator.com", "mailinator.com"),
        ("sam@33mail.com", "33mail.com"),
    ] {
        assert_eq!(
            blocked(&user("sam", email), Some(&refusing), &[]),
            Some(Blocked::DisposableEmail {
                domain: provider.into()
            }),
            "{email}"
        );
    }
    for email in examples::REAL_ADDRESSES
        .iter()
        .chain(&["sam@gmail.com", "sam@mail.example"])
    {
        assert_eq!(
            blocked(&user("sam", email), Some(&refusing), &[]),
            None,
            "{email}"
        );
    }
    // Not asked for: nobody is refused for it.
    assert_eq!(
        blocked(&user("sam", "sam@mailinator.com"), Some(&tenant(None)), &[]),
        None
    );
    let refused = Blocked::DisposableEmail {
        domain: "mailinator.com".into(),
    };
    assert_eq!(refused.reason(), "DisposableEmail");
    assert!(
        refused
            .message("sam@mailinator.com")
            .contains("refuseDisposable")
    );
}
