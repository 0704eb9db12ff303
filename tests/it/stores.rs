//! The contract every `UserStore` backend passes, unchanged: SQLite (a file in WAL mode, several
//! connections), PostgreSQL and SCIM, each a real server. Each check is a plain async function
//! taking the store.

use std::sync::Arc;

use jiff::{Timestamp, ToSpan};
use serde_json::json;
use usher::plan::records::{
    Assignment, Grant, GroupRecord, InvitationRecord, Profile, RedeemRefusal, RoleRecord,
    TenantRecord, UserFields,
};
use usher::store::{StoreError, UserStore};
use usher::token::{Token, TokenHash};

use crate::support::{scim_filter, scim_get, scim_group_members};

fn fields(name: &str) -> UserFields {
    UserFields {
        tenant: "acme/acme".into(),
        external_id: format!("acme/{name}"),
        email: format!("{name}@acme.example"),
        profile: Profile {
            first_name: Some(name.into()),
            locations: vec!["fresno-01".into()],
            attributes: [("allowTickets", "true"), ("costCenter", "CC-17")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ..Default::default()
        },
    }
}

fn invitation(
    user_id: &str,
    attempt: i32,
    token: &Token,
    expires_in_secs: i64,
) -> InvitationRecord {
    let now = Timestamp::now();
    InvitationRecord {
        token_hash: token.hash(),
        user_id: user_id.into(),
        attempt,
        trigger: None,
        created_at: now,
        expires_at: now + expires_in_secs.seconds(),
        sent_at: Some(now),
        used_at: None,
        revoked_at: None,
    }
}

async fn accounts_round_trip(store: Arc<dyn UserStore>) {
    let t = TenantRecord {
        key: "acme/acme".into(),
        display_name: "Acme".into(),
    };
    store.put_tenant(&t).await.unwrap();
    assert_eq!(store.tenant("acme/acme").await.unwrap(), Some(t));
    let created = store.create_user(&fields("alice")).await.unwrap();
    assert!(!created.active && created.activated_at.is_none());
    let read = store
        .user_by_external_id("acme/alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, created);
    assert!(read.matches(&fields("alice")));
    let mut changed = fields("alice");
    changed.profile.last_name = Some("Ng".into());
    // Per-person options: one dropped in git, one changed, one new; the store holds exactly those.
    changed.profile.attributes.remove("costCenter");
    changed
        .profile
        .attributes
        .insert("allowTickets".into(), "false".into());
    changed
        .profile
        .attributes
        .insert("shift".into(), "night".into());
    let updated = store.update_user(&created.id, &changed).await.unwrap();
    assert_eq!(updated.profile.last_name.as_deref(), Some("Ng"));
    let reread = store
        .user_by_external_id("acme/alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reread.profile.attributes, changed.profile.attributes);
    assert!(reread.matches(&changed), "read back as written: {reread:?}");
    store
        .set_active(&created.id, true, Timestamp::now())
        .await
        .unwrap();
    assert!(
        store
            .user_by_external_id("acme/alice")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert!(
        store
            .user_by_external_id("acme/nobody")
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_new_invitation_revokes_the_open_one(store: Arc<dyn UserStore>) {
    let user = store.create_user(&fields("bob")).await.unwrap();
    let (t1, t2) = (Token::generate().unwrap(), Token::generate().unwrap());
    store
        .record_invitation(&invitation(&user.id, 1, &t1, 3600))
        .await
        .unwrap();
    store
        .record_invitation(&invitation(&user.id, 2, &t2, 3600))
        .await
        .unwrap();
    let latest = store.latest_invitation(&user.id).await.unwrap().unwrap();
    assert_eq!((latest.attempt, &latest.token_hash), (2, &t2.hash()));
    let now = Timestamp::now();
    assert_eq!(
        store.redeem(&t1.hash(), now).await.unwrap(),
        Err(RedeemRefusal::Expired),
        "revoked"
    );
    assert!(store.redeem(&t2.hash(), now).await.unwrap().is_ok());
}

/// The candidates a short code is checked against: the invitations of the accounts with the
/// address, whatever its case, in every tenant (the address has an account in a second tenant),
/// newest first, and no one else's.
async fn invitations_are_found_by_address(store: Arc<dyn UserStore>) {
    let account = |tenant: &str, name: &str, email: &str| UserFields {
        tenant: tenant.into(),
        external_id: format!("{tenant}-{name}"),
        email: email.into(),
        ..fields(name)
    };
    let second = ("globex/globex", "Pat@Contractor.example");
    let pat = store
        .create_user(&account("acme/acme", "pat", "Pat@Contractor.example"))
        .await
        .unwrap();
    let other = store
        .create_user(&account(second.0, "pat", second.1))
        .await
        .unwrap();
    let tokens: Vec<Token> = (0..3).map(|_| Token::generate().unwrap()).collect();
    for (holder, attempt, token) in [
        (&pat, 1, &tokens[0]),
        (&other, 1, &tokens[1]),
        (&pat, 2, &tokens[2]),
    ] {
        store
            .record_invitation(&invitation(&holder.id, attempt, token, 3600))
            .await
            .unwrap();
    }
    let found = store
        .invitations_for_address("pat@CONTRACTOR.example")
        .await
        .unwrap();
    let expected: Vec<TokenHash> = tokens.iter().rev().map(Token::hash).collect();
    assert_eq!(found, expected, "newest first, this address only");
    for stranger in [
        "pat@contractor.example.org",
        "%@contractor.example",
        "pat@contractor",
    ] {
        assert!(
            store
                .invitations_for_address(stranger)
                .await
                .unwrap()
                .is_empty(),
            "{stranger} matched: an address is matched exactly, not as a pattern"
        );
    }
    store.delete_user(&pat.id).await.unwrap();
    store.delete_user(&other.id).await.unwrap();
}

async fn redemption_is_single_use_and_refuses_clearly(store: Arc<dyn UserStore>) {
    let user = store.create_user(&fields("carol")).await.unwrap();
    let token = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&user.id, 1, &token, 3600))
        .await
        .unwrap();
    let now = Timestamp::now();
    let redeemed = store.redeem(&token.hash(), now).await.unwrap().unwrap();
    assert_eq!(
        (redeemed.user_id.as_str(), redeemed.external_id.as_str()),
        (user.id.as_str(), "acme/carol")
    );
    let account = store
        .user_by_external_id("acme/carol")
        .await
        .unwrap()
        .unwrap();
    assert!(account.active && account.activated_at.is_some());
    assert_eq!(
        store.redeem(&token.hash(), now).await.unwrap(),
        Err(RedeemRefusal::AlreadyUsed)
    );
    assert_eq!(
        store.redeem(&TokenHash::of("nope"), now).await.unwrap(),
        Err(RedeemRefusal::Unknown)
    );

    let late = store.create_user(&fields("dave")).await.unwrap();
    let stale = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&late.id, 1, &stale, 60))
        .await
        .unwrap();
    assert_eq!(
        store
            .redeem(&stale.hash(), now + 61.seconds())
            .await
            .unwrap(),
        Err(RedeemRefusal::Expired)
    );
    assert_eq!(store.revoke_open(&late.id, now).await.unwrap(), 1);
}

async fn only_an_unsent_invitation_is_rotated(store: Arc<dyn UserStore>) {
    let user = store.create_user(&fields("erin")).await.unwrap();
    let first = Token::generate().unwrap();
    let mut inv = invitation(&user.id, 1, &first, 3600);
    inv.sent_at = None;
    store.record_invitation(&inv).await.unwrap();
    let second = Token::generate().unwrap();
    let later = Timestamp::now() + 2.hours();
    assert!(
        store
            .rotate_unsent(&user.id, 1, &second.hash(), later)
            .await
            .unwrap()
    );
    let now = Timestamp::now();
    assert_eq!(
        store.redeem(&first.hash(), now).await.unwrap(),
        Err(RedeemRefusal::Unknown),
        "the unsent token is gone"
    );
    store.mark_sent(&second.hash(), now).await.unwrap();
    let third = Token::generate().unwrap();
    assert!(
        !store
            .rotate_unsent(&user.id, 1, &third.hash(), later)
            .await
            .unwrap(),
        "a sent one stays"
    );
    let latest = store.latest_invitation(&user.id).await.unwrap().unwrap();
    assert_eq!((latest.token_hash, latest.attempt), (second.hash(), 1));
    assert!(latest.sent_at.is_some());
}

async fn accounts_deactivate_reactivate_list_and_delete(store: Arc<dyn UserStore>) {
    let hana = store.create_user(&fields("hana")).await.unwrap();
    let ivan = store.create_user(&fields("ivan")).await.unwrap();
    let now = Timestamp::now();
    store.set_active(&hana.id, true, now).await.unwrap();
    store.set_active(&hana.id, false, now).await.unwrap();
    let read = store
        .user_by_external_id("acme/hana")
        .await
        .unwrap()
        .unwrap();
    assert!(!read.active, "deactivated");
    store.set_active(&hana.id, true, now).await.unwrap();
    assert!(
        store
            .user_by_external_id("acme/hana")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    // Found by email whatever its case, within its tenant only.
    let by_mail = store
        .user_by_email("acme/acme", "HANA@acme.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_mail.id, hana.id);
    assert!(
        store
            .user_by_email("other/other", "hana@acme.example")
            .await
            .unwrap()
            .is_none()
    );
    // Listing for drift repair: every account of the tenant, by external id.
    let listed: Vec<String> = store
        .users_of_tenant("acme/acme")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.external_id)
        .collect();
    assert!(
        listed.windows(2).all(|w| w[0] <= w[1]),
        "sorted: {listed:?}"
    );
    assert!(listed.contains(&"acme/hana".to_string()) && listed.contains(&"acme/ivan".to_string()));
    // Deleting takes the invitations and assignments along.
    let token = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&ivan.id, 1, &token, 3600))
        .await
        .unwrap();
    store
        .set_assignments(
            &ivan.id,
            &[Assignment {
                binding: "acme/ivan-admin".into(),
                role: "Administrator".into(),
                group: None,
            }],
        )
        .await
        .unwrap();
    store.delete_user(&ivan.id).await.unwrap();
    assert!(
        store
            .user_by_external_id("acme/ivan")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.redeem(&token.hash(), now).await.unwrap(),
        Err(RedeemRefusal::Unknown),
        "a deleted person's token is gone"
    );
    assert!(store.latest_invitation(&ivan.id).await.unwrap().is_none());
}

async fn revoked_tokens_are_refused_and_the_guard_counts(store: Arc<dyn UserStore>) {
    let user = store.create_user(&fields("jana")).await.unwrap();
    let token = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&user.id, 1, &token, 3600))
        .await
        .unwrap();
    let now = Timestamp::now();
    assert_eq!(store.revoke_open(&user.id, now).await.unwrap(), 1);
    assert_eq!(
        store.revoke_open(&user.id, now).await.unwrap(),
        0,
        "nothing open twice"
    );
    assert_eq!(
        store.redeem(&token.hash(), now).await.unwrap(),
        Err(RedeemRefusal::Expired)
    );
    let latest = store.latest_invitation(&user.id).await.unwrap().unwrap();
    assert!(latest.revoked_at.is_some() && latest.used_at.is_none());
    assert!(
        !store
            .user_by_external_id("acme/jana")
            .await
            .unwrap()
            .unwrap()
            .active,
        "a refused redemption activates nothing"
    );

    // The mass-offboarding guard's ledger.
    for _ in 0..3 {
        store.record_offboarding("acme/acme", now).await.unwrap();
    }
    assert_eq!(
        store
            .offboardings_since("acme/acme", now - 1.minutes())
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .offboardings_since("acme/acme", now + 1.minutes())
            .await
            .unwrap(),
        0
    );
    let first = store.release("acme/acme", "v1", now).await.unwrap();
    let again = store
        .release("acme/acme", "v1", now + 5.minutes())
        .await
        .unwrap();
    assert_eq!(first, again, "the same value keeps its moment");
    let moved = store
        .release("acme/acme", "v2", now + 5.minutes())
        .await
        .unwrap();
    assert!(moved > first, "a new value moves it");
}

