-- Instances of this deployment's fleet that belong to no live runner, as the
-- reconciliation sweep last saw them (as in the Postgres migration of the same
-- number).
create table orphan_instance (
    instance_id   text primary key,
    runner_id     text,
    state         text not null,
    first_seen_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    reaped_at     text,
    constraint orphan_instance_state_check
        check (state in ('pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated'))
);
