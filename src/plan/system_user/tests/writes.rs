//! The writes a reconcile makes: account, access, invitation, address changes, drift.

use super::*;

#[test]
fn a_new_person_gets_an_account_and_a_first_invitation() {
    let p = plan(
        &user("alice", "alice@acme.example"),
        "acme/acme",
        None,
        None,
    );
    assert!(
        matches!(p.account, AccountAction::Create(ref f) if f.external_id == "acme/alice" && f.tenant == "acme/acme")
    );
    assert_eq!(
        p.invitation,
        InvitationAction::Issue {
            attempt: 1,
            trigger: None
        }
    );
    assert_eq!(p.access, AccessAction::Keep);
}

#[test]
fn nothing_to_do_when_the_invitation_is_out_and_the_account_current() {
    let p = plan(
        &user("alice", "alice@acme.example"),
        "acme/acme",
        Some(&account(false, false)),
        Some(&invitation(1)),
    );
    assert_eq!(p, UserPlan::NOTHING);
}

#[test]
fn an_edited_spec_updates_the_account_only() {
    let mut u = user("alice", "alice@acme.example");
    u.spec.last_name = Some("Ng".into());
    let p = plan(
        &u,
        "acme/acme",
        Some(&account(false, false)),
        Some(&invitation(1)),
    );
    assert!(
        matches!(p.account, AccountAction::Update(ref f) if f.profile.last_name.as_deref() == Some("Ng"))
    );
    assert_eq!(p.invitation, InvitationAction::Keep);
}

/// Issue 14, kind 1: the invitation follows a corrected address, in every phase.

#[test]
fn an_address_change_revokes_what_went_to_the_old_address_first() {
    let moved = |email: &str| user("alice", email);
    let unsent = InvitationRecord {
        sent_at: None,
        ..invitation(1)
    };
    let expired = InvitationRecord {
        expires_at: now() - 1.hours(),
        ..invitation(2)
    };
    // Pending (mailed or not yet), and Expired: revoke, update, invite the next attempt.
    for (what, latest, next) in [
        ("pending", invitation(1), 2),
        ("unsent", unsent, 2),
        ("expired", expired, 3),
    ] {
        for new in [
            "alice@acme.example.org",
            "alicia@acme.example",
            "a@other.example",
        ] {
            let p = plan(
                &moved(new),
                "acme/acme",
                Some(&account(false, false)),
                Some(&latest),
            );
            assert!(p.revoke_first, "{what} {new}: {p:?}");
            assert!(
                matches!(&p.account, AccountAction::Update(f) if f.email == new),
                "{what} {new}: {p:?}"
            );
            assert_eq!(
                p.invitation,
                InvitationAction::Issue {
                    attempt: next,
                    trigger: None
                },
                "{what} {new}"
            );
            assert_eq!(p.notes.len(), 1, "{what}");
            assert_eq!(p.notes[0].reason, "AddressChanged");
            assert!(
                p.notes[0].message.contains("alice@acme.example")
                    && p.notes[0].message.contains(new),
                "{}",
                p.notes[0].message
            );
        }
    }
    // A crash after the revocation and the update: nothing tells the address changed any
    // more, but the revoked invitation is followed by the next attempt all the same.
    let revoked = InvitationRecord {
        revoked_at: Some(now()),
        ..invitation(1)
    };
    let mut updated = account(false, false);
    updated.email = "alicia@acme.example".into();
    let p = plan(
        &moved("alicia@acme.example"),
        "acme/acme",
        Some(&updated),
        Some(&revoked),
    );
    assert_eq!(
        (p.revoke_first, p.invitation),
        (
            false,
            InvitationAction::Issue {
                attempt: 2,
                trigger: None
            }
        )
    );
    // Active: the account follows, nothing is mailed.
    let p = plan(
        &moved("alicia@acme.example"),
        "acme/acme",
        Some(&account(true, true)),
        Some(&InvitationRecord {
            used_at: Some(now()),
            ..invitation(1)
        }),
    );
    assert!(matches!(p.account, AccountAction::Update(_)));
    assert_eq!(
        (p.revoke_first, &p.invitation, p.access),
        (false, &InvitationAction::Keep, AccessAction::Keep)
    );
    assert!(p.notes[0].message.contains("no invitation is sent"));
    // Suspended while Pending: revoked and updated; the unsuspension invites the new address.
    let mut suspended = moved("alicia@acme.example");
    suspended.spec.suspended = true;
    let p = plan(
        &suspended,
        "acme/acme",
        Some(&account(false, false)),
        Some(&invitation(1)),
    );
    assert!(p.revoke_first && matches!(p.account, AccountAction::Update(_)));
    assert_eq!(p.invitation, InvitationAction::Keep);
    // A change of case only is the same mailbox: the account is corrected, the link kept.
    for same in [
        "Alice@acme.example",
        "alice@ACME.example",
        "ALICE@Acme.Example",
    ] {
        let p = plan(
            &moved(same),
            "acme/acme",
            Some(&account(false, false)),
            Some(&invitation(1)),
        );
        assert!(!p.revoke_first && p.notes.is_empty(), "{same}");
        assert!(matches!(p.account, AccountAction::Update(_)), "{same}");
        assert_eq!(p.invitation, InvitationAction::Keep, "{same}");
    }
}

