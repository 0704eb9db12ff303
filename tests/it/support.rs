//! What every integration test needs: a client of the shared control plane, the CRDs installed
//! once, a fresh namespace, and manifest helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery, Scope};
use kube::{Client, Config};
use serde::Deserialize;
use tokio::sync::OnceCell;

pub const FIELD_MANAGER: &str = "usher-tests";

/// A client of this test binary's control plane, set up as deploy/ sets a cluster up: the CRDs
/// installed and Established, and usher's finalizer policy in effect
/// ([`install_finalizer_policy`]). Tests on a control plane of their own install only the CRDs,
/// so they run usher where the policy is not served and usher adds its finalizer itself.
pub async fn client() -> Client {
    let client = crds_client().await;
    static POLICY: OnceCell<()> = OnceCell::const_new();
    POLICY
        .get_or_init(|| install_finalizer_policy(client.clone()))
        .await;
    client
}

/// A client of this test binary's control plane with the CRDs installed and Established, and
/// nothing else of usher's (the bench's floors run here before usher is installed).
pub async fn crds_client() -> Client {
    let client = client_of(&usher_testenv::shared().kubeconfig).await;
    static CRDS: OnceCell<()> = OnceCell::const_new();
    CRDS.get_or_init(|| install_crds(client.clone())).await;
    client
}

/// Apply deploy/finalizer-policy.yaml (the MutatingAdmissionPolicy that adds usher's finalizer
/// at create) and wait until the API server applies it: a Tenant created in a dry run comes back
/// with the finalizer. A policy takes effect a moment after it is written, and a test that
/// counts usher's writes must not see some objects created before and some after.
pub async fn install_finalizer_policy(client: Client) {
    let yaml = std::fs::read_to_string(repo().join("deploy/finalizer-policy.yaml"))
        .expect("deploy/finalizer-policy.yaml");
    apply_yaml(&client, "", &yaml).await;
    let tenants: Api<usher::crd::Tenant> = Api::namespaced(client, "default");
    let probe: usher::crd::Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "usher.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "finalizer-policy-probe"},
        "spec": {"displayName": "Probe"},
    }))
    .expect("a Tenant");
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(Duration::from_secs(30), || {
        let (tenants, probe, dry_run) = (&tenants, &probe, &dry_run);
        async move {
            let made = tenants.create(dry_run, probe).await.ok()?;
            made.metadata
                .finalizers
                .is_some_and(|f| f.iter().any(|f| f == usher::controller::FINALIZER))
                .then_some(())
        }
    })
    .await
    .expect("the finalizer policy took effect within 30 s");
}

/// A client of the control plane a kubeconfig names (a test's own, say).
pub async fn client_of(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("readable kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("client")
}

/// Run kubectl against the control plane as admin; (success, stdout + stderr).
pub fn kubectl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(usher_testenv::kubectl())
        .arg("--kubeconfig")
        .arg(&usher_testenv::shared().kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Apply the CRDs generated from the types and wait until each is Established.
pub async fn install_crds(client: Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for crd in usher::crd::all() {
        let name = crd.metadata.name.clone().expect("CRDs are named");
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    }
    for crd in usher::crd::all() {
        let name = crd.metadata.name.clone().expect("CRDs are named");
        eventually(Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                established(&crd).then_some(())
            }
        })
        .await
        .unwrap_or_else(|| panic!("CRD {name} did not become Established"));
    }
}

/// Whether a CRD has the condition Established=True.
pub fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// A new namespace named after the test, with a random suffix.
pub async fn namespace(client: &Client, test: &str) -> String {
    let suffix: u32 = rand_suffix();
    let name = format!("{}-{suffix:08x}", test.replace('_', "-"))
        .chars()
        .take(63)
        .collect::<String>();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    );
    h.finish() as u32
}

/// Poll `f` every 100 ms until it returns Some, or give up after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The documents of a multi-document YAML file, skipping empty ones.
pub fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde_json::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        })
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

