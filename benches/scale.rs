//! `make bench` (N = 10,000) and `make bench-quick` (N = 1,000): usher at scale on a real control
//! plane, a real SMTP server and the embedded store. Every figure that is a time is also given as
//! a ratio to a floor measured in the same run on the same API server and mail relay, because
//! the machines are noisy; the quick run asserts nothing about time.
//!
//! `cargo bench --bench scale -- [--users N] [--write FILE] [--onboarding-only]` (the last stops
//! after the floor and the onboarding, to profile one change quickly)

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::json;
use usher::crd::{BindingPhase, LocationGroup, RoleBinding, SystemUser, Tenant, UserPhase};
use usher_testenv::Smtp;

use support::{Usher, crds_client, eventually, install_finalizer_policy, invitation_in};

const TENANTS: usize = 20;
const GROUPS_PER_TENANT: usize = 10;
/// Writes in flight, for the floor and for the bulk create alike.
const IN_FLIGHT: usize = 64;

struct Args {
    users: usize,
    write: Option<std::path::PathBuf>,
    /// Stop after the floor and the onboarding (for profiling one change quickly).
    onboarding_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        users: 10_000,
        write: None,
        onboarding_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--users" => a.users = it.next().and_then(|v| v.parse().ok()).expect("--users N"),
            "--write" => a.write = it.next().map(Into::into),
            "--onboarding-only" => a.onboarding_only = true,
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    a
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

/// The label that splits tenants between shards, as Flux shards its controllers.
const SHARD_KEY: &str = "sharding.fluxcd.io/key";

/// The objects of one run, in `prefix-<k>` namespaces; with `sharded`, every object of tenant
/// `k` labelled for shard `a` (even `k`) or `b` (odd `k`).
fn objects(prefix: &str, n: usize, sharded: bool) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut push = |ns: String, mut o: serde_json::Value, k: usize| {
        if sharded {
            o["metadata"]["labels"] =
                json!({SHARD_KEY: if k.is_multiple_of(2) { "a" } else { "b" }});
        }
        out.push((ns, o));
    };
    for k in 0..TENANTS {
        let ns = format!("{prefix}-{k:02}");
        push(
            ns.clone(),
            json!({"apiVersion": "usher.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "t"}, "spec": {"displayName": format!("Tenant {k}")}}),
            k,
        );
        for g in 0..GROUPS_PER_TENANT {
            let mut spec = json!({"tenantRef": {"name": "t"}, "displayName": format!("Group {g}")});
            if g > 0 {
                spec["parentRef"] = json!({"name": "g0"});
            }
            push(
                ns.clone(),
                json!({"apiVersion": "usher.dev/v1alpha1", "kind": "LocationGroup",
                "metadata": {"name": format!("g{g}")}, "spec": spec}),
                k,
            );
        }
    }
    for i in 0..n {
        let k = i % TENANTS;
        let ns = format!("{prefix}-{k:02}");
        push(
            ns.clone(),
            json!({"apiVersion": "usher.dev/v1alpha1", "kind": "SystemUser",
            "metadata": {"name": format!("u{i}")},
            "spec": {"tenantRef": {"name": "t"}, "email": format!("u{i}@t{k}.example"),
                     "firstName": "User", "lastName": format!("{i}")}}),
            k,
        );
        push(
            ns,
            json!({"apiVersion": "usher.dev/v1alpha1", "kind": "RoleBinding",
            "metadata": {"name": format!("b{i}")},
            "spec": {"userRef": {"name": format!("u{i}")}, "role": "Manager",
                     "scope": {"locationGroup": format!("g{}", 1 + i % (GROUPS_PER_TENANT - 1))}}}),
            k,
        );
    }
    out
}

async fn create_all(client: &Client, objects: &[(String, serde_json::Value)]) {
    // Tenants and groups first, as a git sync would order them; then people and bindings.
    let (first, rest): (Vec<_>, Vec<_>) = objects
        .iter()
        .partition(|(_, o)| o["kind"] == "Tenant" || o["kind"] == "LocationGroup");
    for batch in [first, rest] {
        futures::stream::iter(batch)
            .map(|(ns, o)| create(client, ns, o))
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<()>>()
            .await;
    }
}

async fn create(client: &Client, ns: &str, o: &serde_json::Value) {
    let pp = PostParams::default();
    let r = match o["kind"].as_str() {
        Some("Tenant") => create_as::<Tenant>(client, ns, o, &pp).await,
        Some("LocationGroup") => create_as::<LocationGroup>(client, ns, o, &pp).await,
        Some("SystemUser") => create_as::<SystemUser>(client, ns, o, &pp).await,
        _ => create_as::<RoleBinding>(client, ns, o, &pp).await,
    };
    r.unwrap_or_else(|e| panic!("creating {o}: {e}"));
}

async fn create_as<K>(
    client: &Client,
    ns: &str,
    o: &serde_json::Value,
    pp: &PostParams,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(o.clone()).expect("valid object");
    Api::<K>::namespaced(client.clone(), ns)
        .create(pp, &obj)
        .await
        .map(|_| ())
}

/// The floor: only the writes onboarding must make — create every object, then one status
/// patch each — as fast as the API server takes them, in namespaces `prefix-*`.
async fn floor(client: &Client, n: usize, prefix: &str) -> Duration {
    namespaces(client, prefix).await;
    let objects = objects(prefix, n, false);
    let started = Instant::now();
    create_all(client, &objects).await;
    eprintln!("bench: API floor: creates took {:?}", started.elapsed());
    let pp = PatchParams::default();
    futures::stream::iter(&objects)
        .map(|(ns, o)| {
            let pp = pp.clone();
            async move {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                let status = match o["kind"].as_str() {
                    Some("SystemUser") => json!({"status": {"phase": "Pending", "observedGeneration": 1,
                        "conditions": [{"type": "Ready", "status": "True", "reason": "InvitationSent",
                        "message": "invited", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}}),
                    Some("RoleBinding") => json!({"status": {"phase": "Bound", "observedGeneration": 1}}),
                    _ => json!({"status": {"observedGeneration": 1}}),
                };
                let patch = Patch::Merge(&status);
                let r = match o["kind"].as_str() {
                    Some("Tenant") => Api::<Tenant>::namespaced(client.clone(), ns).patch_status(name, &pp, &patch).await.map(|_| ()),
                    Some("LocationGroup") => Api::<LocationGroup>::namespaced(client.clone(), ns).patch_status(name, &pp, &patch).await.map(|_| ()),
                    Some("SystemUser") => Api::<SystemUser>::namespaced(client.clone(), ns).patch_status(name, &pp, &patch).await.map(|_| ()),
                    _ => Api::<RoleBinding>::namespaced(client.clone(), ns).patch_status(name, &pp, &patch).await.map(|_| ()),
                };
                r.unwrap_or_else(|e| panic!("status of {name}: {e}"));
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

/// Deletes the namespaces `prefix-*` and waits until they are gone, so that usher, started
/// after, never sees their objects.
async fn drop_namespaces(client: &Client, prefix: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    for k in 0..TENANTS {
        let _ = api
            .delete(&format!("{prefix}-{k:02}"), &DeleteParams::default())
            .await;
    }
    let gone = eventually(Duration::from_secs(600), || async {
        let left = api.list(&ListParams::default()).await.ok()?;
        (!left.items.iter().any(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|x| x.starts_with(&format!("{prefix}-")))
        }))
        .then_some(())
    })
    .await;
    assert!(gone.is_some(), "the {prefix}- namespaces went away");
}

/// Take everything in the `prefix-*` namespaces away with usher stopped, as a person would: the
/// objects deleted, then usher's finalizer taken off each (`kubectl patch`; the finalizer policy
/// puts it back on an object not being deleted, so the deletion comes first), then the
/// namespaces.
async fn clear(client: &Client, prefix: &str) {
    for k in 0..TENANTS {
        let ns = format!("{prefix}-{k:02}");
        release::<SystemUser>(client, &ns).await;
        release::<LocationGroup>(client, &ns).await;
        release::<Tenant>(client, &ns).await;
    }
    drop_namespaces(client, prefix).await;
}

/// Every `K` in `ns` deleted, and every finalizer off each.
async fn release<K>(client: &Client, ns: &str)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting in {ns}: {e}"));
    let held = api
        .list_metadata(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("listing {ns}: {e}"));
    let unheld = serde_json::json!({"metadata": {"finalizers": null}});
    futures::stream::iter(held.items)
        .map(|o| {
            let (api, unheld) = (&api, &unheld);
            async move {
                let name = o.metadata.name.unwrap_or_default();
                api.patch_metadata(&name, &PatchParams::default(), &Patch::Merge(unheld))
                    .await
                    .map(|_| ())
                    .unwrap_or_else(|e| panic!("releasing {ns}/{name}: {e}"));
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

/// Mails in flight at once: usher's default `--mail-concurrency`, given to usher and to the mail
/// floor alike.
const MAIL_CONCURRENCY: usize = 8;

/// The mail floor: `n` invitation mails, rendered as usher renders them, handed to the same relay
/// by a bare client (lettre's pooled SMTP transport, as usher opens it) with the same number in
/// flight, and nothing else — no store, no API server.
async fn send_mails(smtp_url: &str, n: usize) -> Duration {
    let mailer = usher::mail::open(smtp_url).expect("the relay's URL");
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(72);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let mailer = mailer.clone();
            async move {
                let to = format!("floor{i}@t0.example");
                let token = format!("{i:0>43}");
                let message = usher::mail::Invitation {
                    tenant: "Tenant 0",
                    from: "usher <no-reply@localhost>",
                    to: &to,
                    first_name: Some("Floor"),
                    last_name: None,
                    accept_url: "http://127.0.0.1:8080/accept",
                    token: &token,
                    code: "7K3QD-M9XTV",
                    expires_at,
                }
                .message()
                .expect("a valid message");
                mailer
                    .send(message)
                    .await
                    .unwrap_or_else(|e| panic!("mail floor: {e}"));
            }
        })
        .buffer_unordered(MAIL_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

async fn namespaces(client: &Client, prefix: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    for k in 0..TENANTS {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("{prefix}-{k:02}")}}))
                .unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("namespace");
    }
}

/// Phases by `namespace/name`, kept up to date from a watch.
type Phases<P> = Arc<std::sync::Mutex<HashMap<String, Option<P>>>>;

/// Watches every object of kind `K` and keeps its phase (`phase_of`).
fn phase_counter<K, P>(client: &Client, phase_of: fn(K) -> Option<P>) -> Phases<P>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    P: Send + 'static,
{
    let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let s = seen.clone();
    let api: Api<K> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(o)) = events.try_next().await {
            let key = format!(
                "{}/{}",
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default()
            );
            s.lock().unwrap().insert(key, phase_of(o));
        }
    });
    seen
}

fn user_phase(u: SystemUser) -> Option<UserPhase> {
    u.status.and_then(|s| s.phase)
}

fn binding_phase(b: RoleBinding) -> Option<BindingPhase> {
    b.status.and_then(|s| s.phase)
}

/// How many objects in namespaces starting with `prefix` are in `phase`.
fn count<P: PartialEq>(seen: &Phases<P>, prefix: &str, phase: P) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(k, p)| k.starts_with(prefix) && p.as_ref() == Some(&phase))
        .count()
}