#[test]
fn a_redemption_between_the_reads_is_noticed() {
    let mut used = invitation(1);
    used.used_at = Some(now());
    assert!(read_mid_redemption(&account(false, false), Some(&used)));
    assert!(!read_mid_redemption(&account(true, true), Some(&used)));
    assert!(!read_mid_redemption(
        &account(false, false),
        Some(&invitation(1))
    ));
    assert!(!read_mid_redemption(&account(false, false), None));
}

#[test]
fn an_unsent_invitation_is_completed_not_duplicated() {
    let mut inv = invitation(3);
    inv.sent_at = None;
    let p = plan(
        &user("alice", "alice@acme.example"),
        "acme/acme",
        Some(&account(false, false)),
        Some(&inv),
    );
    assert_eq!(p.invitation, InvitationAction::Resend { attempt: 3 });
}

#[test]
fn the_resend_annotation_issues_the_next_attempt_once() {
    let mut u = user("alice", "alice@acme.example");
    u.metadata.annotations = Some(BTreeMap::from([(
        RESEND_ANNOTATION.to_string(),
        "x".to_string(),
    )]));
    let p = plan(
        &u,
        "acme/acme",
        Some(&account(false, false)),
        Some(&invitation(1)),
    );
    assert_eq!(
        p.invitation,
        InvitationAction::Issue {
            attempt: 2,
            trigger: Some("x".into())
        }
    );
    let mut answered = invitation(2);
    answered.trigger = Some("x".into());
    let again = plan(
        &u,
        "acme/acme",
        Some(&account(false, false)),
        Some(&answered),
    );
    assert_eq!(
        again.invitation,
        InvitationAction::Keep,
        "the same value is not a new request"
    );
}

#[test]
fn an_annotation_present_at_creation_does_not_resend() {
    let mut u = user("alice", "alice@acme.example");
    u.metadata.annotations = Some(BTreeMap::from([(
        RESEND_ANNOTATION.to_string(),
        "x".to_string(),
    )]));
    let p = plan(&u, "acme/acme", None, None);
    assert_eq!(
        p.invitation,
        InvitationAction::Issue {
            attempt: 1,
            trigger: Some("x".into())
        }
    );
}

#[test]
fn a_resend_asked_for_while_the_mail_is_unsent_issues_once() {
    let mut u = user("alice", "alice@acme.example");
    u.metadata.annotations = Some(BTreeMap::from([(
        RESEND_ANNOTATION.to_string(),
        "z".to_string(),
    )]));
    let mut unsent = invitation(1);
    unsent.sent_at = None;
    let p = plan(&u, "acme/acme", Some(&account(false, false)), Some(&unsent));
    assert_eq!(
        p.invitation,
        InvitationAction::Issue {
            attempt: 2,
            trigger: Some("z".into())
        }
    );
}

#[test]
fn resend_is_ignored_once_accepted() {
    let mut u = user("alice", "alice@acme.example");
    u.metadata.annotations = Some(BTreeMap::from([(
        RESEND_ANNOTATION.to_string(),
        "y".to_string(),
    )]));
    let mut used = invitation(1);
    used.used_at = Some(now());
    let p = plan(&u, "acme/acme", Some(&account(true, true)), Some(&used));
    assert_eq!(p, UserPlan::NOTHING);
}

#[test]
fn an_account_activated_behind_usher_s_back_is_deactivated_and_called_drift() {
    let mut u = user("alice", "alice@acme.example");
    let p = plan(
        &u,
        "acme/acme",
        Some(&account(true, false)),
        Some(&invitation(1)),
    );
    assert_eq!(p.access, AccessAction::Deactivate);
    assert_eq!(drift(&u, &p), ["account access"]);
    // A name edited in the store while the spec stayed the same is repaired too.
    u.status = Some(SystemUserStatus {
        observed_generation: Some(1),
        phase: Some(UserPhase::Active),
        ..Default::default()
    });
    let mut edited = account(false, true);
    edited.profile.first_name = Some("Mallory".into());
    let p = plan(&u, "acme/acme", Some(&edited), None);
    assert_eq!(drift(&u, &p), ["account details", "account access"]);
    // A spec change is not drift.
    u.metadata.generation = Some(2);
    let p = plan(&u, "acme/acme", Some(&edited), None);
    assert_eq!(drift(&u, &p), ["account access"]);
}

#[test]
fn suspension_deactivates_and_unsuspension_restores_or_reinvites() {
    let mut u = user("alice", "alice@acme.example");
    u.spec.suspended = true;
    let p = plan(&u, "acme/acme", Some(&account(true, true)), None);
    assert_eq!(p.access, AccessAction::Suspend);
    let p = plan(
        &u,
        "acme/acme",
        Some(&account(false, false)),
        Some(&invitation(1)),
    );
    assert_eq!(
        p.access,
        AccessAction::Suspend,
        "an open token is revoked too"
    );
    u.spec.suspended = false;
    let p = plan(&u, "acme/acme", Some(&account(false, true)), None);
    assert_eq!(
        p.access,
        AccessAction::Restore,
        "accepted before: access comes back"
    );
    let mut revoked = invitation(1);
    revoked.revoked_at = Some(now());
    let p = plan(
        &u,
        "acme/acme",
        Some(&account(false, false)),
        Some(&revoked),
    );
    assert_eq!(
        p.invitation,
        InvitationAction::Issue {
            attempt: 2,
            trigger: None
        },
        "never accepted: a new invitation"
    );
}
