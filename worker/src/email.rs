//! The e-mail handler: renders a `send_email` command's message from templates
//! and sends it through the mailer, at most once per command as far as SMTP
//! allows.
//!
//! Before sending, the handler records the send in the store; once the server
//! accepts the message it records that too, before the command is completed. A
//! command run again (redelivered, or rescued after a crash) whose message was
//! already accepted is completed without sending. Only a crash between the
//! server's acceptance and that record can repeat a message, and then it
//! carries the same Message-ID, so mail clients can tell it is the same one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use geonex_shared::domain::Action;
use geonex_shared::store::email::{DeliveryStatus, EmailKind, EmailParams, EmailStore};
use geonex_shared::store::{CommandRecord, RunnerRecord};
use lettre::message::Mailbox;
use serde_json::json;

use crate::failpoint;
use crate::fence;
use crate::handler::{Handler, Outcome, Step};
use crate::mailer::{Email, MailError, Mailer};
use crate::retry::HandlerError;

const PARTS: [&str; 3] = ["subject", "txt", "html"];

fn builtin(kind: EmailKind, part: &str) -> &'static str {
    macro_rules! t {
        ($name:literal) => {
            match part {
                "subject" => include_str!(concat!("../templates/email/", $name, ".subject.j2")),
                "txt" => include_str!(concat!("../templates/email/", $name, ".txt.j2")),
                _ => include_str!(concat!("../templates/email/", $name, ".html.j2")),
            }
        };
    }
    match kind {
        EmailKind::ImageNotice => t!("image_notice"),
        EmailKind::ImageRegistered => t!("image_registered"),
        EmailKind::ImageApproved => t!("image_approved"),
        EmailKind::ImageRejected => t!("image_rejected"),
        EmailKind::BudgetWarning => t!("budget_warning"),
        EmailKind::BudgetExceeded => t!("budget_exceeded"),
    }
}

/// The message templates: built in, each replaceable by a file of the same name
/// (`image_approved.subject.j2`, `….txt.j2`, `….html.j2`) in a directory.
pub struct EmailTemplates {
    env: minijinja::Environment<'static>,
}

impl EmailTemplates {
    /// Loads the built-in templates and any overrides, checking every one parses
    /// so a broken override stops the start rather than every e-mail.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut env = minijinja::Environment::new();
        // Autoescape by the name's extension before `.j2`: HTML parts are escaped.
        env.set_auto_escape_callback(minijinja::default_auto_escape_callback);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for kind in EmailKind::ALL {
            for part in PARTS {
                let name = format!("{}.{part}.j2", kind.as_str());
                let source = match dir.map(|d| d.join(&name)).filter(|p| p.is_file()) {
                    Some(path) => std::fs::read_to_string(&path)
                        .with_context(|| format!("reading e-mail template {}", path.display()))?,
                    None => builtin(kind, part).to_owned(),
                };
                env.add_template_owned(name.clone(), source)
                    .with_context(|| format!("e-mail template {name} does not parse"))?;
            }
        }
        Ok(Self { env })
    }

    /// Subject, plain text and HTML of one message.
    pub fn render(&self, p: &EmailParams) -> Result<(String, String, String), minijinja::Error> {
        let ctx = minijinja::context! {
            image_name => &p.image_name,
            user_name => &p.user_name,
            to => &p.to,
            reason => &p.reason,
            description => &p.description,
            organization => &p.organization,
        };
        let part = |part: &str| self.env.get_template(&format!("{}.{part}.j2", p.kind.as_str()))?.render(&ctx);
        // A subject is one header line whatever the template makes of it.
        let subject = part("subject")?.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok((subject, part("txt")?, part("html")?))
    }
}

pub struct EmailHandler {
    store: Arc<dyn EmailStore>,
    mailer: Arc<dyn Mailer>,
    templates: EmailTemplates,
    from: Mailbox,
}

impl EmailHandler {
    pub fn new(store: Arc<dyn EmailStore>, mailer: Arc<dyn Mailer>, templates: EmailTemplates, from: &str) -> anyhow::Result<Self> {
        let from: Mailbox = from.parse().with_context(|| format!("GEONEX_EMAIL__FROM {from:?} is not an address"))?;
        Ok(Self { store, mailer, templates, from })
    }

    pub fn mailer(&self) -> &Arc<dyn Mailer> {
        &self.mailer
    }

    fn message_id(&self, command: &CommandRecord) -> String {
        format!("<{}@{}>", command.command_id, self.from.email.domain())
    }
}

/// A store write the outcome depends on, retried briefly through a hiccup.
async fn record<F, Fut>(write: F) -> Result<(), HandlerError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), geonex_shared::store::StoreError>>,
{
    use backon::{ExponentialBuilder, Retryable};
    write
        .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(100)).with_max_times(6).with_jitter())
        .await
        .map_err(|e| HandlerError::retryable(format!("store: {e}")))
}

