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
    Usher, apply_yaml, client, client_of, eventually, install_crds, invitation_in, namespace,
    recipient, sql,
};

/// Mails in flight at once in the crash test: usher's default, given explicitly.
const MAIL_CONCURRENCY: usize = 8;

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

/// Pending, with the invitation mail sent.
fn invited(u: &SystemUser) -> bool {
    phase(u) == Some(UserPhase::Pending)
        && u.status
            .as_ref()
            .and_then(|s| s.invitation.as_ref())
            .is_some_and(|i| i.sent_at.is_some())
}

/// The newest token mailed to each recipient, and how many mails each got.
fn mailbox(smtp: &Smtp) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, usize>) {
    let mut tokens = BTreeMap::<String, Vec<String>>::new();
    let mut counts = BTreeMap::new();
    for raw in smtp.messages() {
        let to = recipient(&raw);
        let (_, token) = invitation_in(&raw);
        *counts.entry(to.clone()).or_insert(0) += 1;
        tokens.entry(to).or_default().push(token);
    }
    (tokens, counts)
}

/// Every one of `people` got exactly one mail.
fn one_mail_each(smtp: &Smtp, people: usize) {
    let (_, counts) = mailbox(smtp);
    assert_eq!(counts.len(), people, "everyone got their mail: {counts:?}");
    assert!(counts.values().all(|&n| n == 1), "once each: {counts:?}");
}

/// The people of `arriving` are created and the first person (person-0000) is deleted.
async fn arrive_and_one_leaves(client: &Client, ns: &str, arriving: std::ops::Range<usize>) {
    create_users(client, ns, arriving).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), ns);
    users
        .delete("person-0000", &Default::default())
        .await
        .expect("delete");
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
async fn sigkill_at_random_moments_loses_no_invitation_and_every_mail_sent_works() {
    let users = env_or("USHER_RELIABILITY_USERS", 300) as usize;
    let kills = env_or("USHER_RELIABILITY_KILLS", 10) as usize;
    let (mut rng, seed) = Rng::seeded();
    let client = client().await;
    let ns = namespace(&client, "crash").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, TENANT).await;
    let concurrency = MAIL_CONCURRENCY.to_string();
    let mut usher = Usher::start(&ns, &smtp.url(), &["--mail-concurrency", &concurrency]).await;
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
            // The first mail each got: the one a person clicks.
            let mut first = BTreeMap::new();
            for raw in smtp.messages() {
                let to = recipient(&raw);
                if chosen.contains(&to) && !redeemed.lock().unwrap().contains(&to) {
                    first.entry(to).or_insert_with(|| invitation_in(&raw).1);
                }
            }
            for (to, token) in first {
                // A person per address, as in life: the per-client limit is not under test.
                let n: usize = to[7..11].parse().unwrap_or_default();
                let local =
                    std::net::IpAddr::from([127, 0, 10 + (n / 250) as u8, 1 + (n % 250) as u8]);
                let http = reqwest::Client::builder()
                    .local_address(local)
                    .build()
                    .expect("HTTP client");
                // usher may be down right now: try again next round.
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
            invited(u) || phase(u) == Some(UserPhase::Active)
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
            invited(u)
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
    // No invitation lost and no dead link: each Pending person holds one open token, and every
    // mail they got (a copy sent again after a kill included) carries it; each who redeemed
    // their first mail is Active in the store and in status.
    let (mailed, counts) = mailbox(&smtp);
    let open: BTreeMap<String, String> = sql(
        &usher.db,
        "SELECT u.email, i.token_hash FROM invitations i JOIN users u ON u.id = i.user_id WHERE i.used_us IS NULL AND i.revoked_us IS NULL",
    )
    .into_iter()
    .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string()))
    .collect();
    let mut pending = 0;
    let mut active = 0;
    let mut dead = 0;
    for u in &list {
        let e = &u.spec.email;
        let tokens = mailed
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
            dead += tokens
                .iter()
                .filter(|t| open.get(e).map(String::as_str) != Some(TokenHash::of(t).as_str()))
                .count();
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
    // A kill can repeat only the mails in flight: accepted by the relay, not yet marked sent.
    let allowed = kills * MAIL_CONCURRENCY;
    println!(
        "crash safety (seed {seed}): {users} people, {kills} SIGKILLs over {:.1} s; settled \
         {:.1} s later; {pending} Pending, {active} Active (each redeemed their first mail); \
         {mails} mails to {} people, {duplicates} duplicates (at most {allowed} allowed: \
         {MAIL_CONCURRENCY} in flight per kill), at most {most} to one person; {dead} dead links",
        killed_for.as_secs_f64(),
        started.elapsed().saturating_sub(killed_for).as_secs_f64(),
        counts.len(),
    );
    assert_eq!(counts.len(), users, "everyone got a mail");
    assert_eq!(dead, 0, "every mail a Pending person got redeems");
    assert!(
        duplicates <= allowed,
        "{duplicates} duplicate mails after {kills} kills"
    );
}

