//! One reconcile as a whole: [`decide`] from what was read, [`report`] from what the writes
//! left.

use super::*;
use crate::plan::records::Assignment;

fn seen<'a>(tenant: Option<&'a Tenant>, peers: &'a [Peer]) -> Seen<'a> {
    Seen {
        tenant,
        peers,
        account: None,
        own: true,
        latest: None,
        assignments: &[],
        roles: vec![],
        desired: vec![],
        expires: None,
    }
}

fn manager() -> Assignment {
    Assignment {
        binding: "acme/alice-manager".into(),
        role: "Manager".into(),
        group: None,
    }
}

#[test]
fn a_blocked_person_gets_no_writes_and_a_refused_one_loses_what_it_held() {
    let t = tenant(None);
    let older = [peer("al", "Alice@acme.example", now() - 1.hour())];
    let held = [manager()];
    let active = account(true, true);
    let open = invitation(1);
    // Not yet provisioned, or holding nothing: nothing to take away.
    let nothing = decide(
        &user("alice", "alice@acme.example"),
        &seen(Some(&t), &older),
    );
    assert_eq!(
        nothing.blocked,
        Some(Blocked::DuplicateEmail {
            holder: "al".into()
        })
    );
    assert_eq!(nothing.writes, UserPlan::NOTHING);
    assert_eq!(nothing.assignments, None);
    assert!(!nothing.withdraw);
    // Its own account with access, an open token or a role: withdrawn.
    for (account, latest, assignments) in [
        (&active, None, &[][..]),
        (&account(false, false), Some(&open), &[][..]),
        (&account(false, false), None, &held[..]),
    ] {
        let d = decide(
            &user("alice", "alice@acme.example"),
            &Seen {
                account: Some(account),
                latest,
                assignments,
                ..seen(Some(&t), &older)
            },
        );
        assert!(d.withdraw, "{account:?} {latest:?} {assignments:?}");
    }
    // An account found by address belongs to someone else: never withdrawn from here.
    let d = decide(
        &user("alice", "alice@acme.example"),
        &Seen {
            account: Some(&active),
            own: false,
            ..seen(Some(&t), &older)
        },
    );
    assert!(!d.withdraw);
    // A missing or terminating tenant blocks without failing anyone: nothing is withdrawn.
    let mut terminating = tenant(None);
    terminating.metadata.deletion_timestamp = Some(Time(now()));
    for tenant in [None, Some(&terminating)] {
        let d = decide(
            &user("alice", "alice@acme.example"),
            &Seen {
                account: Some(&active),
                ..seen(tenant, &[])
            },
        );
        assert!(d.blocked.is_some() && !d.withdraw && d.writes == UserPlan::NOTHING);
    }
}

#[test]
fn role_assignments_are_written_when_they_differ_and_called_drift_only_if_git_did_not_change() {
    let t = tenant(None);
    let roles = vec!["Manager@tenant".to_string()];
    let mut shown = user("alice", "alice@acme.example");
    shown.status = Some(SystemUserStatus {
        roles: roles.clone(),
        ..Default::default()
    });
    let acc = account(true, true);
    let held = [manager()];
    let read = |assignments| Seen {
        account: Some(&acc),
        assignments,
        roles: roles.clone(),
        desired: vec![manager()],
        ..seen(Some(&t), &[])
    };
    // The store already holds them: nothing to write.
    assert_eq!(decide(&shown, &read(&held)).assignments, None);
    // Someone removed them in the product: written back, and that is drift.
    let repaired = decide(&shown, &read(&[]));
    assert_eq!(repaired.assignments, Some(vec![manager()]));
    assert!(repaired.assignments_repair);
    // A new binding in git: written, not drift.
    let new = decide(&user("alice", "alice@acme.example"), &read(&[]));
    assert_eq!(new.assignments, Some(vec![manager()]));
    assert!(!new.assignments_repair);
}