/// The YAML files of a folder, sorted by name.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Server-side apply one manifest into `namespace` (namespaced kinds) the way GitOps tools
/// do: strict field validation, so unknown fields are errors.
pub async fn apply(
    client: &Client,
    discovery: &Discovery,
    namespace: &str,
    doc: &serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let mut obj: DynamicObject = serde_json::from_value(doc.clone()).expect("a Kubernetes object");
    let gvk = GroupVersionKind::try_from(obj.types.as_ref().expect("apiVersion and kind"))
        .expect("valid apiVersion");
    let (ar, caps): (ApiResource, _) = discovery
        .resolve_gvk(&gvk)
        .unwrap_or_else(|| panic!("{gvk:?} is not served"));
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        obj.metadata.namespace = Some(namespace.to_string());
        Api::namespaced_with(client.clone(), namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let name = obj.metadata.name.clone().expect("named manifest");
    let pp = PatchParams::apply(FIELD_MANAGER).validation_strict();
    api.patch(&name, &pp, &Patch::Apply(&obj)).await
}

/// Discovery of every served group, including usher.dev.
pub async fn discovery(client: &Client) -> Discovery {
    Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery")
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Apply every document of a YAML string into `namespace`.
pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) {
    let discovery = discovery(client).await;
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let doc = serde_json::Value::deserialize(doc).expect("valid YAML");
        if doc.is_null() {
            continue;
        }
        apply(client, &discovery, namespace, &doc)
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e}", doc["metadata"]["name"]));
    }
}

/// Wait until `pred` holds for the object, or panic with its last state after 30 s.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, pred: impl Fn(&K) -> bool) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await {
            if pred(&obj) {
                return obj;
            }
            last = Some(obj);
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{name} never became {what}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `usher run` process scoped to a test's namespace, with its own SQLite file and port.
pub struct Usher {
    /// `http://127.0.0.1:<port>`: the acceptance page and the API (`--listen`).
    pub url: String,
    /// `http://127.0.0.1:<port>`: `/healthz`, `/readyz` and `/metrics` (`--probe-listen`).
    pub probe_url: String,
    /// The SQLite file.
    pub db: PathBuf,
    namespace: String,
    mail: String,
    /// Reserved for this usher across its restarts (`--listen`).
    port: usher_testenv::Port,
    /// The same, for `--probe-listen`.
    probe_port: usher_testenv::Port,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    process: Option<usher_testenv::Supervised>,
    wait_ready: bool,
}

impl Usher {
    /// Start usher for `namespace`, mailing through `mail`.
    pub async fn start(namespace: &str, mail: &str, extra: &[&str]) -> Self {
        Self::start_with_env(namespace, mail, extra, &[]).await
    }

    /// Start usher with extra environment variables. A `--store` in `extra` replaces the
    /// per-test SQLite file.
    pub async fn start_with_env(
        namespace: &str,
        mail: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(namespace, mail, extra, env, true).await
    }

    /// Start usher without waiting for it to be ready (its store may be down).
    pub async fn start_unready(
        namespace: &str,
        mail: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(namespace, mail, extra, env, false).await
    }

    async fn launch(
        namespace: &str,
        mail: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        wait_ready: bool,
    ) -> Self {
        let dir = usher_testenv::scratch_dir("usher").expect("scratch dir");
        let port = usher_testenv::Port::reserve().expect("a port for usher");
        let probe_port = usher_testenv::Port::reserve().expect("a probe port for usher");
        let mut usher = Self {
            url: format!("http://127.0.0.1:{}", port.get()),
            probe_url: format!("http://127.0.0.1:{}", probe_port.get()),
            probe_port,
            db: dir.join("usher.db"),
            namespace: namespace.to_string(),
            mail: mail.to_string(),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
            process: None,
            wait_ready,
        };
        usher.restart().await;
        usher
    }

