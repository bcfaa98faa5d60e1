//! Postgres adapter of the e-mail store: `send_email` commands and their
//! delivery records.

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::Action;
use crate::store::email::{DeliveryRecord, DeliveryStatus, EmailParams, EmailStore, NewEmailCommand};
use crate::store::postgres::{COMMAND_COLUMNS, PgStore, command_from_row};
use crate::store::same_request;
use crate::store::{CommandRecord, StoreError, SubmitError, Submitted};

/// Inserts a queued `send_email` command in the caller's transaction. `None`
/// when the idempotency key is already taken.
pub(super) async fn insert_email_command(
    tx: &mut Transaction<'_, Postgres>,
    command_id: Uuid,
    params: &EmailParams,
    origin: &crate::store::email::CommandOrigin,
    idempotency_key: Option<&str>,
) -> Result<Option<CommandRecord>, StoreError> {
    let params = serde_json::to_value(params).map_err(|e| StoreError::Other(format!("e-mail params: {e}")))?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "insert into command (command_id, action, runner_id, params, status, max_attempts, requested_by, \
         idempotency_key, trace_id) values ($1, $2, null, $3, 'queued', $4, $5, $6, $7) \
         on conflict (requested_by, idempotency_key) where idempotency_key is not null do nothing \
         returning {COMMAND_COLUMNS}"
    )))
    .bind(command_id)
    .bind(Action::SendEmail.as_str())
    .bind(&params)
    .bind(origin.max_attempts)
    .bind(&origin.requested_by)
    .bind(idempotency_key)
    .bind(&origin.trace_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| command_from_row(&r)).transpose()
}

fn delivery_from_row(r: &sqlx::postgres::PgRow) -> Result<DeliveryRecord, StoreError> {
    let status: String = r.try_get("status")?;
    let status = match status.as_str() {
        "sending" => DeliveryStatus::Sending,
        "sent" => DeliveryStatus::Sent,
        other => return Err(StoreError::Other(format!("unexpected delivery status {other:?} in database"))),
    };
    Ok(DeliveryRecord {
        command_id: r.try_get("command_id")?,
        message_id: r.try_get("message_id")?,
        recipient: r.try_get("recipient")?,
        status,
        sends: r.try_get("sends")?,
        smtp_reply: r.try_get("smtp_reply")?,
        sent_at: r.try_get("sent_at")?,
    })
}

#[async_trait]
impl EmailStore for PgStore {
    async fn submit_email(&self, cmd: NewEmailCommand) -> Result<Submitted, SubmitError> {
        let params = serde_json::to_value(&cmd.params).map_err(|e| StoreError::Other(format!("e-mail params: {e}")))?;
        // Two tries: a concurrent request with the same key may commit between
        // the insert that found it taken and the lookup.
        for _ in 0..2 {
            let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
            let inserted =
                insert_email_command(&mut tx, cmd.command_id, &cmd.params, &cmd.origin, cmd.idempotency_key.as_deref())
                    .await?;
            if let Some(command) = inserted {
                tx.commit().await.map_err(StoreError::from)?;
                return Ok(Submitted { command, created: true });
            }
            tx.rollback().await.map_err(StoreError::from)?;
            let Some(key) = &cmd.idempotency_key else { break };
            let existing = sqlx::query(AssertSqlSafe(format!(
                "select {COMMAND_COLUMNS} from command where requested_by = $1 and idempotency_key = $2"
            )))
            .bind(&cmd.origin.requested_by)
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::from)?;
            if let Some(row) = existing {
                return same_request(command_from_row(&row)?, Action::SendEmail, &params);
            }
        }
        Err(SubmitError::Store(StoreError::Other("e-mail command could not be recorded".into())))
    }

    async fn admin_emails(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("select email from app_user where role = 'admin' order by lower(email)")
            .fetch_all(self.pool())
            .await?)
    }

    async fn delivery(&self, command_id: Uuid) -> Result<Option<DeliveryRecord>, StoreError> {
        let row = sqlx::query(
            "select command_id, message_id, recipient, status, sends, smtp_reply, sent_at \
             from email_delivery where command_id = $1",
        )
        .bind(command_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| delivery_from_row(&r)).transpose()
    }

    async fn begin_delivery(&self, command_id: Uuid, message_id: &str, recipient: &str) -> Result<(), StoreError> {
        sqlx::query(
            "insert into email_delivery (command_id, message_id, recipient) values ($1, $2, $3) \
             on conflict (command_id) do update set sends = email_delivery.sends + 1, updated_at = now() \
             where email_delivery.status = 'sending'",
        )
        .bind(command_id)
        .bind(message_id)
        .bind(recipient)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn mark_sent(&self, command_id: Uuid, smtp_reply: &str) -> Result<(), StoreError> {
        sqlx::query(
            "update email_delivery set status = 'sent', smtp_reply = $2, sent_at = now(), updated_at = now() \
             where command_id = $1 and status = 'sending'",
        )
        .bind(command_id)
        .bind(smtp_reply)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
