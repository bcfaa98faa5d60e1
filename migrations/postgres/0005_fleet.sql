-- Instances of this deployment's fleet that belong to no live runner, as the
-- reconciliation sweep last saw them.
create table orphan_instance (
    instance_id   text primary key,
    runner_id     text,
    state         text not null,
    first_seen_at timestamptz not null default now(),
    last_seen_at  timestamptz not null default now(),
    reaped_at     timestamptz,
    constraint orphan_instance_state_check
        check (state in ('pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated'))
);