    /// Replace the extra arguments of the next `restart` (the benchmark restarts with others).
    #[allow(dead_code)]
    pub fn set_args(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Start again (after `kill` or `stop`) with the same store, port and settings.
    pub async fn restart(&mut self) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_usher"));
        // A KUBECONFIG in the environment points at a control plane of the test's own.
        if !self.env.iter().any(|(k, _)| k == "KUBECONFIG") {
            cmd.env("KUBECONFIG", &usher_testenv::shared().kubeconfig);
        }
        cmd.env("RUST_LOG", "info,kube_runtime=warn").arg("run");
        // An empty namespace: every namespace.
        if !self.namespace.is_empty() {
            cmd.args(["--namespace", &self.namespace]);
        }
        if !self.extra.iter().any(|a| a == "--store") {
            cmd.args(["--store", &format!("sqlite://{}", self.db.display())]);
        }
        // The local stores (a SCIM store's, each SCIM tenant store's beside it) live in the
        // test's scratch dir, never in the working directory another run would find.
        if !self.extra.iter().any(|a| a == "--local-store") {
            let local = self.dir.join("usher-local.db");
            cmd.args(["--local-store", &format!("sqlite://{}", local.display())]);
        }
        cmd.args(["--mail", &self.mail])
            .args(["--listen", &format!("127.0.0.1:{}", self.port.get())])
            .args([
                "--probe-listen",
                &format!("127.0.0.1:{}", self.probe_port.get()),
            ])
            .args(["--public-url", &self.url])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let process =
            usher_testenv::Supervised::spawn("usher", &mut cmd, &self.dir).expect("usher starts");
        if !self.wait_ready {
            self.process = Some(process);
            return;
        }
        let url = format!("{}/readyz", self.probe_url);
        let ready = eventually(Duration::from_secs(30), || async {
            process.check_alive().ok()?;
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        if ready.is_none() {
            panic!("usher did not become ready:\n{}", self.log());
        }
        self.process = Some(process);
    }

    /// SIGKILL: a crash, nothing finishes.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM: a clean shutdown; its exit code (None when it had to be killed after 15 s).
    pub fn stop(&mut self) -> Option<i32> {
        self.process
            .take()
            .and_then(|p| p.terminate(Duration::from_secs(15)))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// Everything usher logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("usher.log")).unwrap_or_default()
    }

    /// Every sample of /metrics, parsed.
    pub async fn samples(&self) -> Vec<(String, f64)> {
        let text = reqwest::get(format!("{}/metrics", self.probe_url))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        parse_metrics(&text)
    }

    /// The value of a metric (summed over its labels), from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        self.samples()
            .await
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }

    /// POST a token to the redemption API; (status, JSON body).
    pub async fn redeem(&self, token: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/invitations/redeem", self.url))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .expect("redeem answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// The first mail the SMTP server received, waiting up to 30 s for it.
pub async fn first_mail(smtp: &usher_testenv::Smtp) -> Vec<u8> {
    eventually(Duration::from_secs(30), || async {
        smtp.messages().into_iter().next()
    })
    .await
    .expect("the invitation mail arrives within 30 s")
}

/// The acceptance link and the token of an invitation mail, read the way a person would: from
/// the text part.
pub fn invitation_in(raw: &[u8]) -> (String, String) {
    let msg = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parseable message");
    let text = msg.body_text(0).expect("a text part").into_owned();
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/accept?token="))
        .unwrap_or_else(|| panic!("no acceptance link in:\n{text}"))
        .to_string();
    let token = link.rsplit("token=").next().unwrap_or_default().to_string();
    (link, token)
}

/// The short code of an invitation mail, as a person reads it from the text part: the word of
/// two groups of five that parses as a code.
pub fn short_code_in(raw: &[u8]) -> String {
    let msg = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parseable message");
    let text = msg.body_text(0).expect("a text part").into_owned();
    text.split_whitespace()
        .find(|w| w.len() == 11 && usher::token::ShortCode::parse(w).is_some())
        .unwrap_or_else(|| panic!("no short code in:\n{text}"))
        .to_string()
}

/// The recipients (To) of a raw message.
pub fn recipient(raw: &[u8]) -> String {
    let msg = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("parseable");
    msg.to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_string()
}

/// Run one SQL statement on a usher SQLite file, as a person with the sqlite3 shell would
/// (behind usher's back); the rows come back as JSON values.
pub fn sql(db: &Path, statement: &str) -> Vec<Vec<serde_json::Value>> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=10)\nrows = c.execute(sys.argv[2]).fetchall()\nc.commit()\nprint(json.dumps(rows))",
        )
        .arg(db)
        .arg(statement)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON rows")
}

