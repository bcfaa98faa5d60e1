-- Who holds a running command, and whether that holder is still alive (as the
-- Postgres migration of the same number).

create table worker_process (
    worker_id    text primary key,
    hostname     text not null,
    pid          integer not null,
    version      text not null,
    started_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    heartbeat_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create index worker_process_heartbeat_idx on worker_process (heartbeat_at);

alter table command add column lease_holder text;
alter table command add column claimed_at text;
create index command_lease_holder_idx on command (lease_holder) where status = 'running';