#[test]
fn the_report_adds_a_mail_failure_to_the_condition_and_keeps_the_secret_only_while_pending() {
    let t = tenant(Some(InvitationPolicy {
        expose_token: Some(true),
        ..Default::default()
    }));
    let u = user("alice", "alice@acme.example");
    let decision = decide(&u, &seen(Some(&t), &[]));
    let acc = account(false, false);
    let mut unsent = invitation(1);
    unsent.sent_at = None;
    let r = report(
        &u,
        &decision,
        &Outcome {
            account: Some(&acc),
            latest: Some(&unsent),
            mail_failed: Some("relay said 451"),
            ..Default::default()
        },
        "alice-invitation",
        now(),
        std::time::Duration::from_secs(600),
    );
    let c = &r.status.conditions[0];
    assert_eq!(c.reason, "InvitationNotSent");
    assert!(c.message.ends_with(": relay said 451"), "{}", c.message);
    // A wait usher retries by itself: Reconciling, saying the same as Ready.
    let reconciling = &r.status.conditions[1];
    assert_eq!(
        (reconciling.type_.as_str(), reconciling.message.as_str()),
        ("Reconciling", c.message.as_str())
    );
    let secret = r
        .status
        .invitation
        .as_ref()
        .and_then(|i| i.secret_name.clone());
    assert_eq!(secret.as_deref(), Some("alice-invitation"));
    assert_eq!(r.delete_secret, None);

    // Redeemed: the Secret goes, once.
    let mut shown = u.clone();
    shown.status = Some(r.status.clone());
    let active = account(true, true);
    let mut used = invitation(1);
    used.used_at = Some(now());
    let r = report(
        &shown,
        &decide(&shown, &seen(Some(&t), &[])),
        &Outcome {
            account: Some(&active),
            latest: Some(&used),
            ..Default::default()
        },
        "alice-invitation",
        now(),
        std::time::Duration::from_secs(600),
    );
    assert_eq!(r.delete_secret.as_deref(), Some("alice-invitation"));
    assert_eq!(r.status.phase, Some(UserPhase::Active));
    assert_eq!(r.notes[0].reason, "InvitationRedeemed");
}

#[test]
fn a_store_refusal_shows_as_store_refused_with_its_own_event_reason() {
    let t = tenant(None);
    let u = user("alice", "alice@acme.example");
    let r = report(
        &u,
        &decide(&u, &seen(Some(&t), &[])),
        &Outcome {
            refused: Some("the user store refused it (409): uniqueness"),
            ..Default::default()
        },
        "alice-invitation",
        now(),
        std::time::Duration::from_secs(600),
    );
    assert_eq!(r.status.phase, Some(UserPhase::Failed));
    assert_eq!(r.status.conditions[0].reason, "StoreRefused");
    assert_eq!(r.notes.len(), 1);
    assert_eq!(r.notes[0].reason, "StoreRefused");
    assert!(r.notes[0].warning);
}

#[test]
fn a_tenant_store_that_cannot_be_used_shows_on_the_person_and_keeps_what_was_known() {
    let mut u = user("alice", "alice@acme.example");
    u.status = Some(SystemUserStatus {
        phase: Some(UserPhase::Active),
        user_id: Some("u-1".into()),
        roles: vec!["Manager".into()],
        ..Default::default()
    });
    let why = "Tenant acme/acme's store: Secret usher-store has no key \"token\"";
    let (status, note) = store_unavailable(&u, why, now());
    assert_eq!(status.phase, Some(UserPhase::Active), "access as it was");
    assert_eq!(status.user_id.as_deref(), Some("u-1"));
    assert_eq!(status.roles, ["Manager"]);
    let ready = &status.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "False")
    );
    assert_eq!(ready.reason, STORE_UNAVAILABLE);
    assert!(ready.message.starts_with(why), "{}", ready.message);
    assert_eq!(
        status.conditions[1].type_, "Reconciling",
        "usher retries by itself"
    );
    let note = note.expect("a Warning the first time");
    assert!(note.warning && note.reason == STORE_UNAVAILABLE);
    // Still unavailable at the next reconcile: the same status, no second Event.
    u.status = Some(status.clone());
    let (again, note) = store_unavailable(&u, why, now());
    assert_eq!(again, status);
    assert!(note.is_none());
}

