//! Accepting an invitation: the page people open from the mail, its form post, and the JSON
//! API an application calls. All three go through [`redeem`], with either proof a mail carries:
//! the token (in the link), or the invited address with its short code (typed in).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::plan::records::{ObjectKey, RedeemRefusal, Redeemed};
use crate::token::{self, ShortCode, TokenHash};

/// Why a redemption did not happen, with its HTTP status.
#[derive(Debug)]
enum Refusal {
    Malformed(&'static str),
    /// The request itself could not be read (too large, not a form), with its status.
    Unreadable(StatusCode, &'static str),
    TooMany,
    /// The address's short-code tries are used up.
    TooManyForAddress,
    Store(RedeemRefusal),
    Unavailable,
    CrossSite,
    /// No invitation of the address has the short code.
    NoSuchCode,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Unreadable(status, _) => *status,
            Self::TooMany | Self::TooManyForAddress => StatusCode::TOO_MANY_REQUESTS,
            Self::Store(RedeemRefusal::Unknown) | Self::NoSuchCode => StatusCode::NOT_FOUND,
            Self::Store(RedeemRefusal::AlreadyUsed) => StatusCode::CONFLICT,
            Self::Store(RedeemRefusal::Expired) => StatusCode::GONE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::CrossSite => StatusCode::FORBIDDEN,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Malformed(why) => format!("the invitation code is malformed: {why}"),
            Self::Unreadable(_, why) => (*why).to_string(),
            Self::TooMany => "too many tries; wait a minute and try again".into(),
            Self::TooManyForAddress => format!(
                "too many codes were tried for this address; the next try is possible in {} minutes, and the link in the invitation mail works meanwhile",
                super::CODE_REFILL.as_secs() / 60
            ),
            Self::Store(r) => r.to_string(),
            Self::Unavailable => "the service is unavailable right now; try again shortly".into(),
            Self::CrossSite => "this form can only be sent from its own page".into(),
            Self::NoSuchCode => {
                "no invitation to this address has this code; check both against your invitation mail".into()
            }
        }
    }
}

/// What a person offers to accept an invitation: what the form and the API carry.
#[derive(Default, Deserialize)]
pub struct Proof {
    /// The token, from the link or pasted.
    #[serde(default)]
    token: String,
    /// The invited address, with `code`.
    #[serde(default)]
    email: String,
    /// The short code, typed in.
    #[serde(default)]
    code: String,
}

/// The most of a typed short code the error page gives back (a code with spaces and hyphens).
const MAX_CODE_INPUT: usize = 32;

/// The longest address a mail can carry (RFC 5321's path limit, in octets).
const MAX_ADDRESS_LEN: usize = 254;

/// Redeem what `proof` offers, for the client `client` (its rate-limit key).
async fn redeem(state: &AppState, client: &str, proof: &Proof) -> Result<Redeemed, Refusal> {
    if !state.per_client.try_take(client) {
        return Err(Refusal::TooMany);
    }
    let hash = if proof.token.trim().is_empty()
        && !(proof.email.trim().is_empty() && proof.code.trim().is_empty())
    {
        by_code(state, proof.email.trim(), proof.code.trim()).await?
    } else {
        by_token(state, proof.token.trim())?
    };
    match state.stores.redeem(&hash, Timestamp::now()).await {
        Ok(Ok(redeemed)) => {
            state.metrics.invitations_redeemed.inc();
            tracing::info!(fingerprint = %hash.fingerprint(), "invitation redeemed");
            // The controller may be gone during shutdown; the resync catches up then.
            let _ = state.redeemed.unbounded_send(redeemed.clone());
            Ok(redeemed)
        }
        Ok(Err(refusal)) => Err(Refusal::Store(refusal)),
        Err(e) => {
            tracing::warn!(error = %e, "redemption failed in the store");
            Err(Refusal::Unavailable)
        }
    }
}

