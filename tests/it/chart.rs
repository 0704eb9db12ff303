//! The Helm chart, charts/usher/: it lints; with default values it renders what deploy/ installs,
//! each difference pinned here with its reason; it installs into the real control plane, where
//! its ServiceAccount can do exactly what deploy/'s can (the same `kubectl auth can-i` answers,
//! and usher, running with that account's own token, invites, accepts and offboards); its values
//! schema refuses bad values with helm's own message.
//!
//! helm is built once per machine from the Go module proxy by tests/helm/build.sh (the version
//! pinned in tests/helm/go.mod) and cached in target/helm/; the first test to need it builds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use usher_testenv::Smtp;

use crate::support::{
    RITA, Usher, apply_yaml, assert_least_privilege, client, eventually, kubectl, namespace, repo,
    rita_is_invited_accepted_and_offboarded, service_account_kubeconfig,
};

/// What a command said: whether it succeeded, its stdout, its stderr.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The helm of tests/helm/go.mod, built on first use (at once when target/helm/ holds it).
fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let built = run(Command::new("bash").arg(repo().join("tests/helm/build.sh")));
        assert!(built.ok, "tests/helm/build.sh failed:\n{}", built.both());
        repo().join("target/helm/helm")
    })
}

/// Run helm with its cache, config and data in a scratch folder of this test run, and no
/// KUBECONFIG from the environment: a command that talks to a cluster names the test's own.
fn helm(args: &[&str]) -> Out {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    let home = HOME.get_or_init(|| usher_testenv::scratch_dir("helm").expect("scratch dir"));
    run(Command::new(helm_bin())
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data")))
}

fn chart() -> String {
    repo().join("charts/usher").display().to_string()
}

/// The documents of a multi-document YAML text, skipping empty ones.
fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{e} in:\n{text}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// What a cluster of Kubernetes 1.36 or later serves and `helm template`, offline, does not
/// know of: the chart renders its finalizer policy only where this API is served.
const POLICY_API: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";

/// `helm template RELEASE charts/usher -n NAMESPACE ARGS…`, parsed, rendered as for a cluster
/// that serves [`POLICY_API`], as the test control plane does.
fn render(release: &str, ns: &str, args: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut all = vec!["template", release, chart.as_str(), "-n", ns];
    all.extend_from_slice(&["--api-versions", POLICY_API]);
    all.extend_from_slice(args);
    let out = helm(&all);
    assert!(out.ok, "helm template {args:?}:\n{}", out.both());
    docs(&out.stdout)
}

/// What `kubectl apply -k deploy/` applies.
fn deploy_objects() -> Vec<Value> {
    usher_testenv::ensure_binaries().expect("kubectl");
    let out = run(Command::new(usher_testenv::kubectl())
        .arg("kustomize")
        .arg(repo().join("deploy")));
    assert!(out.ok, "kubectl kustomize deploy/:\n{}", out.both());
    docs(&out.stdout)
}

type Key = (String, String, String);

/// (kind, namespace, name).
fn key(obj: &Value) -> Key {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

/// Whole floats as integers: kustomize writes the CRDs' `minimum: 1.0` as `1`.
fn normalize(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && n.is_f64()) {
                *v = json!(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(map) => map.values_mut().for_each(normalize),
        _ => {}
    }
}

fn by_key(objects: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for mut obj in objects {
        normalize(&mut obj);
        let k = key(&obj);
        assert!(map.insert(k.clone(), obj).is_none(), "{k:?} twice");
    }
    map
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// Set (Some) or remove (None) the value at a JSON pointer whose parent exists.
fn put(root: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, last) = pointer.rsplit_once('/').expect("a JSON pointer");
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent = root
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{pointer}: no parent"));
    match (parent, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(last, v);
        }
        (Value::Object(map), None) => {
            map.remove(&last);
        }
        (Value::Array(items), v) => {
            let i: usize = last.parse().expect("an index");
            match v {
                Some(v) if i == items.len() => items.push(v),
                Some(v) => items[i] = v,
                None => {
                    items.remove(i);
                }
            }
        }
        (other, _) => panic!("{pointer}: parent is {other}"),
    }
}

/// One pinned difference: the chart's object holds `chart` at `pointer` (None: nothing) where
/// deploy/'s holds whatever it holds; checked, then made deploy/'s so the rest compares whole.
fn pin(chart_obj: &mut Value, deploy_obj: &Value, pointer: &str, chart: Option<Value>, why: &str) {
    assert_eq!(
        chart_obj.pointer(pointer).cloned(),
        chart,
        "{:?} {pointer}: the chart no longer renders the pinned value ({why})",
        key(chart_obj)
    );
    put(chart_obj, pointer, deploy_obj.pointer(pointer).cloned());
}

/// deploy/'s labels at `pointer` are all on the chart's object, with Helm's own; then the
/// chart's are made deploy/'s.
fn pin_labels(chart_obj: &mut Value, deploy_obj: &Value, pointer: &str) {
    let k = key(chart_obj);
    let chart = chart_obj
        .pointer(pointer)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_else(|| panic!("{k:?}: no labels at {pointer}"));
    for (name, value) in deploy_obj
        .pointer(pointer)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        assert_eq!(chart.get(name), Some(value), "{k:?} {pointer} {name}");
    }
    for name in [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
        "helm.sh/chart",
    ] {
        assert!(chart.contains_key(name), "{k:?} {pointer} lacks {name}");
    }
    put(chart_obj, pointer, deploy_obj.pointer(pointer).cloned());
}