/// Records that the server accepted a message. Giving up would make the next
/// attempt send it again, so this waits out a database outage of minutes,
/// looking every second so the record lands as soon as the database is back.
async fn record_acceptance<F, Fut>(write: F) -> Result<(), HandlerError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), geonex_shared::store::StoreError>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let patient = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(180);
    write
        .retry(patient)
        .notify(|e, _| tracing::warn!(error = %e, "the server accepted the e-mail; recording it once the database answers"))
        .await
        .map_err(|e| HandlerError::retryable(format!("store: {e}")))
}

#[async_trait]
impl Handler for EmailHandler {
    fn actions(&self) -> &'static [Action] {
        &[Action::SendEmail]
    }

    async fn handle(&self, command: &CommandRecord, _runner: Option<&RunnerRecord>) -> Result<Step, HandlerError> {
        let params: EmailParams = serde_json::from_value(command.params.clone())
            .map_err(|e| HandlerError::permanent(format!("e-mail command parameters are invalid: {e}")))?;
        let id = command.command_id;
        let existing = self.store.delivery(id).await.map_err(|e| HandlerError::retryable(format!("store: {e}")))?;
        if let Some(d) = &existing
            && d.status == DeliveryStatus::Sent
        {
            tracing::info!(message_id = %d.message_id, "e-mail already accepted by the server; not sending again");
            return Ok(Outcome {
                result: json!({"status": "sent", "message_id": d.message_id, "recipient": d.recipient,
                               "smtp_reply": d.smtp_reply, "sent_at": d.sent_at, "sends": d.sends}),
                runner: None,
            }
            .into());
        }
        let (subject, text, html) = self
            .templates
            .render(&params)
            .map_err(|e| HandlerError::permanent(format!("e-mail template failed: {e}")))?;
        let email = Email { message_id: self.message_id(command), to: params.to.clone(), subject, text, html };
        record(|| self.store.begin_delivery(id, &email.message_id, &email.to)).await?;
        fence::confirm().await?;
        let reply = match self.mailer.send(&self.from, &email).await {
            Ok(reply) => {
                ::metrics::counter!(geonex_shared::metrics::EMAILS_SENT).increment(1);
                reply
            }
            Err(MailError::Transient(m)) => {
                ::metrics::counter!(geonex_shared::metrics::EMAILS_FAILED, "class" => "retryable").increment(1);
                return Err(HandlerError::retryable(m));
            }
            Err(MailError::Permanent(m)) => {
                ::metrics::counter!(geonex_shared::metrics::EMAILS_FAILED, "class" => "permanent").increment(1);
                return Err(HandlerError::permanent(m));
            }
        };
        record_acceptance(|| self.store.mark_sent(id, &reply)).await?;
        failpoint::hit("after-email-recorded").await;
        tracing::info!(message_id = %email.message_id, "e-mail sent");
        let sends = existing.map_or(1, |d| d.sends + 1);
        Ok(Outcome {
            result: json!({"status": "sent", "message_id": email.message_id, "recipient": email.to,
                           "smtp_reply": reply, "sends": sends}),
            runner: None,
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: EmailKind) -> EmailParams {
        EmailParams {
            kind,
            to: "ada@example.org".into(),
            image_name: "geonex/fire:1.5".into(),
            user_name: "ada".into(),
            reason: Some("<b>missing</b> docs".into()),
            description: Some("Fire detection".into()),
            organization: Some("NASA".into()),
        }
    }

    #[test]
    fn every_template_names_its_subject_and_the_user_and_html_is_escaped() {
        let t = EmailTemplates::load(None).unwrap();
        for kind in EmailKind::ALL {
            let (subject, text, html) = t.render(&params(kind)).unwrap();
            // An image's e-mails name the image; a budget's say what was spent.
            let about = match kind {
                EmailKind::BudgetWarning | EmailKind::BudgetExceeded => "docs",
                _ => "geonex/fire:1.5",
            };
            assert!(subject.contains(about) && !subject.contains('\n'), "{subject}");
            // HTML escaping writes `/` as an entity.
            let html = html.replace("&#x2f;", "/");
            for body in [&text, &html] {
                assert!(body.contains(about) && body.contains("ada"), "{kind:?}: {body}");
            }
            assert!(!html.contains("<b>missing</b>"), "{html}");
        }
        let (_, text, html) = t.render(&params(EmailKind::ImageRejected)).unwrap();
        assert!(text.contains("Reason: <b>missing</b> docs"));
        assert!(html.contains("&lt;b&gt;missing&lt;&#x2f;b&gt; docs"), "{html}");
    }

    #[test]
    fn a_template_in_the_directory_replaces_the_built_in_one() {
        let dir = std::env::temp_dir().join(format!("geonex-templates-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("image_approved.subject.j2"), "Welcome aboard, {{ user_name }}: {{ image_name }}").unwrap();
        let t = EmailTemplates::load(Some(&dir)).unwrap();
        let (subject, text, _) = t.render(&params(EmailKind::ImageApproved)).unwrap();
        assert_eq!(subject, "Welcome aboard, ada: geonex/fire:1.5");
        assert!(text.contains("has been approved"), "the other parts stay built in");
        std::fs::write(dir.join("image_rejected.txt.j2"), "{% if %}").unwrap();
        assert!(EmailTemplates::load(Some(&dir)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
