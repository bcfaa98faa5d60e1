-- Reservations as places in a bucket's queue (as the Postgres migration of
-- the same number).

alter table rate_bucket add column issued real not null default 0;
alter table command add column budget_ticket real;
