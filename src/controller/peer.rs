//! Which peer failed a reconcile, and why, for `usher_peer_errors_total{peer, reason}`: an
//! expired certificate, a rotated password or a missing RBAC rule must be told apart from an
//! outage, and both from one refused request.
//!
//! The mail transport and the SQL stores hand their errors over as text
//! ([`MailError::Transport`], [`StoreError::Backend`]), so those are read from the words lettre
//! (its reply codes: `permanent error (535): …`), rustls and sqlx put in them; what is not
//! recognised counts as `other`, never as a cause it may not be.

use crate::mail::MailError;
use crate::metrics::PeerLabels;
use crate::store::StoreError;

use super::Error;

const TLS: &str = "tls";
const AUTH: &str = "auth";
const UNAVAILABLE: &str = "unavailable";
const REFUSED: &str = "refused";
const OTHER: &str = "other";

/// The peer that failed a reconcile with `err`, and why; None when no peer did (a throttled
/// offboarding, a malformed object).
pub(super) fn failure(err: &Error) -> Option<PeerLabels> {
    let (peer, reason) = match err {
        Error::Store(e) | Error::OffboardingIncomplete { source: e, .. } => ("store", store(e)),
        Error::Mail(e) => ("mail", mail(e)),
        // A tenant's store credential: its Secret missing, unreadable or unusable.
        Error::TenantStore(_) => ("store", AUTH),
        Error::Kube(e) => ("kubernetes", kube(e)),
        Error::Finalizer(e) => match &**e {
            kube::runtime::finalizer::Error::ApplyFailed(inner)
            | kube::runtime::finalizer::Error::CleanupFailed(inner) => return failure(inner),
            kube::runtime::finalizer::Error::AddFinalizer(e)
            | kube::runtime::finalizer::Error::RemoveFinalizer(e) => ("kubernetes", kube(e)),
            _ => return None,
        },
        Error::Malformed(_) | Error::Random(_) | Error::Throttled(_) => return None,
    };
    Some(PeerLabels { peer, reason })
}

fn mail(e: &MailError) -> &'static str {
    match e {
        MailError::Transport(text) => smtp(text),
        // This person's address: the relay was not even asked.
        MailError::Address { .. } => REFUSED,
        MailError::Url { .. } | MailError::Render(_) => OTHER,
    }
}

/// An SMTP failure as lettre words it: `permanent error (550): 5.1.1 …`, `transient error (421)
/// …`, `Connection error: invalid peer certificate: UnknownIssuer`, `tls error: …`.
fn smtp(text: &str) -> &'static str {
    let lower = text.to_ascii_lowercase();
    if let Some((code, rest)) = reply(&lower) {
        // RFC 4954 (530, 534, 535, 538, 454) and the x.7.x security or policy statuses of
        // RFC 3463 (5.7.1 relaying denied, say).
        let policy = rest.split_whitespace().next().is_some_and(|status| {
            let parts: Vec<&str> = status.split('.').collect();
            parts.len() == 3 && parts[1] == "7" && parts.iter().all(|p| p.parse::<u16>().is_ok())
        });
        return match code {
            530 | 534 | 535 | 538 | 454 => AUTH,
            _ if policy => AUTH,
            421 => UNAVAILABLE,
            _ => REFUSED,
        };
    }
    if ["tls", "certificate", "handshake"]
        .iter()
        .any(|w| lower.contains(w))
    {
        TLS
    } else if lower.contains("authentication mechanism") {
        AUTH
    } else if lower.starts_with("connection error")
        || lower.starts_with("network error")
        || lower.contains("timed out")
        || lower.contains("shut down")
    {
        UNAVAILABLE
    } else {
        OTHER
    }
}

/// The reply code of lettre's `permanent error (NNN)…` / `transient error (NNN)…`, and what
/// follows it.
fn reply(lower: &str) -> Option<(u16, &str)> {
    let rest = lower
        .strip_prefix("permanent error (")
        .or_else(|| lower.strip_prefix("transient error ("))?;
    let (code, rest) = rest.split_once(')')?;
    Some((
        code.parse().ok()?,
        rest.trim_start_matches(':').trim_start(),
    ))
}

fn store(e: &StoreError) -> &'static str {
    match e {
        StoreError::Refused { status, .. } => http(*status),
        StoreError::NotFound(_) => REFUSED,
        StoreError::Url { .. } => OTHER,
        StoreError::Backend(text) => {
            let lower = text.to_ascii_lowercase();
            let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
            if has(&[
                "password authentication failed",
                "no pg_hba.conf entry",
                "authentication failed",
                "permission denied",
            ]) {
                AUTH
            } else if has(&["tls", "certificate", "ssl"]) {
                TLS
            } else if has(&[
                "not connected yet",
                "error communicating with database",
                "pool timed out",
                "closed pool",
                "unreachable",
                "connection refused",
                "timed out",
                "refused it (5",
                "refused it (429)",
            ]) {
                UNAVAILABLE
            } else {
                OTHER
            }
        }
    }
}

/// An HTTP status of a peer that answered.
fn http(status: u16) -> &'static str {
    match status {
        401 | 403 => AUTH,
        408 | 429 | 500..=599 => UNAVAILABLE,
        _ => REFUSED,
    }
}

