-- Live updates (as the Postgres migration of the same number, which uses
-- NOTIFY): every change of a runner's state and of a command's status is
-- appended to `event_log` in the transaction that makes it, so it is visible
-- exactly when it is committed. The API reads the log from its cursor and
-- streams it as server-sent events; rows older than a minute are pruned.

create table event_log (
    event_id   integer primary key autoincrement,
    payload    text not null,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create index event_log_created_at_idx on event_log (created_at);

create trigger runner_event_insert after insert on runner begin
    insert into event_log (payload) values (json_object(
        'type', 'runner',
        'runner_id', new.runner_id,
        'runner_name', new.runner_name,
        'observed_state', new.observed_state,
        'previous_state', null,
        'desired_state', new.desired_state,
        'instance_id', new.instance_id,
        'image_name', new.image_name,
        'instance_type', new.instance_type,
        's3_output', new.s3_output,
        'last_error', substr(new.last_error, 1, 500),
        'at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
end;

create trigger runner_event_update after update on runner
    when old.observed_state is not new.observed_state
      or old.desired_state is not new.desired_state
      or old.instance_id is not new.instance_id
begin
    insert into event_log (payload) values (json_object(
        'type', 'runner',
        'runner_id', new.runner_id,
        'runner_name', new.runner_name,
        'observed_state', new.observed_state,
        'previous_state', old.observed_state,
        'desired_state', new.desired_state,
        'instance_id', new.instance_id,
        'image_name', new.image_name,
        'instance_type', new.instance_type,
        's3_output', new.s3_output,
        'last_error', substr(new.last_error, 1, 500),
        'at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
end;

create trigger command_event_insert after insert on command begin
    insert into event_log (payload) values (json_object(
        'type', 'command',
        'command_id', new.command_id,
        'action', new.action,
        'runner_id', new.runner_id,
        'status', new.status,
        'previous_status', null,
        'attempts', new.attempts,
        'last_error', substr(new.last_error, 1, 500),
        'requested_by', new.requested_by,
        'at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
end;

create trigger command_event_update after update on command
    when old.status is not new.status or old.waiting_for is not new.waiting_for
begin
    insert into event_log (payload) values (json_object(
        'type', 'command',
        'command_id', new.command_id,
        'action', new.action,
        'runner_id', new.runner_id,
        'status', case when new.status = 'retrying' and new.waiting_for is not null then 'waiting' else new.status end,
        'previous_status', case when old.status = 'retrying' and old.waiting_for is not null then 'waiting' else old.status end,
        'attempts', new.attempts,
        'last_error', substr(new.last_error, 1, 500),
        'requested_by', new.requested_by,
        'at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
end;
