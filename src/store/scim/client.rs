//! The HTTP side of the SCIM store: one request with its retries and backoff (`send`), a
//! filtered list read page by page (`list`), and what the server's answers become — a [`Reply`],
//! a [`StoreError::Refused`] with the server's `detail`, a resource's `id`. Kept apart so that
//! the rules for retrying, paging and reading refusals are in one place, whichever resource
//! (users.rs, groups.rs) a request is about.

use std::time::Duration;

use jiff::Timestamp;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::ScimStore;
use crate::store::StoreError;

/// The media type of SCIM requests and answers (RFC 7644 section 8.1).
const MEDIA: &str = "application/scim+json";
/// Tries of one request when the server is busy (429) or failing (5xx).
const TRIES: u32 = 4;
/// The longest Retry-After honoured; a longer one is cut to this.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// One answer of the server.
pub(super) struct Reply {
    /// The HTTP status.
    pub(super) status: StatusCode,
    /// The `ETag` header, when the server sent one.
    pub(super) etag: Option<String>,
    /// The JSON body; `Null` when there was none or it was not JSON.
    pub(super) body: Value,
}

impl Reply {
    /// The body of a 2xx; a refusal with the server's `detail` otherwise.
    pub(super) fn ok(self) -> Result<Value, StoreError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(refusal(self.status, &self.body))
        }
    }
}

/// The error of an answer that is not a success: its status and the server's `detail` (and
/// `scimType`, when given).
pub(super) fn refusal(status: StatusCode, body: &Value) -> StoreError {
    let detail = body["detail"].as_str().unwrap_or("no detail given");
    let detail = match body["scimType"].as_str() {
        Some(kind) => format!("{kind}: {detail}"),
        None => detail.to_string(),
    };
    StoreError::Refused {
        status: status.as_u16(),
        detail,
    }
}

/// The `id` of a resource the server returned; an answer without one is an error, not "".
pub(super) fn id_of(resource: &Value) -> Result<String, StoreError> {
    resource["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            StoreError::Backend("the SCIM server returned a resource without an id".into())
        })
}

/// A filter value as a SCIM string literal.
pub(super) fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `Retry-After` (RFC 9110), or the `X-Retry-After` some servers send instead, as seconds or an
/// HTTP date, capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)
        .or_else(|| headers.get("x-retry-after"))?
        .to_str()
        .ok()?;
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
            Duration::try_from(at - Timestamp::now()).unwrap_or_default()
        }
    };
    Some(wait.min(MAX_WAIT))
}

