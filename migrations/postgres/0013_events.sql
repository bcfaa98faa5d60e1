-- Live updates: every committed change of a runner's state and of a command's
-- status is announced on the `geonex_events` channel, which each API process
-- LISTENs to and streams as server-sent events (`GET /events`). NOTIFY is
-- delivered at commit, in commit order, and never for a rolled-back change.
-- Payloads stay far below NOTIFY's 8000 bytes: errors are cut to 500 characters.
--
-- PostgreSQL serializes the commits of transactions that notified (a lock
-- taken at commit). A deployment that wants no live updates can turn the
-- announcements off without a migration: `alter database … set geonex.events = 'off'`.

create function geonex_notify_runner() returns trigger language plpgsql as $$
begin
    if current_setting('geonex.events', true) = 'off' then
        return null;
    end if;
    perform pg_notify('geonex_events', json_build_object(
        'type', 'runner',
        'runner_id', new.runner_id,
        'runner_name', new.runner_name,
        'observed_state', new.observed_state,
        'previous_state', case when tg_op = 'UPDATE' then old.observed_state end,
        'desired_state', new.desired_state,
        'instance_id', new.instance_id,
        'image_name', new.image_name,
        'instance_type', new.instance_type,
        's3_output', new.s3_output,
        'last_error', left(new.last_error, 500),
        'at', to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text);
    return null;
end $$;

create trigger runner_notify_insert after insert on runner
    for each row execute function geonex_notify_runner();
create trigger runner_notify_update after update on runner
    for each row
    when (old.observed_state is distinct from new.observed_state
          or old.desired_state is distinct from new.desired_state
          or old.instance_id is distinct from new.instance_id)
    execute function geonex_notify_runner();

-- A waiting command is stored as retrying with `waiting_for`: the event says waiting.
create function geonex_notify_command() returns trigger language plpgsql as $$
begin
    if current_setting('geonex.events', true) = 'off' then
        return null;
    end if;
    perform pg_notify('geonex_events', json_build_object(
        'type', 'command',
        'command_id', new.command_id,
        'action', new.action,
        'runner_id', new.runner_id,
        'status', case when new.status = 'retrying' and new.waiting_for is not null then 'waiting' else new.status end,
        'previous_status', case when tg_op = 'UPDATE' then
            case when old.status = 'retrying' and old.waiting_for is not null then 'waiting' else old.status end end,
        'attempts', new.attempts,
        'last_error', left(new.last_error, 500),
        'requested_by', new.requested_by,
        'at', to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text);
    return null;
end $$;

create trigger command_notify_insert after insert on command
    for each row execute function geonex_notify_command();
create trigger command_notify_update after update on command
    for each row
    when (old.status is distinct from new.status or old.waiting_for is distinct from new.waiting_for)
    execute function geonex_notify_command();
