-- Who holds a running command, and whether that holder is still alive.
--
-- Every worker process registers a row in `worker_process` and refreshes its
-- heartbeat every few seconds; a claim records the claiming process in
-- `command.lease_holder` and the claim time in `claimed_at`. A running command
-- whose holder's heartbeat went stale (the process was killed) is taken over at
-- once, without waiting for its lease to run out; the lease stays as the backstop
-- for holders that never registered.

create table worker_process (
    worker_id    uuid primary key,
    hostname     text not null,
    pid          integer not null,
    version      text not null,
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);
create index worker_process_heartbeat_idx on worker_process (heartbeat_at);

alter table command add column lease_holder uuid;
alter table command add column claimed_at timestamptz;
create index command_lease_holder_idx on command (lease_holder) where status = 'running';
