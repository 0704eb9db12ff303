//! SMTP through lettre: `smtp://host:port` (STARTTLS when the server offers it, or required with
//! `?tls=required`) and `smtps://host:port` (implicit TLS). Connections are pooled.

use async_trait::async_trait;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
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
        let tls_params =
            || TlsParameters::new(host.clone()).map_err(|e| bad(format!("TLS setup: {e}")));
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
