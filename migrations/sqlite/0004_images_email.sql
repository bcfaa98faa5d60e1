-- Image registration and e-mail delivery, as in the Postgres migration of the
-- same number. An image remembers its applicant's account (for the decision
-- e-mail) and who decided it; `email_delivery` records each e-mail command's send
-- so that a command run again after the server accepted its message does not
-- send it twice.
--
-- SQLite cannot add CHECK constraints to a table, so `image` is rebuilt with its
-- new constraints, its rows copied as they are (revisions included), and its
-- touch triggers recreated. The applicant's account is added to the rebuilt
-- table, so copying the rows does not need `app_user`.

create table image_new (
    image_name    text primary key,
    owner         text not null,
    status        text not null default 'pending',
    description   text not null default '',
    organization  text not null default '',
    reason        text,
    revision      integer not null default 0,
    created_at    text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    decided_at    text,
    decided_by    text,
    constraint image_status_check check (status in ('pending', 'approved', 'rejected')),
    constraint image_decided_check check ((status = 'pending') = (decided_at is null)),
    constraint image_name_check check (length(image_name) between 1 and 255),
    constraint image_description_check check (length(description) <= 2000),
    constraint image_organization_check check (length(organization) <= 200),
    -- a reason and a decider belong to a decision only
    constraint image_decision_check
        check (status <> 'pending' or (reason is null and decided_by is null))
);
insert into image_new (image_name, owner, status, description, organization, reason, revision,
                       created_at, updated_at, decided_at)
    select image_name, owner, status, description, organization, reason, revision,
           created_at, updated_at, decided_at
    from image;
drop table image;
alter table image_new rename to image;
alter table image add column owner_user_id text references app_user (user_id) on delete set null;

create trigger image_touch_insert after insert on image begin
    update geonex_revision set value = value + 1;
    update image set revision = (select value from geonex_revision) where rowid = new.rowid;
end;
create trigger image_touch_update after update on image when new.revision = old.revision begin
    update geonex_revision set value = value + 1;
    update image set revision = (select value from geonex_revision),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;

create index image_revision_idx on image (revision);
create index image_status_idx on image (status, image_name);
create index image_owner_idx on image (owner, image_name);
create index runner_image_name_idx on runner (image_name);

create table email_delivery (
    command_id  text primary key references command (command_id),
    message_id  text not null,
    recipient   text not null,
    status      text not null default 'sending',
    -- attempts at the SMTP transaction, including ones whose outcome is unknown
    sends       integer not null default 1,
    smtp_reply  text,
    created_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    sent_at     text,
    constraint email_delivery_status_check check (status in ('sending', 'sent')),
    constraint email_delivery_sent_check check ((status = 'sent') = (sent_at is not null))
);
