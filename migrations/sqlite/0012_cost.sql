-- Cost control (as the Postgres migration of the same number). SQLite cannot
-- add CHECKs to an existing table: the store only writes the purchase options
-- and idle times the API validated.

alter table runner add column owner text;
alter table runner add column purchase_option text not null default 'on-demand';
alter table runner add column fallback_instance_types text not null default '';
alter table runner add column idle_stop_after_secs integer;
alter table runner add column launched_instance_type text;
alter table runner add column launched_purchase_option text;
update runner set owner = (select c.requested_by from command c where c.runner_id = runner.runner_id order by c.seq limit 1);

create table runner_state_change (
    change_id       integer primary key autoincrement,
    runner_id       text not null references runner (runner_id),
    instance_id     text,
    state           text not null,
    instance_type   text not null,
    purchase_option text not null,
    at              text not null
);
create index runner_state_change_runner_idx on runner_state_change (runner_id, at);
create index runner_state_change_at_idx on runner_state_change (at);

create trigger runner_state_log_insert after insert on runner begin
    insert into runner_state_change (runner_id, instance_id, state, instance_type, purchase_option, at)
    values (new.runner_id, new.instance_id, new.observed_state,
            coalesce(new.launched_instance_type, new.instance_type),
            coalesce(new.launched_purchase_option, new.purchase_option),
            coalesce(new.observed_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
end;
-- The observation's time is the event's when it advanced observed_at, else now
-- (the touch trigger of 0007 stamps observed_at after this one may have run).
create trigger runner_state_log_update after update on runner
    when new.observed_state is not old.observed_state
      or new.instance_id is not old.instance_id
      or new.launched_instance_type is not old.launched_instance_type
      or new.launched_purchase_option is not old.launched_purchase_option
begin
    insert into runner_state_change (runner_id, instance_id, state, instance_type, purchase_option, at)
    values (new.runner_id, new.instance_id, new.observed_state,
            coalesce(new.launched_instance_type, new.instance_type),
            coalesce(new.launched_purchase_option, new.purchase_option),
            case when new.observed_at is not null and (old.observed_at is null or new.observed_at > old.observed_at)
                 then new.observed_at else strftime('%Y-%m-%dT%H:%M:%fZ', 'now') end);
end;

insert into runner_state_change (runner_id, instance_id, state, instance_type, purchase_option, at)
select runner_id, instance_id, observed_state, instance_type, purchase_option, coalesce(observed_at, updated_at)
from runner;

create table budget (
    budget_id   text primary key,
    scope       text not null,
    subject     text not null,
    monthly_usd real not null,
    set_by      text not null,
    spent_usd   real not null default 0,
    spent_month text,
    checked_at  text,
    created_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint budget_scope_check check (scope in ('user', 'image')),
    constraint budget_amount_check check (monthly_usd >= 0),
    constraint budget_subject_key unique (scope, subject)
);

create table budget_notice (
    budget_id  text not null references budget (budget_id),
    month      text not null,
    level      integer not null,
    spent_usd  real not null,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint budget_notice_level_check check (level in (80, 100)),
    primary key (budget_id, month, level)
);
