//! The mailer port: hands one rendered e-mail to a mail server and says how it
//! went. Adapters: SMTP (`smtp.rs`, lettre) and `.eml` files (`file.rs`).

pub mod file;
pub mod smtp;

use async_trait::async_trait;

/// A rendered e-mail, ready to send.
#[derive(Debug, Clone)]
pub struct Email {
    /// `<…@…>`, derived from the command so every attempt carries the same id.
    pub message_id: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a send failed, classified the way SMTP does.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MailError {
    /// 4xx replies, connection failures, timeouts: trying later can help.
    #[error("{0}")]
    Transient(String),
    /// 5xx replies (an unknown recipient, a refused sender) and bad addresses.
    #[error("{0}")]
    Permanent(String),
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends the message; on success returns the server's reply to it.
    async fn send(&self, from: &lettre::message::Mailbox, email: &Email) -> Result<String, MailError>;

    /// Where messages go, for start-up logs (never credentials).
    fn label(&self) -> String;
}

/// Builds the MIME message: multipart/alternative with the plain text first,
/// as clients show the last part they understand.
pub fn build_message(from: &lettre::message::Mailbox, email: &Email) -> Result<lettre::Message, MailError> {
    use lettre::message::MultiPart;
    let to: lettre::message::Mailbox =
        email.to.parse().map_err(|e| MailError::Permanent(format!("recipient {:?} is not an address: {e}", email.to)))?;
    lettre::Message::builder()
        .message_id(Some(email.message_id.clone()))
        .date_now()
        .from(from.clone())
        .to(to)
        .subject(email.subject.clone())
        .multipart(MultiPart::alternative_plain_html(email.text.clone(), email.html.clone()))
        .map_err(|e| MailError::Permanent(format!("message could not be built: {e}")))
}
