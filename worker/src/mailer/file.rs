//! File mailer: writes each message as `<command id>.eml` in a directory, for
//! running without a mail server. Rewriting the same file is harmless, so a
//! repeated send never makes two messages.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::mailer::{Email, MailError, Mailer, build_message};

pub struct FileMailer {
    dir: PathBuf,
}

impl FileMailer {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

#[async_trait]
impl Mailer for FileMailer {
    async fn send(&self, from: &lettre::message::Mailbox, email: &Email) -> Result<String, MailError> {
        let message = build_message(from, email)?;
        let name: String = email.message_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let path = self.dir.join(format!("{name}.eml"));
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| MailError::Transient(format!("cannot create {}: {e}", self.dir.display())))?;
        // Written aside and renamed, so a reader never sees half a message.
        let partial = self.dir.join(format!(".{name}.partial"));
        tokio::fs::write(&partial, message.formatted())
            .await
            .map_err(|e| MailError::Transient(format!("cannot write {}: {e}", partial.display())))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| MailError::Transient(format!("cannot write {}: {e}", path.display())))?;
        Ok(format!("written to {}", path.display()))
    }

    fn label(&self) -> String {
        format!("files in {}", self.dir.display())
    }
}
