-- Commands that wait without holding a worker, and tasks one worker runs per
-- interval.
--
-- A runner command whose next step depends on the instance (a restart waiting
-- for its instance to stop, a stop of a still-pending instance) releases its
-- worker and comes back later: it is `retrying` with `waiting_for` saying what
-- it waits for, shown as `waiting`. A wait spends no attempt.
--
-- `periodic_task` holds when each cluster-wide periodic task (the instance
-- observer) is next due; a worker runs it only if it moved `next_run_at` first.

alter table command add column waiting_for text;
alter table command add constraint command_waiting_check check (waiting_for is null or status = 'retrying');

create table periodic_task (
    name        text primary key,
    next_run_at timestamptz not null
);
