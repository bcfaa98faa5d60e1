-- Core schema: runners, the commands that change them, containers and images.
-- CHECK constraints encode the state machines of the design; `revision` columns
-- come from one sequence so describe endpoints can compute a cheap ETag with an
-- index-only max().

create sequence geonex_revision;

create function geonex_touch() returns trigger language plpgsql as $$
begin
    new.revision := nextval('geonex_revision');
    new.updated_at := now();
    return new;
end $$;

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
    last_heartbeat_at timestamptz,
    revision          bigint not null default 0,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    constraint runner_desired_state_check
        check (desired_state in ('running', 'stopped', 'deleted')),
    constraint runner_observed_state_check
        check (observed_state in ('requested', 'pending', 'running', 'stopping', 'stopped',
                                  'shutting-down', 'terminated', 'failed')),
    constraint runner_instance_id_check
        check (instance_id is null or instance_id ~ '^i-[0-9a-f]{8,17}$')
);
create unique index runner_instance_id_key on runner (instance_id) where instance_id is not null;
create index runner_revision_idx on runner (revision);
create trigger runner_touch before insert or update on runner
    for each row execute function geonex_touch();

create table command (
    command_id      uuid primary key,
    seq             bigint generated always as identity,
    action          text not null,
    runner_id       text references runner (runner_id),
    params          jsonb not null,
    status          text not null default 'queued',
    attempts        integer not null default 0,
    max_attempts    integer not null,
    last_error      text,
    result          jsonb,
    requested_by    text not null,
    idempotency_key text,
    trace_id        text not null,
    lease_until     timestamptz,
    next_attempt_at timestamptz,
    published_at    timestamptz,
    revision        bigint not null default 0,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    constraint command_seq_key unique (seq),
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
create trigger command_touch before insert or update on command
    for each row execute function geonex_touch();

create table image (
    image_name   text primary key,
    owner        text not null,
    status       text not null default 'pending',
    description  text not null default '',
    organization text not null default '',
    reason       text,
    revision     bigint not null default 0,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    decided_at   timestamptz,
    constraint image_status_check check (status in ('pending', 'approved', 'rejected')),
    constraint image_decided_check check ((status = 'pending') = (decided_at is null))
);
create trigger image_touch before insert or update on image
    for each row execute function geonex_touch();

create table container (
    container_id uuid primary key,
    runner_id    text not null references runner (runner_id),
    instance_id  text,
    image_name   text not null,
    status       text not null default 'running',
    exit_code    integer,
    input_url    text,
    log_tail     text,
    revision     bigint not null default 0,
    started_at   timestamptz not null default now(),
    finished_at  timestamptz,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    constraint container_status_check check (status in ('running', 'exited', 'failed', 'killed')),
    constraint container_finished_check check ((status = 'running') = (finished_at is null)),
    constraint container_exit_code_check check (status <> 'exited' or exit_code is not null)
);
create index container_runner_idx on container (runner_id, started_at);
create index container_revision_idx on container (revision);
create trigger container_touch before insert or update on container
    for each row execute function geonex_touch();
