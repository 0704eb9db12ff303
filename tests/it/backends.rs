//! `usher run` against each real store end to end: PostgreSQL and a SCIM server. The test reads
//! the SCIM server's own API to check what landed there. Also: a store that is down at start,
//! and a SCIM server that answers 429 / 503 before it serves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use usher::crd::{SystemUser, UserPhase};
use usher_testenv::{Scim, Smtp};

use crate::support::{
    Usher, apply_yaml, client, eventually, first_mail, invitation_in, namespace, scim_filter,
    scim_get, wait_for,
};

fn phase(u: &SystemUser) -> Option<UserPhase> {
    u.status.as_ref().and_then(|s| s.phase)
}

const PEOPLE: &str = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: olga}\nspec: {tenantRef: {name: acme}, email: olga@acme.example, firstName: Olga, lastName: Berg, phone: '+1 555 0101', locations: [fresno-01]}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: olga-manager}\nspec: {userRef: {name: olga}, role: Manager}\n";

/// The SCIM Groups of tenant `acme`'s Manager role in namespace `ns` (a list response).
async fn manager_group(scim: &Scim, ns: &str) -> serde_json::Value {
    scim_get(
        scim,
        &format!(
            "/Groups{}",
            scim_filter("externalId", &format!("role/{ns}/acme/Manager"))
        ),
    )
    .await
}

/// Store calls by operation (`usher_store_duration_seconds_count`) and the ok reconciles of
/// SystemUsers, from one scrape.
async fn calls_and_reconciles(usher: &Usher) -> (std::collections::BTreeMap<String, f64>, f64) {
    let samples = usher.samples().await;
    let calls = samples
        .iter()
        .filter_map(|(s, v)| {
            let op = s.strip_prefix("usher_store_duration_seconds_count{op=\"")?;
            Some((op.trim_end_matches("\"}").to_string(), *v))
        })
        .collect();
    let reconciles = samples
        .iter()
        .find(|(s, _)| s == "usher_reconciles_total{kind=\"SystemUser\",result=\"ok\"}")
        .map_or(0.0, |(_, v)| *v);
    (calls, reconciles)
}