async fn concurrent_redemptions_of_one_token_succeed_once(store: Arc<dyn UserStore>) {
    let user = store.create_user(&fields("frank")).await.unwrap();
    let token = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&user.id, 1, &token, 3600))
        .await
        .unwrap();
    let tries: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            let hash = token.hash();
            tokio::spawn(async move { store.redeem(&hash, Timestamp::now()).await })
        })
        .collect();
    let mut wins = 0;
    for t in tries {
        match t.await.unwrap().unwrap() {
            Ok(_) => wins += 1,
            Err(refusal) => assert_eq!(refusal, RedeemRefusal::AlreadyUsed),
        }
    }
    assert_eq!(wins, 1);
}

async fn grants_reach_down_a_three_level_tree(store: Arc<dyn UserStore>) {
    let group = |name: &str, parent: Option<&str>, path: &str| GroupRecord {
        key: format!("acme/{name}"),
        tenant: "acme/acme".into(),
        parent: parent.map(|p| format!("acme/{p}")),
        display_name: name.into(),
        path: path.into(),
        locations: vec![],
    };
    for g in [
        group("main", None, "main"),
        group("west", Some("main"), "main/west"),
        group("fresno", Some("west"), "main/west/fresno"),
        group("east", Some("main"), "main/east"),
    ] {
        store.put_group(&g).await.unwrap();
    }
    assert_eq!(
        store.group("acme/west").await.unwrap().unwrap().path,
        "main/west"
    );
    let user = store.create_user(&fields("grace")).await.unwrap();
    let assignments = vec![
        Assignment {
            binding: "acme/g-admin".into(),
            role: "Administrator".into(),
            group: None,
        },
        Assignment {
            binding: "acme/g-tech".into(),
            role: "Technician".into(),
            group: Some("acme/west".into()),
        },
    ];
    store.set_assignments(&user.id, &assignments).await.unwrap();
    assert_eq!(store.assignments(&user.id).await.unwrap(), assignments);
    let grant = |role: &str, group: Option<&str>| Grant {
        role: role.into(),
        group: group.map(Into::into),
    };
    assert_eq!(
        store.grants(&user.id).await.unwrap(),
        [
            grant("Administrator", None),
            grant("Technician", Some("acme/fresno")),
            grant("Technician", Some("acme/west")),
        ],
        "west and below, not main or east"
    );
    store.delete_group("acme/fresno").await.unwrap();
    assert_eq!(
        store.grants(&user.id).await.unwrap().len(),
        2,
        "a removed group grants nothing"
    );
    store.remove_assignment("acme/g-admin").await.unwrap();
    assert_eq!(
        store.grants(&user.id).await.unwrap(),
        [grant("Technician", Some("acme/west"))],
        "a deleted binding's assignment goes wherever it is"
    );
    store.set_assignments(&user.id, &[]).await.unwrap();
    assert!(store.grants(&user.id).await.unwrap().is_empty());

    let roles = vec![RoleRecord {
        name: "Technician".into(),
        description: None,
        exclusive: true,
        permissions: vec!["work-orders".into()],
    }];
    store.put_roles("acme/acme", &roles).await.unwrap();
    assert_eq!(store.roles("acme/acme").await.unwrap(), roles);

    store.delete_tenant("acme/acme").await.unwrap();
    assert!(store.tenant("acme/acme").await.unwrap().is_none());
    assert!(store.roles("acme/acme").await.unwrap().is_empty());
    assert!(store.group("acme/west").await.unwrap().is_none());
}