#[test]
fn chart_lints_and_renders_with_default_values() {
    let chart = chart();
    let lint = helm(&["lint", "--strict", &chart]);
    assert!(lint.ok, "helm lint --strict:\n{}", lint.both());
    assert!(lint.stdout.contains("0 chart(s) failed"), "{}", lint.both());
    let objects = render("usher", "usher-system", &[]);
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "Deployment",
        "Service",
        "ConfigMap",
    ] {
        assert!(kinds.contains(&kind), "{kind} not rendered: {kinds:?}");
    }
    assert!(
        !kinds.contains(&"ServiceMonitor") && !kinds.contains(&"Ingress"),
        "off by default: {kinds:?}"
    );
}

/// The chart's crds/ are the repository's crds/, byte for byte (`make crds` writes both), and
/// its appVersion is usher's version.
#[test]
fn chart_crds_and_app_version_follow_the_repository() {
    let names = |dir: &Path| -> Vec<String> {
        crate::support::yaml_files(dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .filter(|n| n != "kustomization.yaml")
            .collect()
    };
    let ours = repo().join("crds");
    let chart = repo().join("charts/usher/crds");
    assert_eq!(
        names(&chart),
        names(&ours),
        "charts/usher/crds/ must hold exactly crds/'s files (run `make crds`)"
    );
    for name in names(&ours) {
        assert!(
            std::fs::read(ours.join(&name)).unwrap() == std::fs::read(chart.join(&name)).unwrap(),
            "charts/usher/crds/{name} differs from crds/{name}: run `make crds` (or copy crds/usher.dev_*.yaml into charts/usher/crds/)"
        );
    }
    let meta: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("charts/usher/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(
        meta["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion is usher's version (Cargo.toml)"
    );
}

/// With default values, installed as release `usher` in usher-system, the chart renders the
/// objects of deploy/ with the same names, RBAC rules, settings, container, probes and security
/// contexts. Each difference is pinned below with its reason; past those, objects compare whole.
#[test]
fn chart_default_render_is_deploy_with_pinned_differences() {
    let mut chart = by_key(render("usher", "usher-system", &["--include-crds"]));
    let mut deploy = by_key(deploy_objects());

    // A chart does not own its namespace: `helm install -n usher-system --create-namespace`, and
    // the pod-security label is the cluster owner's to set (the pod meets `restricted`).
    let ns = deploy
        .remove(&("Namespace".into(), String::new(), "usher-system".into()))
        .expect("deploy/ creates usher-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        deploy.keys().collect::<Vec<_>>(),
        "the same kinds, namespaces and names"
    );

    for (k, c) in chart.iter_mut() {
        let d = &deploy[k];
        let kind = k.0.as_str();
        if kind != "CustomResourceDefinition" {
            // Helm's standard labels on every object, deploy/'s among them.
            pin_labels(c, d, "/metadata/labels");
        }
        match kind {
            "ConfigMap" => {
                let why = "the chart states usher's defaults, so that values.yaml and the values table show them";
                pin(c, d, "/data/USHER_MAIL_CONCURRENCY", Some(json!("8")), why);
                pin(c, d, "/data/USHER_LEASE_DURATION", Some(json!("15s")), why);
                pin(
                    c,
                    d,
                    "/data/USHER_TOKEN_KEY_SECRET",
                    Some(json!("usher-token-key")),
                    "the key Secret is named after the release (<fullname>-token-key), the name its Role grants",
                );
            }
            "PersistentVolumeClaim" => pin(
                c,
                d,
                "/metadata/annotations",
                Some(json!({"helm.sh/resource-policy": "keep"})),
                "`helm uninstall` leaves the SQLite store's data behind",
            ),
            "Service" => {
                pin(
                    c,
                    d,
                    "/spec/selector/app.kubernetes.io~1instance",
                    Some(json!("usher")),
                    "two releases never select each other's pods",
                );
                pin(
                    c,
                    d,
                    "/spec/type",
                    Some(json!("ClusterIP")),
                    "service.type, Kubernetes' default",
                );
            }
            "Deployment" => {
                pin(
                    c,
                    d,
                    "/spec/selector/matchLabels/app.kubernetes.io~1instance",
                    Some(json!("usher")),
                    "two releases never select each other's pods",
                );
                pin_labels(c, d, "/spec/template/metadata/labels");
                let checksum = c
                    .pointer("/spec/template/metadata/annotations/checksum~1config")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    checksum.len() == 64 && checksum.chars().all(|ch| ch.is_ascii_hexdigit()),
                    "a changed ConfigMap rolls the pods: {checksum:?}"
                );
                pin(
                    c,
                    d,
                    "/spec/template/metadata/annotations/checksum~1config",
                    Some(json!(checksum)),
                    "a changed setting rolls the pods",
                );
                let container = "/spec/template/spec/containers/0";
                pin(
                    c,
                    d,
                    &format!("{container}/image"),
                    Some(json!(format!("usher:{}", env!("CARGO_PKG_VERSION")))),
                    "image.tag defaults to the chart's appVersion, not latest",
                );
                pin(
                    c,
                    d,
                    &format!("{container}/imagePullPolicy"),
                    Some(json!("IfNotPresent")),
                    "image.pullPolicy",
                );
                pin(
                    c,
                    d,
                    &format!("{container}/envFrom/1"),
                    None,
                    "no catch-all optional Secret usher-credentials: credentials come per key from \
                     the existing Secrets the values name (store.existingSecret, store.token, \
                     mail.credentials), or extraEnvFrom",
                );
            }
            _ => {}
        }
        assert!(
            *c == *d,
            "{k:?} differs from deploy/ beyond the pinned differences:\nchart:\n{}\ndeploy/:\n{}",
            serde_json::to_string_pretty(c).unwrap(),
            serde_json::to_string_pretty(d).unwrap()
        );
    }
}

/// The ServiceMonitor: none by default; when enabled, deploy/monitoring/servicemonitor.yaml with
/// pinned differences, selecting the Service whose `metrics` port reaches /metrics.
#[test]
fn service_monitor_renders_only_when_enabled() {
    let plain = render("usher", "usher-system", &[]);
    assert!(find(&plain, "ServiceMonitor").is_empty());

    let objects = render(
        "usher",
        "usher-system",
        &["--set", "serviceMonitor.enabled=true"],
    );
    let monitors = find(&objects, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let sm = monitors[0];
    let ours = crate::support::documents(&repo().join("deploy/monitoring/servicemonitor.yaml"));
    let mut c = sm.clone();
    let d = &ours[0];
    pin_labels(&mut c, d, "/metadata/labels");
    pin(
        &mut c,
        d,
        "/spec/selector/matchLabels/app.kubernetes.io~1instance",
        Some(json!("usher")),
        "the Service of this release only",
    );
    pin(
        &mut c,
        d,
        "/spec/jobLabel",
        Some(json!("app.kubernetes.io/name")),
        "job=\"usher\" (what the alerts select) whatever the release's name; deploy/'s Service is named usher",
    );
    assert!(
        c == *d,
        "the ServiceMonitor differs from deploy/monitoring/ beyond the pinned differences:\nchart:\n{}\ndeploy/:\n{}",
        serde_json::to_string_pretty(&c).unwrap(),
        serde_json::to_string_pretty(d).unwrap()
    );

    // Another release, in another namespace, with the label Prometheus selects by.
    let other = render(
        "people",
        "ops",
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.labels.release=kube-prometheus-stack",
        ],
    );
    let sm2 = find(&other, "ServiceMonitor")[0];
    assert_eq!(
        sm2["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        sm2["spec"]["namespaceSelector"]["matchNames"],
        json!(["ops"])
    );
    assert_eq!(
        find(&other, "Service")[0]["metadata"]["labels"]["app.kubernetes.io/name"],
        "usher",
        "job=\"usher\" through jobLabel"
    );
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");

    // It selects the Service, whose `metrics` port leads to the container port of /metrics.
    let service = find(&objects, "Service")[0];
    for (label, value) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][label], value, "{label}");
    }
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    let deployment = find(&objects, "Deployment")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let target = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the metrics port's target is a container port");
    let env = &find(&objects, "ConfigMap")[0]["data"];
    assert_eq!(
        env["USHER_PROBE_LISTEN"],
        format!("0.0.0.0:{}", target["containerPort"])
    );
}

