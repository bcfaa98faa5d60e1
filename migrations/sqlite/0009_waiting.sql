-- Commands that wait without holding a worker, and tasks one worker runs per
-- interval (as the Postgres migration of the same number). SQLite cannot add a
-- CHECK to an existing table; the store writes `waiting_for` only on retrying
-- commands, which the contract tests check on both databases.

alter table command add column waiting_for text;

create table periodic_task (
    name        text primary key,
    next_run_at text not null
);
