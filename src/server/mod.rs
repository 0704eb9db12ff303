//! The HTTP side of `usher run`: the acceptance page, the redemption API, health and metrics.
//! It knows the store and a channel on which it reports redemptions; nothing of controllers.
//!
//! Over 500 lines because two thirds of it are its tests (routes, limits, headers, the redemption
//! races), kept beside the router they exercise.

mod accept;
mod client;
mod limit;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::channel::mpsc::UnboundedSender;

use crate::metrics::Metrics;
use crate::plan::records::Redeemed;
use crate::store::Stores;
use crate::token::TokenKey;

pub use client::{BadProxy, TrustedProxies};
pub use limit::{Full, Limiter};

/// Short-code tries an address gets at once. SECURITY.md turns these two numbers into the odds
/// of guessing a code.
pub const CODE_TRIES: u32 = 5;
/// One more short-code try per address after this long (10 minutes).
pub const CODE_REFILL: Duration = Duration::from_secs(600);

/// What the handlers share.
pub struct AppState {
    /// The user stores, where redemption happens: the operator's and each Tenant's own.
    pub stores: Arc<Stores>,
    /// Told of every redemption, so the person's status turns Active at once.
    pub redeemed: UnboundedSender<Redeemed>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Redemption tries per client address.
    pub per_client: Limiter,
    /// Whose `X-Forwarded-For` tells the client's address (`--trusted-proxies`); none by
    /// default.
    pub trusted_proxies: TrustedProxies,
    /// Redemption tries per token.
    pub per_token: Limiter,
    /// Short-code tries per invited address (lowercased), whoever makes them.
    pub per_address: Limiter,
    /// The key short codes are derived from; empty until `usher run` has read it from its
    /// Secret, and short codes are answered 503 until then.
    pub token_key: Arc<OnceLock<TokenKey>>,
}

impl AppState {
    /// State with the default limits: 10 tries per client and 5 per token, one more every 6 s;
    /// [`CODE_TRIES`] short-code tries per address, one more every [`CODE_REFILL`]. The token key
    /// is set later, through [`AppState::token_key`].
    pub fn new(
        stores: Arc<Stores>,
        redeemed: UnboundedSender<Redeemed>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            stores,
            redeemed,
            metrics,
            per_client: Limiter::new(10, Duration::from_secs(6), Full::Admit),
            trusted_proxies: TrustedProxies::default(),
            per_token: Limiter::new(5, Duration::from_secs(6), Full::Refuse),
            per_address: Limiter::new(CODE_TRIES, CODE_REFILL, Full::Refuse),
            token_key: Arc::default(),
        }
    }
}

/// The routes of API.md, public and probes together, as one listener serves them when
/// `--probe-listen` is `--listen`.
pub fn router(state: Arc<AppState>) -> Router {
    finish(public_routes().merge(probe_routes()), state)
}

/// What people and products reach: the acceptance page and the redemption API.
pub fn public_router(state: Arc<AppState>) -> Router {
    finish(public_routes(), state)
}

/// What the cluster reaches: `/healthz`, `/readyz` and `/metrics`, for `--probe-listen`. Kept
/// off the public address because `/readyz` says why a store is down and `/metrics` counts what
/// usher does.
pub fn probe_router(state: Arc<AppState>) -> Router {
    finish(probe_routes(), state)
}

fn public_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/accept", get(accept::show).post(accept::form))
        .route("/api/v1/invitations/redeem", post(accept::api))
}

fn probe_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The fallbacks, limits and headers every listener has.
fn finish(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        // Refusals say what is wrong, these too (axum's own have empty bodies).
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "no such page; invitations are accepted at /accept\n",
            )
        })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed here\n",
            )
        })
        // A token is 43 characters; nothing legitimate comes near this.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(drain_oversized))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// The largest body a request may carry.
const BODY_LIMIT: usize = 8 * 1024;

/// A body declared larger than the limit, up to this, is read and dropped before the refusal.
const DRAIN_LIMIT: u64 = 2 * 1024 * 1024;