/// Values the schema refuses, each with helm's message naming the value.
#[test]
fn values_schema_refuses_bad_values() {
    let chart = chart();
    for (set, names) in [
        ("store.url=not-a-url", "'/store/url'"),
        ("store.url=mysql://db/usher", "'/store/url'"),
        ("mail.url=smtp.example.com", "'/mail/url'"),
        ("publicUrl=usher.example.com", "'/publicUrl'"),
        ("logFormat=yaml", "'/logFormat'"),
        ("mail.concurrency=0", "'/mail/concurrency'"),
        ("resync=10 minutes", "'/resync'"),
        ("listen=8080", "'/listen'"),
        ("trustedProxies={ingress}", "'/trustedProxies/0'"),
        ("stroe.url=sqlite:///data/usher.db", "'stroe'"),
    ] {
        let out = helm(&["template", "usher", &chart, "--set", set]);
        assert!(!out.ok, "{set} was accepted");
        assert!(
            out.stderr
                .contains("values don't meet the specifications of the schema")
                && out.stderr.contains(names),
            "{set}: {}",
            out.stderr
        );
        // helm install and helm lint check the same schema.
        let lint = helm(&["lint", &chart, "--set", set]);
        assert!(!lint.ok, "lint accepted {set}");
    }

    // What one value cannot tell, the templates refuse with what to change.
    for (sets, says) in [
        (
            &["replicaCount=2"][..],
            "replicaCount > 1 needs a PostgreSQL or SCIM store",
        ),
        (
            &["replicaCount=2", "leaderElection.enabled=false"][..],
            "replicaCount > 1 needs leaderElection.enabled=true",
        ),
        (
            &["store.url=scim+https://scim.example.com/v2"][..],
            "a SCIM store needs its bearer token",
        ),
    ] {
        let mut args = vec!["template", "usher", chart.as_str()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = helm(&args);
        assert!(
            !out.ok && out.stderr.contains(says),
            "{sets:?}: {}",
            out.both()
        );
    }
    // And accepts their fixed forms.
    let ok = render(
        "usher",
        "usher-system",
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "store.existingSecret=usher-store",
            "--set",
            "strategy.type=RollingUpdate",
        ],
    );
    assert_eq!(find(&ok, "Deployment")[0]["spec"]["replicas"], 2);
}