#[test]
fn drift_is_one_warning_and_a_missing_tenant_waits_for_the_resync_only() {
    let t = tenant(None);
    let mut shown = user("alice", "alice@acme.example");
    shown.status = Some(SystemUserStatus {
        observed_generation: Some(1),
        phase: Some(UserPhase::Active),
        ..Default::default()
    });
    let acc = account(false, true);
    let read = Seen {
        account: Some(&acc),
        ..seen(Some(&t), &[])
    };
    let d = decide(&shown, &read);
    assert_eq!(d.writes.access, AccessAction::Restore);
    let restored = account(true, true);
    let resync = std::time::Duration::from_secs(600);
    let r = report(
        &shown,
        &d,
        &Outcome {
            account: Some(&restored),
            ..Default::default()
        },
        "alice-invitation",
        now(),
        resync,
    );
    assert_eq!(r.repaired, vec!["account access"]);
    let drift: Vec<_> = r
        .notes
        .iter()
        .filter(|n| n.reason == "DriftCorrected")
        .collect();
    assert_eq!(drift.len(), 1);
    assert!(drift[0].warning && drift[0].message.contains("account access"));
    // The store refused the repair: nothing was repaired, and nothing is counted or announced.
    let refused = report(
        &shown,
        &d,
        &Outcome {
            account: Some(&acc),
            refused: Some("the user store refused it (501): Not Implemented"),
            ..Default::default()
        },
        "alice-invitation",
        now(),
        resync,
    );
    assert!(refused.repaired.is_empty());
    assert!(!refused.notes.iter().any(|n| n.reason == "DriftCorrected"));

    let u = user("alice", "alice@acme.example");
    let r = report(
        &u,
        &decide(&u, &seen(None, &[])),
        &Outcome::default(),
        "alice-invitation",
        now(),
        resync,
    );
    assert_eq!(r.status.conditions[0].reason, "TenantNotFound");
    assert_eq!(r.requeue, resync);
}

#[test]
fn a_person_is_looked_at_again_when_a_binding_of_theirs_ends() {
    let t = tenant(None);
    let u = user("alice", "alice@acme.example");
    let acc = account(true, true);
    let resync = std::time::Duration::from_secs(600);
    let ends = now() + 90.seconds();
    let d = decide(
        &u,
        &Seen {
            account: Some(&acc),
            expires: Some(ends),
            ..seen(Some(&t), &[])
        },
    );
    assert_eq!(d.expires, Some(ends));
    let r = report(
        &u,
        &d,
        &Outcome {
            account: Some(&acc),
            ..Default::default()
        },
        "alice-invitation",
        now(),
        resync,
    );
    assert_eq!(r.requeue, std::time::Duration::from_millis(90_050));
}

#[test]
fn fields_the_store_does_not_keep_are_said_once_and_the_status_then_holds_still() {
    let t = tenant(None);
    let mut u = user("alice", "alice@acme.example");
    u.spec.phone = Some("+1 555 0100".into());
    let acc = account(true, true);
    let unkept = ["address".to_string(), "phone".to_string()];
    let at = |minutes: i64| now() + jiff::SignedDuration::from_mins(minutes);
    let report_at = |shown: &SystemUser, when| {
        report(
            shown,
            &decide(shown, &seen(Some(&t), &[])),
            &Outcome {
                account: Some(&acc),
                unkept: &unkept,
                ..Default::default()
            },
            "alice-invitation",
            when,
            std::time::Duration::from_secs(600),
        )
    };
    let first = report_at(&u, at(0));
    let said: Vec<_> = first
        .status
        .conditions
        .iter()
        .filter(|c| c.type_ == FIELDS_NOT_KEPT)
        .collect();
    assert_eq!(said.len(), 1);
    // Only what the file sets: the phone, not the address it leaves out.
    assert!(said[0].message.contains("spec.phone") && !said[0].message.contains("address"));
    // A minute later, nothing changed: the same status, so nothing is patched.
    u.status = Some(first.status.clone());
    assert_eq!(report_at(&u, at(1)).status, first.status);
    // Nothing unkept that the file sets: no such condition.
    u.spec.phone = None;
    let plain = report_at(&u, at(2));
    assert!(
        !plain
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == FIELDS_NOT_KEPT)
    );
}
