//! The HTTP side of `usher run`: the acceptance page, the redemption API, health and metrics.
//! It knows the store and a channel on which it reports redemptions; nothing of controllers.

mod accept;
mod limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::channel::mpsc::UnboundedSender;

use crate::metrics::Metrics;
use crate::plan::records::Redeemed;
use crate::store::UserStore;

pub use limit::Limiter;

/// What the handlers share.
pub struct AppState {
    /// The user store, where redemption happens.
    pub store: Arc<dyn UserStore>,
    /// Told of every redemption, so the person's status turns Active at once.
    pub redeemed: UnboundedSender<Redeemed>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Redemption tries per client address.
    pub per_client: Limiter,
    /// Redemption tries per token.
    pub per_token: Limiter,
}

impl AppState {
    /// State with the default limits: 10 tries per client and 5 per token, one more every 6 s.
    pub fn new(
        store: Arc<dyn UserStore>,
        redeemed: UnboundedSender<Redeemed>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            redeemed,
            metrics,
            per_client: Limiter::new(10, Duration::from_secs(6)),
            per_token: Limiter::new(5, Duration::from_secs(6)),
        }
    }
}

/// The routes of API.md.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/accept", get(accept::show).post(accept::form))
        .route("/api/v1/invitations/redeem", post(accept::api))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // A token is 43 characters; nothing legitimate comes near this.
        .layer(DefaultBodyLimit::max(8 * 1024))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("user store: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The page must not leak its URL (which holds the token) through Referer, run foreign code,
/// be framed, or be cached.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::CACHE_CONTROL, "no-store");
    response
}
