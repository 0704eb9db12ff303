//! Status, Events and requeue, from what the store holds after the writes.

use super::*;

#[test]
fn a_pending_person_is_looked_at_again_when_the_invitation_expires_not_before() {
    let resync = std::time::Duration::from_secs(600);
    let mut inv = invitation(1);
    inv.expires_at = now() + 2.hours();
    // Two hours away: the resync comes first.
    assert_eq!(requeue_after(Some(&inv), now(), resync), resync);
    inv.expires_at = now() + 90.seconds();
    let wait = requeue_after(Some(&inv), now(), resync);
    assert!(
        wait > std::time::Duration::from_secs(89) && wait <= std::time::Duration::from_secs(91),
        "{wait:?}"
    );
    assert_eq!(requeue_after(None, now(), resync), resync);
}

#[test]
fn phases_follow_the_store() {
    let u = user("alice", "alice@acme.example");
    let inv = invitation(1);
    let pending = status_of(&u, Some(&account(false, false)), Some(&inv), now());
    assert_eq!(pending.phase, Some(UserPhase::Pending));
    assert_eq!(pending.conditions[0].status, "True");
    assert_eq!(
        pending.invitation.as_ref().unwrap().fingerprint.as_deref(),
        Some(&inv.token_hash.fingerprint()[..])
    );
    let expired = status_of(&u, Some(&account(false, false)), Some(&inv), inv.expires_at);
    assert_eq!(expired.phase, Some(UserPhase::Expired));
    assert_eq!(
        (
            expired.conditions[0].status.as_str(),
            expired.conditions[0].reason.as_str()
        ),
        ("False", "InvitationExpired")
    );
    let active = status_of(&u, Some(&account(true, true)), Some(&inv), now());
    assert_eq!(active.phase, Some(UserPhase::Active));
    assert!(active.activated_at.is_some());
    let mut unsent = inv.clone();
    unsent.sent_at = None;
    let not_sent = status_of(&u, Some(&account(false, false)), Some(&unsent), now());
    assert_eq!(not_sent.conditions[0].reason, "InvitationNotSent");
}

#[test]
fn the_same_state_gives_the_same_status_so_nothing_is_patched() {
    let mut u = user("alice", "alice@acme.example");
    let inv = invitation(1);
    let first = status_of(&u, Some(&account(false, false)), Some(&inv), now());
    u.status = Some(first.clone());
    let later = status_of(
        &u,
        Some(&account(false, false)),
        Some(&inv),
        now() + 5.minutes(),
    );
    assert_eq!(first, later);
    assert!(events(Some(&first), &later, None).is_empty());
}

#[test]
fn each_refusal_is_announced_with_its_own_reason() {
    // The Warning Event of a store refusal used to read TenantNotFound: the reason was
    // rebuilt from the condition's text and fell back to it.
    let u = user("alice", "alice@acme.example");
    for blocked in [
        Blocked::TenantNotFound("acme".into()),
        Blocked::DuplicateEmail {
            holder: "al".into(),
        },
        Blocked::EmailDomainNotAllowed {
            allowed: vec!["acme.example".into()],
        },
        Blocked::StoreRefused("409 uniqueness: userName taken".into()),
    ] {
        let new = status(&StatusInput {
            user: &u,
            blocked: Some(&blocked),
            account: None,
            latest: None,
            secret_name: None,
            now: now(),
        });
        let notes = events(None, &new, Some(&blocked));
        assert_eq!(notes.len(), 1, "{blocked:?}");
        assert_eq!(notes[0].reason, blocked.reason());
        assert_eq!(notes[0].reason, new.conditions[0].reason);
        assert!(notes[0].warning);
        // The same refusal again is no news.
        assert!(events(Some(&new), &new, Some(&blocked)).is_empty());
    }
}

#[test]
fn a_half_done_offboarding_says_what_is_left_once() {
    let mut u = user("alice", "alice@acme.example");
    u.status = Some(status_of(
        &u,
        Some(&account(true, true)),
        Some(&invitation(1)),
        now(),
    ));
    let (s, news) = offboarding_incomplete(&u, "removing its roles failed", now());
    assert!(news);
    assert_eq!(
        s.phase,
        Some(UserPhase::Active),
        "the phase is left as it was"
    );
    let c = &s.conditions[0];
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        (
            "False",
            "OffboardingIncomplete",
            "removing its roles failed"
        )
    );
    u.status = Some(s.clone());
    let (again, news) = offboarding_incomplete(&u, "removing its roles failed", now());
    assert!(!news, "the same news once");
    assert_eq!(again, s, "nothing to patch");
}

#[test]
fn each_transition_has_one_event() {
    let u = user("alice", "alice@acme.example");
    let inv = invitation(1);
    let pending = status_of(&u, Some(&account(false, false)), Some(&inv), now());
    let reasons = |old: Option<&SystemUserStatus>, new: &SystemUserStatus| {
        events(old, new, None)
            .into_iter()
            .map(|n| n.reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(None, &pending), ["InvitationSent"]);
    let active = status_of(&u, Some(&account(true, true)), Some(&inv), now());
    assert_eq!(reasons(Some(&pending), &active), ["InvitationRedeemed"]);
    let expired = status_of(&u, Some(&account(false, false)), Some(&inv), inv.expires_at);
    assert_eq!(reasons(Some(&pending), &expired), ["InvitationExpired"]);
    let resent = status_of(
        &u,
        Some(&account(false, false)),
        Some(&invitation(2)),
        now(),
    );
    assert_eq!(reasons(Some(&pending), &resent), ["InvitationSent"]);
}

#[test]
fn requeue_lands_on_the_expiry_of_an_open_invitation_only() {
    let inv = invitation(1);
    assert_eq!(requeue_at(Some(&inv), now()), Some(inv.expires_at));
    assert_eq!(requeue_at(Some(&inv), inv.expires_at), None);
    let mut used = inv.clone();
    used.used_at = Some(now());
    assert_eq!(requeue_at(Some(&used), now()), None);
}
