-- When the observation behind a runner's observed_state was made, so a late EC2
-- state-change event cannot move the state backwards.
--
-- An applied EC2 event sets observed_at to the event's time (nudged forward, so it
-- always advances). Every other writer (commands, the reconciliation sweep) leaves
-- it alone and this trigger stamps the change with now(): whenever observed_state
-- changes and observed_at does not advance, observed_at becomes now(). NULL means
-- nothing has been observed yet (and any event applies).

alter table runner add column observed_at timestamptz;

create function runner_observed_touch() returns trigger language plpgsql as $$
begin
    if new.observed_state is distinct from old.observed_state
       and (new.observed_at is null or new.observed_at <= old.observed_at) then
        new.observed_at := now();
    end if;
    return new;
end $$;

create trigger runner_observed_touch before update on runner
    for each row execute function runner_observed_touch();