/// Every option at once renders objects the API server accepts (a server-side dry run) and
/// wires each value to its flag.
#[tokio::test]
async fn chart_options_render_objects_the_api_server_accepts() {
    let client = client().await;
    let ns = namespace(&client, "chart-options").await;
    let objects = render(
        "usher",
        &ns,
        &[
            "--set",
            "store.existingSecret=usher-store,store.existingSecretKey=dsn",
            "--set",
            "store.token.existingSecret=usher-scim",
            "--set",
            "mail.credentials.existingSecret=usher-relay",
            "--set",
            "mail.ca.existingSecret=usher-relay-ca",
            "--set",
            "publicUrl=https://people.acme.example",
            "--set",
            "probes.listen=0.0.0.0:8080",
            "--set",
            "trustedProxies={10.0.0.0/8,fd00::/8}",
            "--set",
            "watchNamespace=acme",
            "--set-string",
            "shardSelector=sharding.fluxcd.io/key=shard1",
            "--set",
            "leaderElection.leaseDuration=30s",
            "--set",
            "ingress.enabled=true,ingress.className=nginx,ingress.tlsSecretName=people-tls",
            "--set",
            "persistence.enabled=false",
            "--set",
            "replicaCount=2,strategy.type=RollingUpdate",
            "--set",
            "image.repository=registry.example.com/usher,image.tag=0.1.0",
            "--set",
            "extraEnv[0].name=RUST_LOG,extraEnv[0].value=debug",
        ],
    );
    let file = usher_testenv::scratch_dir("chart-options")
        .unwrap()
        .join("all.yaml");
    let text: String = objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap()))
        .collect();
    std::fs::write(&file, text).unwrap();
    let (ok, out) = kubectl(&[
        "apply",
        "--dry-run=server",
        "-n",
        &ns,
        "-f",
        &file.display().to_string(),
    ]);
    assert!(ok, "{out}");

    let data = &find(&objects, "ConfigMap")[0]["data"];
    assert!(
        data.get("USHER_STORE").is_none(),
        "the URL comes from the Secret"
    );
    assert_eq!(data["USHER_TRUSTED_PROXIES"], "10.0.0.0/8,fd00::/8");
    assert_eq!(data["USHER_PROBE_LISTEN"], "0.0.0.0:8080");
    assert_eq!(data["USHER_NAMESPACE"], "acme");
    assert_eq!(
        data["USHER_SHARD_SELECTOR"],
        "sharding.fluxcd.io/key=shard1"
    );
    assert_eq!(data["USHER_LEASE_DURATION"], "30s");
    assert_eq!(data["USHER_PUBLIC_URL"], "https://people.acme.example");
    assert_eq!(data["USHER_MAIL_CA_FILE"], "/etc/usher/mail-ca/ca.crt");

    let pod = &find(&objects, "Deployment")[0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example.com/usher:0.1.0");
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    for (name, secret, key) in [
        ("USHER_STORE", "usher-store", "dsn"),
        ("USHER_STORE_TOKEN", "usher-scim", "token"),
        ("USHER_MAIL_USERNAME", "usher-relay", "username"),
        ("USHER_MAIL_PASSWORD", "usher-relay", "password"),
    ] {
        assert_eq!(
            env[name]["valueFrom"]["secretKeyRef"],
            json!({"name": secret, "key": key}),
            "{name}"
        );
    }
    assert_eq!(env["RUST_LOG"]["value"], "debug");
    // Probes on the one shared port.
    assert_eq!(
        container["ports"],
        json!([{"name": "http", "containerPort": 8080}])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(pod["volumes"][0], json!({"name": "data", "emptyDir": {}}));
    assert_eq!(pod["volumes"][1]["secret"]["secretName"], "usher-relay-ca");
    assert!(find(&objects, "PersistentVolumeClaim").is_empty());

    let ingress = find(&objects, "Ingress")[0];
    assert_eq!(ingress["spec"]["rules"][0]["host"], "people.acme.example");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
        "http",
        "the ingress reaches the public port only"
    );

    // The finalizer policy reaches only the watched namespace: elsewhere no usher would release
    // an object it held.
    let binding = find(&objects, "MutatingAdmissionPolicyBinding")[0];
    assert_eq!(binding["spec"]["policyName"], "usher-finalizer");
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "acme"
    );
}