fn kube(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(status) => http(status.code),
        kube::Error::Auth(_) => AUTH,
        kube::Error::RustlsTls(_) | kube::Error::TlsRequired => TLS,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            let mut chain = String::new();
            let mut source: Option<&dyn std::error::Error> = Some(e);
            while let Some(s) = source {
                chain.push_str(&s.to_string().to_ascii_lowercase());
                source = s.source();
            }
            if ["tls", "certificate", "handshake"]
                .iter()
                .any(|w| chain.contains(w))
            {
                TLS
            } else {
                UNAVAILABLE
            }
        }
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{PEER_REASONS, PEERS};

    fn of(err: Error) -> (&'static str, &'static str) {
        let l = failure(&err).expect("a peer failure");
        assert!(PEERS.contains(&l.peer) && PEER_REASONS.contains(&l.reason));
        (l.peer, l.reason)
    }

    fn smtp_error(text: &str) -> Error {
        Error::Mail(MailError::Transport(text.into()))
    }

    #[test]
    fn smtp_replies_and_connection_failures() {
        for (text, reason) in [
            (
                "permanent error (535): 5.7.8 Authentication credentials invalid",
                AUTH,
            ),
            ("permanent error (530): 5.7.0 Authentication required", AUTH),
            (
                "transient error (454): 4.7.0 Temporary authentication failure",
                AUTH,
            ),
            (
                "permanent error (554): 5.7.1 <a@b.example>: Relay access denied",
                AUTH,
            ),
            (
                "permanent error (550): 5.1.1 <nobody@acme.example>: user unknown",
                REFUSED,
            ),
            (
                "permanent error (552): message size exceeds fixed maximum",
                REFUSED,
            ),
            (
                "transient error (421): 4.3.2 Service not available",
                UNAVAILABLE,
            ),
            (
                "Connection error: invalid peer certificate: UnknownIssuer",
                TLS,
            ),
            (
                "Connection error: received fatal alert: HandshakeFailure",
                TLS,
            ),
            (
                "internal client error: STARTTLS is not supported on this server",
                TLS,
            ),
            ("tls error: certificate expired", TLS),
            (
                "internal client error: No compatible authentication mechanism was found",
                AUTH,
            ),
            (
                "Connection error: Connection refused (os error 111)",
                UNAVAILABLE,
            ),
            ("network error: timed out", UNAVAILABLE),
            ("response error: incomplete response", OTHER),
        ] {
            assert_eq!(of(smtp_error(text)), ("mail", reason), "{text}");
        }
        let address = MailError::Address {
            address: "x".into(),
            reason: "no @".into(),
        };
        assert_eq!(of(Error::Mail(address)), ("mail", REFUSED));
    }

    #[test]
    fn store_refusals_and_backend_failures() {
        let refused = |status| {
            Error::Store(StoreError::Refused {
                status,
                detail: "no".into(),
            })
        };
        assert_eq!(of(refused(401)), ("store", AUTH));
        assert_eq!(of(refused(403)), ("store", AUTH));
        assert_eq!(of(refused(409)), ("store", REFUSED));
        assert_eq!(of(refused(503)), ("store", UNAVAILABLE));
        let backend = |t: &str| Error::Store(StoreError::Backend(t.into()));
        for (text, reason) in [
            (
                "error returned from database: password authentication failed for user \"usher\"",
                AUTH,
            ),
            (
                "error occurred while attempting to establish a TLS connection: invalid peer certificate: Expired",
                TLS,
            ),
            (
                "error communicating with database: Connection refused (os error 111)",
                UNAVAILABLE,
            ),
            (
                "pool timed out while waiting for an open connection",
                UNAVAILABLE,
            ),
            ("not connected yet (connecting)", UNAVAILABLE),
            (
                "GET /Users failed: the user store refused it (503): busy",
                UNAVAILABLE,
            ),
            (
                "error returned from database: UNIQUE constraint failed",
                OTHER,
            ),
        ] {
            assert_eq!(of(backend(text)), ("store", reason), "{text}");
        }
        let incomplete = Error::OffboardingIncomplete {
            left: "removing its roles",
            source: StoreError::Refused {
                status: 403,
                detail: "no".into(),
            },
        };
        assert_eq!(of(incomplete), ("store", AUTH));
    }

    #[test]
    fn api_server_statuses_and_wrapped_errors() {
        let api = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert_eq!(of(Error::Kube(api(403))), ("kubernetes", AUTH));
        assert_eq!(of(Error::Kube(api(401))), ("kubernetes", AUTH));
        assert_eq!(of(Error::Kube(api(409))), ("kubernetes", REFUSED));
        assert_eq!(of(Error::Kube(api(500))), ("kubernetes", UNAVAILABLE));
        // The finalizer helper wraps both the reconcile's own errors and its patches.
        let cleanup = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::CleanupFailed(
            smtp_error("permanent error (535): 5.7.8 no"),
        )));
        assert_eq!(of(cleanup), ("mail", AUTH));
        let add = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(
            api(403),
        )));
        assert_eq!(of(add), ("kubernetes", AUTH));
    }

    #[test]
    fn what_no_peer_failed_is_not_counted() {
        assert!(failure(&Error::Throttled("held".into())).is_none());
        assert!(failure(&Error::Malformed("no namespace")).is_none());
        let throttled_cleanup = Error::Finalizer(Box::new(
            kube::runtime::finalizer::Error::CleanupFailed(Error::Throttled("held".into())),
        ));
        assert!(failure(&throttled_cleanup).is_none());
    }
}
