//! The mailer port and the invitation message. Backends are one file each: `file://DIR` (one
//! .eml per message, the embedded default) and SMTP (`smtp://`, `smtps://`).

mod file;
mod smtp;

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use jiff::Timestamp;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart, header};

pub use file::FileMailer;
pub use smtp::SmtpMailer;

/// What sending mail can fail at.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The mail URL is malformed or names no transport.
    #[error("invalid mail URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An address cannot be used in a mail header.
    #[error("invalid mail address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// Why.
        reason: String,
    },
    /// The message could not be rendered.
    #[error("rendering the invitation mail: {0}")]
    Render(String),
    /// The transport refused or failed.
    #[error("sending mail: {0}")]
    Transport(String),
}

/// Sends one message.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Deliver `message` to its recipients.
    async fn send(&self, message: Message) -> Result<(), MailError>;
}

/// Open the mailer a URL names: `file://DIR`, `smtp://host:port` (STARTTLS when offered;
/// `?tls=required` insists), `smtps://host:port` (implicit TLS). Credentials come from
/// `USHER_MAIL_USERNAME` / `USHER_MAIL_PASSWORD`.
pub fn open(url: &str) -> Result<Arc<dyn Mailer>, MailError> {
    if let Some(dir) = url.strip_prefix("file://") {
        if dir.is_empty() {
            return Err(MailError::Url {
                url: url.into(),
                reason: "file:// needs a folder, e.g. file://outbox".into(),
            });
        }
        return Ok(Arc::new(FileMailer::new(dir)));
    }
    Ok(Arc::new(SmtpMailer::from_url(url)?))
}

/// Everything an invitation mail says. Its Debug output leaves the token out.
#[derive(Clone)]
pub struct Invitation<'a> {
    /// The tenant's display name.
    pub tenant: &'a str,
    /// The From header, e.g. "Acme Portal <no-reply@acme.example>".
    pub from: &'a str,
    /// The person's email.
    pub to: &'a str,
    /// The person's given name, if known.
    pub first_name: Option<&'a str>,
    /// The person's family name, if known.
    pub last_name: Option<&'a str>,
    /// The acceptance page, without the query.
    pub accept_url: &'a str,
    /// The token in plain text.
    pub token: &'a str,
    /// When the token expires.
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for Invitation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("tenant", &self.tenant)
            .field("to", &self.to)
            .field("expires_at", &self.expires_at)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

static TEMPLATES: LazyLock<minijinja::Environment<'static>> = LazyLock::new(|| {
    let mut env = minijinja::Environment::new();
    // The .html name turns on HTML auto-escaping for that template only.
    env.add_template("invitation.txt", include_str!("templates/invitation.txt"))
        .expect("valid template");
    env.add_template("invitation.html", include_str!("templates/invitation.html"))
        .expect("valid template");
    env
});

/// Control characters (CR, LF, …) have no place in a header or a greeting.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

fn mailbox(text: &str) -> Result<Mailbox, MailError> {
    text.parse()
        .map_err(|e: lettre::address::AddressError| MailError::Address {
            address: text.to_string(),
            reason: e.to_string(),
        })
}