/// The finalizer policy is rendered by default where the API server serves it (the install test
/// below finds it in the real cluster), and not when it is turned off; usher adds its finalizer
/// itself then. (Where the API is not served, before Kubernetes 1.36, the template's
/// `.Capabilities.APIVersions.Has` leaves it out, so `helm install` does not fail on an unknown
/// kind.)
#[test]
fn chart_renders_the_finalizer_policy_only_where_it_is_served() {
    let kinds = |objects: Vec<Value>| -> Vec<String> {
        objects
            .iter()
            .filter_map(|o| o["kind"].as_str())
            .filter(|k| k.starts_with("MutatingAdmissionPolicy"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        kinds(render("usher", "usher-system", &[])),
        ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
    );
    assert!(
        kinds(render(
            "usher",
            "usher-system",
            &["--set", "finalizerPolicy.enabled=false"]
        ))
        .is_empty()
    );
}

/// `helm install` into the real control plane: the release is deployed and its objects exist;
/// its ServiceAccount passes deploy.rs's least-privilege check, and usher, running with that
/// account's token and the release's settings (leader election, the token key's name), invites,
/// accepts and offboards without one request refused; `helm uninstall` removes the release but
/// keeps the store's volume claim.
#[tokio::test]
async fn chart_installs_and_its_rbac_runs_the_whole_flow_and_nothing_more() {
    let client = client().await;
    let home = namespace(&client, "chart").await;
    let tenants = namespace(&client, "chart-tenant").await;
    let release = home.clone();
    let fullname = format!("{release}-usher");
    let kubeconfig = usher_testenv::shared().kubeconfig.display().to_string();
    let kc = ["--kubeconfig", kubeconfig.as_str(), "-n", home.as_str()];

    let chart = chart();
    let mut install = vec![
        "install",
        release.as_str(),
        chart.as_str(),
        "--timeout",
        "120s",
        "--set",
        "publicUrl=https://people.chart.example",
    ];
    install.extend(kc);
    let out = helm(&install);
    assert!(out.ok, "helm install:\n{}", out.both());
    assert!(out.stdout.contains("STATUS: deployed"), "{}", out.both());
    assert!(
        out.stdout
            .contains(&format!("installed as {fullname} in {home}")),
        "NOTES: {}",
        out.stdout
    );

    // Every object of the release is in the cluster.
    let mut get = vec!["get", "manifest", release.as_str()];
    get.extend(kc);
    let manifest = helm(&get);
    assert!(manifest.ok, "{}", manifest.both());
    let objects = docs(&manifest.stdout);
    let mut kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
            "PersistentVolumeClaim",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    for obj in &objects {
        let api_version = obj["apiVersion"].as_str().unwrap();
        let kind = obj["kind"].as_str().unwrap().to_lowercase();
        let resource = match api_version.split_once('/') {
            Some((group, _)) => format!("{kind}.{group}"),
            None => kind,
        };
        let name = obj["metadata"]["name"].as_str().unwrap();
        let (ok, out) = kubectl(&["get", &resource, name, "-n", &home, "-o", "name"]);
        assert!(ok, "{resource} {name}: {out}");
    }

    // The settings usher runs with, as the release installed them.
    let (ok, cm) = kubectl(&["get", "configmap", &fullname, "-n", &home, "-o", "json"]);
    assert!(ok, "{cm}");
    let cm: Value = serde_json::from_str(&cm).unwrap();
    let token_key = cm["data"]["USHER_TOKEN_KEY_SECRET"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token_key, format!("{fullname}-token-key"));
    let lease_duration = cm["data"]["USHER_LEASE_DURATION"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, dep) = kubectl(&["get", "deployment", &fullname, "-n", &home, "-o", "json"]);
    assert!(ok, "{dep}");
    let dep: Value = serde_json::from_str(&dep).unwrap();
    let args: Vec<String> = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args, ["run", "--leader-election"]);
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        fullname.as_str()
    );

    assert_least_privilege(&home, &fullname, &token_key, &tenants);

    // usher with the release's ServiceAccount token, its args and settings.
    let sa_kubeconfig = service_account_kubeconfig(&home, &fullname);
    let smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &tenants, RITA).await;
    let sa_kc = sa_kubeconfig.display().to_string();
    let extra: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let mut usher = Usher::start_with_env(
        &tenants,
        &smtp.url(),
        &extra,
        &[
            ("KUBECONFIG", &sa_kc),
            ("POD_NAMESPACE", &home),
            ("USHER_TOKEN_KEY_SECRET", &token_key),
            ("USHER_LEASE_DURATION", &lease_duration),
        ],
    )
    .await;
    rita_is_invited_accepted_and_offboarded(&client, &tenants, &usher, &smtp).await;
    let (ok, out) = kubectl(&["get", "secret", &token_key, "-n", &home, "-o", "name"]);
    assert!(ok, "usher created its token key Secret: {out}");
    let (ok, out) = kubectl(&[
        "get",
        "lease",
        &format!("usher-{tenants}"),
        "-n",
        &home,
        "-o",
        "name",
    ]);
    assert!(ok, "usher holds its Lease in the release namespace: {out}");
    usher.stop();

    let mut uninstall = vec!["uninstall", release.as_str(), "--timeout", "120s"];
    uninstall.extend(kc);
    let out = helm(&uninstall);
    assert!(out.ok, "helm uninstall:\n{}", out.both());
    eventually(Duration::from_secs(30), || async {
        let (found, _) = kubectl(&["get", "clusterrole", &fullname, "-o", "name"]);
        (!found).then_some(())
    })
    .await
    .expect("helm uninstall removes the ClusterRole");
    let (kept, out) = kubectl(&[
        "get",
        "pvc",
        &format!("{fullname}-data"),
        "-n",
        &home,
        "-o",
        "name",
    ]);
    assert!(
        kept,
        "the store's claim outlives the release (resource-policy keep): {out}"
    );
}
