//! The e-mail port: `send_email` commands and their delivery records.

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::Action;
use crate::store::email::{CommandOrigin, DeliveryRecord, DeliveryStatus, EmailParams, EmailStore, NewEmailCommand};
use crate::store::sql::rows::{self, command_columns};
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};
use crate::store::commands::{CommandRecord, SubmitError, Submitted, same_request};
use crate::store::error::StoreError;

static INSERT_EMAIL_COMMAND: Sql = Sql::new(concat!(
    "insert into command (command_id, action, runner_id, params, status, max_attempts, requested_by, \
     idempotency_key, trace_id) values ($1, $2, null, $3, 'queued', $4, $5, $6, $7) \
     on conflict (requested_by, idempotency_key) where idempotency_key is not null do nothing returning ",
    command_columns!()
));
static COMMAND_BY_KEY: Sql = Sql::new(concat!(
    "select ",
    command_columns!(),
    " from command where requested_by = $1 and idempotency_key = $2"
));
pub(super) static ADMIN_EMAILS: Sql =
    Sql::new("select email from app_user where role = 'admin' order by lower(email)");
static DELIVERY: Sql = Sql::new(
    "select command_id, message_id, recipient, status, sends, smtp_reply, sent_at from email_delivery \
     where command_id = $1",
);
static BEGIN_DELIVERY: Sql = Sql::new(
    "insert into email_delivery (command_id, message_id, recipient) values ($1, $2, $3) \
     on conflict (command_id) do update set sends = email_delivery.sends + 1, updated_at = {now} \
     where email_delivery.status = 'sending'",
);
static MARK_SENT: Sql = Sql::new(
    "update email_delivery set status = 'sent', smtp_reply = $2, sent_at = {now}, updated_at = {now} \
     where command_id = $1 and status = 'sending'",
);

fn params_json(params: &EmailParams) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(params).map_err(|e| StoreError::corrupt("e-mail params", e))
}

/// Inserts a queued `send_email` command in the caller's connection or
/// transaction. `None` when the idempotency key is already taken.
pub(super) async fn insert_email_command<C: Conn>(
    conn: &mut C,
    command_id: Uuid,
    params: &EmailParams,
    origin: &CommandOrigin,
    idempotency_key: Option<&str>,
) -> Result<Option<CommandRecord>, StoreError> {
    let args = args![
        command_id,
        Action::SendEmail.as_str(),
        params_json(params)?,
        origin.max_attempts,
        &origin.requested_by,
        idempotency_key,
        &origin.trace_id,
    ];
    conn.fetch_optional(&INSERT_EMAIL_COMMAND, args).await?.map(|r| rows::command(&r)).transpose()
}

/// The admin addresses, in the order notices go out.
pub(super) async fn admin_emails<C: Conn>(conn: &mut C) -> Result<Vec<String>, StoreError> {
    conn.fetch_all(&ADMIN_EMAILS, vec![]).await?.iter().map(|r| r.text("email")).collect()
}

fn delivery(r: &impl Row) -> Result<DeliveryRecord, StoreError> {
    let status = match r.text("status")?.as_str() {
        "sending" => DeliveryStatus::Sending,
        "sent" => DeliveryStatus::Sent,
        other => return Err(StoreError::corrupt("delivery status", other)),
    };
    Ok(DeliveryRecord {
        command_id: r.uuid("command_id")?,
        message_id: r.text("message_id")?,
        recipient: r.text("recipient")?,
        status,
        sends: r.i32("sends")?,
        smtp_reply: r.opt_text("smtp_reply")?,
        sent_at: r.opt_time("sent_at")?,
    })
}

#[async_trait]
impl<D: Driver> EmailStore for SqlStore<D> {
    async fn submit_email(&self, cmd: NewEmailCommand) -> Result<Submitted, SubmitError> {
        let params = params_json(&cmd.params)?;
        let key = cmd.idempotency_key.as_deref();
        // Two tries: a concurrent request with the same key may commit between
        // the insert that found it taken and the lookup.
        for _ in 0..2 {
            let mut conn = self.driver.conn().await?;
            if let Some(command) =
                insert_email_command(&mut conn, cmd.command_id, &cmd.params, &cmd.origin, key).await?
            {
                return Ok(Submitted { command, created: true });
            }
            let Some(key) = key else { break };
            if let Some(row) = conn.fetch_optional(&COMMAND_BY_KEY, args![&cmd.origin.requested_by, key]).await? {
                return same_request(rows::command(&row)?, Action::SendEmail, &params);
            }
        }
        Err(SubmitError::Store(StoreError::Setup("the e-mail command could not be recorded".into())))
    }

    async fn admin_emails(&self) -> Result<Vec<String>, StoreError> {
        admin_emails(&mut self.driver.conn().await?).await
    }

    async fn delivery(&self, command_id: Uuid) -> Result<Option<DeliveryRecord>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&DELIVERY, args![command_id]).await?;
        row.map(|r| delivery(&r)).transpose()
    }

    async fn begin_delivery(&self, command_id: Uuid, message_id: &str, recipient: &str) -> Result<(), StoreError> {
        self.driver.conn().await?.execute(&BEGIN_DELIVERY, args![command_id, message_id, recipient]).await?;
        Ok(())
    }

    async fn mark_sent(&self, command_id: Uuid, smtp_reply: &str) -> Result<(), StoreError> {
        self.driver.conn().await?.execute(&MARK_SENT, args![command_id, smtp_reply]).await?;
        Ok(())
    }
}
