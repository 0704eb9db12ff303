//! The mailer port and the invitation message. Backends are one file each: `file://DIR` (one
//! .eml per message, the embedded default) and SMTP (`smtp://`, `smtps://`).
//!
//! Over 500 lines because more than half of it is the tests of the message (headers that cannot
//! be injected, both parts, line lengths), kept beside the code they check.

mod file;
mod smtp;

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use jiff::Timestamp;
use lettre::Message;
use lettre::message::{Body, Mailbox, MultiPart, SinglePart, header};

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
    /// The short code in plain text, as [`crate::token::ShortCode::expose`] shows it.
    pub code: &'a str,
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
            .field("code", &"<redacted>")
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

/// Text for a header: one line, single-spaced, and no RFC 2047 encoded word
/// (`=?utf-8?b?…?=`), which lettre passes through as ASCII and mail programs decode into other
/// text, CR and LF included. A word joiner after the `=` keeps the text looking as written and
/// has lettre encode the word. Single spaces because lettre writes a run of blanks between two
/// encoded words, where decoders drop it and join the words.
fn header_text(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace("=?", "=\u{2060}?")
}

/// The longest line RFC 5322 (section 2.1.1) allows, in octets, without its CRLF.
const MAX_LINE_OCTETS: usize = 998;

/// The plain-text part as written, so that `cat` on a mail file or a terminal mail program shows
/// the link whole and it can be copied.
///
/// lettre picks quoted-printable for any line of 76 characters or more, which wraps the link
/// with `=` in the middle of the token and writes its `=` as `=3D`. 7bit (ASCII) and 8bit
/// (UTF-8, which every relay advertising 8BITMIME takes, and lettre then declares it) carry lines
/// up to 998 octets unchanged (RFC 2045 section 2.7-2.8). Only a text with a longer line (a
/// person's name thousands of characters long) falls back to lettre's choice.
fn readable_text_part(text: String) -> SinglePart {
    let crlf = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n");
    let fits = !crlf.contains('\0') && crlf.split("\r\n").all(|l| l.len() <= MAX_LINE_OCTETS);
    let body = if fits {
        let encoding = if crlf.is_ascii() {
            header::ContentTransferEncoding::SevenBit
        } else {
            header::ContentTransferEncoding::EightBit
        };
        Body::dangerous_pre_encoded(crlf.into_bytes(), encoding)
    } else {
        Body::new(text)
    };
    SinglePart::builder()
        .header(header::ContentType::TEXT_PLAIN)
        .body(body)
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

    /// The message: text and HTML alternatives, both with the link, the token, the short code
    /// (with the address it goes with), the tenant's name and the expiry in UTC.
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
        let to = Mailbox::new(
            (!full_name.is_empty()).then(|| header_text(&full_name)),
            to_addr,
        );
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
            code => self.code,
            to => self.to,
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
            .subject(format!("Your invitation to {}", header_text(&tenant)))
            .header(header::MIME_VERSION_1_0)
            .multipart(
                MultiPart::alternative()
                    .singlepart(readable_text_part(render("invitation.txt")?))
                    .singlepart(SinglePart::html(render("invitation.html")?)),
            )
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
            code: "7K3QD-M9XTV",
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
            assert!(body.contains("7K3QD-M9XTV"), "{kind} lacks the short code");
            assert!(body.contains("Acme Charging"), "{kind} lacks the tenant");
            assert!(
                body.contains("2026-11-24 10:00 (UTC)"),
                "{kind} lacks the expiry"
            );
            assert!(body.contains("Alice Ng"), "{kind} lacks the name");
        }
    }

    #[test]
    fn the_raw_text_part_shows_the_link_whole() {
        // A real-length token and a long public URL; ASCII and UTF-8 names (7bit and 8bit).
        let token = "Zq3x_9Kp-L2mN8vB4cR7tY1uI6oP0aS5dF3gH8jK2lQ";
        let base = "https://portal.customer-operations.acme-charging.example/invitations/accept";
        for (tenant, first) in [("Acme", "Alice"), ("Müller Ladestationen", "Zoë")] {
            let inv = Invitation {
                token,
                accept_url: base,
                ..sample(tenant, first)
            };
            let raw = String::from_utf8(raw(&inv)).unwrap();
            let link = format!("{base}?token={token}");
            let text_part = &raw[..raw.find("text/html").unwrap()];
            assert!(
                text_part.contains(&format!("  {link}\r\n")),
                "the link is not whole on one line of the raw text part:\n{text_part}"
            );
            assert!(!text_part.contains("=3D"), "quoted-printable:\n{text_part}");
            // Mail programs decode it as before.
            let (text, html) = parts(raw.as_bytes());
            assert!(text.contains(&link) && text.contains(first), "{text}");
            assert!(unescape(&html).contains(&link), "{html}");
        }
        // A line too long for 7bit/8bit (a 5,000-character name) still makes a valid mail.
        let long = "N".repeat(5000);
        let (text, _) = parts(&raw(&sample("Acme", &long)));
        assert!(text.contains(&long));
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

    mod hostile {
        //! Whatever people and tenants are called, an invitation stays one mail to one person:
        //! no header injected, no markup let through, no panic.

        use proptest::prelude::*;
        use proptest::test_runner::Config;

        use super::*;

        /// Text that has broken mail and HTML before: line breaks, encoded words, markup,
        /// template syntax, bidi and separator characters, and sheer length.
        fn hostile() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("\r\n".to_string()),
                Just("\r".to_string()),
                Just("\n".to_string()),
                Just("\r\nBcc: victim@evil.example\r\n".to_string()),
                Just("\nX-Injected: yes\n\n<html>".to_string()),
                Just("=?utf-8?b?QmNjOiB2aWN0aW1AZXZpbC5leGFtcGxl?=".to_string()),
                Just("=?UTF-8?Q?=0D=0ABcc:_victim@evil.example?=".to_string()),
                Just("<script>alert(1)</script>".to_string()),
                Just("<SCRIPT SRC=//evil.example/x.js>".to_string()),
                Just("<img src=x onerror=alert(1)>".to_string()),
                Just("\"><a href=javascript:alert(1)>".to_string()),
                Just("'><svg onload=alert(1)>".to_string()),
                Just("{{ token }}{% if true %}".to_string()),
                Just("&amp;&lt;&#x3C;".to_string()),
                Just("\u{0}\u{7}\u{1b}[31m\u{85}\u{2028}\u{2029}\u{202e}".to_string()),
                Just("Ünïcødé 日本語 🎉".to_string()),
                Just(";,:<>@\"()[]\\".to_string()),
                Just(" ".repeat(100)),
                Just("x".repeat(5_000)),
                "[ -~]{0,20}",
                ".{0,20}",
            ];
            prop::collection::vec(piece, 0..10).prop_map(|v| v.concat())
        }

        /// Addresses lettre may accept or refuse; accepted ones must come out as they went in.
        fn address() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => "[a-z0-9._+-]{1,20}@[a-z0-9-]{1,20}\\.example",
                1 => (hostile(), "[a-z]{1,8}@[a-z]{1,8}\\.example").prop_map(|(h, a)| format!("{a}{h}")),
                1 => (hostile(), "[a-z]{1,8}@[a-z]{1,8}\\.example").prop_map(|(h, a)| format!("{h}{a}")),
                1 => hostile(),
            ]
        }

        fn config(cases: u32) -> Config {
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            }
        }

        /// The HTML tags of a document, in order: escaping keeps this the template's own list.
        fn tags(html: &str) -> Vec<String> {
            html.split('<')
                .skip(1)
                .map(|t| {
                    t.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '/' || *c == '!')
                        .collect::<String>()
                        .to_ascii_lowercase()
                })
                .collect()
        }

        fn words(text: &str) -> String {
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        }

        /// A decoded header as people see it: the word joiner that defuses encoded words is
        /// invisible.
        fn visible(text: &str) -> String {
            words(&text.replace('\u{2060}', ""))
        }

        fn header_names(raw: &[u8]) -> Vec<String> {
            let msg = mail_parser::MessageParser::default().parse(raw).unwrap();
            let mut names: Vec<String> = msg
                .headers()
                .iter()
                .map(|h| h.name().to_ascii_lowercase())
                .collect();
            names.sort();
            names
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn hostile_names_render_one_clean_mail(
                tenant in hostile(),
                first in prop::option::of(hostile()),
                last in prop::option::of(hostile()),
                to in address(),
                from in prop_oneof![
                    4 => Just("Acme Portal <no-reply@acme.example>".to_string()),
                    1 => hostile(),
                ],
            ) {
                let inv = Invitation {
                    tenant: &tenant,
                    from: &from,
                    to: &to,
                    first_name: first.as_deref(),
                    last_name: last.as_deref(),
                    accept_url: "https://portal.acme.example/accept",
                    token: "tok_ABCdef-123_xyz",
                    code: "7K3QD-M9XTV",
                    expires_at: "2026-11-24T10:00:00Z".parse().unwrap(),
                };
                let message = match inv.message() {
                    Ok(m) => m,
                    // A refused address is the answer for input no mail can carry.
                    Err(MailError::Address { .. }) => return Ok(()),
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                };
                let raw = message.formatted();
                let msg = mail_parser::MessageParser::default()
                    .parse(&raw)
                    .ok_or_else(|| TestCaseError::fail("the message does not parse"))?;

                // The very headers of a benign invitation, each once: nothing injected.
                let benign = self::super::raw(&sample("Acme", "Alice"));
                prop_assert_eq!(header_names(&raw), header_names(&benign));
                let recipients: Vec<_> = msg.to().unwrap().iter().collect();
                prop_assert_eq!(recipients.len(), 1);
                prop_assert!(msg.cc().is_none() && msg.bcc().is_none());
                prop_assert_eq!(msg.from().unwrap().iter().count(), 1);
                let name = one_line(
                    &[first.as_deref(), last.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
                if to.contains("=?") {
                    // Valid in an address, where RFC 2047 forbids decoding it; mail-parser
                    // decodes it all the same, into the name and out of the address. The header
                    // must still carry it as it is.
                    let raw_to = msg.header_raw("To").unwrap_or_default();
                    prop_assert!(raw_to.contains(to.as_str()), "{} not in To: {}", to, raw_to);
                } else {
                    prop_assert_eq!(recipients[0].address(), Some(to.as_str()));
                    if !name.is_empty() {
                        prop_assert_eq!(recipients[0].name().map(visible), Some(words(&name)));
                    }
                }
                // Encoded words and folding may merge runs of blanks; the words must all be there.
                let subject = format!("Your invitation to {}", one_line(&tenant));
                prop_assert_eq!(msg.subject().map(visible), Some(words(&subject)));

                // The HTML has the template's tags and no others; the text has the words.
                let (text, html) = parts(&raw);
                prop_assert_eq!(tags(&html), tags(&parts(&benign).1));
                let lower = html.to_ascii_lowercase();
                for markup in ["<script", "<img", "<svg", "<a href=javascript"] {
                    prop_assert!(!lower.contains(markup), "{} in:\n{}", markup, html);
                }
                prop_assert!(text.contains(&one_line(&tenant)), "tenant missing from:\n{}", text);
                let greeted = if name.is_empty() { &to } else { &name };
                prop_assert!(text.contains(greeted.as_str()), "{} missing from:\n{}", greeted, text);
            }
        }
    }

    #[test]
    fn encoded_words_in_names_are_shown_as_written() {
        // lettre passes ASCII through, so this display name reached mail programs as an encoded
        // word and read "Your invitation to Bcc: victim@evil.example"; the second hid a CR LF.
        for tenant in [
            "=?utf-8?b?QmNjOiB2aWN0aW1AZXZpbC5leGFtcGxl?=",
            "Acme =?UTF-8?Q?=0D=0ABcc:_victim@evil.example?=",
        ] {
            let raw = raw(&sample(tenant, "=?utf-8?q?Eve?="));
            let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
            let subject = msg.subject().unwrap().replace('\u{2060}', "");
            assert_eq!(subject, format!("Your invitation to {tenant}"));
            let name = msg.to().unwrap().first().unwrap().name().unwrap();
            assert_eq!(name.replace('\u{2060}', ""), "=?utf-8?q?Eve?= Ng");
        }
    }

    #[test]
    fn a_bad_from_is_an_error_not_a_panic() {
        let mut inv = sample("Acme", "Alice");
        inv.from = "not an address";
        assert!(matches!(inv.message(), Err(MailError::Address { .. })));
    }
}
