-- The EC2 request budget, shared by every worker process: one row per token
-- bucket (account/region/bucket). A call takes its tokens in one atomic UPDATE
-- that first refills the bucket for the time since it last changed; tokens may
-- go below zero for the slow buckets (RunInstances, StartInstances), which is a
-- reservation: the caller makes its call once the debt is repaid. `factor`
-- scales the refill after EC2 throttled a call and grows back over time.
--
-- A command that reserved a call records which and when, so it does not pay
-- twice when it comes back at its reserved time.

create table rate_bucket (
    name       text primary key,
    tokens     double precision not null,
    factor     double precision not null default 1,
    updated_at timestamptz not null default now(),
    constraint rate_bucket_factor_check check (factor > 0 and factor <= 1)
);

alter table command add column budget_op text;
alter table command add column budget_at timestamptz;
