-- Core schema, as in the Postgres migration of the same number: runners, the
-- commands that change them, images and containers. CHECK constraints encode
-- the same state machines. Times are TEXT in one UTC format
-- (2026-01-02T03:04:05.678Z) so they compare as strings; UUIDs are TEXT.
--
-- `revision` columns come from one counter, bumped by triggers on every insert
-- and update, so describe endpoints compute a cheap ETag with max(revision).

create table geonex_revision (
    id    integer primary key check (id = 1),
    value integer not null
);
insert into geonex_revision (id, value) values (1, 0);

create table runner (
    runner_id         text primary key,
    runner_name       text not null,
    instance_type     text not null,
    image_name        text not null,
    s3_output         text not null,
    instance_id       text,
    desired_state     text not null,
    observed_state    text not null,
    last_error        text,
    last_heartbeat_at text,
    revision          integer not null default 0,
    created_at        text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint runner_desired_state_check
        check (desired_state in ('running', 'stopped', 'deleted')),
    constraint runner_observed_state_check
        check (observed_state in ('requested', 'pending', 'running', 'stopping', 'stopped',
                                  'shutting-down', 'terminated', 'failed')),
    constraint runner_instance_id_check
        check (instance_id is null or (instance_id glob 'i-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]*'
               and length(instance_id) <= 19 and substr(instance_id, 3) not glob '*[^0-9a-f]*'))
);
create unique index runner_instance_id_key on runner (instance_id) where instance_id is not null;
create index runner_revision_idx on runner (revision);

create table command (
    seq             integer primary key autoincrement,
    command_id      text not null unique,
    action          text not null,
    runner_id       text references runner (runner_id),
    params          text not null,
    status          text not null default 'queued',
    attempts        integer not null default 0,
    max_attempts    integer not null,
    last_error      text,
    result          text,
    requested_by    text not null,
    idempotency_key text,
    trace_id        text not null,
    lease_until     text,
    next_attempt_at text,
    published_at    text,
    revision        integer not null default 0,
    created_at      text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at      text,
    finished_at     text,
    constraint command_action_check
        check (action in ('start_runner', 'restart_runner', 'stop_runner', 'delete_runner',
                          'send_email', 's3_usage_scan')),
    constraint command_status_check
        check (status in ('queued', 'running', 'retrying', 'succeeded', 'dead')),
    constraint command_attempts_check check (attempts >= 0 and max_attempts > 0),
    -- a running command is always held by a lease, nothing else is
    constraint command_lease_check check ((status = 'running') = (lease_until is not null)),
    -- terminal states, and only they, carry a finish time
    constraint command_finished_check
        check ((status in ('succeeded', 'dead')) = (finished_at is not null)),
    constraint command_retrying_check check (status <> 'retrying' or next_attempt_at is not null),
    constraint command_runner_check
        check (action not in ('start_runner', 'restart_runner', 'stop_runner', 'delete_runner')
               or runner_id is not null)
);
create unique index command_idempotency_key on command (requested_by, idempotency_key)
    where idempotency_key is not null;
create index command_runner_seq_idx on command (runner_id, seq);
create index command_status_seq_idx on command (status, seq);
create index command_action_seq_idx on command (action, seq);
create index command_unpublished_idx on command (updated_at)
    where published_at is null and status in ('queued', 'retrying');
create index command_lease_idx on command (lease_until) where status = 'running';
create index command_revision_idx on command (revision);

create table image (
    image_name   text primary key,
    owner        text not null,
    status       text not null default 'pending',
    description  text not null default '',
    organization text not null default '',
    reason       text,
    revision     integer not null default 0,
    created_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    decided_at   text,
    constraint image_status_check check (status in ('pending', 'approved', 'rejected')),
    constraint image_decided_check check ((status = 'pending') = (decided_at is null))
);

create table container (
    container_id text primary key,
    runner_id    text not null references runner (runner_id),
    instance_id  text,
    image_name   text not null,
    status       text not null default 'running',
    exit_code    integer,
    input_url    text,
    log_tail     text,
    revision     integer not null default 0,
    started_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at  text,
    created_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint container_status_check check (status in ('running', 'exited', 'failed', 'killed')),
    constraint container_finished_check check ((status = 'running') = (finished_at is null)),
    constraint container_exit_code_check check (status <> 'exited' or exit_code is not null)
);
create index container_runner_idx on container (runner_id, started_at);
create index container_revision_idx on container (revision);

-- The touch triggers: a new revision and updated_at on every insert and update.
-- The inner update changes `revision`, so the `when` clause stops it re-firing.
create trigger runner_touch_insert after insert on runner begin
    update geonex_revision set value = value + 1;
    update runner set revision = (select value from geonex_revision) where rowid = new.rowid;
end;
create trigger runner_touch_update after update on runner when new.revision = old.revision begin
    update geonex_revision set value = value + 1;
    update runner set revision = (select value from geonex_revision),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;
create trigger command_touch_insert after insert on command begin
    update geonex_revision set value = value + 1;
    update command set revision = (select value from geonex_revision) where rowid = new.rowid;
end;
create trigger command_touch_update after update on command when new.revision = old.revision begin
    update geonex_revision set value = value + 1;
    update command set revision = (select value from geonex_revision),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;
create trigger image_touch_insert after insert on image begin
    update geonex_revision set value = value + 1;
    update image set revision = (select value from geonex_revision) where rowid = new.rowid;
end;
create trigger image_touch_update after update on image when new.revision = old.revision begin
    update geonex_revision set value = value + 1;
    update image set revision = (select value from geonex_revision),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;
create trigger container_touch_insert after insert on container begin
    update geonex_revision set value = value + 1;
    update container set revision = (select value from geonex_revision) where rowid = new.rowid;
end;
create trigger container_touch_update after update on container when new.revision = old.revision begin
    update geonex_revision set value = value + 1;
    update container set revision = (select value from geonex_revision),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;
