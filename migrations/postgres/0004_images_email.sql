-- Image registration and e-mail delivery.
-- An image remembers its applicant's account (for the decision e-mail) and who
-- decided it; `email_delivery` records each e-mail command's send so that a
-- command run again after the server accepted its message does not send it twice.

alter table image
    add column owner_user_id uuid references app_user (user_id) on delete set null,
    add column decided_by    text,
    add constraint image_name_check check (char_length(image_name) between 1 and 255),
    add constraint image_description_check check (char_length(description) <= 2000),
    add constraint image_organization_check check (char_length(organization) <= 200),
    -- a reason and a decider belong to a decision only
    add constraint image_decision_check
        check (status <> 'pending' or (reason is null and decided_by is null));
create index image_revision_idx on image (revision);
create index image_status_idx on image (status, image_name);
create index image_owner_idx on image (owner, image_name);
create index runner_image_name_idx on runner (image_name);

create table email_delivery (
    command_id  uuid primary key references command (command_id),
    message_id  text not null,
    recipient   text not null,
    status      text not null default 'sending',
    -- attempts at the SMTP transaction, including ones whose outcome is unknown
    sends       integer not null default 1,
    smtp_reply  text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    sent_at     timestamptz,
    constraint email_delivery_status_check check (status in ('sending', 'sent')),
    constraint email_delivery_sent_check check ((status = 'sent') = (sent_at is not null))
);