/// Every check, in order, on one store.
/// Issue 17, where the product reads access: the `access` view of the SQL stores answers "may
/// this person open pricing at fresno-01?" in one query, with inherited scope expanded, and
/// gives nothing to an account that is not active.
async fn the_access_view_answers_the_sign_in_question(store: Arc<dyn UserStore>, url: &str) {
    let tenant = "view/acme";
    store
        .put_tenant(&TenantRecord {
            key: tenant.into(),
            display_name: "Acme".into(),
        })
        .await
        .unwrap();
    let role = |name: &str, permissions: &[&str]| RoleRecord {
        name: name.into(),
        description: None,
        exclusive: false,
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
    };
    store
        .put_roles(
            tenant,
            &[
                role("Manager", &["pricing", "reports"]),
                role("Auditor", &["reports"]),
                role("Viewer", &[]),
            ],
        )
        .await
        .unwrap();
    let group = |name: &str, parent: Option<&str>, locations: &[&str]| GroupRecord {
        key: format!("view/{name}"),
        tenant: tenant.into(),
        parent: parent.map(|p| format!("view/{p}")),
        display_name: name.into(),
        path: name.into(),
        locations: locations
            .iter()
            .map(|id| usher::crd::Location {
                id: id.to_string(),
                name: None,
            })
            .collect(),
    };
    for g in [
        group("main", None, &["hq-01"]),
        group("west", Some("main"), &["west-01"]),
        group("fresno", Some("west"), &["fresno-01", "fresno-02"]),
    ] {
        store.put_group(&g).await.unwrap();
    }
    let person = |name: &str| UserFields {
        tenant: tenant.into(),
        external_id: format!("view/{name}"),
        email: format!("{name}@view.example"),
        profile: Default::default(),
    };
    let dana = store.create_user(&person("dana")).await.unwrap();
    let omar = store.create_user(&person("omar")).await.unwrap();
    let pending = store.create_user(&person("pending")).await.unwrap();
    for user in [&dana, &omar] {
        store
            .set_active(&user.id, true, Timestamp::now())
            .await
            .unwrap();
    }
    let assign = |binding: &str, role: &str, group: Option<&str>| Assignment {
        binding: format!("view/{binding}"),
        role: role.into(),
        group: group.map(|g| format!("view/{g}")),
    };
    store
        .set_assignments(&dana.id, &[assign("dana-manager", "Manager", Some("west"))])
        .await
        .unwrap();
    store
        .set_assignments(&omar.id, &[assign("omar-auditor", "Auditor", None)])
        .await
        .unwrap();
    store
        .set_assignments(&pending.id, &[assign("p-manager", "Manager", None)])
        .await
        .unwrap();

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let may = |who: &'static str, permission: &'static str, location: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM access WHERE person = $1 AND permission = $2
                 AND (tenant_wide = 1 OR location = $3)",
            )
            .bind(format!("view/{who}"))
            .bind(permission)
            .bind(location)
            .fetch_one(&pool)
            .await
            .unwrap();
            n > 0
        }
    };
    // Manager on west: west and everything below it, its permissions only.
    assert!(may("dana", "pricing", "fresno-01").await);
    assert!(may("dana", "reports", "fresno-02").await);
    assert!(may("dana", "pricing", "west-01").await);
    assert!(!may("dana", "pricing", "hq-01").await, "main is above west");
    assert!(!may("dana", "work-orders", "fresno-01").await);
    // A tenant-wide role reaches every location.
    assert!(may("omar", "reports", "hq-01").await);
    assert!(!may("omar", "pricing", "hq-01").await);
    // Not active: nothing, whatever the role.
    assert!(!may("pending", "pricing", "hq-01").await);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access WHERE person = 'view/pending'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    // Suspending someone takes it away at once.
    store
        .set_active(&dana.id, false, Timestamp::now())
        .await
        .unwrap();
    assert!(!may("dana", "pricing", "fresno-01").await);
}