impl ScimStore {
    /// One request, retried with backoff (honouring `Retry-After`) while the server answers 429
    /// or 5xx or cannot be reached.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, StoreError> {
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        for attempt in 0..TRIES {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .header(reqwest::header::ACCEPT, MEDIA);
            if let Some(body) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, MEDIA)
                    .body(body.to_string());
            }
            if let (Some(tag), true) = (if_match, self.etags) {
                req = req.header(reqwest::header::IF_MATCH, tag);
            }
            let backoff = Duration::from_millis(250 << attempt);
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    // A POST that may have been carried out is not repeated (it would create a
                    // second resource); 429 and 503 say it was not.
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE
                        || (status.is_server_error()
                            && status != StatusCode::NOT_IMPLEMENTED
                            && method != Method::POST);
                    let etag = resp
                        .headers()
                        .get(reqwest::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let wait = retry_after(resp.headers()).unwrap_or(backoff);
                    let text = resp.text().await.unwrap_or_default();
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if !retryable {
                        return Ok(Reply { status, etag, body });
                    }
                    last = refusal(status, &body).to_string();
                    wait
                }
                Err(e) => {
                    last = format!("SCIM server unreachable: {e}");
                    if method == Method::POST && !e.is_connect() {
                        break;
                    }
                    backoff
                }
            };
            if attempt + 1 < TRIES {
                tracing::debug!(%method, path, wait = ?wait, error = %last, "SCIM request retried");
                tokio::time::sleep(wait).await;
            }
        }
        Err(StoreError::Backend(format!(
            "{method} {path} failed: {last}"
        )))
    }

    /// The resources of a filtered list, every page, each checked against `filter` here too:
    /// a server that ignores a filter (or an attribute in it) answers with others, and acting on
    /// one of those would write to, or delete, the wrong person or Group.
    pub(super) async fn list(
        &self,
        endpoint: &str,
        filter: &Filter<'_>,
        extra: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        let mut start = 1;
        let mut seen = 0;
        let mut filtered = self.filtering;
        loop {
            let query = if filtered {
                format!("filter={}&", urlencode(&filter.to_string()))
            } else {
                String::new()
            };
            let path = format!(
                "{endpoint}?{query}startIndex={start}&count={}{extra}",
                self.page_size
            );
            let page = match self.send(Method::GET, &path, None, None).await?.ok() {
                Ok(page) => page,
                // A server that does not take this filter (an operator it lacks, such as `sw`;
                // an attribute it cannot filter on; no filtering at all): read everything and
                // filter here, as every answer is checked here anyway.
                Err(StoreError::Refused { status, detail })
                    if filtered && (status == 400 || status == 501) =>
                {
                    tracing::debug!(%filter, status, %detail, "the server refused the filter; listing all and filtering here");
                    (filtered, start, seen) = (false, 1, 0);
                    out.clear();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let items = page["Resources"].as_array().cloned().unwrap_or_default();
            let total = page["totalResults"].as_u64().unwrap_or(0) as usize;
            let got = items.len();
            seen += got;
            let strangers = items.iter().filter(|r| !filter.holds(r)).count();
            if strangers > 0 {
                tracing::debug!(%filter, strangers, "the server answered resources its filter does not match; they are left out");
            }
            out.extend(items.into_iter().filter(|r| filter.holds(r)));
            if got == 0 || seen >= total {
                return Ok(out);
            }
            start += got;
        }
    }
}

/// A filter usher sends (RFC 7644 section 3.4.2.2), on a case-exact string attribute such as
/// `externalId`: rendered for the server, and checked on what it answers.
#[derive(Clone, Copy, Debug)]
pub(super) enum Filter<'a> {
    /// `attribute eq "value"`.
    Eq(&'a str, &'a str),
    /// `attribute eq "value"` on a case-insensitive attribute (`userName`, RFC 7643 section
    /// 4.1.1), checked without regard to case.
    EqIgnoreCase(&'a str, &'a str),
    /// `attribute sw "prefix"`.
    StartsWith(&'a str, &'a str),
}

impl Filter<'_> {
    /// Whether `resource` matches, read as RFC 7643 says for a case-exact attribute. A resource
    /// without the attribute does not match.
    pub(super) fn holds(&self, resource: &Value) -> bool {
        match *self {
            Self::Eq(attribute, value) => resource[attribute].as_str() == Some(value),
            Self::EqIgnoreCase(attribute, value) => resource[attribute]
                .as_str()
                .is_some_and(|v| v.to_lowercase() == value.to_lowercase()),
            Self::StartsWith(attribute, prefix) => resource[attribute]
                .as_str()
                .is_some_and(|v| v.starts_with(prefix)),
        }
    }
}

impl std::fmt::Display for Filter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Eq(attribute, value) | Self::EqIgnoreCase(attribute, value) => {
                write!(f, "{attribute} eq {}", quoted(value))
            }
            Self::StartsWith(attribute, prefix) => write!(f, "{attribute} sw {}", quoted(prefix)),
        }
    }
}

/// Text as a query parameter value.
fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_filter_is_sent_as_scim_says_and_checked_on_each_answer() {
        let eq = Filter::Eq("externalId", "acme/bob");
        assert_eq!(eq.to_string(), r#"externalId eq "acme/bob""#);
        assert!(eq.holds(&json!({"externalId": "acme/bob"})));
        // What a server ignoring the filter answers: someone else, no externalId, another case.
        for other in [
            json!({"externalId": "acme/bobby"}),
            json!({"userName": "bob@acme.example"}),
            json!({"externalId": "ACME/bob"}),
            json!({"externalId": 7}),
        ] {
            assert!(!eq.holds(&other), "{other}");
        }
        let sw = Filter::StartsWith("externalId", "role/acme/acme/");
        assert_eq!(sw.to_string(), r#"externalId sw "role/acme/acme/""#);
        assert!(sw.holds(&json!({"externalId": "role/acme/acme/Admin"})));
        assert!(!sw.holds(&json!({"externalId": "role/acme/globex/Admin"})));
        assert!(!sw.holds(&json!({"displayName": "role/acme/acme/Admin"})));
        // A quote in a value cannot end the string early.
        let tricky = Filter::Eq("externalId", r#"a" or "1" eq "1"#);
        assert_eq!(tricky.to_string(), r#"externalId eq "a\" or \"1\" eq \"1""#);
    }
}
