//! SMTP mailer: lettre's async transport, configured by one URL (`smtp://`,
//! `smtp://…?tls=required` for STARTTLS, `smtps://`, optional `user:password@`),
//! with a timeout on every exchange. The URL holds credentials: it is never
//! logged or shown.

use std::time::Duration;

use async_trait::async_trait;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::mailer::{Email, MailError, Mailer, build_message};

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `smtp://host:port`, without credentials.
    label: String,
}

impl SmtpMailer {
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let label = redacted(url);
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("GEONEX_SMTP_URL ({label}) is not usable: {}", classify(&e)))?
            .timeout(Some(timeout))
            .build();
        Ok(Self { transport, label })
    }
}

/// `scheme://host:port` of the URL, without credentials, path or query.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    format!("{scheme}://{host}")
}

/// The error's text: lettre's display includes the server's reply code and text.
fn classify(e: &lettre::transport::smtp::Error) -> String {
    e.to_string()
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, from: &lettre::message::Mailbox, email: &Email) -> Result<String, MailError> {
        let message = build_message(from, email)?;
        match self.transport.send(message).await {
            Ok(response) => {
                let text = response.message().collect::<Vec<_>>().join(" ");
                Ok(format!("{} {}", response.code(), text).trim().to_owned())
            }
            Err(e) if e.is_permanent() => Err(MailError::Permanent(format!("SMTP server refused the message: {}", classify(&e)))),
            Err(e) => Err(MailError::Transient(format!("SMTP send failed: {}", classify(&e)))),
        }
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Building the transport needs a runtime: it starts the connection pool.
    #[tokio::test]
    async fn the_label_never_shows_credentials() {
        assert_eq!(redacted("smtp://u:hunter2@mail.example.org:587?tls=required"), "smtp://mail.example.org:587");
        assert_eq!(redacted("smtps://mail.example.org"), "smtps://mail.example.org");
        let m = SmtpMailer::new("smtp://u:hunter2@127.0.0.1:2525", Duration::from_secs(1)).unwrap();
        assert!(!m.label().contains("hunter2"));
        let bad = SmtpMailer::new("ftp://u:hunter2@x", Duration::from_secs(1)).err().unwrap();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
    }
}