impl Invitation<'_> {
    /// The acceptance link with the token.
    pub fn link(&self) -> String {
        let mut url = self.accept_url.to_string();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("token=");
        url.push_str(self.token); // URL-safe base64 needs no escaping
        url
    }

    /// The message: text and HTML alternatives, both with the link, the token, the tenant's
    /// name and the expiry in UTC.
    pub fn message(&self) -> Result<Message, MailError> {
        let full_name = one_line(
            &[self.first_name, self.last_name]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        );
        let tenant = one_line(self.tenant);
        let to_addr: lettre::Address =
            self.to
                .parse()
                .map_err(|e: lettre::address::AddressError| MailError::Address {
                    address: self.to.to_string(),
                    reason: e.to_string(),
                })?;
        let to = Mailbox::new((!full_name.is_empty()).then(|| full_name.clone()), to_addr);
        let expires = self.expires_at.strftime("%Y-%m-%d %H:%M").to_string();
        let link = self.link();
        let greeting = if full_name.is_empty() {
            self.to.to_string()
        } else {
            full_name
        };
        let ctx = minijinja::context! {
            name => greeting,
            tenant => tenant.clone(),
            link => link,
            token => self.token,
            expires => expires,
        };
        let render = |name: &str| {
            TEMPLATES
                .get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| MailError::Render(e.to_string()))
        };
        Message::builder()
            .from(mailbox(&one_line(self.from))?)
            .to(to)
            .subject(format!("Your invitation to {tenant}"))
            .header(header::MIME_VERSION_1_0)
            .multipart(MultiPart::alternative_plain_html(
                render("invitation.txt")?,
                render("invitation.html")?,
            ))
            .map_err(|e| MailError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(tenant: &'a str, first: &'a str) -> Invitation<'a> {
        Invitation {
            tenant,
            from: "Acme Portal <no-reply@acme.example>",
            to: "alice@acme.example",
            first_name: Some(first),
            last_name: Some("Ng"),
            accept_url: "https://portal.acme.example/accept",
            token: "tok_ABCdef-123_xyz",
            expires_at: "2026-11-24T10:00:00Z".parse().unwrap(),
        }
    }

    fn raw(inv: &Invitation<'_>) -> Vec<u8> {
        inv.message().unwrap().formatted()
    }

    /// The decoded text and HTML parts, with the HTML entities minijinja writes undone.
    fn parts(raw: &[u8]) -> (String, String) {
        let msg = mail_parser::MessageParser::default().parse(raw).unwrap();
        let text = msg.body_text(0).unwrap().into_owned();
        let html = msg.body_html(0).unwrap().into_owned();
        (text, html)
    }

    fn unescape(html: &str) -> String {
        html.replace("&#x2f;", "/").replace("&amp;", "&")
    }

    #[test]
    fn both_parts_carry_link_token_tenant_and_expiry() {
        let raw = raw(&sample("Acme Charging", "Alice"));
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(msg.subject(), Some("Your invitation to Acme Charging"));
        let to = msg.to().unwrap().first().unwrap();
        assert_eq!(to.address(), Some("alice@acme.example"));
        assert_eq!(to.name(), Some("Alice Ng"));
        let from = msg.from().unwrap().first().unwrap();
        assert_eq!(
            (from.name(), from.address()),
            (Some("Acme Portal"), Some("no-reply@acme.example"))
        );
        let (text, html) = parts(&raw);
        let link = "https://portal.acme.example/accept?token=tok_ABCdef-123_xyz";
        for (kind, body) in [("text", text), ("html", unescape(&html))] {
            assert!(body.contains(link), "{kind} lacks the link:\n{body}");
            assert!(
                body.matches("tok_ABCdef-123_xyz").count() >= 2,
                "{kind} lacks the token"
            );
            assert!(body.contains("Acme Charging"), "{kind} lacks the tenant");
            assert!(
                body.contains("2026-11-24 10:00 (UTC)"),
                "{kind} lacks the expiry"
            );
            assert!(body.contains("Alice Ng"), "{kind} lacks the name");
        }
    }

    #[test]
    fn hostile_names_inject_neither_headers_nor_markup() {
        let raw = raw(&sample(
            "Evil\r\nBcc: victim@evil.example",
            "<script>alert(1)</script>\"Bob\r\nX-Injected: yes",
        ));
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert!(msg.bcc().is_none(), "a Bcc header was injected");
        assert!(msg.header("X-Injected").is_none(), "a header was injected");
        assert_eq!(
            msg.to().unwrap().first().unwrap().address(),
            Some("alice@acme.example")
        );
        let (_, html) = parts(&raw);
        assert!(!html.contains("<script>"), "raw markup in:\n{html}");
        assert!(
            html.contains("&lt;script&gt;"),
            "escaped markup missing:\n{html}"
        );
    }

    #[test]
    fn link_appends_to_an_existing_query() {
        let mut inv = sample("Acme", "Alice");
        inv.accept_url = "https://portal.acme.example/accept?lang=en";
        assert_eq!(
            inv.link(),
            "https://portal.acme.example/accept?lang=en&token=tok_ABCdef-123_xyz"
        );
    }

    #[test]
    fn a_bad_from_is_an_error_not_a_panic() {
        let mut inv = sample("Acme", "Alice");
        inv.from = "not an address";
        assert!(matches!(inv.message(), Err(MailError::Address { .. })));
    }
}