/// Resyncs every second with nothing to do: no store write, and how many store calls a no-op
/// SystemUser reconcile costs (the note reports it per backend).
async fn quiet(usher: &Usher, backend: &str) {
    let writes = usher.metric("usher_store_writes_total").await;
    let (calls, reconciles) = calls_and_reconciles(usher).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = usher.metric("usher_store_writes_total").await;
    if after != writes {
        let (calls2, _) = calls_and_reconciles(usher).await;
        let changed: Vec<String> = calls2
            .iter()
            .filter(|(op, v)| calls.get(*op).copied().unwrap_or(0.0) != **v)
            .map(|(op, v)| format!("{op} +{}", v - calls.get(op).copied().unwrap_or(0.0)))
            .collect();
        panic!(
            "{backend}: a resync with nothing to do wrote to the store ({writes} → {after}); calls: {}\n{}",
            changed.join(", "),
            usher
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let (calls2, reconciles2) = calls_and_reconciles(usher).await;
    let n = reconciles2 - reconciles;
    assert!(n >= 2.0, "{backend}: resyncs ran ({n})");
    let per: Vec<String> = calls2
        .iter()
        .map(|(op, v)| (op, (v - calls.get(op).copied().unwrap_or(0.0)) / n))
        .filter(|(_, v)| *v > 0.0)
        .map(|(op, v)| format!("{op} {v:.2}"))
        .collect();
    eprintln!(
        "{backend}: store calls per no-op SystemUser reconcile (Tenant reconciles included): {}",
        per.join(", ")
    );
}

#[tokio::test]
async fn the_invitation_and_offboarding_flows_run_against_a_scim_server() {
    let client = client().await;
    let ns = namespace(&client, "scim-flow").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let scim = Scim::start(true).expect("scim2-server");
    apply_yaml(&client, &ns, PEOPLE).await;
    // Someone the product already has under this userName, not from git.
    let taken = reqwest::Client::new()
        .post(format!("{}/Users", scim.base()))
        .bearer_auth(&scim.token)
        .header("content-type", "application/scim+json")
        .body(r#"{"userName": "tess@acme.example", "externalId": "elsewhere/tess"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 201);
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: tess}\nspec: {tenantRef: {name: acme}, email: tess@acme.example}\n").await;
    let local = usher_testenv::scratch_dir("local").unwrap();
    let store = scim.url();
    let local_store = format!("sqlite://{}", local.join("local.db").display());
    let usher = Usher::start_with_env(
        &ns,
        &smtp.url(),
        &[
            "--store",
            &store,
            "--local-store",
            &local_store,
            "--resync",
            "1s",
        ],
        &[("USHER_STORE_TOKEN", &scim.token)],
    )
    .await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let olga = wait_for(&users, "olga", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending) && !u.status.as_ref().unwrap().roles.is_empty()
    })
    .await;
    let id = olga.status.unwrap().user_id.expect("a user id");
    // The product refuses the second tess: the status says what it said.
    let tess = wait_for(&users, "tess", "Failed", |u| {
        phase(u) == Some(UserPhase::Failed)
    })
    .await;
    let ready = &tess.status.unwrap().conditions[0];
    assert_eq!(ready.reason, "StoreRefused");
    assert!(
        ready.message.contains("409") && ready.message.contains("uniqueness"),
        "{}",
        ready.message
    );

    // In the product: the person by externalId, inactive, with the details from git.
    let found = scim_get(
        &scim,
        &format!("/Users{}", scim_filter("externalId", &format!("{ns}/olga"))),
    )
    .await;
    assert_eq!(found["totalResults"], 1, "{found}");
    let u = &found["Resources"][0];
    assert_eq!(u["id"], id.as_str(), "status.userId is the SCIM id");
    assert_eq!(u["userName"], "olga@acme.example");
    assert_eq!(u["active"], false);
    assert_eq!(u["name"]["givenName"], "Olga");
    assert_eq!(u["phoneNumbers"][0]["value"], "+1 555 0101");
    assert_eq!(
        u[usher::store::USER_EXTENSION]["tenant"],
        format!("{ns}/acme")
    );
    // The role as a Group with her as a member.
    let role = manager_group(&scim, &ns).await;
    assert_eq!(
        role["Resources"][0]["members"][0]["value"],
        id.as_str(),
        "{role}"
    );

    // She accepts: Active here and in the product.
    let raw = first_mail(&smtp).await;
    let token = invitation_in(&raw).1;
    assert_eq!(usher.redeem(&token).await.0, 200);
    wait_for(&users, "olga", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    assert_eq!(
        scim_get(&scim, &format!("/Users/{id}")).await["active"],
        true
    );
    quiet(&usher, "SCIM").await;

    // Offboarded (the default policy, Deactivate): inactive in the product, no role left.
    users
        .delete("olga", &DeleteParams::default())
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(30), || async {
        users.get_opt("olga").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the SystemUser is released");
    let u = scim_get(&scim, &format!("/Users/{id}")).await;
    assert_eq!(u["active"], false, "{u}");
    let role = manager_group(&scim, &ns).await;
    let members = role["Resources"][0]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(members.is_empty(), "{role}");
}

#[tokio::test]
async fn the_invitation_flow_runs_against_postgresql() {
    let client = client().await;
    let ns = namespace(&client, "pg-flow").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let url = usher_testenv::postgres().database("flow").unwrap();
    apply_yaml(&client, &ns, PEOPLE).await;
    let usher = Usher::start(&ns, &smtp.url(), &["--store", &url, "--resync", "1s"]).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "olga", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let raw = first_mail(&smtp).await;
    assert_eq!(usher.redeem(&invitation_in(&raw).1).await.0, 200);
    wait_for(&users, "olga", "Active", |u| {
        phase(u) == Some(UserPhase::Active)
    })
    .await;
    quiet(&usher, "PostgreSQL").await;
    assert_eq!(smtp.messages().len(), 1, "one mail");
}

#[tokio::test]
async fn a_store_down_at_start_keeps_readyz_false_until_it_answers() {
    let client = client().await;
    let ns = namespace(&client, "store-down").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let pg = usher_testenv::postgres();
    // A database that does not exist yet: every connection is refused until it is created.
    let name = usher_testenv::unique_name("late").replace('-', "_");
    apply_yaml(&client, &ns, PEOPLE).await;
    let usher = Usher::start_unready(&ns, &smtp.url(), &["--store", &pg.url(&name)], &[]).await;
    let readyz = format!("{}/readyz", usher.probe_url);
    // Until the first try has failed it says "connecting"; then why.
    let last = std::sync::Mutex::new(String::new());
    let refused = eventually(Duration::from_secs(20), || async {
        let r = reqwest::get(&readyz).await.ok()?;
        let status = r.status();
        let text = r.text().await.ok()?;
        *last.lock().unwrap() = format!("{status}: {text}");
        (status == 503 && text.contains(&name)).then_some(text)
    })
    .await;
    assert!(
        refused.is_some(),
        "/readyz answers 503 and says why while the store is down; last: {}",
        last.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        usher
            .pid()
            .is_some_and(|p| usher_testenv::Supervised::pid_is_alive(p as i32)),
        "no crash"
    );
    // Retried with growing pauses (1 s, 2 s, …), not in a hot loop.
    let tries = usher.log().matches("user store unreachable").count();
    assert!(
        (2..=4).contains(&tries),
        "{tries} tries in ~5 s:\n{}",
        usher.log()
    );
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    assert!(
        users.get("olga").await.unwrap().status.is_none(),
        "nothing reconciled meanwhile"
    );

    let made = std::process::Command::new("createdb")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            &name,
        ])
        .status();
    assert!(made.is_ok_and(|s| s.success()), "createdb");
    wait_for(&users, "olga", "Pending", |u| {
        phase(u) == Some(UserPhase::Pending)
    })
    .await;
    let ok = eventually(Duration::from_secs(10), || async {
        reqwest::get(&readyz)
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    assert!(ok.is_some(), "ready once the store answers");
}

/// A proxy in front of a real SCIM server, on a port of its own: `intercept(method, path, body)`
/// may answer a request itself (a refusal, a 429); everything else is passed through, status,
/// ETag and body as the server answered. Its port.
async fn scim_proxy(
    scim: &Scim,
    intercept: impl Fn(&axum::http::Method, &str, &str) -> Option<axum::response::Response>
    + Clone
    + Send
    + Sync
    + 'static,
) -> u16 {
    let upstream = scim.base();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let upstream = upstream.clone();
        let intercept = intercept.clone();
        async move {
            use axum::response::IntoResponse;
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let path = path.strip_prefix("/v2").unwrap_or(path);
            if let Some(answer) = intercept(&parts.method, path, &String::from_utf8_lossy(&body)) {
                return answer;
            }
            let mut out = reqwest::Client::new()
                .request(parts.method.clone(), format!("{upstream}{path}"))
                .body(body.to_vec());
            for (k, v) in parts.headers.iter() {
                if k != "host" {
                    out = out.header(k.as_str(), v.as_bytes());
                }
            }
            let resp = out.send().await.unwrap();
            let status = resp.status().as_u16();
            let etag = resp.headers().get("etag").cloned();
            let bytes = resp.bytes().await.unwrap();
            let mut r = (
                axum::http::StatusCode::from_u16(status).unwrap(),
                bytes.to_vec(),
            )
                .into_response();
            r.headers_mut()
                .insert("content-type", "application/scim+json".parse().unwrap());
            if let Some(e) = etag {
                r.headers_mut().insert("etag", e);
            }
            r
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test]
async fn a_busy_scim_server_is_retried_honouring_retry_after() {
    let scim = Scim::start(false).expect("scim2-server");
    // In front of the real server: the first answers are 429 (Retry-After: 1) and 503.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let port = scim_proxy(&scim, move |_, _, _| {
        use axum::response::IntoResponse;
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Some(
                (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    "slow down",
                )
                    .into_response(),
            ),
            2 => Some(axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()),
            _ => None,
        }
    })
    .await;

    let local = usher_testenv::scratch_dir("local").unwrap();
    let started = std::time::Instant::now();
    let config = usher::store::StoreConfig::parse_with(
        &format!("scim+http://127.0.0.1:{port}/v2"),
        Some(&scim.token),
        &format!("sqlite://{}", local.join("local.db").display()),
    )
    .unwrap();
    let store = config
        .open()
        .await
        .expect("connects once the server serves");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "two Retry-After: 1 were honoured (waited {waited:?})"
    );
    assert!(waited < Duration::from_secs(10), "and no more ({waited:?})");
    assert!(
        store
            .user_by_external_id("acme/nobody")
            .await
            .unwrap()
            .is_none()
    );
    // 3 refused, then ServiceProviderConfig, Schemas, the authenticated ping, the lookup.
    assert_eq!(seen.load(Ordering::SeqCst), 7);
}