/// The SQL stores keep one account per (tenant, address), whatever the case, so that no race
/// between two reconciles can give one mailbox two accounts.
async fn one_account_per_address(store: Arc<dyn UserStore>) {
    let with = |tenant: &str, name: &str, email: &str| UserFields {
        tenant: tenant.into(),
        email: email.into(),
        ..fields(name)
    };
    let holder = store
        .create_user(&with("acme/acme", "uni", "Uni@Acme.example"))
        .await
        .unwrap();
    let refused = |e: StoreError| {
        assert!(
            matches!(&e, StoreError::Refused { status: 409, detail } if detail.contains("uni@acme.example")),
            "{e}"
        )
    };
    // Another person, the same address in another case: refused, and nothing is written.
    refused(
        store
            .create_user(&with("acme/acme", "uni-2", "uni@acme.EXAMPLE"))
            .await
            .unwrap_err(),
    );
    assert!(
        store
            .user_by_external_id("acme/uni-2")
            .await
            .unwrap()
            .is_none()
    );
    // Re-addressing someone onto it: refused too, and their account keeps its address.
    let other = store.create_user(&fields("duo")).await.unwrap();
    refused(
        store
            .update_user(&other.id, &with("acme/acme", "duo", "UNI@acme.example"))
            .await
            .unwrap_err(),
    );
    let kept = store
        .user_by_external_id("acme/duo")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.email, "duo@acme.example");
    // Another tenant may have the address.
    store
        .create_user(&with("acme/globex", "uni-3", "uni@acme.example"))
        .await
        .unwrap();
    // Once the holder is gone, the address is free.
    store.delete_user(&holder.id).await.unwrap();
    store
        .create_user(&with("acme/acme", "uni-2", "uni@acme.example"))
        .await
        .unwrap();
}

