//! The user store: tenants, accounts and invitations (keyed by token hash). Its ports, one trait
//! per concern and [`UserStore`] for all of them, are in `port.rs`; each backend is one module
//! (`sql`, `scim`), and `handle.rs` connects and measures whichever is configured. The
//! records are plain types of [`crate::plan::records`].

mod handle;
mod port;
mod registry;
mod scim;
mod sql;

use std::sync::Arc;

use jiff::Timestamp;

pub use handle::StoreHandle;
pub use port::{Accounts, Catalogue, Health, Invitations, OffboardingLedger, UserStore};
pub use registry::{StoreState, Stores};
pub use scim::{ScimStore, USER_EXTENSION};
pub use sql::{Dialect, SqlStore};

/// What a store can fail at. Every message names the user store, so that callers (`/readyz`,
/// status conditions) can show it as it is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend we have, or is malformed.
    #[error("invalid user store URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend could not be reached or answered with an error.
    #[error("user store: {0}")]
    Backend(String),
    /// The store refused the request (a SCIM 4xx): what it said, for the status condition.
    #[error("the user store refused it ({status}): {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// A record the operation needs is gone (deleted behind usher's back).
    #[error("user store: {0} not found")]
    NotFound(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

/// Where the user store is, checked before anything connects: a malformed URL or a missing
/// credential stops `usher run` at once, while a store that is down is retried. Its Debug output
/// shows no credential.
#[derive(Clone)]
pub enum StoreConfig {
    /// SQLite or PostgreSQL.
    Sql {
        /// The URL as sqlx takes it.
        url: String,
        /// Which of the two.
        dialect: Dialect,
        /// PostgreSQL only: the schema the tables live in (created if missing), so that several
        /// stores share one database. None: the connection's default (`public`).
        schema: Option<String>,
    },
    /// A SCIM 2.0 server, with invitations in a local SQL store.
    Scim {
        /// `https://host/base` or, on loopback only, `http://`.
        base: String,
        /// The bearer token.
        token: String,
        /// Where invitations and the rest SCIM has no place for are kept.
        local: Box<StoreConfig>,
        /// Resources asked per page when listing.
        page_size: u32,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sql {
                url,
                dialect,
                schema,
            } => f
                .debug_struct("Sql")
                .field("url", &redact(url))
                .field("dialect", dialect)
                .field("schema", schema)
                .finish(),
            Self::Scim { base, local, .. } => f
                .debug_struct("Scim")
                .field("base", base)
                .field("token", &"***")
                .field("local", local)
                .finish(),
        }
    }
}