/// The hash of a well-formed token, within its tries.
fn by_token(state: &AppState, text: &str) -> Result<TokenHash, Refusal> {
    if text.is_empty() {
        return Err(Refusal::Malformed("it is empty"));
    }
    if text.len() > token::MAX_TOKEN_LEN || !token::well_formed(text) {
        return Err(Refusal::Malformed(
            "it is not a code usher issued; check for typos",
        ));
    }
    let hash = TokenHash::of(text);
    if !state.per_token.try_take(hash.as_str()) {
        return Err(Refusal::TooMany);
    }
    Ok(hash)
}

/// The hash of the token whose short code `code` is, among the invitations to `email`. The
/// address's tries are counted before the store is asked, whether or not anyone was invited
/// there, so that the answer's timing says nothing; every candidate is compared, in constant
/// time each.
async fn by_code(state: &AppState, email: &str, code: &str) -> Result<TokenHash, Refusal> {
    if email.is_empty() {
        return Err(Refusal::Malformed(
            "a short code is accepted only with the address it was sent to; enter both",
        ));
    }
    if email.len() > MAX_ADDRESS_LEN || !email.contains('@') {
        return Err(Refusal::Malformed("that is not an email address"));
    }
    let Some(code) = ShortCode::parse(code) else {
        return Err(Refusal::Malformed(
            "a short code is ten letters and digits, such as 7K3QD-M9XTV",
        ));
    };
    // Before the address's count: a try that cannot be checked must not use one up.
    let Some(key) = state.token_key.get() else {
        return Err(Refusal::Unavailable);
    };
    if !state.per_address.try_take(&email.to_lowercase()) {
        return Err(Refusal::TooManyForAddress);
    }
    let (candidates, failed) = state.stores.invitations_for_address(email).await;
    let found = candidates.into_iter().fold(None, |found, hash| {
        let matched = key.short_code(&hash) == code;
        found.or(matched.then_some(hash))
    });
    match (found, failed) {
        (Some(hash), _) => Ok(hash),
        // The code may be one of the store that did not answer.
        (None, Some(e)) => {
            tracing::warn!(error = %e, "looking up invitations by address failed in a store");
            Err(Refusal::Unavailable)
        }
        (None, None) => Err(Refusal::NoSuchCode),
    }
}

static PAGES: LazyLock<minijinja::Environment<'static>> = LazyLock::new(|| {
    let mut env = minijinja::Environment::new();
    env.add_template("page.html", include_str!("templates/page.html"))
        .expect("valid template");
    env
});

