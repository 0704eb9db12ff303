//! SMTP through lettre: `smtp://host:port` (STARTTLS when the server offers it, or required with
//! `?tls=required`) and `smtps://host:port` (implicit TLS). Connections are pooled. The system's
//! roots are trusted, plus the PEM file `USHER_MAIL_CA_FILE` names, if any.

use async_trait::async_trait;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{MailError, Mailer};

/// An SMTP relay.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpMailer {
    /// Parse `smtp://host:port[?tls=required]` or `smtps://host:port`.
    pub fn from_url(raw: &str) -> Result<Self, MailError> {
        let bad = |reason: String| MailError::Url {
            url: raw.to_string(),
            reason,
        };
        let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .to_string();
        // A private relay's CA can be trusted in addition to the system's roots.
        let extra_ca = match std::env::var_os("USHER_MAIL_CA_FILE") {
            Some(path) => {
                let shown = path.to_string_lossy().into_owned();
                let pem = std::fs::read(&path)
                    .map_err(|e| bad(format!("reading USHER_MAIL_CA_FILE {shown}: {e}")))?;
                Some(
                    Certificate::from_pem(&pem)
                        .map_err(|e| bad(format!("USHER_MAIL_CA_FILE {shown}: {e}")))?,
                )
            }
            None => None,
        };
        let tls_params = || {
            let mut builder = TlsParameters::builder(host.clone());
            if let Some(ca) = extra_ca.clone() {
                builder = builder.add_root_certificate(ca);
            }
            builder
                .build_rustls()
                .map_err(|e| bad(format!("TLS setup: {e}")))
        };
        let (tls, default_port) = match url.scheme() {
            "smtp" => {
                let required = url
                    .query_pairs()
                    .any(|(k, v)| k == "tls" && v == "required");
                let tls = if required {
                    Tls::Required(tls_params()?)
                } else {
                    Tls::Opportunistic(tls_params()?)
                };
                (tls, 587)
            }
            "smtps" => (Tls::Wrapper(tls_params()?), 465),
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}; use file://DIR, smtp://host:port or smtps://host:port"
                )));
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
            .port(url.port().unwrap_or(default_port))
            .tls(tls);
        if let Ok(user) = std::env::var("USHER_MAIL_USERNAME") {
            let password = std::env::var("USHER_MAIL_PASSWORD").unwrap_or_default();
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Self {
            transport: builder.build(),
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, message: Message) -> Result<(), MailError> {
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Transport(e.to_string()))
    }
}