/// Counters of what usher did, from its /metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    reconciles: f64,
    store_calls: f64,
    kube_requests: f64,
}

impl Load {
    async fn of(usher: &Usher) -> Self {
        let samples = usher.samples().await;
        let sum = |name: &str| -> f64 {
            samples
                .iter()
                .filter(|(series, _)| series.split('{').next() == Some(name))
                .map(|(_, v)| v)
                .sum()
        };
        Self {
            reconciles: sum("usher_reconciles_total"),
            store_calls: sum("usher_store_duration_seconds_count"),
            kube_requests: sum("usher_kube_requests_total"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            reconciles: self.reconciles - before.reconciles,
            store_calls: self.store_calls - before.store_calls,
            kube_requests: self.kube_requests - before.kube_requests,
        }
    }
}

/// The most reconciles `people` failing objects may make in `window` under the backoff, and a
/// little for the rest (the Tenant).
fn backoff_bound(people: usize, window: Duration) -> f64 {
    (people as u32 * usher::plan::retry::tries_within(window) + 5) as f64
}

/// Watch usher for 30 s of an outage that began at `since` for `people` failing objects: what
/// it did meanwhile, checked against the backoff's bound (returned too).
async fn through_outage(usher: &Usher, what: &str, people: usize, since: Instant) -> (Load, f64) {
    let before = Load::of(usher).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = Load::of(usher).await.since(before);
    let bound = backoff_bound(people, since.elapsed());
    println!(
        "{what} of {:.0} s, {people} people: {} reconciles (bound {bound}), {} store calls, {} API requests",
        since.elapsed().as_secs_f64(),
        during.reconciles,
        during.store_calls,
        during.kube_requests
    );
    assert!(during.reconciles <= bound, "no hot loop: {during:?}");
    (during, bound)
}

fn condition_reason(u: &SystemUser) -> Option<&str> {
    u.status
        .as_ref()
        .and_then(|s| s.conditions.first())
        .map(|c| c.reason.as_str())
}

#[tokio::test]
async fn a_mail_outage_backs_off_and_every_mail_is_delivered_once_when_it_ends() {
    const PEOPLE: usize = 20;
    let client = client().await;
    let ns = namespace(&client, "mail-outage").await;
    let mut smtp = Smtp::start().expect("SMTP sink");
    smtp.stop();
    apply_yaml(&client, &ns, TENANT).await;
    create_users(&client, &ns, 0..PEOPLE).await;
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let started = Instant::now();
    // Everyone tried once and says why they have no mail.
    settled(&client, &ns, PEOPLE, Duration::from_secs(60), |u| {
        condition_reason(u) == Some("InvitationNotSent")
    })
    .await;

    let (during, bound) = through_outage(&usher, "mail outage", PEOPLE, started).await;
    // Per try: a handful of store calls (read account, invitation, roles; rotate the unsent
    // token) and an Event; the status is unchanged.
    assert!(
        during.store_calls <= bound * 10.0,
        "store calls: {during:?}"
    );
    assert!(
        during.kube_requests <= bound * 3.0,
        "API requests: {during:?}"
    );
    assert!(smtp.count() == 0);

    smtp.resume().expect("SMTP back");
    let back = Instant::now();
    settled(&client, &ns, PEOPLE, Duration::from_secs(360), invited).await;
    println!(
        "mail outage: every mail delivered {:.1} s after the server came back",
        back.elapsed().as_secs_f64()
    );
    one_mail_each(&smtp, PEOPLE);
}

/// Run one statement with psql; its rows, `|`-separated.
fn psql(url: &str, statement: &str) -> Vec<String> {
    let out = std::process::Command::new("psql")
        .args([url, "-At", "-c", statement])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_store_outage_backs_off_and_everything_converges_when_it_ends() {
    const PEOPLE: usize = 20;
    let client = client().await;
    let ns = namespace(&client, "store-outage").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let mut pg = usher_testenv::OwnPostgres::start().expect("PostgreSQL");
    let url = pg.server.database("outage").expect("a database");
    apply_yaml(&client, &ns, TENANT).await;
    create_users(&client, &ns, 0..PEOPLE / 2).await;
    let usher = Usher::start(&ns, &smtp.url(), &["--store", &url]).await;
    settled(&client, &ns, PEOPLE / 2, Duration::from_secs(60), invited).await;

    // The store goes down; people arrive and one leaves meanwhile.
    pg.stop();
    let down = Instant::now();
    arrive_and_one_leaves(&client, &ns, PEOPLE / 2..PEOPLE).await;
    let readyz = format!("{}/readyz", usher.probe_url);
    let unready = eventually(Duration::from_secs(20), || async {
        let r = reqwest::get(&readyz).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    assert!(unready.is_some(), "/readyz says the store is down");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (during, bound) = through_outage(&usher, "store outage", PEOPLE, down).await;
    // A try stops at its first failed store call.
    assert!(during.store_calls <= bound * 2.0, "store calls: {during:?}");
    assert!(
        during.kube_requests <= bound * 3.0,
        "API requests: {during:?}"
    );
    let (_, mails) = mailbox(&smtp);
    assert_eq!(
        mails.values().sum::<usize>(),
        PEOPLE / 2,
        "no mail without a recorded token: {mails:?}\n{}",
        usher.log()
    );

    pg.resume().expect("PostgreSQL back");
    let back = Instant::now();
    settled(&client, &ns, PEOPLE - 1, Duration::from_secs(360), invited).await;
    println!(
        "store outage: converged {:.1} s after the store came back",
        back.elapsed().as_secs_f64()
    );
    one_mail_each(&smtp, PEOPLE);
    // The one who left is offboarded (deactivated, token revoked), the rest provisioned once.
    let accounts = psql(
        &url,
        "SELECT external_id, active, (SELECT COUNT(*) FROM invitations i WHERE i.user_id = u.id AND i.used_us IS NULL AND i.revoked_us IS NULL) FROM users u ORDER BY external_id",
    );
    assert_eq!(accounts.len(), PEOPLE, "{accounts:?}");
    assert_eq!(accounts[0], format!("{ns}/person-0000|0|0"), "offboarded");
    assert!(
        accounts[1..].iter().all(|a| a.ends_with("|0|1")),
        "one open invitation each: {accounts:?}"
    );
}

#[tokio::test]
async fn a_store_hiccup_right_after_a_mail_is_waited_out_and_the_mail_not_sent_again() {
    let client = client().await;
    let ns = namespace(&client, "mark-hiccup").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let url = usher_testenv::postgres()
        .database("hiccup")
        .expect("a database");
    apply_yaml(&client, &ns, TENANT).await;
    let usher = Usher::start(&ns, &smtp.url(), &["--store", &url]).await;
    // The store fails the first three tries to record a mail as sent: a sequence counts them,
    // since it is not rolled back with the failing statement.
    psql(
        &url,
        "CREATE SEQUENCE planted; \
         CREATE FUNCTION planted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF OLD.sent_us IS NULL AND NEW.sent_us IS NOT NULL THEN \
             IF nextval('planted') <= 3 THEN RAISE EXCEPTION 'planted failure'; END IF; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER planted BEFORE UPDATE ON invitations \
           FOR EACH ROW EXECUTE FUNCTION planted()",
    );
    create_users(&client, &ns, 0..1).await;
    settled(&client, &ns, 1, Duration::from_secs(60), invited).await;
    assert_eq!(
        psql(&url, "SELECT last_value FROM planted"),
        ["4"],
        "three failed marks, then one that held"
    );
    // Had usher given up on the mark, its next try (1 s later) would mail again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    one_mail_each(&smtp, 1);
    let log = usher.log();
    assert_eq!(
        log.matches("mail sent but not recorded yet").count(),
        3,
        "each failed mark is logged:\n{log}"
    );
}

#[tokio::test]
async fn an_api_server_restart_resumes_the_watches_and_everything_converges() {
    const PEOPLE: usize = 10;
    let dir = usher_testenv::scratch_dir("apiserver-restart").expect("scratch dir");
    // A control plane of this test's own: restarting the shared one would disturb the others.
    let mut cp = usher_testenv::ControlPlane::start(&dir).expect("control plane");
    let client = client_of(&cp.kubeconfig).await;
    install_crds(client.clone()).await;
    let ns = namespace(&client, "apiserver-restart").await;
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, TENANT).await;
    create_users(&client, &ns, 0..PEOPLE / 2).await;
    let kubeconfig = cp.kubeconfig.display().to_string();
    let usher = Usher::start_with_env(&ns, &smtp.url(), &[], &[("KUBECONFIG", &kubeconfig)]).await;
    settled(&client, &ns, PEOPLE / 2, Duration::from_secs(60), invited).await;

    let before = Load::of(&usher).await;
    cp.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = Load::of(&usher).await.since(before);
    println!(
        "API server down 20 s: {} requests from usher, {} reconciles",
        during.kube_requests, during.reconciles
    );
    assert!(
        usher
            .pid()
            .is_some_and(|p| usher_testenv::Supervised::pid_is_alive(p as i32)),
        "usher outlives the API server's absence"
    );
    // Four watches and the Event recorder retry with backoff, not in a loop.
    assert!(during.kube_requests <= 100.0, "{during:?}");
    cp.start_apiserver().expect("API server back");

    // The watches resume: new people are invited, a deleted one is offboarded.
    arrive_and_one_leaves(&client, &ns, PEOPLE / 2..PEOPLE).await;
    settled(&client, &ns, PEOPLE - 1, Duration::from_secs(120), invited).await;
    one_mail_each(&smtp, PEOPLE);
    let gone = sql(
        &usher.db,
        &format!("SELECT active FROM users WHERE external_id = '{ns}/person-0000'"),
    );
    assert_eq!(gone, vec![vec![serde_json::json!(0)]], "offboarded");
    drop(usher);
    cp.stop();
}