/// Prometheus text exposition: `name{labels} value` per sample, `#` lines for metadata.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {l}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in: {l}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad name in {l}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "bad labels in {l}"
                );
            }
            (series.to_string(), value)
        })
        .collect()
}

/// GET a path of a SCIM server's own API, as JSON: what landed there.
pub async fn scim_get(scim: &usher_testenv::Scim, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}{path}", scim.base()))
        .bearer_auth(&scim.token)
        .send()
        .await
        .expect("SCIM answers")
        .json()
        .await
        .expect("SCIM JSON")
}

/// The member ids of a SCIM server's Group with this externalId (none when it does not exist).
pub async fn scim_group_members(scim: &usher_testenv::Scim, external_id: &str) -> Vec<String> {
    let g = scim_get(
        scim,
        &format!("/Groups{}", scim_filter("externalId", external_id)),
    )
    .await;
    g["Resources"][0]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["value"].as_str().map(str::to_string))
        .collect()
}

/// `?filter=<attr> eq "<value>"`, URL-encoded.
pub fn scim_filter(attr: &str, value: &str) -> String {
    let f = format!("{attr} eq \"{value}\"");
    format!(
        "?filter={}",
        url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>()
    )
}

/// The Events of one object with this reason, their messages.
pub async fn events_of(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(15), || async {
        let list = events.list(&Default::default()).await.ok()?;
        let found: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note.clone())
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await
    .unwrap_or_default()
}

/// Run the `usher` binary with `args` against the shared control plane (its kubeconfig); its exit
/// code, stdout and stderr.
pub fn usher_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(args)
        .env("KUBECONFIG", &usher_testenv::shared().kubeconfig)
        .output()
        .expect("usher runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A kubeconfig for the ServiceAccount `account` of namespace `ns`, with a fresh token: usher
/// run with it has exactly the rights its RBAC grants.
pub fn service_account_kubeconfig(ns: &str, account: &str) -> PathBuf {
    let (ok, token) = kubectl(&["create", "token", account, "-n", ns, "--duration=1h"]);
    assert!(ok, "{token}");
    let shared = usher_testenv::shared();
    let admin: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&shared.kubeconfig).unwrap()).unwrap();
    let ca = admin["clusters"][0]["cluster"]["certificate-authority"]
        .as_str()
        .unwrap();
    let path = usher_testenv::scratch_dir("sa").unwrap().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority: \"{ca}\"}}\nusers:\n- name: usher\n  user: {{token: \"{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: usher}}\ncurrent-context: c\n",
            shared.server,
            token.trim()
        ),
    )
    .unwrap();
    path
}

fn can_i(verb: &str, what: &str, ns: &str, sa: &str) -> bool {
    let (_, answer) = kubectl(&["auth", "can-i", verb, what, "-n", ns, "--as", sa]);
    answer.trim().starts_with("yes")
}