/// One address in two tenants (legal: an address is unique per tenant): two accounts, each with
/// its own id, state, invitations and lifetime, whatever the store makes of the person (two rows
/// in SQL, one shared User on SCIM).
async fn one_person_in_two_tenants(store: Arc<dyn UserStore>) {
    let lee = |tenant: &str| UserFields {
        tenant: format!("{tenant}/{tenant}"),
        external_id: format!("{tenant}/contractor-lee"),
        email: "lee@contractor.example".into(),
        profile: Profile::default(),
    };
    // Not an address an earlier step used: Better Auth keeps its own user of a deleted SCIM User
    // and refuses that address to a new one.
    let acme = store.create_user(&lee("acme")).await.unwrap();
    let globex = store.create_user(&lee("globex")).await.unwrap();
    assert_ne!(acme.id, globex.id, "an account per tenant");
    assert_eq!(globex.tenant, "globex/globex");
    assert_eq!(globex.external_id, "globex/contractor-lee");
    assert!(!acme.active && !globex.active);
    let read = |key: &'static str| {
        let store = store.clone();
        async move { store.user_by_external_id(key).await.unwrap().unwrap() }
    };
    // Redeemed in acme only: globex's account stays pending.
    let now = Timestamp::now();
    let token = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&acme.id, 1, &token, 3600))
        .await
        .unwrap();
    let redeemed = store.redeem(&token.hash(), now).await.unwrap().unwrap();
    assert_eq!(redeemed.user_id, acme.id);
    assert!(read("acme/contractor-lee").await.active);
    let g = read("globex/contractor-lee").await;
    assert!(!g.active, "redeeming in acme does not accept globex");
    assert_eq!(
        (g.id.as_str(), g.tenant.as_str()),
        (globex.id.as_str(), "globex/globex")
    );
    // Each tenant lists its own account.
    let listed = store.users_of_tenant("globex/globex").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].active),
        (globex.id.as_str(), false)
    );
    // Globex accepts; acme suspends: each account keeps its own state.
    store.set_active(&globex.id, true, now).await.unwrap();
    store.set_active(&acme.id, false, now).await.unwrap();
    assert!(!read("acme/contractor-lee").await.active);
    assert!(read("globex/contractor-lee").await.active);
    // Acme offboards (Delete): globex keeps its account, active.
    store.delete_user(&acme.id).await.unwrap();
    assert!(
        store
            .user_by_external_id("acme/contractor-lee")
            .await
            .unwrap()
            .is_none()
    );
    let g = read("globex/contractor-lee").await;
    assert!(g.active, "offboarding from acme leaves globex intact");
    assert_eq!(g.email, "lee@contractor.example");
    store.delete_user(&globex.id).await.unwrap();
}

