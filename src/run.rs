//! `usher run`: wires the store, the mailer, the controllers and the HTTP server together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;

use crate::controller::{self, Settings, scoped_api};
use crate::crd::SystemUser;
use crate::metrics::Metrics;
use crate::plan::records::ObjectKey;
use crate::server::{self, AppState};
use crate::store::{StoreConfig, StoreHandle, Stores};

/// What `usher run` can fail at, each with a message a person understands.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The user store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The mail transport is misconfigured.
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
    /// The Kubernetes API cannot be reached or lacks the CRDs.
    #[error("{0}")]
    Kube(String),
    /// The HTTP listener or the runtime failed.
    #[error("{0}")]
    Io(String),
}

/// Everything `usher run` is configured with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Store URL.
    pub store: String,
    /// The local store of a SCIM store.
    pub local_store: String,
    /// Mail URL.
    pub mail: String,
    /// Default From.
    pub mail_from: String,
    /// Mails in flight at once.
    pub mail_concurrency: usize,
    /// Where the acceptance page and the API are served.
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; the same as `listen` serves all
    /// on one listener.
    pub probe_listen: SocketAddr,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: crate::server::TrustedProxies,
    /// Watch only the objects this label selector matches: one shard of several instances.
    pub shard_selector: Option<String>,
    /// Base of links in mails.
    pub public_url: String,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Resync period.
    pub resync: Duration,
    /// Reconcile only while holding a Lease.
    pub leader_election: Option<Election>,
    /// The Secret (namespace, name) holding the key invitation tokens are derived from; no
    /// namespace: the client's default one.
    pub token_key_secret: (Option<String>, String),
}

/// Where and how long the leader Lease is held.
#[derive(Clone, Debug)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// How long it holds without renewal.
    pub duration: Duration,
}