/// Waits until the onboarding of `n` people and `n` bindings in namespaces starting with
/// `prefix` is done: every person Pending with their mail in the relay (beyond `mails_base`)
/// and every binding Bound. Returns when the people were done and when everything was, both
/// since `started`. Prints progress every 10 s; panics after an hour.
async fn wait_onboarded(
    phases: &Phases<UserPhase>,
    bound: &Phases<BindingPhase>,
    prefix: &str,
    n: usize,
    smtp: &Smtp,
    mails_base: usize,
    started: Instant,
) -> (Duration, Duration) {
    let mut last = Instant::now();
    let mut people_done = None;
    loop {
        let pending = count(phases, prefix, UserPhase::Pending);
        let bindings = count(bound, prefix, BindingPhase::Bound);
        // The relay's Maildir is listed only when it can matter (or for progress): listing
        // tens of thousands of files ten times a second would take CPU from what is measured.
        let progress = last.elapsed() > Duration::from_secs(10);
        let mails = if (people_done.is_none() && pending >= n) || progress {
            smtp.count() - mails_base
        } else {
            0
        };
        if people_done.is_none() && pending >= n && mails >= n {
            people_done = Some(started.elapsed());
        }
        if let Some(people) = people_done
            && bindings >= n
        {
            return (people, started.elapsed());
        }
        if progress {
            eprintln!(
                "bench: {prefix} {:?}: {pending} Pending, {mails} mails, {bindings} Bound",
                started.elapsed()
            );
            last = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "onboarding ({prefix}) did not finish in an hour"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU seconds (user + system, all threads) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th fields, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    // Clock ticks per second (USER_HZ, 100 on Linux unless getconf says otherwise).
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0);
    ticks / per_second
}

/// The programs whose CPU the bench accounts for, by what their command line holds.
/// The first that matches names a process (the API server's flags name etcd too).
const PROGRAMS: [(&str, &str); 5] = [
    ("kube-apiserver", "API server"),
    ("kube-controller-manager", "controller manager"),
    ("aiosmtpd", "relay"),
    ("release/usher", "usher"),
    ("etcd", "etcd"),
];

/// CPU seconds used so far by each of [`PROGRAMS`] (every process of it) and by this bench.
fn cpu_by_program() -> HashMap<&'static str, f64> {
    let mut used = HashMap::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let program = if pid == me {
            Some("this client")
        } else {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            PROGRAMS
                .iter()
                .find(|(needle, _)| cmdline.contains(needle))
                .map(|(_, name)| *name)
        };
        if let Some(program) = program {
            *used.entry(program).or_default() += cpu_seconds(pid);
        }
    }
    used
}

