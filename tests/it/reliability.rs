//! Reliability: usher killed at random moments while it onboards, and its peers (mail server,
//! store, API server) down for a while. Nothing may be lost, little repeated, and an outage must
//! not turn into a hot loop.
//!
//! The crash test's size comes from `USHER_RELIABILITY_USERS` and `USHER_RELIABILITY_KILLS`
//! (`make test` runs a shorter variant; `make test-reliability` the full 1,000 users and 20
//! kills); `USHER_RELIABILITY_SEED` replays a run's kill moments.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::Client;
use kube::api::{Api, PostParams};
use usher::crd::{SystemUser, UserPhase};
use usher::token::TokenHash;
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply_yaml, client, eventually, invitation_in, namespace, recipient, sql,
};

const TENANT: &str = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme Charging\n";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough for kill moments, and replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Self, u64) {
        let seed = env_or(
            "USHER_RELIABILITY_SEED",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        )
        .max(1);
        (Self(seed), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn email(i: usize) -> String {
    format!("person-{i:04}@acme.example")
}

async fn create_users(client: &Client, ns: &str, range: std::ops::Range<usize>) {
    let api: Api<SystemUser> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(range)
        .map(|i| {
            let api = api.clone();
            async move {
                let user: SystemUser = serde_json::from_value(serde_json::json!({
                    "apiVersion": "usher.dev/v1alpha1",
                    "kind": "SystemUser",
                    "metadata": {"name": format!("person-{i:04}")},
                    "spec": {
                        "tenantRef": {"name": "acme"},
                        "email": email(i),
                        "firstName": "Person",
                        "lastName": format!("{i}"),
                    }
                }))
                .expect("a SystemUser");
                api.create(&PostParams::default(), &user).await.map(|_| ())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await
        .expect("creating the SystemUsers");
}

fn phase(u: &SystemUser) -> Option<UserPhase> {
    u.status.as_ref().and_then(|s| s.phase)
}

fn sent(u: &SystemUser) -> bool {
    u.status
        .as_ref()
        .and_then(|s| s.invitation.as_ref())
        .is_some_and(|i| i.sent_at.is_some())
}

/// The newest token mailed to each recipient, and how many mails each got.
fn mailbox(smtp: &Smtp) -> (BTreeMap<String, String>, BTreeMap<String, usize>) {
    let mut newest = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for raw in smtp.messages() {
        let to = recipient(&raw);
        let (_, token) = invitation_in(&raw);
        *counts.entry(to.clone()).or_insert(0) += 1;
        newest.insert(to, token);
    }
    (newest, counts)
}

/// Wait until `done` holds for every SystemUser of `ns`, and `expected` of them exist.
async fn settled(
    client: &Client,
    ns: &str,
    expected: usize,
    timeout: Duration,
    done: impl Fn(&SystemUser) -> bool,
) -> Vec<SystemUser> {
    let api: Api<SystemUser> = Api::namespaced(client.clone(), ns);
    let last = std::cell::Cell::new((0, 0));
    let found = eventually(timeout, || {
        let api = api.clone();
        let (done, last) = (&done, &last);
        async move {
            let list = api.list(&Default::default()).await.ok()?.items;
            let finished = list.iter().filter(|u| done(u)).count();
            last.set((list.len(), finished));
            (list.len() == expected && finished == expected).then_some(list)
        }
    })
    .await;
    found.unwrap_or_else(|| {
        let (seen, finished) = last.get();
        panic!(
            "not settled after {timeout:?}: {finished} of {seen} people done ({expected} expected)"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_invitation_and_repeats_at_most_one_mail_per_kill() {
    let users = env_or("USHER_RELIABILITY_USERS", 300) as usize;
    let kills = env_or("USHER_RELIABILITY_KILLS", 10) as usize;
    let (mut rng, seed) = Rng::seeded();
    let client = client().await;
    let ns = namespace(&client, "crash").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, TENANT).await;
    let mut usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let started = Instant::now();

    // People arrive while usher dies; every tenth redeems as soon as a mail reaches them.
    let creating = tokio::spawn({
        let (client, ns) = (client.clone(), ns.clone());
        async move { create_users(&client, &ns, 0..users).await }
    });
    let chosen: BTreeSet<String> = (0..users).step_by(10).map(email).collect();
    let redeemed = std::sync::Mutex::new(BTreeSet::<String>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let url = usher.url.clone();
    let redeem = async {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut newest = BTreeMap::new();
            for raw in smtp.messages() {
                let to = recipient(&raw);
                if chosen.contains(&to) && !redeemed.lock().unwrap().contains(&to) {
                    newest.insert(to, invitation_in(&raw).1);
                }
            }
            for (to, token) in newest {
                // A person per address, as in life: the per-client limit is not under test.
                let n: usize = to[7..11].parse().unwrap_or_default();
                let local =
                    std::net::IpAddr::from([127, 0, 10 + (n / 250) as u8, 1 + (n % 250) as u8]);
                let http = reqwest::Client::builder()
                    .local_address(local)
                    .build()
                    .expect("HTTP client");
                // usher may be down right now, or the token replaced: try again next round.
                // 409: a redemption committed just before a kill cut its answer.
                let answer = http
                    .post(format!("{url}/api/v1/invitations/redeem"))
                    .json(&serde_json::json!({ "token": token }))
                    .send()
                    .await;
                if answer.is_ok_and(|r| r.status().is_success() || r.status() == 409) {
                    redeemed.lock().unwrap().insert(to);
                }
            }
        }
    };
    let drive = async {
        for _ in 0..kills {
            tokio::time::sleep(Duration::from_millis(200 + rng.below(1300))).await;
            usher.kill();
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            usher.restart().await;
        }
        creating.await.expect("creating task");
        let killed_for = started.elapsed();
        // Settled: everyone mailed and Pending, or Active once redeemed.
        settled(&client, &ns, users, Duration::from_secs(600), |u| {
            (phase(u) == Some(UserPhase::Pending) && sent(u)) || phase(u) == Some(UserPhase::Active)
        })
        .await;
        eventually(Duration::from_secs(60), || async {
            (redeemed.lock().unwrap().len() == chosen.len()).then_some(())
        })
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        killed_for
    };
    let (killed_for, ()) = tokio::join!(drive, redeem);
    let redeemed = redeemed.into_inner().unwrap();
    assert_eq!(redeemed, chosen, "every chosen person could redeem");
    let list = settled(&client, &ns, users, Duration::from_secs(60), |u| {
        if redeemed.contains(&u.spec.email) {
            phase(u) == Some(UserPhase::Active)
        } else {
            phase(u) == Some(UserPhase::Pending) && sent(u)
        }
    })
    .await;
    // Quiet: nothing is still on its way.
    let mut count = smtp.count();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = smtp.count();
        if now == count {
            break;
        }
        count = now;
    }

    // Every person exactly once in the store.
    let rows = sql(
        &usher.db,
        "SELECT email, COUNT(*), MAX(active) FROM users GROUP BY email ORDER BY email",
    );
    assert_eq!(rows.len(), users, "one account per person");
    for row in &rows {
        assert_eq!(row[1], 1, "{} has {} accounts", row[0], row[1]);
    }
    // No invitation lost: each Pending person holds the one open token, and it is the newest
    // one mailed to them; each who redeemed is Active in the store and in status.
    let (newest, counts) = mailbox(&smtp);
    let open: BTreeMap<String, String> = sql(
        &usher.db,
        "SELECT u.email, i.token_hash FROM invitations i JOIN users u ON u.id = i.user_id WHERE i.used_us IS NULL AND i.revoked_us IS NULL",
    )
    .into_iter()
    .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string()))
    .collect();
    let mut pending = 0;
    let mut active = 0;
    for u in &list {
        let e = &u.spec.email;
        let token = newest
            .get(e)
            .unwrap_or_else(|| panic!("{e} never got a mail"));
        if redeemed.contains(e) {
            active += 1;
            assert!(
                !open.contains_key(e),
                "{e} redeemed but still holds an open token"
            );
        } else {
            pending += 1;
            assert_eq!(
                open.get(e).map(String::as_str),
                Some(TokenHash::of(token).as_str()),
                "{e}: the newest mailed token is not the open invitation"
            );
        }
    }
    let active_in_store = rows.iter().filter(|r| r[2] == 1).count();
    assert_eq!(
        active_in_store,
        redeemed.len(),
        "Active in the store = redeemed"
    );
    let mails: usize = counts.values().sum();
    let duplicates = mails - counts.len();
    let most = counts.values().max().copied().unwrap_or_default();
    println!(
        "crash safety (seed {seed}): {users} people, {kills} SIGKILLs over {:.1} s; settled \
         {:.1} s later; {pending} Pending, {active} Active (redeemed); {mails} mails to {} \
         people, {duplicates} duplicates (at most {kills} allowed), at most {most} to one person",
        killed_for.as_secs_f64(),
        started.elapsed().saturating_sub(killed_for).as_secs_f64(),
        counts.len(),
    );
    assert_eq!(counts.len(), users, "everyone got a mail");
    assert!(
        duplicates <= kills,
        "{duplicates} duplicate mails after {kills} kills"
    );
}