/// Run until SIGINT or SIGTERM.
pub async fn run(opts: Options) -> Result<(), RunError> {
    let mailer = crate::mail::open(&opts.mail)?;
    let metrics = Arc::new(Metrics::default());
    // A malformed URL stops here, with one line; a store that is down is retried meanwhile.
    // The token is read from the environment only: a flag would show in `ps`.
    let token = std::env::var("USHER_STORE_TOKEN").ok();
    let config = StoreConfig::parse_with(&opts.store, token.as_deref(), &opts.local_store)?;
    let store = StoreHandle::connect(config, metrics.clone());
    let stores = Arc::new(Stores::new(
        store.clone(),
        &opts.store,
        &opts.local_store,
        metrics.clone(),
    ));
    let client = kube_client(&metrics).await?;
    let (redeemed_tx, redeemed_rx) = futures::channel::mpsc::unbounded();
    let mut state = AppState::new(stores.clone(), redeemed_tx, metrics.clone());
    state.trusted_proxies = opts.trusted_proxies.clone();
    let state = Arc::new(state);
    let code_key = state.token_key.clone();
    let bind = |address: SocketAddr| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| RunError::Io(format!("cannot listen on {address}: {e}")))
    };
    let listener = bind(opts.listen).await?;
    // Probes and metrics on their own listener, unless they share the public one.
    let probes = if opts.probe_listen == opts.listen {
        None
    } else {
        Some(bind(opts.probe_listen).await?)
    };
    tracing::info!(listen = %opts.listen, probe_listen = %opts.probe_listen, store = %crate::store::redact(&opts.store), mail = %crate::store::redact(&opts.mail), "usher running");

    // Each redemption wakes its person: through this process's controllers while they run;
    // otherwise (a standby waiting for the Lease, or before the caches are filled) on the object
    // itself, so that the leader turns the person Active at once rather than at its resync.
    let (wake_tx, wake) = futures::channel::mpsc::unbounded::<ObjectRef<SystemUser>>();
    let router = {
        let client = client.clone();
        let metrics = metrics.clone();
        redeemed_rx.for_each(move |r| {
            let (client, metrics, wake_tx) = (client.clone(), metrics.clone(), wake_tx.clone());
            async move {
                let Some(key) = ObjectKey::parse(&r.external_id) else {
                    return;
                };
                let person = ObjectRef::<SystemUser>::new(&key.name).within(&key.namespace);
                if !metrics.runs_controllers() || wake_tx.unbounded_send(person.clone()).is_err() {
                    controller::announce_redemption(&client, &person).await;
                }
            }
        })
    };
    tokio::spawn(router);

    let http = async {
        match probes {
            None => server::serve(listener, server::router(state), shutdown_signal()).await,
            Some(probes) => {
                let public = server::serve(
                    listener,
                    server::public_router(state.clone()),
                    shutdown_signal(),
                );
                let probes = server::serve(probes, server::probe_router(state), shutdown_signal());
                let (public, probes) = tokio::join!(public, probes);
                public.and(probes)
            }
        }
    };
    let work = async {
        tokio::select! {
            _ = store.connected() => {}
            _ = shutdown_signal() => return Ok(()),
        }
        if !crds_ready(
            &client,
            opts.namespace.as_deref(),
            opts.shard_selector.as_deref(),
        )
        .await?
        {
            return Ok(()); // shut down while waiting
        }
        let (key_namespace, key_name) = &opts.token_key_secret;
        let key_namespace = key_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let token_key = crate::token_key::load(&client, &key_namespace, key_name)
            .await
            .map_err(|e| RunError::Kube(e.to_string()))?;
        // Short codes are derived from the key too: the page answers them from now on.
        let _ = code_key.set(token_key.clone());
        let settings = Settings {
            mail_from: opts.mail_from.clone(),
            public_url: opts.public_url.clone(),
            resync: opts.resync,
            mail_concurrency: opts.mail_concurrency,
            token_key,
            shard_selector: opts.shard_selector.clone(),
        };
        let controllers = controller::run(
            client.clone(),
            stores,
            mailer,
            settings,
            metrics,
            opts.namespace.as_deref(),
            wake,
        );
        match &opts.leader_election {
            None => {
                controllers.await;
                Ok(())
            }
            Some(election) => lead(client, &opts, election, controllers).await,
        }
    };
    // When the work fails (the token key unreadable, RBAC refusing the kinds, the Lease lost),
    // the process exits with its error rather than serve on with nobody reconciling: dropping
    // the HTTP side stops it, and the pod's restart is what recovers.
    let http = async {
        http.await
            .map_err(|e| RunError::Io(format!("HTTP server: {e}")))
    };
    let mut http = std::pin::pin!(http);
    let mut work = std::pin::pin!(work);
    tokio::select! {
        done = &mut work => {
            done?;
            // A shutdown: the HTTP side finishes its requests in flight too.
            http.await?;
        }
        served = &mut http => {
            served?;
            // The HTTP side stops only on a shutdown, which stops the work as well: let it
            // finish its reconciles in flight and release the Lease.
            work.await?;
        }
    }
    tracing::info!("usher stopped");
    Ok(())
}

/// A client whose every request is counted in `usher_kube_requests_total`: an outage must show
/// whether usher backs off or hammers the API server.
async fn kube_client(metrics: &Arc<Metrics>) -> Result<kube::Client, RunError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        RunError::Kube(format!(
            "cannot reach Kubernetes (KUBECONFIG, ~/.kube/config or in-cluster): {e}"
        ))
    };
    let config = kube::Config::infer().await.map_err(|e| unreachable(&e))?;
    let metrics = metrics.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics
            .kube_requests
            .get_or_create(&crate::metrics::MethodLabels {
                method: method_label(req.method()),
            })
            .inc();
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(|e| unreachable(&e))?
        .with_layer(&count)
        .build())
}