/// Issue 14, kind 6: a product that refuses the filtered member removal (400 invalidPath, as
/// many do) still loses the departed person's membership (the value form or a replace), and one
/// that refuses every membership change still has them deactivated first; the SystemUser then
/// says what is left and finishes once the product takes the change.
#[tokio::test]
async fn offboarding_on_scim_deactivates_first_and_gets_around_a_refused_member_removal() {
    use std::sync::atomic::AtomicU8;
    let client = client().await;
    let ns = namespace(&client, "scim-partial").await;
    let smtp = Smtp::start().expect("SMTP sink");
    let scim = Scim::start(true).expect("scim2-server");
    // 0: pass everything; 1: refuse filtered member paths; 2: refuse every membership change.
    let mode = Arc::new(AtomicU8::new(1));
    let m = mode.clone();
    let port = scim_proxy(&scim, move |method, path, body| {
        use axum::response::IntoResponse;
        let membership = path.starts_with("/Groups/")
            && (*method == axum::http::Method::PUT
                || (*method == axum::http::Method::PATCH && body.contains("members")));
        let refuse = match m.load(Ordering::SeqCst) {
            1 => membership && body.contains("members["),
            2 => membership,
            _ => false,
        };
        refuse.then(|| {
            (
                axum::http::StatusCode::BAD_REQUEST,
                [("content-type", "application/scim+json")],
                r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"400","scimType":"invalidPath","detail":"this product does not take that form of member change"}"#,
            )
                .into_response()
        })
    })
    .await;
    let pia = "---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: pia}\nspec: {tenantRef: {name: acme}, email: pia@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: pia-manager}\nspec: {userRef: {name: pia}, role: Manager}\n";
    apply_yaml(&client, &ns, &format!("{PEOPLE}{pia}")).await;
    let local = usher_testenv::scratch_dir("local").unwrap();
    let usher = Usher::start_with_env(
        &ns,
        &smtp.url(),
        &[
            "--store",
            &format!("scim+http://127.0.0.1:{port}/v2"),
            "--local-store",
            &format!("sqlite://{}", local.join("local.db").display()),
        ],
        &[("USHER_STORE_TOKEN", &scim.token)],
    )
    .await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    let mails = eventually(Duration::from_secs(30), || async {
        let m = smtp.messages();
        (m.len() >= 2).then_some(m)
    })
    .await
    .expect("two invitations");
    for mail in &mails {
        assert_eq!(usher.redeem(&invitation_in(mail).1).await.0, 200);
    }
    let mut ids = Vec::new();
    for name in ["olga", "pia"] {
        let u = wait_for(&users, name, "Active with a role", |u| {
            phase(u) == Some(UserPhase::Active) && !u.status.as_ref().unwrap().roles.is_empty()
        })
        .await;
        ids.push(u.status.unwrap().user_id.unwrap());
    }
    let members = || async {
        let role = manager_group(&scim, &ns).await;
        let mut ids: Vec<String> = role["Resources"][0]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["value"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let mut both = ids.clone();
    both.sort();
    assert_eq!(members().await, both);

    // Filtered removal refused: olga leaves all the same.
    users
        .delete("olga", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        users.get_opt("olga").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("olga's offboarding completes");
    assert_eq!(
        scim_get(&scim, &format!("/Users/{}", ids[0])).await["active"],
        false
    );
    assert_eq!(
        members().await,
        [ids[1].clone()],
        "olga is no member any more"
    );

    // Every membership change refused: pia is deactivated at once, and waits for the rest.
    mode.store(2, Ordering::SeqCst);
    users.delete("pia", &DeleteParams::default()).await.unwrap();
    let stuck = wait_for(&users, "pia", "OffboardingIncomplete", |u| {
        u.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| c.reason == "OffboardingIncomplete")
    })
    .await;
    let message = &stuck.status.as_ref().unwrap().conditions[0].message;
    assert!(
        message.contains("deactivated") && message.contains("removing its roles"),
        "{message}"
    );
    assert_eq!(
        scim_get(&scim, &format!("/Users/{}", ids[1])).await["active"],
        false,
        "deactivation came first"
    );
    mode.store(0, Ordering::SeqCst);
    eventually(Duration::from_secs(60), || async {
        users.get_opt("pia").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("pia's offboarding completes once the product takes it");
    assert!(members().await.is_empty());
}