/// The CPU each program used since `before` ([`cpu_by_program`]), largest first, with the
/// total, as a table cell.
fn cpu_since(before: &HashMap<&'static str, f64>) -> String {
    let mut used: Vec<(&str, f64)> = cpu_by_program()
        .into_iter()
        .map(|(p, s)| (p, s - before.get(p).copied().unwrap_or(0.0)))
        .filter(|(_, s)| *s >= 0.05)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = used.iter().map(|(_, s)| s).sum();
    let parts: Vec<String> = used.iter().map(|(p, s)| format!("{p} {s:.1} s")).collect();
    format!("{total:.1} s of CPU: {}", parts.join(", "))
}

/// The API server's request counters (`apiserver_request_total`, summed over codes and
/// scopes) by verb and resource, and the watch events it sent by resource
/// (`apiserver_watch_events_total`) and its requests to etcd by operation and resource
/// (`etcd_requests_total`), from its own `/metrics`.
async fn api_requests(client: &Client) -> HashMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's metrics");
    let label = |series: &str, key: &str| -> String {
        series
            .split(['{', ',', '}'])
            .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_default()
    };
    let mut out: HashMap<String, f64> = HashMap::new();
    for (series, v) in support::parse_metrics(&text) {
        let key = if series.starts_with("apiserver_request_total{") {
            let sub = label(&series, "subresource");
            format!(
                "{} {}{}",
                label(&series, "verb"),
                label(&series, "resource"),
                if sub.is_empty() {
                    String::new()
                } else {
                    format!("/{sub}")
                }
            )
        } else if series.starts_with("apiserver_watch_events_total{") {
            format!("watch events {}", label(&series, "resource"))
        } else if series.starts_with("etcd_requests_total{") {
            // Releases name the resource by `resource` or, older ones, by `type`.
            let of = match label(&series, "resource") {
                r if r.is_empty() => label(&series, "type"),
                r => r,
            };
            format!("etcd {} {of}", label(&series, "operation"))
        } else {
            continue;
        };
        *out.entry(key).or_default() += v;
    }
    out
}