/// A fixed label per method, so that counting a request allocates nothing.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Wait until the four kinds are served (their CRDs installed and Established); false when a
/// shutdown came first. Refusals other than "not found" (RBAC, say) are errors.
async fn crds_ready(
    client: &kube::Client,
    namespace: Option<&str>,
    shard: Option<&str>,
) -> Result<bool, RunError> {
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut waited = Duration::ZERO;
    loop {
        match served(client, namespace, shard).await {
            Ok(()) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 400 && shard.is_some() => {
                return Err(RunError::Kube(format!(
                    "--shard-selector {:?} is not a label selector the API server takes: {}",
                    shard.unwrap_or_default(),
                    e.message
                )));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if waited.as_secs().is_multiple_of(30) {
                    tracing::warn!(
                        "waiting for the usher.dev CRDs to be installed and Established (`usher crds | kubectl apply -f -`)"
                    );
                }
            }
            Err(e) => {
                return Err(RunError::Kube(format!(
                    "cannot list usher.dev objects: {e}; check the CRDs and usher's RBAC"
                )));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => waited += Duration::from_secs(2),
            _ = &mut shutdown => return Ok(false),
        }
    }
}

async fn served(
    client: &kube::Client,
    namespace: Option<&str>,
    shard: Option<&str>,
) -> Result<(), kube::Error> {
    use crate::crd::{LocationGroup, RoleBinding, Tenant};
    let mut one = ListParams::default().limit(1);
    if let Some(selector) = shard {
        one = one.labels(selector);
    }
    scoped_api::<Tenant>(client, namespace)
        .list_metadata(&one)
        .await?;
    scoped_api::<LocationGroup>(client, namespace)
        .list_metadata(&one)
        .await?;
    scoped_api::<SystemUser>(client, namespace)
        .list_metadata(&one)
        .await?;
    scoped_api::<RoleBinding>(client, namespace)
        .list_metadata(&one)
        .await?;
    Ok(())
}

/// The leader Lease of the instances watching `namespace` (None: all) and `shard` (a label
/// selector; None: every object): `usher`, `usher-<namespace>`, and `-shard-<hash>` after it for
/// a shard, so that each shard's replicas elect their own leader. The hash is the first 10 hex
/// digits of the selector's SHA-256: the same for every replica and version of usher.
pub fn lease_name(namespace: Option<&str>, shard: Option<&str>) -> String {
    use sha2::Digest;
    let mut name = match namespace {
        Some(ns) => format!("usher-{ns}"),
        None => "usher".to_string(),
    };
    if let Some(selector) = shard {
        let digest = hex::encode(sha2::Sha256::digest(selector.trim().as_bytes()));
        name.push_str("-shard-");
        name.push_str(&digest[..10]);
    }
    name
}

/// Run the controllers only while this process holds the Lease. Losing it ends the process
/// (its replacement starts clean); a shutdown releases it, so a standby takes over at once.
async fn lead(
    client: kube::Client,
    opts: &Options,
    election: &Election,
    controllers: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let name = lease_name(opts.namespace.as_deref(), opts.shard_selector.as_deref());
    let identity = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "usher".into()),
        std::process::id()
    );
    let secs = election.duration.as_secs().max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &name)
        .with_namespace(&election.namespace)
        .with_identity(&identity)
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .build()
        .await
        .map_err(|e| {
            RunError::Kube(format!(
                "leader election Lease {}/{name}: {e}",
                election.namespace
            ))
        })?;
    let (mut leader, task) = manager.watch().await;
    tracing::info!(lease = %name, %identity, "waiting to lead");
    let mut shutdown = std::pin::pin!(shutdown_signal());
    while !*leader.borrow_and_update() {
        tokio::select! {
            changed = leader.changed() => if changed.is_err() {
                return Err(RunError::Kube("the leader election stopped".into()));
            },
            _ = &mut shutdown => return Ok(()),
        }
    }
    tracing::info!(lease = %name, "leading");
    let lost = async {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                return;
            }
        }
    };
    let result = tokio::select! {
        _ = controllers => Ok(()),
        _ = lost => Err(RunError::Kube("lost the leader Lease; exiting so that a fresh start takes over".into())),
    };
    // Closing the channel makes the manager release the Lease.
    drop(leader);
    if let Ok(Err(e)) = task.await {
        tracing::warn!(error = %e, "releasing the Lease failed; it expires by itself");
    }
    result
}

/// Credentials never reach the logs.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