/// The least-privilege check for usher's ServiceAccount `account` of namespace `home` (installed
/// by deploy/ or the chart): what it may and may not do in a tenant's namespace, the one Secret it
/// may read (its token key `token_key`, by name, in its own namespace; a Tenant's store
/// credential, by the name `usher-store`, in the tenant's namespace) and where its Lease may be.
pub fn assert_least_privilege(home: &str, account: &str, token_key: &str, tenant_ns: &str) {
    let sa = format!("system:serviceaccount:{home}:{account}");
    for (verb, resource, allowed) in [
        ("get", "secrets", false),
        ("list", "secrets", false),
        ("watch", "secrets", false),
        ("create", "deployments.apps", false),
        ("delete", "namespaces", false),
        ("update", "configmaps", false),
        ("create", "rolebindings.rbac.authorization.k8s.io", false),
        ("patch", "systemusers.usher.dev", true),
        ("patch", "systemusers.usher.dev/status", true),
        ("create", "secrets", true),
        ("create", "events.events.k8s.io", true),
    ] {
        assert_eq!(
            can_i(verb, resource, tenant_ns, &sa),
            allowed,
            "can-i {verb} {resource} -n {tenant_ns} as {sa}"
        );
    }
    let key = format!("secrets/{token_key}");
    let mut secrets = vec![
        (key.as_str(), home, true),
        ("secrets/other", home, false),
        (key.as_str(), tenant_ns, false),
        ("secrets/usher-store", tenant_ns, true),
        ("secrets/usher-store-old", tenant_ns, false),
    ];
    if token_key != "usher-token-key" {
        secrets.push(("secrets/usher-token-key", home, false));
    }
    for (what, ns, allowed) in secrets {
        assert_eq!(
            can_i("get", what, ns, &sa),
            allowed,
            "can-i get {what} -n {ns} as {sa}"
        );
    }
    for (ns, allowed) in [(home, true), (tenant_ns, false)] {
        assert_eq!(
            can_i("patch", "leases.coordination.k8s.io", ns, &sa),
            allowed,
            "can-i patch leases -n {ns} as {sa}"
        );
    }
}

/// Rita's tenant, for an install's rights check: a Tenant exposing tokens, a LocationGroup, Rita
/// and her Technician binding on the group.
pub const RITA: &str = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme\n  invitations: {exposeToken: true}\n---\napiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {name: main}\nspec: {tenantRef: {name: acme}, displayName: Main}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: rita}\nspec: {tenantRef: {name: acme}, email: rita@acme.example}\n---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: rita-tech}\nspec: {userRef: {name: rita}, role: Technician, scope: {locationGroup: main}}\n";

/// The whole flow an install must carry with its own rights, after [`RITA`] was applied and
/// `usher` started in `ns`: Rita turns Pending with her role and her invitation Secret, redeems
/// and turns Active, the Secret goes, her deletion offboards her, and usher's log shows no
/// refused (forbidden) request.
pub async fn rita_is_invited_accepted_and_offboarded(
    client: &Client,
    ns: &str,
    usher: &Usher,
    smtp: &usher_testenv::Smtp,
) {
    use usher::crd::{SystemUser, UserPhase};
    let users: Api<SystemUser> = Api::namespaced(client.clone(), ns);
    wait_for(&users, "rita", "Pending with a role", |u| {
        u.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(UserPhase::Pending) && s.roles == ["Technician@main"])
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    assert!(
        secrets.get_opt("rita-invitation").await.unwrap().is_some(),
        "the invitation Secret was written"
    );
    let raw = first_mail(smtp).await;
    assert_eq!(usher.redeem(&invitation_in(&raw).1).await.0, 200);
    wait_for(&users, "rita", "Active", |u| {
        u.status.as_ref().and_then(|s| s.phase) == Some(UserPhase::Active)
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        secrets
            .get_opt("rita-invitation")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("the invitation Secret is deleted once redeemed");
    users
        .delete("rita", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        users.get_opt("rita").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("offboarded with usher's own rights");
    assert!(
        !usher.log().to_lowercase().contains("forbidden"),
        "a request was refused:\n{}",
        usher.log()
    );
}