/// What the API server did since `before`: the requests and watch events that grew by at least
/// a tenth of `n`, largest first.
fn api_requests_since(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    n: usize,
) -> String {
    let mut grown: Vec<(&String, f64)> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= n as f64 / 10.0)
        .collect();
    grown.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    grown
        .iter()
        .map(|(k, d)| format!("{k} {d:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until usher has made no API write for 3 s.
async fn settle(usher: &Usher) {
    let mut quiet_since = Instant::now();
    let mut last_writes = -1.0;
    while quiet_since.elapsed() < Duration::from_secs(3) {
        let w = metrics(usher)
            .await
            .get("usher_api_writes_total")
            .copied()
            .unwrap_or(0.0);
        if w != last_writes {
            last_writes = w;
            quiet_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The peak RSS of process `pid` so far, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    rss_mib(pid, "VmHWM:")
}

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmRSS:` now, `VmHWM:` the
/// peak), in MiB.
fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn metrics(usher: &Usher) -> HashMap<String, f64> {
    usher.samples().await.into_iter().collect()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i.min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn wait_phase(api: &Api<SystemUser>, name: &str, phase: UserPhase) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(u) = api.get(name).await
            && u.status.and_then(|s| s.phase) == Some(phase)
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn events_in(client: &Client) -> usize {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

async fn run(args: Args) {
    let n = args.users;
    // The floors run before usher is installed: no finalizer policy yet.
    let client = crds_client().await;
    let smtp = Smtp::start().expect("SMTP sink");
    let mut rows: Vec<(String, String)> = Vec::new();
    eprintln!(
        "bench: N = {n}, {TENANTS} tenants, {} groups",
        TENANTS * GROUPS_PER_TENANT
    );

    // 1. The floor: the larger of what the API server and the mail relay need, each measured
    // alone on the same machine in this run.
    let cpu_before = cpu_by_program();
    let api_floor = floor(&client, n, "floor").await;
    let api_floor_cpu = cpu_since(&cpu_before);
    drop_namespaces(&client, "floor").await;
    let floor_writes = 2 * (2 * n + TENANTS * (1 + GROUPS_PER_TENANT));
    eprintln!("bench: API floor {api_floor:?} for {floor_writes} writes");
    let cpu_before = cpu_by_program();
    let mail_floor = send_mails(&smtp.url(), n).await;
    let mail_floor_cpu = cpu_since(&cpu_before);
    eprintln!("bench: mail floor {mail_floor:?} for {n} mails");
    // Onboarding makes both floors' work at once, on the same cores: what the two take together,
    // run side by side, is what no onboarding on this machine can beat.
    let cpu_before = cpu_by_program();
    let relay = smtp.url();
    let (api_alongside, mail_alongside) =
        futures::join!(floor(&client, n, "both"), send_mails(&relay, n));
    let both_floors = api_alongside.max(mail_alongside);
    let both_floors_cpu = cpu_since(&cpu_before);
    drop_namespaces(&client, "both").await;
    eprintln!("bench: both floors at once {both_floors:?}");
    let floor = api_floor.max(mail_floor);
    let mails_base = smtp.count();

    // 2. Onboarding, with usher installed as deploy/ installs it: its finalizer policy first.
    install_finalizer_policy(client.clone()).await;
    let concurrency = MAIL_CONCURRENCY.to_string();
    let mut usher = Usher::start("", &smtp.url(), &["--mail-concurrency", &concurrency]).await;
    namespaces(&client, "bench").await;
    let phases = phase_counter(&client, user_phase);
    let bound = phase_counter(&client, binding_phase);
    let bulk = objects("bench", n, false);
    let cpu_before = cpu_by_program();
    let requests_before = api_requests(&client).await;
    let started = Instant::now();
    create_all(&client, &bulk).await;
    let created = started.elapsed();
    // Onboarding is done when every person is Pending with their mail received and every
    // binding is Bound; when the people were done is kept apart.
    let (people_done, onboarding) =
        wait_onboarded(&phases, &bound, "bench-", n, &smtp, mails_base, started).await;
    let onboarding_cpu_by_program = cpu_since(&cpu_before);
    let onboarding_requests = api_requests_since(&requests_before, &api_requests(&client).await, n);
    let pid = usher.pid().expect("usher runs");
    let onboarding_cpu = cpu_seconds(pid);
    let (mails, mail_seconds) = profile(&usher).await;
    let onboarded = metrics(&usher).await;
    rows.push((
        format!("onboarding N = {n} (+{n} RoleBindings, {TENANTS} tenants, {} groups): bulk create → every person Pending with their mail received and every binding Bound", TENANTS * GROUPS_PER_TENANT),
        format!("{} (creates done after {}, people after {}); **ratio to floor {:.2}**", secs(onboarding), secs(created), secs(people_done), onboarding.as_secs_f64() / floor.as_secs_f64()),
    ));
    rows.push((
        "usher's CPU during onboarding (user + system, all threads; the machine has two cores, shared with the API server, etcd, the relay and this client)".into(),
        format!(
            "{} ({:.0} % of one core)",
            secs(Duration::from_secs_f64(onboarding_cpu)),
            100.0 * onboarding_cpu / onboarding.as_secs_f64()
        ),
    ));
    // The relay's time, spread over the mails in flight: how much of the onboarding it bounds.
    rows.push((
        format!("of which handing mails to the relay (aiosmtpd), {MAIL_CONCURRENCY} at a time (`--mail-concurrency {MAIL_CONCURRENCY}`)"),
        format!(
            "{mails:.0} mails, mean {:.1} ms, {} in all, {} per slot ({:.0} % of onboarding)",
            1000.0 * mail_seconds / mails.max(1.0),
            secs(Duration::from_secs_f64(mail_seconds)),
            secs(Duration::from_secs_f64(mail_seconds / MAIL_CONCURRENCY as f64)),
            100.0 * mail_seconds / MAIL_CONCURRENCY as f64 / onboarding.as_secs_f64()
        ),
    ));
    rows.push((
        "CPU during onboarding, by program".to_string(),
        onboarding_cpu_by_program,
    ));
    rows.push((
        "API requests, watch events and etcd requests during onboarding, by verb and resource (those over N/10; the bench client's included)".to_string(),
        onboarding_requests,
    ));
    rows.push((
        "reconciles per object during onboarding (all results)".to_string(),
        reconciles_per_object(&onboarded, n),
    ));
    rows.push((
        format!("API floor: a bare client makes the {floor_writes} writes onboarding must (create + one status patch each), {IN_FLIGHT} in flight"),
        format!("{}; {api_floor_cpu}", secs(api_floor)),
    ));
    rows.push((
        format!("mail floor: a bare SMTP client hands the {n} invitation mails to the same relay, {MAIL_CONCURRENCY} in flight"),
        format!("{}; {mail_floor_cpu}", secs(mail_floor)),
    ));
    rows.push((
        "floor: the larger of the two".to_string(),
        format!(
            "{} ({})",
            secs(floor),
            if mail_floor > api_floor {
                "the relay"
            } else {
                "the API server"
            }
        ),
    ));
    rows.push((
        "both floors at once, side by side on the same cores (what onboarding does; no onboarding here can beat it)".to_string(),
        format!(
            "{} (API writes done after {}, mails after {}); {both_floors_cpu}; onboarding took {:.2}× this",
            secs(both_floors),
            secs(api_alongside),
            secs(mail_alongside),
            onboarding.as_secs_f64() / both_floors.as_secs_f64()
        ),
    ));

    rows.push((
        "usher's RSS when onboarding ends".to_string(),
        format!(
            "{:.0} MiB (peak so far {:.0} MiB)",
            rss_mib(pid, "VmRSS:"),
            peak_rss_mib(pid)
        ),
    ));
    if args.onboarding_only {
        println!("{}", render(&rows));
        return;
    }

    // 3. Latency with the N in place, once the onboarding's last writes (tenant counts) are done,
    // so that nothing else runs meanwhile.
    settle(&usher).await;
    let samples = if n >= 10_000 { 50 } else { 20 };
    let api: Api<SystemUser> = Api::namespaced(client.clone(), "bench-00");
    let mut apply = Vec::new();
    for i in 0..samples {
        let name = format!("late{i}");
        let u: SystemUser = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"tenantRef": {"name": "t"}, "email": format!("late{i}@t0.example")}}))
        .unwrap();
        let t = Instant::now();
        api.create(&PostParams::default(), &u)
            .await
            .expect("create");
        wait_phase(&api, &name, UserPhase::Pending).await;
        apply.push(t.elapsed());
    }
    let late_tokens: Vec<String> = eventually(Duration::from_secs(60), || async {
        let tokens: Vec<String> = smtp
            .messages()
            .iter()
            .filter(|m| support::recipient(m).starts_with("late"))
            .map(|m| invitation_in(m).1)
            .collect();
        (tokens.len() >= samples).then_some(tokens)
    })
    .await
    .expect("the late users' mails");
    let mut redeem = Vec::new();
    let redeem_url = format!("{}/api/v1/invitations/redeem", usher.url);
    let late: Vec<Vec<u8>> = smtp
        .messages()
        .into_iter()
        .filter(|m| support::recipient(m).starts_with("late"))
        .collect();
    for (i, m) in late.iter().enumerate() {
        let name = support::recipient(m)
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        let token = invitation_in(m).1;
        // A person per address, as in life: the per-client limit is not what is measured.
        let local = std::net::IpAddr::from([127, 0, 9, 1 + i as u8]);
        let http = reqwest::Client::builder()
            .local_address(local)
            .build()
            .unwrap();
        let t = Instant::now();
        let r = http
            .post(&redeem_url)
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "redeem");
        wait_phase(&api, &name, UserPhase::Active).await;
        redeem.push(t.elapsed());
    }
    drop(late_tokens);
    rows.push((
        format!("latency, {samples} samples with the {n} in place: kubectl apply → Pending"),
        format!(
            "p50 {}, p99 {}",
            ms(percentile(&mut apply, 0.5)),
            ms(percentile(&mut apply, 0.99))
        ),
    ));
    rows.push((
        format!("latency, {samples} samples: redeem → Active"),
        format!(
            "p50 {}, p99 {}",
            ms(percentile(&mut redeem, 0.5)),
            ms(percentile(&mut redeem, 0.99))
        ),
    ));

    // 4. Redemption API throughput, clients on distinct loopback addresses (each within the
    // per-client limit, as real people are).
    let m = n.min(2000);
    let tokens: Vec<String> = smtp
        .messages()
        .iter()
        .filter(|msg| support::recipient(msg).starts_with('u'))
        .take(m)
        .map(|msg| invitation_in(msg).1)
        .collect();
    let url = format!("{}/api/v1/invitations/redeem", usher.url);
    let done = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(tokens.chunks(8).enumerate())
        .map(|(c, chunk)| {
            let url = url.clone();
            let done = done.clone();
            let chunk = chunk.to_vec();
            async move {
                let local =
                    std::net::IpAddr::from([127, 0, 1 + (c / 250) as u8, 1 + (c % 250) as u8]);
                let http = reqwest::Client::builder()
                    .local_address(local)
                    .build()
                    .unwrap();
                let mut lat = Vec::new();
                for token in chunk {
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .json(&json!({"token": token}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "redeem");
                    lat.push(t.elapsed());
                    done.fetch_add(1, Ordering::SeqCst);
                }
                lat
            }
        })
        .buffer_unordered(32)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    let took = t.elapsed();
    rows.push((
        format!("redemption API: {m} tokens, 32 clients in parallel on loopback"),
        format!(
            "{:.0} redemptions/s, p99 {}",
            m as f64 / took.as_secs_f64(),
            ms(percentile(&mut latencies, 0.99))
        ),
    ));
    // Every redeemed person Active before the restart, so that the restart has nothing to write.
    let active_goal = m + samples;
    let settled = eventually(Duration::from_secs(300), || async {
        (count(&phases, "bench-", UserPhase::Active) >= active_goal).then_some(())
    })
    .await;
    assert!(settled.is_some(), "redeemed people turn Active");
    let peak = peak_rss_mib(pid);
    // Settled (tenant counts follow the last redemptions), so that what the restart writes, if
    // anything, is not late work of this run.
    settle(&usher).await;

    // 5. Cold start with nothing to write, then a full resync with nothing to write.
    let total = n + samples;
    let events_before = events_in(&client).await;
    let mails_before = smtp.count();
    usher.stop();
    usher.set_args(&["--resync", "20s"]);
    let t = Instant::now();
    usher.restart().await;
    loop {
        let m = metrics(&usher).await;
        let reconciled = m
            .get("usher_reconciles_total{kind=\"SystemUser\",result=\"ok\"}")
            .copied()
            .unwrap_or(0.0);
        if reconciled >= total as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cold = t.elapsed();
    let after_start = metrics(&usher).await;
    // The resync: every SystemUser reconciled a second time.
    loop {
        let m = metrics(&usher).await;
        let reconciled = m
            .get("usher_reconciles_total{kind=\"SystemUser\",result=\"ok\"}")
            .copied()
            .unwrap_or(0.0);
        if reconciled >= 2.0 * total as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = metrics(&usher).await;
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let api_writes = get(&after, "usher_api_writes_total");
    let store_writes = get(&after, "usher_store_writes_total");
    let mails = smtp.count() - mails_before;
    let events = events_in(&client).await.saturating_sub(events_before);
    // Not a timing: a resync with nothing to do must write and send nothing, at any N.
    assert_eq!(
        (api_writes, store_writes, mails, events),
        (0.0, 0.0, 0, 0),
        "a no-op resync wrote or sent something"
    );
    rows.push((
        format!(
            "cold start: process start → all {total} SystemUsers reconciled once, nothing to write"
        ),
        format!(
            "{} ({} API writes, {} store writes at that point)",
            secs(cold),
            get(&after_start, "usher_api_writes_total"),
            get(&after_start, "usher_store_writes_total")
        ),
    ));
    rows.push((
        format!("no-op: restart + one full resync of all {total} SystemUsers and their bindings, groups, tenants"),
        format!("{api_writes} API writes, {store_writes} store writes, {events} Events, {mails} mails"),
    ));
    let restarted_peak = usher.pid().map_or(0.0, peak_rss_mib);
    rows.push((
        format!("peak RSS of usher run at N = {n}"),
        format!("{peak:.0} MiB through onboarding, latency and redemptions; {restarted_peak:.0} MiB restarted, through its cold start and resync"),
    ));

    // 6. Two shards: the same onboarding split between two instances by a label, each with its
    // own store, on the same API server, relay and cores, which hold no more objects than for the
    // single instance's onboarding (with its 20,000 objects still there, the API server's
    // caches and collector held twice as many).
    usher.stop();
    clear(&client, "bench").await;
    namespaces(&client, "shard").await;
    let mails_base = smtp.count();
    let concurrency = MAIL_CONCURRENCY.to_string();
    let mut shards = Vec::new();
    for value in ["a", "b"] {
        let selector = format!("{SHARD_KEY}={value}");
        shards.push(
            Usher::start(
                "",
                &smtp.url(),
                &[
                    "--mail-concurrency",
                    &concurrency,
                    "--shard-selector",
                    &selector,
                ],
            )
            .await,
        );
    }
    let sharded = objects("shard", n, true);
    let cpu_before = cpu_by_program();
    let started = Instant::now();
    create_all(&client, &sharded).await;
    let (_, sharded_onboarding) =
        wait_onboarded(&phases, &bound, "shard-", n, &smtp, mails_base, started).await;
    let sharded_cpu = cpu_since(&cpu_before);
    let mut split = Vec::new();
    for (value, shard) in ["a", "b"].iter().zip(&shards) {
        let m = metrics(shard).await;
        let mut results: Vec<(&str, f64)> = m
            .iter()
            .filter_map(|(k, v)| {
                let labels = k.strip_prefix("usher_reconciles_total{kind=\"SystemUser\",")?;
                Some((labels.trim_end_matches('}'), *v))
            })
            .collect();
        results.sort_by(|a, b| b.1.total_cmp(&a.1));
        let users: f64 = results.iter().map(|(_, v)| v).sum();
        let by_result: Vec<String> = results.iter().map(|(r, v)| format!("{r} {v:.0}")).collect();
        split.push(format!(
            "shard {value}: {users:.0} SystemUser reconciles ({}), peak RSS {:.0} MiB",
            by_result.join(", "),
            peak_rss_mib(shard.pid().expect("the shard runs"))
        ));
    }
    rows.push((
        format!("two shards (`--shard-selector {SHARD_KEY}=a` / `=b`, 10 tenants each): the same onboarding of {n} people and {n} bindings"),
        format!(
            "{}; **ratio to floor {:.2}**; {}; {sharded_cpu} (usher: both shards)",
            secs(sharded_onboarding),
            sharded_onboarding.as_secs_f64() / floor.as_secs_f64(),
            split.join("; ")
        ),
    ));
    drop(shards);

    let table = render(&rows);
    println!("{table}");
    if let Some(path) = args.write {
        let doc = format!(
            "# Benchmarks\n\nProduced by `make bench` ({}). Times are wall clock on the machine below; the\nratio compares usher's onboarding with the floor measured in the same run on the same API\nserver and mail relay: the larger of a bare client making only the writes onboarding needs and a\nbare SMTP client handing the same mails to the relay with the same concurrency.\n\n{}\n\n{table}\n",
            chrono_now(),
            machine()
        );
        std::fs::write(&path, doc).expect("writing the table");
        eprintln!("bench: wrote {}", path.display());
    }
}

/// Where the time went: reconciles and store calls by kind/operation (count, mean). Returns the
/// mails handed to the relay and the seconds that took.
async fn profile(usher: &Usher) -> (f64, f64) {
    let m = metrics(usher).await;
    let mut lines: Vec<String> = Vec::new();
    for (series, count) in &m {
        for (prefix, what) in [
            ("usher_reconcile_duration_seconds_count", "reconcile"),
            ("usher_store_duration_seconds_count", "store"),
            ("usher_mail_duration_seconds_count", "mail"),
        ] {
            if let Some(labels) = series.strip_prefix(prefix) {
                let sum = m
                    .get(&format!(
                        "{}_sum{labels}",
                        prefix.trim_end_matches("_count")
                    ))
                    .copied()
                    .unwrap_or(0.0);
                lines.push(format!(
                    "  {what} {labels}: {count} calls, mean {:.2} ms, total {:.1} s",
                    1000.0 * sum / count.max(1.0),
                    sum
                ));
            }
        }
    }
    for (series, v) in &m {
        if series.starts_with("usher_reconciles_total{") {
            lines.push(format!("  {series} {v}"));
        }
    }
    lines.sort();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    for key in [
        "usher_api_writes_total",
        "usher_store_writes_total",
        "usher_invitations_sent_total",
    ] {
        lines.push(format!("  {key} {}", get(key)));
    }
    eprintln!("bench: profile after onboarding\n{}", lines.join("\n"));
    (
        get("usher_mail_duration_seconds_count"),
        get("usher_mail_duration_seconds_sum"),
    )
}

/// Reconciles per object of each kind, from the counters after onboarding `n` people (and `n`
/// bindings, the groups and the tenants): how well triggers fold into one reconcile.
fn reconciles_per_object(m: &HashMap<String, f64>, n: usize) -> String {
    let of = |kind: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(&format!("usher_reconciles_total{{kind=\"{kind}\"")))
            .map(|(_, v)| v)
            .sum()
    };
    [
        ("SystemUser", n),
        ("RoleBinding", n),
        ("LocationGroup", TENANTS * GROUPS_PER_TENANT),
        ("Tenant", TENANTS),
        // The recounts of a Tenant's people into its status, apart from its reconciles.
        ("TenantCensus", TENANTS),
    ]
    .iter()
    .map(|(kind, count)| format!("{kind} {:.2}", of(kind) / *count as f64))
    .collect::<Vec<_>>()
    .join(", ")
}

fn render(rows: &[(String, String)]) -> String {
    let mut out = String::from("| figure | result |\n|---|---|\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out
}

fn chrono_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M UTC")
        .to_string()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {model}, {cores} cores, {mem:.0} GiB RAM, Linux {}; kube-apiserver and etcd on the same machine, usher built with the release profile.",
        kernel.trim()
    )
}
