//! SQLite adapter of the `images` port: registration, decisions and their
//! notification commands, each step in one write transaction.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::domain::ImageRef;
use crate::store::StoreError;
use crate::store::email::{EmailKind, EmailParams};
use crate::store::images::{
    Decision, ImageChange, ImageDecision, ImageError, ImageQuery, ImageRecord, ImageStatus, ImageStore, NewImage,
};
use crate::store::sqlite::email::insert_email_command;
use crate::store::sqlite::{NOW, SqliteStore, uuid_text};

/// Every image column plus the number of live runners using the image.
const IMAGE_SELECT: &str = "select i.image_name, i.owner, i.status, i.description, i.organization, i.reason, \
     i.decided_by, i.created_at, i.updated_at, i.decided_at, \
     (select count(*) from runner r where r.image_name = i.image_name and r.desired_state <> 'deleted') as runners \
     from image i";

fn image_from_row(r: &SqliteRow) -> Result<ImageRecord, StoreError> {
    let name: String = r.try_get("image_name")?;
    let status: String = r.try_get("status")?;
    let status = ImageStatus::parse(&status)
        .ok_or_else(|| StoreError::Other(format!("unexpected image status {status:?} in database")))?;
    let parsed = ImageRef::parse(&name).ok();
    Ok(ImageRecord {
        repository: parsed.as_ref().map(|p| p.repository().to_owned()).unwrap_or_else(|| name.clone()),
        tag: parsed.as_ref().and_then(|p| p.tag().map(str::to_owned)),
        digest: parsed.as_ref().and_then(|p| p.digest().map(str::to_owned)),
        image_name: name,
        owner: r.try_get("owner")?,
        status,
        description: r.try_get("description")?,
        organization: r.try_get("organization")?,
        reason: r.try_get("reason")?,
        decided_by: r.try_get("decided_by")?,
        runners: r.try_get("runners")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        decided_at: r.try_get("decided_at")?,
    })
}

async fn image_in(tx: &mut Transaction<'_, Sqlite>, name: &str) -> Result<ImageRecord, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!("{IMAGE_SELECT} where i.image_name = ?1")))
        .bind(name)
        .fetch_one(&mut **tx)
        .await?;
    image_from_row(&row)
}

#[async_trait]
impl ImageStore for SqliteStore {
    async fn register_image(&self, image: NewImage) -> Result<ImageChange, ImageError> {
        let mut tx = self.write_tx().await?;
        // A new name is inserted; the applicant's own rejected image goes back to
        // pending (a resubmission); anything else is left alone and refused.
        let done = sqlx::query(AssertSqlSafe(format!(
            "insert into image (image_name, owner, owner_user_id, status, description, organization) \
             values (?1, ?2, ?3, 'pending', ?4, ?5) \
             on conflict (image_name) do update set status = 'pending', description = excluded.description, \
               organization = excluded.organization, reason = null, decided_by = null, decided_at = null, \
               created_at = {NOW} \
             where image.status = 'rejected' and image.owner = excluded.owner"
        )))
        .bind(image.image_name.as_str())
        .bind(&image.owner)
        .bind(image.owner_user_id.map(uuid_text))
        .bind(&image.description)
        .bind(&image.organization)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if done.rows_affected() == 0 {
            return Err(ImageError::Exists(image.image_name.into_inner()));
        }
        let recipients = if image.notify.is_empty() {
            sqlx::query_scalar::<_, String>("select email from app_user where role = 'admin' order by lower(email)")
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from)?
        } else {
            image.notify.clone()
        };
        let mut emails = Vec::with_capacity(recipients.len());
        for to in recipients {
            let params = EmailParams {
                kind: EmailKind::ImageRegistered,
                to,
                image_name: image.image_name.as_str().to_owned(),
                user_name: image.owner.clone(),
                reason: None,
                description: Some(image.description.clone()),
                organization: Some(image.organization.clone()),
            };
            if let Some(c) = insert_email_command(&mut tx, Uuid::now_v7(), &params, &image.origin, None).await? {
                emails.push(c);
            }
        }
        let record = image_in(&mut tx, image.image_name.as_str()).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(ImageChange { image: record, emails })
    }

    async fn decide_image(&self, d: ImageDecision) -> Result<ImageChange, ImageError> {
        // The write transaction holds the image as Postgres's `for update` does.
        let mut tx = self.write_tx().await?;
        let name = d.image_name.as_str();
        let current = sqlx::query(
            "select i.status, i.owner, u.email from image i left join app_user u on u.user_id = i.owner_user_id \
             where i.image_name = ?1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(current) = current else { return Err(ImageError::NotFound(name.to_owned())) };
        let status: String = current.try_get("status").map_err(StoreError::from)?;
        if status != "pending" {
            let status = ImageStatus::parse(&status).map(ImageStatus::as_str).unwrap_or("decided");
            return Err(ImageError::AlreadyDecided { name: name.to_owned(), status });
        }
        let (new_status, kind) = match d.decision {
            Decision::Approve => (ImageStatus::Approved, EmailKind::ImageApproved),
            Decision::Reject => (ImageStatus::Rejected, EmailKind::ImageRejected),
        };
        sqlx::query(AssertSqlSafe(format!(
            "update image set status = ?2, reason = ?3, decided_by = ?4, decided_at = {NOW} where image_name = ?1"
        )))
        .bind(name)
        .bind(new_status.as_str())
        .bind(&d.reason)
        .bind(&d.origin.requested_by)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let owner: String = current.try_get("owner").map_err(StoreError::from)?;
        let email: Option<String> = current.try_get("email").map_err(StoreError::from)?;
        let mut emails = Vec::new();
        if let Some(to) = email {
            let params = EmailParams {
                kind,
                to,
                image_name: name.to_owned(),
                user_name: owner,
                reason: d.reason.clone(),
                description: None,
                organization: None,
            };
            if let Some(c) = insert_email_command(&mut tx, Uuid::now_v7(), &params, &d.origin, None).await? {
                emails.push(c);
            }
        }
        let record = image_in(&mut tx, name).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(ImageChange { image: record, emails })
    }

    async fn get_image(&self, image_name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("{IMAGE_SELECT} where i.image_name = ?1")))
            .bind(image_name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| image_from_row(&r)).transpose()
    }

    async fn list_images(&self, q: &ImageQuery) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{IMAGE_SELECT} where (?1 is null or i.status = ?1) and (?2 is null or i.owner = ?2) \
             and (?3 is null or i.image_name > ?3) order by i.image_name limit ?4"
        )))
        .bind(q.status.map(ImageStatus::as_str))
        .bind(&q.owner)
        .bind(&q.after_image_name)
        .bind(q.limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(image_from_row).collect()
    }

    async fn images_revision(&self) -> Result<i64, StoreError> {
        // Runner rows count too: the `runners` column of an image follows them.
        Ok(sqlx::query_scalar(
            "select max((select coalesce(max(revision), 0) from image), \
                        (select coalesce(max(revision), 0) from runner))",
        )
        .fetch_one(self.pool())
        .await?)
    }
}
