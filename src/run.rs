//! `usher run`: wires the store, the mailer, the controllers and the HTTP server together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;

use crate::cli::CliError;
use crate::controller::{self, Settings};
use crate::crd::SystemUser;
use crate::metrics::Metrics;
use crate::server::{self, AppState};

/// Everything `usher run` is configured with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Store URL.
    pub store: String,
    /// Mail URL.
    pub mail: String,
    /// Default From.
    pub mail_from: String,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Base of links in mails.
    pub public_url: String,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Resync period.
    pub resync: Duration,
}

/// Run until SIGINT or SIGTERM.
pub async fn run(opts: Options) -> Result<(), CliError> {
    let mailer = crate::mail::open(&opts.mail)?;
    let store = crate::store::open(&opts.store).await?;
    let client = kube::Client::try_default().await.map_err(|e| {
        CliError::Kube(format!(
            "cannot reach Kubernetes (KUBECONFIG, ~/.kube/config or in-cluster): {e}"
        ))
    })?;
    let probe: Api<SystemUser> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = probe.list(&ListParams::default().limit(1)).await {
        return Err(CliError::Kube(format!(
            "cannot list SystemUsers ({e}); are the CRDs installed? `usher crds | kubectl apply -f -`"
        )));
    }

    let metrics = Arc::new(Metrics::default());
    let (redeemed_tx, redeemed_rx) = futures::channel::mpsc::unbounded();
    let state = Arc::new(AppState::new(store.clone(), redeemed_tx, metrics.clone()));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| CliError::Io(format!("cannot listen on {}: {e}", opts.listen)))?;
    tracing::info!(listen = %opts.listen, store = %redact(&opts.store), mail = %redact(&opts.mail), "usher running");

    let wake = redeemed_rx.filter_map(|r| async move {
        let (ns, name) = r.external_id.split_once('/')?;
        Some(ObjectRef::<SystemUser>::new(name).within(ns))
    });

    let settings = Settings {
        mail_from: opts.mail_from.clone(),
        public_url: opts.public_url.clone(),
        resync: opts.resync,
    };
    let controllers = controller::run(
        client,
        store,
        mailer,
        settings,
        metrics,
        opts.namespace.as_deref(),
        wake,
    );
    let http = server::serve(listener, state, shutdown_signal());
    let (_, http) = tokio::join!(controllers, http);
    http.map_err(|e| CliError::Io(format!("HTTP server: {e}")))?;
    tracing::info!("usher stopped");
    Ok(())
}

/// Credentials never reach the logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

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