pub async fn contract(store: Arc<dyn UserStore>) {
    store.ping().await.unwrap();
    accounts_round_trip(store.clone()).await;
    accounts_deactivate_reactivate_list_and_delete(store.clone()).await;
    a_new_invitation_revokes_the_open_one(store.clone()).await;
    invitations_are_found_by_address(store.clone()).await;
    redemption_is_single_use_and_refuses_clearly(store.clone()).await;
    revoked_tokens_are_refused_and_the_guard_counts(store.clone()).await;
    only_an_unsent_invitation_is_rotated(store.clone()).await;
    concurrent_redemptions_of_one_token_succeed_once(store.clone()).await;
    one_person_in_two_tenants(store.clone()).await;
    grants_reach_down_a_three_level_tree(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_passes_the_contract() {
    let dir = usher_testenv::scratch_dir("contract").unwrap();
    let url = format!("sqlite://{}", dir.join("usher.db").display());
    let store = usher::store::open(&url).await.unwrap();
    contract(store.clone()).await;
    one_account_per_address(store.clone()).await;
    the_access_view_answers_the_sign_in_question(store, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_passes_the_contract() {
    let url = usher_testenv::postgres().database("contract").unwrap();
    let store = usher::store::open(&url).await.unwrap();
    contract(store.clone()).await;
    one_account_per_address(store.clone()).await;
    the_access_view_answers_the_sign_in_question(store, &url).await;
}

#[tokio::test]
async fn bad_store_urls_say_what_is_wrong() {
    for (url, needle) in [
        ("mysql://x", "unsupported scheme \"mysql\""),
        ("sqlite://", "needs a file path"),
        ("usher.db", "unsupported scheme"),
        ("postgres:///db", "needs a host"),
    ] {
        let err = usher::store::StoreConfig::parse(url)
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"))
            .to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
}

async fn scim_store(scim: &usher_testenv::Scim, page_size: u32) -> Arc<dyn UserStore> {
    scim_store_at(&scim.url(), &scim.token, page_size).await
}

/// usher's SCIM store on the server at `url` (`scim+http://…`) with bearer `token`, its local
/// part in a fresh SQLite file, listing `page_size` resources a page (small, so that paging is
/// exercised).
pub async fn scim_store_at(url: &str, token: &str, page_size: u32) -> Arc<dyn UserStore> {
    let local = usher_testenv::scratch_dir("scim-local").unwrap();
    let mut config = usher::store::StoreConfig::parse_with(
        url,
        Some(token),
        &format!("sqlite://{}", local.join("local.db").display()),
    )
    .unwrap();
    if let usher::store::StoreConfig::Scim { page_size: p, .. } = &mut config {
        *p = page_size;
    }
    config.open().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scim_passes_the_contract_with_and_without_the_extension() {
    for extension in [true, false] {
        let scim = usher_testenv::Scim::start(extension).unwrap();
        // A page of 2 makes every listing page through the server's results.
        contract(scim_store(&scim, 2).await).await;
    }
}

#[tokio::test]
async fn scim_holds_users_by_external_id_and_roles_as_groups() {
    let scim = usher_testenv::Scim::start(true).unwrap();
    let store = scim_store(&scim, 100).await;
    let mut kim = fields("kim");
    kim.profile.last_name = Some("Lee".into());
    kim.profile.phone = Some("+1 555 0100".into());
    kim.profile.address = Some(usher::crd::Address {
        street: Some("1 Main St".into()),
        city: Some("Fresno".into()),
        region: Some("CA".into()),
        postal_code: Some("93650".into()),
        country: Some("US".into()),
    });
    let created = store.create_user(&kim).await.unwrap();
    let found = scim_get(
        &scim,
        &format!("/Users{}", scim_filter("externalId", "acme/kim")),
    )
    .await;
    assert_eq!(found["totalResults"], 1, "{found}");
    let u = &found["Resources"][0];
    assert_eq!(u["id"], created.id.as_str());
    assert_eq!(u["userName"], "kim@acme.example");
    assert_eq!(
        u["active"], false,
        "inactive until the invitation is redeemed"
    );
    assert_eq!(u["name"]["familyName"], "Lee");
    assert_eq!(u["phoneNumbers"][0]["value"], "+1 555 0100");
    assert_eq!(u["addresses"][0]["locality"], "Fresno");
    let ext = &u[usher::store::USER_EXTENSION];
    assert_eq!(ext["tenant"], "acme/acme");
    assert_eq!(ext["locations"][0], "fresno-01");
    // Read back, it is what was written: no update is due.
    let read = store
        .user_by_external_id("acme/kim")
        .await
        .unwrap()
        .unwrap();
    assert!(read.matches(&kim), "{read:?}");

    // A redemption activates the SCIM User.
    let token = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&created.id, 1, &token, 3600))
        .await
        .unwrap();
    store
        .redeem(&token.hash(), Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    let u = scim_get(&scim, &format!("/Users/{}", created.id)).await;
    assert_eq!(u["active"], true);
    // The local store lost (a new volume): the people are found again, and whoever was active
    // stays accepted rather than being deactivated and invited anew.
    let fresh = scim_store(&scim, 100).await;
    let again = fresh
        .user_by_external_id("acme/kim")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, created.id);
    assert!(again.active && again.activated_at.is_some(), "{again:?}");
    assert_eq!(fresh.users_of_tenant("acme/acme").await.unwrap().len(), 1);

    // A role is a Group whose members are the people holding it.
    store
        .set_assignments(
            &created.id,
            &[Assignment {
                binding: "acme/kim-tech".into(),
                role: "Technician".into(),
                group: None,
            }],
        )
        .await
        .unwrap();
    let groups = scim_get(
        &scim,
        &format!(
            "/Groups{}",
            scim_filter("externalId", "role/acme/acme/Technician")
        ),
    )
    .await;
    assert_eq!(groups["totalResults"], 1, "{groups}");
    assert_eq!(
        groups["Resources"][0]["displayName"],
        "acme/acme: Technician"
    );
    assert_eq!(
        groups["Resources"][0]["members"][0]["value"],
        created.id.as_str()
    );

    // Offboarding with Delete: the User goes, and so does its membership.
    store.delete_user(&created.id).await.unwrap();
    let gone = reqwest::Client::new()
        .get(format!("{}/Users/{}", scim.base(), created.id))
        .bearer_auth(&scim.token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let group = &scim_get(
        &scim,
        &format!(
            "/Groups{}",
            scim_filter("externalId", "role/acme/acme/Technician")
        ),
    )
    .await["Resources"][0];
    assert!(
        group["members"].as_array().is_none_or(|m| m.is_empty()),
        "{group}"
    );
}

#[tokio::test]
async fn scim_refusals_and_a_bad_token_say_what_the_server_said() {
    let scim = usher_testenv::Scim::start(false).unwrap();
    let store = scim_store(&scim, 100).await;
    // Someone else already has this userName in the product.
    store.create_user(&fields("lou")).await.unwrap();
    let mut twin = fields("lou");
    twin.external_id = "acme/lou-2".into();
    let err = store.create_user(&twin).await.unwrap_err().to_string();
    assert!(err.contains("409") && err.contains("uniqueness"), "{err}");

    let local = usher_testenv::scratch_dir("scim-local").unwrap();
    let wrong = usher::store::StoreConfig::parse_with(
        &scim.url(),
        Some("not-the-token"),
        &format!("sqlite://{}", local.join("local.db").display()),
    )
    .unwrap();
    let err = wrong
        .open()
        .await
        .err()
        .expect("a wrong token is refused")
        .to_string();
    assert!(err.contains("401"), "{err}");
    for (url, token, needle) in [
        (
            "scim+http://scim.example.com/v2",
            Some("t"),
            "only allowed on loopback",
        ),
        (
            "scim+https://scim.example.com/v2",
            None,
            "USHER_STORE_TOKEN",
        ),
        (
            "scim+https://u:p@scim.example.com/v2",
            Some("t"),
            "no credentials in the URL",
        ),
    ] {
        let err = usher::store::StoreConfig::parse_with(url, token, "sqlite::memory:")
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"))
            .to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
}

/// A role's permissions reach a SCIM product as the User's `entitlements` (RFC 7643), one per
/// (permission, scope), and follow both the person's roles and the catalogue: a permission the
/// catalogue takes from a role leaves its holders, and so does a role taken from the person.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scim_entitlements_carry_the_permissions_of_each_role_where_it_applies() {
    let scim = usher_testenv::Scim::start(false).unwrap();
    let store = scim_store(&scim, 100).await;
    store
        .put_tenant(&TenantRecord {
            key: "acme/acme".into(),
            display_name: "Acme".into(),
        })
        .await
        .unwrap();
    let role = |name: &str, permissions: &[&str]| RoleRecord {
        name: name.into(),
        description: None,
        exclusive: false,
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
    };
    store
        .put_roles(
            "acme/acme",
            &[
                role("Manager", &["Pricing", "Reports"]),
                role("Viewer", &["Reports"]),
            ],
        )
        .await
        .unwrap();
    store
        .put_group(&GroupRecord {
            key: "acme/west".into(),
            tenant: "acme/acme".into(),
            parent: None,
            display_name: "West".into(),
            path: "west".into(),
            locations: vec![],
        })
        .await
        .unwrap();
    let lia = store.create_user(&fields("lia")).await.unwrap();
    let assign = |binding: &str, role: &str, group: Option<&str>| Assignment {
        binding: binding.into(),
        role: role.into(),
        group: group.map(str::to_string),
    };
    let entitlements = || async {
        let u = scim_get(&scim, &format!("/Users/{}", lia.id)).await;
        attribute_pairs(&u["entitlements"], "value", "type")
    };
    let pairs = owned_pairs;
    store
        .set_assignments(
            &lia.id,
            &[
                assign("acme/lia-manager", "Manager", Some("acme/west")),
                assign("acme/lia-viewer", "Viewer", None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        entitlements().await,
        pairs(&[
            ("Pricing", "west"),
            ("Reports", "tenant"),
            ("Reports", "west")
        ])
    );
    // The catalogue takes Pricing from Manager: Lia loses it in the product.
    store
        .put_roles(
            "acme/acme",
            &[role("Manager", &["Reports"]), role("Viewer", &["Reports"])],
        )
        .await
        .unwrap();
    assert_eq!(
        entitlements().await,
        pairs(&[("Reports", "tenant"), ("Reports", "west")])
    );
    // The roles go: so do the entitlements.
    store.set_assignments(&lia.id, &[]).await.unwrap();
    assert_eq!(entitlements().await, pairs(&[]));
}

/// One person in two tenants that share one SCIM server is one User there (one userName
/// space), with access in each tenant through that tenant's role Groups: opened to an account
/// only once it is active (the User being active for acme must not open globex before pat
/// accepts globex's invitation), closed when it is suspended, handed to an account in use when its owner is suspended or leaves,
/// deactivated and deleted only with its last account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scim_one_person_in_two_tenants_is_one_user_with_access_in_each() {
    let scim = usher_testenv::Scim::start(true).unwrap();
    let store = scim_store(&scim, 100).await;
    let manager = RoleRecord {
        name: "Manager".into(),
        description: None,
        exclusive: false,
        permissions: vec!["Pricing".into()],
    };
    for t in ["acme", "globex"] {
        let key = format!("{t}/{t}");
        store
            .put_tenant(&TenantRecord {
                key: key.clone(),
                display_name: t.into(),
            })
            .await
            .unwrap();
        store
            .put_roles(&key, std::slice::from_ref(&manager))
            .await
            .unwrap();
    }
    let pat = |t: &str, first: &str| UserFields {
        tenant: format!("{t}/{t}"),
        external_id: format!("{t}/pat"),
        email: if t == "acme" {
            "pat@contractor.example".into()
        } else {
            "Pat@Contractor.example".into()
        },
        profile: Profile {
            first_name: Some(first.into()),
            ..Default::default()
        },
    };
    let acme = store.create_user(&pat("acme", "Pat")).await.unwrap();
    let globex = store.create_user(&pat("globex", "Patricia")).await.unwrap();
    let users = scim_get(&scim, "/Users?count=100").await;
    assert_eq!(users["totalResults"], 1, "one User: {users}");
    let user_id = users["Resources"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/Users/{user_id}");
    let user = || scim_get(&scim, &path);
    let members = |tenant: &str| {
        let group = format!("role/{tenant}/{tenant}/Manager");
        let scim = &scim;
        async move { scim_group_members(scim, &group).await }
    };
    let binding = |t: &str| Assignment {
        binding: format!("{t}/pat-manager"),
        role: "Manager".into(),
        group: None,
    };
    store
        .set_assignments(&acme.id, &[binding("acme")])
        .await
        .unwrap();
    store
        .set_assignments(&globex.id, &[binding("globex")])
        .await
        .unwrap();
    assert!(members("acme").await.is_empty() && members("globex").await.is_empty());
    // Acme's invitation is redeemed: the User is active, with acme's role only.
    let now = Timestamp::now();
    let token = Token::generate().unwrap();
    store
        .record_invitation(&invitation(&acme.id, 1, &token, 3600))
        .await
        .unwrap();
    store.redeem(&token.hash(), now).await.unwrap().unwrap();
    assert_eq!(user().await["active"], true);
    assert_eq!(members("acme").await, std::slice::from_ref(&user_id));
    assert!(
        members("globex").await.is_empty(),
        "globex not accepted yet"
    );
    // Globex's account reads as its own: pending, its own profile (acme's owns the User).
    let g = store
        .user_by_external_id("globex/pat")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((g.id.as_str(), g.active), (globex.id.as_str(), false));
    assert_eq!(g.profile.first_name.as_deref(), Some("Patricia"));
    assert_eq!(user().await["name"]["givenName"], "Pat");
    store.set_active(&globex.id, true, now).await.unwrap();
    assert_eq!(members("globex").await, std::slice::from_ref(&user_id));
    let types: Vec<String> = user().await["entitlements"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        types,
        ["acme/acme", "globex/globex"],
        "permissions per tenant"
    );
    // A third tenant's pending account whose role Group holds the User all the same (a change
    // that failed half-way): offboarding the account takes the User out.
    store
        .put_tenant(&TenantRecord {
            key: "initech/initech".into(),
            display_name: "initech".into(),
        })
        .await
        .unwrap();
    store
        .put_roles("initech/initech", std::slice::from_ref(&manager))
        .await
        .unwrap();
    let initech = store.create_user(&pat("initech", "Pat")).await.unwrap();
    store
        .set_assignments(&initech.id, &[binding("initech")])
        .await
        .unwrap();
    assert!(members("initech").await.is_empty(), "pending: no role yet");
    let stray = reqwest::Client::new()
        .post(format!("{}/Groups", scim.base()))
        .bearer_auth(&scim.token)
        .json(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "initech/initech: Manager",
            "externalId": "role/initech/initech/Manager",
            "members": [{"value": user_id}],
        }))
        .send()
        .await
        .unwrap();
    assert!(stray.status().is_success(), "{}", stray.status());
    assert_eq!(members("initech").await, std::slice::from_ref(&user_id));
    store.delete_user(&initech.id).await.unwrap();
    assert!(
        members("initech").await.is_empty(),
        "offboarded: out of the Group"
    );
    assert_eq!(user().await["active"], true, "still acme's and globex's");
    // Suspended in acme: acme's role goes, the User stays active for globex, whose account
    // (the one in use) now owns it.
    store.set_active(&acme.id, false, now).await.unwrap();
    assert!(members("acme").await.is_empty());
    let u = user().await;
    assert_eq!(
        (&u["active"], &u["externalId"]),
        (&json!(true), &json!("globex/pat")),
        "{u}"
    );
    assert!(
        !store
            .user_by_external_id("acme/pat")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    // Acme's account leaves: globex's keeps the User, and its role.
    store.delete_user(&acme.id).await.unwrap();
    let u = user().await;
    assert_eq!(
        (&u["externalId"], &u["active"], &u["name"]["givenName"]),
        (&json!("globex/pat"), &json!(true), &json!("Patricia")),
        "{u}"
    );
    assert_eq!(members("globex").await, std::slice::from_ref(&user_id));
    // Its last account suspended, then deleted: the User goes inactive, then goes.
    store.set_active(&globex.id, false, now).await.unwrap();
    assert_eq!(user().await["active"], false);
    store.delete_user(&globex.id).await.unwrap();
    assert!(members("globex").await.is_empty());
    assert_eq!(scim_get(&scim, "/Users?count=100").await["totalResults"], 0);
}

/// A shared User is one address: an account whose address changes in git leaves it for the User
/// of its new address (a new one, or another person's account's in another tenant), and the
/// others keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scim_an_address_change_moves_one_account_between_users() {
    let scim = usher_testenv::Scim::start(false).unwrap();
    let store = scim_store(&scim, 100).await;
    let person = |t: &str, name: &str, email: &str| UserFields {
        tenant: format!("{t}/{t}"),
        external_id: format!("{t}/{name}"),
        email: email.into(),
        profile: Profile::default(),
    };
    let pat = "pat@contractor.example";
    let acme = store
        .create_user(&person("acme", "pat", pat))
        .await
        .unwrap();
    let globex = store
        .create_user(&person("globex", "pat", pat))
        .await
        .unwrap();
    let initech = store
        .create_user(&person("initech", "sam", "sam@initech.example"))
        .await
        .unwrap();
    let names = || async {
        let users = scim_get(&scim, "/Users?count=100").await;
        attribute_pairs(&users["Resources"], "userName", "externalId")
    };
    let pairs = owned_pairs;
    assert_eq!(
        names().await,
        pairs(&[(pat, "acme/pat"), ("sam@initech.example", "initech/sam")])
    );
    // Acme's pat (the owner) takes another address: a User of its own; globex keeps pat's.
    let moved = store
        .update_user(&acme.id, &person("acme", "pat", "pat@acme.example"))
        .await
        .unwrap();
    assert_eq!(
        (moved.id.as_str(), moved.email.as_str()),
        (acme.id.as_str(), "pat@acme.example")
    );
    assert_eq!(
        names().await,
        pairs(&[
            ("pat@acme.example", "acme/pat"),
            (pat, "globex/pat"),
            ("sam@initech.example", "initech/sam"),
        ])
    );
    // Initech's sam takes pat's address: joins pat's User; sam's own goes.
    let joined = store
        .update_user(&initech.id, &person("initech", "sam", pat))
        .await
        .unwrap();
    assert_eq!(
        (joined.id.as_str(), joined.tenant.as_str()),
        (initech.id.as_str(), "initech/initech")
    );
    assert_eq!(
        names().await,
        pairs(&[("pat@acme.example", "acme/pat"), (pat, "globex/pat")])
    );
    for (key, id) in [
        ("globex/pat", &globex.id),
        ("initech/sam", &initech.id),
        ("acme/pat", &acme.id),
    ] {
        let read = store.user_by_external_id(key).await.unwrap().unwrap();
        assert_eq!(&read.id, id, "{key}");
    }
}

/// Two attributes of each resource of a SCIM list, as sorted pairs ("" where unset).
fn attribute_pairs(list: &serde_json::Value, a: &str, b: &str) -> Vec<(String, String)> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut found: Vec<(String, String)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (text(&r[a]), text(&r[b])))
        .collect();
    found.sort();
    found
}

/// Expected pairs, owned.
fn owned_pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