impl StoreConfig {
    /// Read a store URL: `sqlite://PATH` (created if missing), `sqlite::memory:`,
    /// `postgres://user@host/db` (password in the URL or `PGPASSWORD`), or
    /// `scim+https://host/base` with its bearer `token` and a SQL URL for the `local` store.
    pub fn parse_with(url: &str, token: Option<&str>, local: &str) -> Result<Self, StoreError> {
        let Some(rest) = url.strip_prefix("scim+") else {
            return Self::parse(url);
        };
        let bad = |reason: &str| StoreError::Url {
            url: redact(url),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(rest).map_err(|e| bad(&e.to_string()))?;
        let loopback = matches!(parsed.host(), Some(url::Host::Domain("localhost")))
            || matches!(parsed.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(parsed.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(bad(
                    "scim+http:// sends the bearer token in clear text; it is only allowed on loopback, use scim+https://",
                ));
            }
            other => return Err(bad(&format!("unsupported SCIM scheme {other:?}"))),
        }
        if parsed.password().is_some() || !parsed.username().is_empty() {
            return Err(bad(
                "put no credentials in the URL; the bearer token comes from USHER_STORE_TOKEN",
            ));
        }
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                bad("a SCIM store needs a bearer token: set USHER_STORE_TOKEN (from a Secret)")
            })?;
        let local = Self::parse(local).map_err(|e| StoreError::Url {
            url: redact(local),
            reason: format!("the local store for invitations: {e}"),
        })?;
        if matches!(&local, Self::Sql { url, .. } if url == "sqlite::memory:") {
            return Err(bad(
                "the local store of a SCIM store must outlive the process (it holds the invitations); use sqlite://PATH or postgres://…",
            ));
        }
        Ok(Self::Scim {
            base: rest.to_string(),
            token: token.to_string(),
            local: Box::new(local),
            page_size: 100,
        })
    }

    /// Read a SQL store URL (see [`StoreConfig::parse_with`]).
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Url {
            url: redact(url),
            reason: reason.to_string(),
        };
        if url == "sqlite::memory:" {
            return Ok(Self::Sql {
                url: url.into(),
                dialect: Dialect::Sqlite,
                schema: None,
            });
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("sqlite:// needs a file path, e.g. sqlite://usher.db"));
            }
            return Ok(Self::Sql {
                url: url.into(),
                dialect: Dialect::Sqlite,
                schema: None,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(bad(
                    "postgres:// needs a host, e.g. postgres://usher@db:5432/usher",
                ));
            }
            return Ok(Self::Sql {
                url: url.into(),
                dialect: Dialect::Postgres,
                schema: None,
            });
        }
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or(url);
        Err(bad(&format!(
            "unsupported scheme {scheme:?}; use sqlite://PATH, postgres://HOST/DB or scim+https://HOST/BASE"
        )))
    }

    /// The store a Tenant names in `spec.store` (see [`crate::crd::TenantStore`]): `url` is
    /// `scim+https://…` (its bearer token is `credential`) or `postgres://…` (its password is
    /// `credential`, when the URL's user needs one). A SCIM store's local store is one of its
    /// own, derived from the operator's `local` (`--local-store`) and the URL: next to its file
    /// for SQLite (`usher-local-<hash>.db`), a schema `usher_<hash>` of its database for
    /// PostgreSQL, so that no two SCIM servers share the local records their ids key.
    /// Errors: [`StoreError::Url`] for a URL or credential usher cannot use (SQLite among them:
    /// a file of one pod is no tenant's store).
    pub fn for_tenant(
        url: &str,
        credential: Option<&str>,
        local: &str,
    ) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Url {
            url: redact(url),
            reason: reason.to_string(),
        };
        if url.starts_with("scim+") {
            let mut config = Self::parse_with(url, credential, local)?;
            if let Self::Scim { local, .. } = &mut config {
                let tag = store_tag(url);
                if let Self::Sql {
                    url: local_url,
                    dialect,
                    schema,
                } = &mut **local
                {
                    match dialect {
                        Dialect::Sqlite => *local_url = beside(local_url, &tag),
                        Dialect::Postgres => *schema = Some(format!("usher_{tag}")),
                    }
                }
            }
            return Ok(config);
        }
        match Self::parse(url)? {
            Self::Sql {
                dialect: Dialect::Postgres,
                ..
            } => {
                let mut parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
                if parsed.password().is_some() {
                    return Err(bad(
                        "put no password in the URL; it comes from credentialsSecretRef",
                    ));
                }
                if let Some(password) = credential.map(str::trim).filter(|p| !p.is_empty()) {
                    parsed
                        .set_password(Some(password))
                        .map_err(|()| bad("this URL cannot carry a password"))?;
                }
                Ok(Self::Sql {
                    url: parsed.to_string(),
                    dialect: Dialect::Postgres,
                    schema: None,
                })
            }
            _ => Err(bad(
                "a tenant's store must be reachable from every usher instance: use scim+https://HOST/BASE or postgres://USER@HOST/DB",
            )),
        }
    }

    /// Connect (and migrate). Fails while the store is unreachable; the caller retries.
    pub async fn open(&self) -> Result<Arc<dyn UserStore>, StoreError> {
        Ok(match self {
            Self::Sql {
                url,
                dialect,
                schema,
            } => Arc::new(SqlStore::connect_in(url, *dialect, schema.as_deref()).await?),
            Self::Scim {
                base,
                token,
                local,
                page_size,
            } => {
                let Self::Sql {
                    url,
                    dialect,
                    schema,
                } = &**local
                else {
                    return Err(StoreError::Url {
                        url: base.clone(),
                        reason: "the local store must be SQL".into(),
                    });
                };
                let local = SqlStore::connect_in(url, *dialect, schema.as_deref()).await?;
                Arc::new(ScimStore::connect(base, token, local, *page_size).await?)
            }
        })
    }
}

/// Open the store a URL names, at once (for tools and tests; `usher run` retries instead).
pub async fn open(url: &str) -> Result<Arc<dyn UserStore>, StoreError> {
    StoreConfig::parse(url)?.open().await
}

/// A URL with any password (in the authority or a `password=` parameter) replaced, fit for logs
/// and errors. A URL that does not parse keeps only its scheme: it may hold a password anywhere.
pub fn redact(url: &str) -> String {
    if url == "sqlite::memory:" {
        return url.to_string();
    }
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"))
            {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k.eq_ignore_ascii_case("password") {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "…".to_string(),
        },
    }
}

/// Twelve hex digits of the SHA-256 of a store URL: names what belongs to that store alone.
fn store_tag(url: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(url.as_bytes())[..6])
}

/// A SQLite URL for a file beside `url`'s, tagged: `sqlite://data/local.db` and `ab12` give
/// `sqlite://data/local-ab12.db`.
fn beside(url: &str, tag: &str) -> String {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (url, String::new()),
    };
    match path.rsplit_once('.') {
        Some((stem, ext)) if !ext.contains('/') => format!("{stem}-{tag}.{ext}{query}"),
        _ => format!("{path}-{tag}{query}"),
    }
}

/// A random account id: 128 bits, hex.
pub(crate) fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Backend(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Microseconds since the epoch, the stored form of a time.
pub(crate) fn micros(ts: Timestamp) -> i64 {
    ts.as_microsecond()
}

/// A stored time back as a timestamp.
pub(crate) fn from_micros(us: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_microsecond(us)
        .map_err(|e| StoreError::Backend(format!("bad stored time: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_leave_in_a_url() {
        for (url, secret) in [
            ("postgres://usher:s3cret@db:5432/usher", "s3cret"),
            (
                "postgres://usher@db/usher?password=s3cret&sslmode=require",
                "s3cret",
            ),
            // Does not parse (bad port): nothing after the scheme is shown.
            ("postgres://usher:s3cret@db:54x2/usher", "s3cret"),
        ] {
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(shown.starts_with("postgres://"), "{shown}");
        }
        let config = StoreConfig::parse_with(
            "scim+https://scim.example.com/v2",
            Some("bearer-s3cret"),
            "sqlite://local.db",
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("bearer-s3cret"));
    }
}
