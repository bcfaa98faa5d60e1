-- When the observation behind a runner's observed_state was made, so a late EC2
-- state-change event cannot move the state backwards (as the Postgres migration
-- of the same number).
--
-- An applied EC2 event sets observed_at to the event's time. Every other writer
-- (commands, the reconciliation sweep) leaves it alone and this trigger stamps
-- the change with the current time: whenever observed_state changes and
-- observed_at does not advance, observed_at becomes now. NULL means nothing has
-- been observed yet (and any event applies).

alter table runner add column observed_at text;

create trigger runner_observed_touch after update of observed_state on runner
    when new.observed_state is not old.observed_state
     and (new.observed_at is null or (old.observed_at is not null and new.observed_at <= old.observed_at))
begin
    update runner set observed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;