/// Answering 413 while the client is still sending makes the server close a socket with unread
/// data, which resets the connection, and the client sees a reset instead of the answer. So an
/// oversized body of a plausible size is read to its end first (with a deadline, so that a
/// stalled sender holds nothing), and the route then refuses it in its own words.
async fn drain_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > BODY_LIMIT as u64 && n <= DRAIN_LIMIT => {
            let (parts, body) = request.into_parts();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                axum::body::to_bytes(body, DRAIN_LIMIT as usize),
            )
            .await;
            let over = axum::body::Body::from(vec![0u8; BODY_LIMIT + 1]);
            next.run(axum::extract::Request::from_parts(parts, over))
                .await
        }
        _ => next.run(request).await,
    }
}

/// Serve `app` on `listener` until `shutdown` resolves. Errors: the listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// One line per store, as kube-apiserver's `/readyz?verbose` words its checks: `[+]store ok`,
/// `[-]store scim+https://… failed: why (Tenant acme/acme)`. Not ready (503) only when the
/// operator's store fails: a tenant's own store blocks that tenant alone (its Tenant says so),
/// not the page every other tenant's people redeem on.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let states = state.stores.states().await;
    let mut body = String::new();
    for s in &states {
        let tenants = match s.tenants.as_slice() {
            [] => String::new(),
            [one] => format!(" (Tenant {one})"),
            many => format!(" (Tenants {})", many.join(", ")),
        };
        match &s.failure {
            None => body.push_str(&format!("[+]{} ok{tenants}\n", s.name)),
            Some(why) => body.push_str(&format!("[-]{} failed: {why}{tenants}\n", s.name)),
        }
    }
    let ready = states.first().is_some_and(|s| s.failure.is_none());
    if ready {
        body.push_str("readyz check passed\n");
        (StatusCode::OK, body).into_response()
    } else {
        body.push_str("readyz check failed\n");
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
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

#[cfg(test)]
mod tests {
    //! Hostile requests against the real router over a real SQLite store: whatever the method,
    //! path, query, content type or body, the answer is never a 5xx and never a panic, and a 4xx
    //! says what is wrong in words.

    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::PathBuf;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Method, Request};
    use futures::channel::mpsc::UnboundedReceiver;
    use http_body_util::BodyExt;
    use jiff::Timestamp;
    use proptest::prelude::*;
    use proptest::test_runner::Config;
    use tower::ServiceExt;

    use super::*;
    use crate::plan::records::{InvitationRecord, Profile, TenantRecord, UserFields};
    use crate::token::Token;

    /// The router over a fresh store holding one open invitation.
    struct Harness {
        rt: tokio::runtime::Runtime,
        app: Router,
        token: String,
        /// Alice's short code, as her mail shows it.
        code: String,
        state: Arc<AppState>,
        _redeemed: UnboundedReceiver<Redeemed>,
        _dir: PathBuf,
    }

    fn harness() -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = usher_testenv::scratch_dir("server-hostile").unwrap();
        let url = format!("sqlite://{}", dir.join("usher.db").display());
        let token = Token::generate().unwrap();
        let store = rt.block_on(async {
            let store = crate::store::open(&url).await.unwrap();
            let tenant = TenantRecord {
                key: "acme/acme".into(),
                display_name: "Acme".into(),
            };
            store.put_tenant(&tenant).await.unwrap();
            let user = store
                .create_user(&UserFields {
                    tenant: tenant.key.clone(),
                    external_id: "acme/alice".into(),
                    email: "alice@acme.example".into(),
                    profile: Profile::default(),
                })
                .await
                .unwrap();
            let now = Timestamp::now();
            store
                .record_invitation(&InvitationRecord {
                    token_hash: token.hash(),
                    user_id: user.id,
                    attempt: 1,
                    trigger: None,
                    created_at: now,
                    expires_at: now + jiff::SignedDuration::from_hours(1),
                    sent_at: Some(now),
                    used_at: None,
                    revoked_at: None,
                })
                .await
                .unwrap();
            store
        });
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let state = Arc::new(AppState::new(
            Arc::new(Stores::single(store)),
            tx,
            Arc::new(Metrics::default()),
        ));
        let key = TokenKey::generate().unwrap();
        let code = key.short_code(&token.hash()).expose();
        state.token_key.set(key).unwrap();
        Harness {
            rt,
            app: router(state.clone()),
            token: token.expose().to_string(),
            code,
            state,
            _redeemed: rx,
            _dir: dir,
        }
    }

    /// A request as a client could send it, down to the bytes.
    #[derive(Clone, Debug)]
    struct Hostile {
        method: Method,
        path: &'static str,
        query: Option<String>,
        content_type: Option<Vec<u8>>,
        body: Vec<u8>,
        /// Sent without a length, in chunks, as a streaming client would.
        chunked: bool,
        site: Option<&'static str>,
        /// The client's address; some share one, and so its rate limit.
        client: u8,
    }

    /// Token texts: the real one, well-shaped strangers, and everything else.
    fn token_text(real: String) -> impl Strategy<Value = String> {
        prop_oneof![
            Just(real),
            "[A-Za-z0-9_-]{43}",
            Just(String::new()),
            Just("   ".to_string()),
            Just("a".repeat(10_000)),
            "[A-Za-z0-9_-]{0,200}",
            ".{0,60}",
            Just("tok\0en\r\nSet-Cookie: x=1".to_string()),
            Just("<script>alert(1)</script>".to_string()),
            Just("../../etc/passwd".to_string()),
            Just("' OR '1'='1".to_string()),
        ]
    }

    /// (address, short code) pairs: Alice's own, hers with the other's, strangers, and junk.
    fn code_pair(real: String) -> impl Strategy<Value = (String, String)> {
        let address = prop_oneof![
            Just("alice@acme.example".to_string()),
            Just("ALICE@Acme.Example".to_string()),
            Just("bob@acme.example".to_string()),
            Just(String::new()),
            Just(format!("{}@acme.example", "a".repeat(300))),
            ".{0,40}",
        ];
        let code = prop_oneof![
            Just(real.clone()),
            Just(real.to_lowercase().replace('-', " ")),
            "[0-9A-Z]{5}-[0-9A-Z]{5}",
            "[0-9A-Za-z -]{0,40}",
            ".{0,20}",
        ];
        (address, code)
    }

    fn percent(text: &str) -> String {
        url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
    }

    fn body(real: String) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            token_text(real.clone())
                .prop_map(|t| serde_json::json!({ "token": t }).to_string().into_bytes()),
            token_text(real.clone()).prop_map(|t| format!("token={}", percent(&t)).into_bytes()),
            token_text(real).prop_map(|t| {
                serde_json::json!({"token": t, "extra": [1, {"x": null}]})
                    .to_string()
                    .into_bytes()
            }),
            prop::sample::select(vec![
                b"{}".to_vec(),
                b"[]".to_vec(),
                b"null".to_vec(),
                b"{\"token\": 42}".to_vec(),
                b"{\"token\": null}".to_vec(),
                b"{\"token\": [\"a\"]}".to_vec(),
                b"{\"token\": {\"token\": \"a\"}}".to_vec(),
                b"{\"token\": \"a\", \"token\": \"b\"}".to_vec(),
                b"{\"token\": \"\xff\xfe\"}".to_vec(),
                b"{\"token\": \"\\ud800\"}".to_vec(),
                b"{\"token\": \"a\"".to_vec(),
                b"token=%zz".to_vec(),
                b"token=%ff%fe".to_vec(),
                b"token=a&token=b".to_vec(),
                b"tok=1".to_vec(),
                b"=&&=".to_vec(),
                format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
                format!("{{\"token\": \"{}\"}}", "a".repeat(9_000)).into_bytes(),
                vec![b'a'; 8 * 1024 + 1],
                vec![0; 20_000],
            ]),
        ]
    }

    fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
        let named = |c: &'static str| Just(Some(c.as_bytes().to_vec()));
        prop_oneof![
            2 => Just(None),
            4 => named("application/json"),
            4 => named("application/x-www-form-urlencoded"),
            3 => prop::sample::select(vec![
                "application/json; charset=utf-8",
                "application/json; charset=latin1",
                "text/plain",
                "text/html",
                "multipart/form-data; boundary=x",
                "application/problem+json",
                "application/jsonx",
                "*/*",
                ";;;",
                "",
            ])
            .prop_map(|c| Some(c.as_bytes().to_vec())),
            // Any bytes a header value may hold (no CR, LF or NUL).
            1 => prop::collection::vec(prop_oneof![32u8..127, 128u8..=255], 0..40).prop_map(Some),
        ]
    }

    fn request(real: String) -> impl Strategy<Value = Hostile> {
        // Weighted toward the routes that read what clients send.
        let method = prop_oneof![
            8 => Just(Method::POST),
            3 => Just(Method::GET),
            1 => prop::sample::select(vec![
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
                Method::OPTIONS,
                Method::HEAD,
                Method::from_bytes(b"BREW").unwrap(),
            ]),
        ];
        let path = prop_oneof![
            5 => Just("/api/v1/invitations/redeem"),
            5 => Just("/accept"),
            1 => prop::sample::select(vec![
                "/healthz",
                "/readyz",
                "/metrics",
                "/",
                "/accept/",
                "/api/v1/invitations/redeem/x",
                "/nowhere",
            ]),
        ];
        let query = prop_oneof![
            Just(None),
            token_text(real.clone()).prop_map(|t| Some(format!("token={}", percent(&t)))),
            "[A-Za-z0-9%&=+._~!$'()*,;:@/?-]{0,80}".prop_map(Some),
            Just(Some("token=%ff%fe%00".to_string())),
            Just(Some(format!("token={}", "%41".repeat(4_000)))),
        ];
        let site = prop::sample::select(vec![None, Some("same-origin"), Some("cross-site")]);
        (
            method,
            path,
            query,
            content_type(),
            body(real),
            any::<bool>(),
            site,
            any::<u8>(),
        )
            .prop_map(
                |(method, path, query, content_type, body, chunked, site, client)| Hostile {
                    method,
                    path,
                    query,
                    content_type,
                    body,
                    chunked,
                    site,
                    client,
                },
            )
    }

    /// Requests that get past content negotiation, so the token checks and the store are reached.
    fn coherent(real: String, code: String) -> impl Strategy<Value = Hostile> {
        let by_code = (code_pair(code), any::<bool>(), any::<u8>(), any::<bool>()).prop_map(
            |((email, code), json, client, chunked)| Hostile {
                method: Method::POST,
                path: if json {
                    "/api/v1/invitations/redeem"
                } else {
                    "/accept"
                },
                query: None,
                content_type: Some(if json {
                    b"application/json".to_vec()
                } else {
                    b"application/x-www-form-urlencoded".to_vec()
                }),
                body: if json {
                    serde_json::json!({ "email": email, "code": code })
                        .to_string()
                        .into_bytes()
                } else {
                    format!("email={}&code={}", percent(&email), percent(&code)).into_bytes()
                },
                chunked,
                site: Some("same-origin"),
                client,
            },
        );
        let api = (token_text(real.clone()), any::<bool>(), any::<u8>()).prop_map(
            |(t, chunked, client)| Hostile {
                method: Method::POST,
                path: "/api/v1/invitations/redeem",
                query: None,
                content_type: Some(b"application/json".to_vec()),
                body: serde_json::json!({ "token": t }).to_string().into_bytes(),
                chunked,
                site: None,
                client,
            },
        );
        let form = (token_text(real.clone()), any::<bool>(), any::<u8>()).prop_map(
            |(t, chunked, client)| Hostile {
                method: Method::POST,
                path: "/accept",
                query: None,
                content_type: Some(b"application/x-www-form-urlencoded".to_vec()),
                body: format!("token={}", percent(&t)).into_bytes(),
                chunked,
                site: Some("same-origin"),
                client,
            },
        );
        let page = (token_text(real), any::<u8>()).prop_map(|(t, client)| Hostile {
            method: Method::GET,
            path: "/accept",
            query: Some(format!("token={}", percent(&t))),
            content_type: None,
            body: Vec::new(),
            chunked: false,
            site: None,
            client,
        });
        prop_oneof![api, form, page, by_code]
    }

    fn build(h: &Hostile) -> Request<Body> {
        let uri = match &h.query {
            Some(q) => format!("{}?{q}", h.path),
            None => h.path.to_string(),
        };
        let body = if h.chunked {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                h.body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
            Body::from_stream(futures::stream::iter(chunks))
        } else {
            Body::from(h.body.clone())
        };
        let mut builder = Request::builder()
            .method(h.method.clone())
            .uri(uri)
            .header(header::HOST, "usher.example");
        if let Some(ct) = &h.content_type {
            builder = builder.header(
                header::CONTENT_TYPE,
                HeaderValue::from_bytes(ct).expect("generated as a valid header value"),
            );
        }
        if let Some(site) = h.site {
            builder = builder.header("sec-fetch-site", site);
        }
        let mut request = builder.body(body).expect("a request");
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((
                Ipv4Addr::new(192, 0, 2, h.client),
                40_000,
            ))));
        request
    }

    /// The status, the content type and the body, as text if it is text.
    fn send(harness: &Harness, h: &Hostile) -> (StatusCode, String, Result<String, Vec<u8>>) {
        harness.rt.block_on(async {
            let response = harness.app.clone().oneshot(build(h)).await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert_eq!(
                response.headers().get(header::X_CONTENT_TYPE_OPTIONS),
                Some(&HeaderValue::from_static("nosniff")),
                "every answer carries the security headers"
            );
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                content_type,
                String::from_utf8(bytes.to_vec()).map_err(|e| e.into_bytes()),
            )
        })
    }

    /// What a person or a program reads in a refusal: the JSON `error`, the page's message, or
    /// the plain text.
    fn reason(content_type: &str, body: &str) -> Option<String> {
        let text = if content_type.starts_with("application/json") {
            serde_json::from_str::<serde_json::Value>(body).ok()?["error"]
                .as_str()?
                .to_string()
        } else if content_type.starts_with("text/html") {
            let start = body.find("id=\"message\"")?;
            let rest = &body[start..];
            rest[rest.find('>')? + 1..rest.find("</p>")?].to_string()
        } else {
            body.to_string()
        };
        (text.split_whitespace().count() >= 2).then_some(text)
    }

    #[test]
    fn hostile_requests_get_a_4xx_in_words_never_a_5xx() {
        // One store and one rate limiter for the whole run, as clients share a server; so the
        // runner is driven by hand rather than through `proptest!`.
        let harness = harness();
        let mut runner = proptest::test_runner::TestRunner::new(Config {
            cases: 192,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(
                &prop_oneof![
                    request(harness.token.clone()),
                    coherent(harness.token.clone(), harness.code.clone())
                ],
                |h| {
                    let (status, content_type, body) = send(&harness, &h);
                    prop_assert!(!status.is_server_error(), "{status} for {h:?}: {body:?}");
                    if status.is_client_error() && h.method != Method::HEAD {
                        let body = body.map_err(|b| {
                            TestCaseError::fail(format!("{status}: the body is not text: {b:?}"))
                        })?;
                        prop_assert!(
                            reason(&content_type, &body).is_some(),
                            "{status} ({content_type}) says nothing readable for {h:?}: {body:?}"
                        );
                    }
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn each_kind_of_hostile_request_gets_its_own_status() {
        let harness = harness();
        let post = |path: &'static str, content_type: &str, body: Vec<u8>| Hostile {
            method: Method::POST,
            path,
            query: None,
            content_type: Some(content_type.as_bytes().to_vec()),
            body,
            chunked: false,
            site: Some("same-origin"),
            client: 1,
        };
        let api = "/api/v1/invitations/redeem";
        let json = "application/json";
        let form = "application/x-www-form-urlencoded";
        let nested = |depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        let cases = [
            ("1 MB JSON", post(api, json, vec![b' '; 1 << 20]), 413),
            ("1 MB form", post("/accept", form, vec![b'a'; 1 << 20]), 413),
            (
                "bad UTF-8",
                post(api, json, b"{\"token\": \"\xff\xfe\"}".to_vec()),
                400,
            ),
            ("text/plain", post(api, "text/plain", b"{}".to_vec()), 415),
            (
                "a form to the API",
                post(api, form, b"token=a".to_vec()),
                415,
            ),
            (
                "JSON to the form",
                post("/accept", json, b"{}".to_vec()),
                415,
            ),
            (
                "no token in the form",
                post("/accept", form, b"tok=1".to_vec()),
                400,
            ),
            ("no token in the JSON", post(api, json, b"{}".to_vec()), 400),
            ("nesting 4,000 deep", post(api, json, nested(4_000)), 400),
            ("nesting 10,000 deep", post(api, json, nested(10_000)), 413),
            (
                "10 KB token in the link",
                Hostile {
                    method: Method::GET,
                    query: Some(format!("token={}", "a".repeat(10_000))),
                    ..post("/accept", form, Vec::new())
                },
                400,
            ),
        ];
        for (what, request, expected) in cases {
            let (status, content_type, body) = send(&harness, &request);
            let body = body.unwrap();
            assert_eq!(status.as_u16(), expected, "{what}: {body}");
            let reason = reason(&content_type, &body);
            assert!(reason.is_some(), "{what}: nothing readable in {body}");
        }
    }

    /// A POST of `email` and `code` from client `client`, to the API or the form.
    fn code_post(email: &str, code: &str, client: u8, json: bool) -> Hostile {
        let (path, content_type, body) = if json {
            (
                "/api/v1/invitations/redeem",
                "application/json",
                serde_json::json!({ "email": email, "code": code })
                    .to_string()
                    .into_bytes(),
            )
        } else {
            (
                "/accept",
                "application/x-www-form-urlencoded",
                format!("email={}&code={}", percent(email), percent(code)).into_bytes(),
            )
        };
        Hostile {
            method: Method::POST,
            path,
            query: None,
            content_type: Some(content_type.as_bytes().to_vec()),
            body,
            chunked: false,
            site: Some("same-origin"),
            client,
        }
    }

    #[test]
    fn a_short_code_redeems_once_and_only_with_its_address() {
        let harness = harness();
        let status = |h: Hostile| send(&harness, &h).0.as_u16();
        let code = harness.code.clone();
        // Someone else's address with Alice's code: nothing.
        assert_eq!(status(code_post("bob@acme.example", &code, 1, true)), 404);
        assert_eq!(status(code_post("", &code, 1, true)), 400);
        assert_eq!(
            status(code_post("alice@acme.example", "7K3QD", 1, true)),
            400
        );
        // Hers, as a person types it: any case, spaces for the hyphen.
        let typed = code.to_lowercase().replace('-', " ");
        let (ok, _, body) = send(&harness, &code_post("Alice@ACME.example", &typed, 2, true));
        assert_eq!(ok.as_u16(), 200, "{body:?}");
        let answer: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
        assert_eq!(answer["email"], "alice@acme.example");
        assert_eq!(answer["tenant"], "acme");
        // Single use, by code or by link.
        assert_eq!(
            status(code_post("alice@acme.example", &code, 3, false)),
            409
        );
        let by_link = serde_json::json!({ "token": harness.token })
            .to_string()
            .into_bytes();
        let link = Hostile {
            body: by_link,
            ..code_post("", "", 4, true)
        };
        assert_eq!(status(link), 409);
    }

    #[test]
    fn short_code_tries_are_counted_per_address_whoever_makes_them() {
        let harness = harness();
        let status = |h: Hostile| send(&harness, &h).0.as_u16();
        // Guesses from as many clients as tries: each client is within its own limit.
        for client in 0..CODE_TRIES as u8 {
            let guess = code_post("alice@acme.example", "00000-00000", 10 + client, true);
            assert_eq!(status(guess), 404);
        }
        // The address's tries are used up: even the right code waits, from a fresh client too.
        let right = code_post("ALICE@acme.example", &harness.code, 99, false);
        assert_eq!(status(right), 429);
        // Another address is not held back by Alice's, and the link still works.
        assert_eq!(
            status(code_post("bob@acme.example", "00000-00000", 98, true)),
            404
        );
        let link = Hostile {
            body: serde_json::json!({ "token": harness.token })
                .to_string()
                .into_bytes(),
            ..code_post("", "", 97, true)
        };
        assert_eq!(status(link), 200);
    }

    #[test]
    fn short_codes_wait_for_the_key() {
        let harness = harness();
        let (tx, _rx) = futures::channel::mpsc::unbounded();
        let keyless = Arc::new(AppState::new(
            harness.state.stores.clone(),
            tx,
            Arc::new(Metrics::default()),
        ));
        let app = router(keyless);
        let request = build(&code_post("alice@acme.example", &harness.code, 1, true));
        let status = harness.rt.block_on(app.oneshot(request)).unwrap().status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn probes_and_metrics_are_not_on_the_public_listener() {
        let harness = harness();
        let get = |app: Router, path: &str| {
            let request = Request::builder()
                .uri(path)
                .extension(ConnectInfo(SocketAddr::from((Ipv4Addr::LOCALHOST, 1))))
                .body(Body::empty())
                .unwrap();
            harness
                .rt
                .block_on(app.oneshot(request))
                .unwrap()
                .status()
                .as_u16()
        };
        let public = public_router(harness.state.clone());
        let probes = probe_router(harness.state.clone());
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                get(public.clone(), path),
                404,
                "{path} on the public listener"
            );
            assert_eq!(
                get(probes.clone(), path),
                200,
                "{path} on the probe listener"
            );
        }
        assert_eq!(get(public, "/accept"), 200);
        assert_eq!(get(probes, "/accept"), 404);
    }
}