fn render(status: StatusCode, ctx: minijinja::Value) -> Response {
    match PAGES.get_template("page.html").and_then(|t| t.render(ctx)) {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the acceptance page");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// `?token=` of the acceptance link.
#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    token: String,
}

/// `GET /accept?token=T`: the form, with the token filled in.
pub async fn show(
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let token = query.map(|q| q.0.token).unwrap_or_default();
    if token.len() > token::MAX_TOKEN_LEN {
        // No code usher issues is this long: say so rather than prefill a cut-off piece of it.
        return render(
            StatusCode::BAD_REQUEST,
            minijinja::context! {
                title => "Accept your invitation",
                form => true,
                token => "",
                message => Refusal::Malformed("the link holds far more than a code; enter the code from your invitation mail").message(),
                kind => "error",
            },
        );
    }
    render(
        StatusCode::OK,
        minijinja::context! {
            title => "Accept your invitation",
            form => true,
            token => token,
            message => "Check the code from your invitation mail and accept it to activate your account.",
            kind => "",
        },
    )
}

/// Browsers say where a form post comes from; refuse posts from other sites. (Accepting needs
/// the token itself, so a forged post gains nothing; this only keeps other sites from driving
/// the form.) Under `Referrer-Policy: no-referrer` browsers send `Origin: null` even for
/// same-origin posts, so Sec-Fetch-Site decides where browsers send it.
fn cross_site(headers: &HeaderMap) -> bool {
    let value = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    if let Some(site) = value(header::HeaderName::from_static("sec-fetch-site")) {
        return !matches!(site, "same-origin" | "none");
    }
    match (value(header::ORIGIN), value(header::HOST)) {
        (Some(origin), Some(host)) if origin != "null" => {
            origin.split_once("://").map_or(origin, |(_, h)| h) != host
        }
        _ => false,
    }
}

/// `POST /accept`: the form's post; a success or error page.
pub async fn form(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<Proof>, axum::extract::rejection::FormRejection>,
) -> Response {
    let result = if cross_site(&headers) {
        Err(Refusal::CrossSite)
    } else {
        match &form {
            Ok(Form(proof)) => {
                let client = state.trusted_proxies.client_key(client.ip(), &headers);
                redeem(&state, &client, proof).await
            }
            Err(rejection) => Err(match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Refusal::Unreadable(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the form is far too large to hold an invitation code",
                ),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => Refusal::Unreadable(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "the form was not sent as a form (application/x-www-form-urlencoded)",
                ),
                _ => Refusal::Malformed("the form was not sent as expected"),
            }),
        }
    };
    match result {
        Ok(r) => render(
            StatusCode::OK,
            minijinja::context! {
                title => "Invitation accepted",
                message => format!("Welcome! The account {} is now active. You can close this page and sign in.", r.email),
                kind => "ok",
                form => false,
            },
        ),
        Err(refusal) => {
            let proof = form.map(|f| f.0).unwrap_or_default();
            let retry = matches!(
                refusal,
                Refusal::Malformed(_)
                    | Refusal::Unreadable(..)
                    | Refusal::TooMany
                    | Refusal::TooManyForAddress
                    | Refusal::Unavailable
                    | Refusal::NoSuchCode
                    | Refusal::Store(RedeemRefusal::Unknown)
            );
            let cut = |text: &str, most: usize| text.chars().take(most).collect::<String>();
            render(
                refusal.status(),
                minijinja::context! {
                    title => "The invitation could not be accepted",
                    message => refusal.message(),
                    kind => "error",
                    form => retry,
                    token => cut(&proof.token, token::MAX_TOKEN_LEN),
                    email => cut(&proof.email, MAX_ADDRESS_LEN),
                    code => cut(&proof.code, MAX_CODE_INPUT),
                },
            )
        }
    }
}

/// `POST /api/v1/invitations/redeem`: `{"token"}` or `{"email","code"}` →
/// `{"tenant","namespace","email","userId"}`.
pub async fn api(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<Proof>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(rejection) => {
            let status = match rejection {
                JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                JsonRejection::BytesRejection(ref b) => b.status(),
                _ => StatusCode::BAD_REQUEST,
            };
            return (
                status,
                Json(json!({"error": format!("expected a JSON body {{\"token\": \"…\"}} or {{\"email\": \"…\", \"code\": \"…\"}}: {}", rejection.body_text())})),
            )
                .into_response();
        }
    };
    let client = state.trusted_proxies.client_key(client.ip(), &headers);
    match redeem(&state, &client, &body).await {
        Ok(r) => {
            let key = ObjectKey::parse(&r.tenant);
            let (namespace, tenant) = key
                .as_ref()
                .map_or(("", r.tenant.as_str()), |k| (&k.namespace, &k.name));
            (
                StatusCode::OK,
                Json(json!({
                    "tenant": tenant,
                    "namespace": namespace,
                    "email": r.email,
                    "userId": r.user_id,
                })),
            )
                .into_response()
        }
        Err(refusal) => {
            (refusal.status(), Json(json!({"error": refusal.message()}))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_posts_pass_and_cross_site_posts_do_not() {
        let ok = [
            headers(&[
                ("sec-fetch-site", "same-origin"),
                ("origin", "null"),
                ("host", "a:1"),
            ]),
            headers(&[("origin", "http://a:1"), ("host", "a:1")]),
            headers(&[("host", "a:1")]),
        ];
        for h in ok {
            assert!(!cross_site(&h), "{h:?}");
        }
        let bad = [
            headers(&[("sec-fetch-site", "cross-site"), ("host", "a:1")]),
            headers(&[("sec-fetch-site", "same-site"), ("host", "a:1")]),
            headers(&[("origin", "http://evil:1"), ("host", "a:1")]),
        ];
        for h in bad {
            assert!(cross_site(&h), "{h:?}");
        }
    }
}
