-- Cost control: who owns a runner, how it is bought, the history its cost is
-- computed from, and monthly budgets.
--
-- `runner_state_change` logs every change of a runner's observed state with
-- the instance type and purchase option it was billed at, stamped with the
-- observation's time (`observed_at`: an EC2 event's own time, or now): a
-- runner's running intervals, and so its cost, follow from it exactly. A
-- trigger writes it, so no writer can forget to.

alter table runner add column owner text;
alter table runner add column purchase_option text not null default 'on-demand';
alter table runner add column fallback_instance_types text not null default '';
alter table runner add column idle_stop_after_secs integer;
-- What the current instance really is (a fallback type, on-demand after a spot
-- shortage); null: as asked.
alter table runner add column launched_instance_type text;
alter table runner add column launched_purchase_option text;
alter table runner add constraint runner_purchase_option_check
    check (purchase_option in ('on-demand', 'spot', 'spot-or-on-demand'));
alter table runner add constraint runner_idle_stop_check check (idle_stop_after_secs is null or idle_stop_after_secs > 0);
update runner set owner = (select c.requested_by from command c where c.runner_id = runner.runner_id order by c.seq limit 1);

create table runner_state_change (
    change_id       bigint generated always as identity primary key,
    runner_id       text not null references runner (runner_id),
    instance_id     text,
    state           text not null,
    instance_type   text not null,
    purchase_option text not null,
    at              timestamptz not null
);
create index runner_state_change_runner_idx on runner_state_change (runner_id, at);
create index runner_state_change_at_idx on runner_state_change (at);

create function runner_state_log() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.observed_state is distinct from old.observed_state
       or new.instance_id is distinct from old.instance_id
       or new.launched_instance_type is distinct from old.launched_instance_type
       or new.launched_purchase_option is distinct from old.launched_purchase_option then
        insert into runner_state_change (runner_id, instance_id, state, instance_type, purchase_option, at)
        values (new.runner_id, new.instance_id, new.observed_state,
                coalesce(new.launched_instance_type, new.instance_type),
                coalesce(new.launched_purchase_option, new.purchase_option),
                coalesce(new.observed_at, now()));
    end if;
    return null;
end $$;
create trigger runner_state_log after insert or update on runner
    for each row execute function runner_state_log();

insert into runner_state_change (runner_id, instance_id, state, instance_type, purchase_option, at)
select runner_id, instance_id, observed_state, instance_type, purchase_option, coalesce(observed_at, updated_at)
from runner;

create table budget (
    budget_id   uuid primary key,
    scope       text not null,
    subject     text not null,
    monthly_usd double precision not null,
    set_by      text not null,
    -- what the last check found this month (the API refuses starts from it)
    spent_usd   double precision not null default 0,
    spent_month text,
    checked_at  timestamptz,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint budget_scope_check check (scope in ('user', 'image')),
    constraint budget_amount_check check (monthly_usd >= 0),
    constraint budget_subject_key unique (scope, subject)
);

-- A crossing of 80% or 100% of a budget in a month, recorded once: its notices
-- and stops are queued in the same transaction.
create table budget_notice (
    budget_id  uuid not null references budget (budget_id),
    month      text not null,
    level      integer not null,
    spent_usd  double precision not null,
    created_at timestamptz not null default now(),
    constraint budget_notice_level_check check (level in (80, 100)),
    primary key (budget_id, month, level)
);
