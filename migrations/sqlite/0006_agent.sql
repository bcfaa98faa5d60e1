-- The on-instance agent, as in the Postgres migration of the same number:
-- per-runner tokens (only the SHA-256 of the secret is kept) and the ids of the
-- events already applied, so a resent event is a no-op.

create table agent_token (
    token_id    text primary key,
    runner_id   text not null references runner (runner_id),
    -- the command whose user data carries this token
    command_id  text not null,
    secret_hash blob not null,
    created_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at  text
);
create index agent_token_runner_idx on agent_token (runner_id) where revoked_at is null;

create table runner_event (
    event_id     text primary key,
    runner_id    text not null references runner (runner_id),
    kind         text not null,
    container_id text,
    received_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint runner_event_kind_check
        check (kind in ('container_started', 'container_finished', 'heartbeat')),
    constraint runner_event_container_check
        check (kind = 'heartbeat' or container_id is not null)
);

create index container_started_idx on container (started_at, container_id);
