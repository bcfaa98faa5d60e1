//! The image port: registration, decisions, and the notices each step queues,
//! in one transaction per step.

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::ImageRef;
use crate::store::error::StoreError;
use crate::store::email::{EmailKind, EmailParams};
use crate::store::images::{
    Decision, ImageChange, ImageDecision, ImageError, ImageQuery, ImageRecord, ImageStatus, ImageStore, NewImage,
};
use crate::store::sql::email::{admin_emails, insert_email_command};
use crate::store::sql::rows::parsed;
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};

/// Every image column plus the number of live runners using the image.
macro_rules! image_select {
    () => {
        "select i.image_name, i.owner, i.status, i.description, i.organization, i.reason, i.decided_by, \
         i.created_at, i.updated_at, i.decided_at, \
         (select count(*) from runner r where r.image_name = i.image_name and r.desired_state <> 'deleted') \
           as runners \
         from image i"
    };
}

static IMAGE: Sql = Sql::new(concat!(image_select!(), " where i.image_name = $1"));
/// A new name is inserted; the applicant's own rejected image goes back to
/// pending (a resubmission); anything else is left alone and refused.
static REGISTER: Sql = Sql::new(
    "insert into image (image_name, owner, owner_user_id, status, description, organization) \
     values ($1, $2, $3, 'pending', $4, $5) \
     on conflict (image_name) do update set status = 'pending', description = excluded.description, \
       organization = excluded.organization, reason = null, decided_by = null, decided_at = null, \
       created_at = {now} \
     where image.status = 'rejected' and image.owner = excluded.owner",
);
static FOR_DECISION: Sql = Sql::new(
    "select i.status, i.owner, u.email from image i left join app_user u on u.user_id = i.owner_user_id \
     where i.image_name = $1 {for_update_of i}",
);
static DECIDE: Sql = Sql::new(
    "update image set status = $2, reason = $3, decided_by = $4, decided_at = {now} where image_name = $1",
);
static STATUS: Sql = Sql::new("select status from image where image_name = $1");
static LIST: Sql = Sql::new(concat!(
    image_select!(),
    " where ($1 is null or i.status = $1) and ($2 is null or i.owner = $2) \
     and ($3 is null or i.image_name > $3) order by i.image_name limit $4"
));
/// Runner rows count too: the `runners` column of an image follows them.
static REVISION: Sql = Sql::new(
    "select {greatest}((select coalesce(max(revision), 0) from image), \
                       (select coalesce(max(revision), 0) from runner)) as revision",
);

fn image(r: &impl Row) -> Result<ImageRecord, StoreError> {
    let name = r.text("image_name")?;
    let parsed_name = ImageRef::parse(&name).ok();
    Ok(ImageRecord {
        repository: parsed_name.as_ref().map(|p| p.repository().to_owned()).unwrap_or_else(|| name.clone()),
        tag: parsed_name.as_ref().and_then(|p| p.tag().map(str::to_owned)),
        digest: parsed_name.as_ref().and_then(|p| p.digest().map(str::to_owned)),
        image_name: name,
        owner: r.text("owner")?,
        status: parsed("image status", r.text("status")?, ImageStatus::parse)?,
        description: r.text("description")?,
        organization: r.text("organization")?,
        reason: r.opt_text("reason")?,
        decided_by: r.opt_text("decided_by")?,
        runners: r.int("runners")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        decided_at: r.opt_time("decided_at")?,
    })
}

async fn image_in<C: Conn>(conn: &mut C, name: &str) -> Result<ImageRecord, StoreError> {
    image(&conn.fetch_one(&IMAGE, args![name]).await?)
}

#[async_trait]
impl<D: Driver> ImageStore for SqlStore<D> {
    async fn register_image(&self, new: NewImage) -> Result<ImageChange, ImageError> {
        let mut tx = self.driver.begin().await?;
        let name = new.image_name.as_str();
        let args = args![name, &new.owner, new.owner_user_id, &new.description, &new.organization];
        if tx.execute(&REGISTER, args).await? == 0 {
            return Err(ImageError::Exists(name.to_owned()));
        }
        let recipients = if new.notify.is_empty() { admin_emails(&mut tx).await? } else { new.notify.clone() };
        let mut emails = Vec::with_capacity(recipients.len());
        for to in recipients {
            let params = EmailParams {
                kind: EmailKind::ImageRegistered,
                to,
                image_name: name.to_owned(),
                user_name: new.owner.clone(),
                reason: None,
                description: Some(new.description.clone()),
                organization: Some(new.organization.clone()),
            };
            if let Some(c) = insert_email_command(&mut tx, Uuid::now_v7(), &params, &new.origin, None).await? {
                emails.push(c);
            }
        }
        let record = image_in(&mut tx, name).await?;
        tx.commit().await?;
        Ok(ImageChange { image: record, emails })
    }

    async fn decide_image(&self, d: ImageDecision) -> Result<ImageChange, ImageError> {
        let mut tx = self.driver.begin().await?;
        let name = d.image_name.as_str();
        let Some(current) = tx.fetch_optional(&FOR_DECISION, args![name]).await? else {
            return Err(ImageError::NotFound(name.to_owned()));
        };
        let status = current.text("status")?;
        if status != ImageStatus::Pending.as_str() {
            let status = ImageStatus::parse(&status).map(ImageStatus::as_str).unwrap_or("decided");
            return Err(ImageError::AlreadyDecided { name: name.to_owned(), status });
        }
        let (new_status, kind) = match d.decision {
            Decision::Approve => (ImageStatus::Approved, EmailKind::ImageApproved),
            Decision::Reject => (ImageStatus::Rejected, EmailKind::ImageRejected),
        };
        tx.execute(&DECIDE, args![name, new_status.as_str(), &d.reason, &d.origin.requested_by]).await?;
        let mut emails = Vec::new();
        // The applicant hears the decision, if their account has an address.
        if let Some(to) = current.opt_text("email")? {
            let params = EmailParams {
                kind,
                to,
                image_name: name.to_owned(),
                user_name: current.text("owner")?,
                reason: d.reason.clone(),
                description: None,
                organization: None,
            };
            if let Some(c) = insert_email_command(&mut tx, Uuid::now_v7(), &params, &d.origin, None).await? {
                emails.push(c);
            }
        }
        let record = image_in(&mut tx, name).await?;
        tx.commit().await?;
        Ok(ImageChange { image: record, emails })
    }

    async fn get_image(&self, image_name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&IMAGE, args![image_name]).await?;
        row.map(|r| image(&r)).transpose()
    }

    async fn image_status(&self, image_name: &str) -> Result<Option<ImageStatus>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&STATUS, args![image_name]).await?;
        row.map(|r| parsed("image status", r.text("status")?, ImageStatus::parse)).transpose()
    }

    async fn list_images(&self, q: &ImageQuery) -> Result<Vec<ImageRecord>, StoreError> {
        let args = args![q.status.map(ImageStatus::as_str), &q.owner, &q.after_image_name, q.limit];
        self.driver.conn().await?.fetch_all(&LIST, args).await?.iter().map(image).collect()
    }

    async fn images_revision(&self) -> Result<i64, StoreError> {
        self.driver.conn().await?.fetch_one(&REVISION, vec![]).await?.int("revision")
    }
}
