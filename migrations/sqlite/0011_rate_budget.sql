-- The EC2 request budget (as the Postgres migration of the same number).

create table rate_bucket (
    name       text primary key,
    tokens     real not null,
    factor     real not null default 1,
    updated_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint rate_bucket_factor_check check (factor > 0 and factor <= 1)
);

alter table command add column budget_op text;
alter table command add column budget_at text;
