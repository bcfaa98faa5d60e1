-- Reservations as places in a bucket's queue rather than times. `issued`
-- counts every token ever taken from the bucket, so `tokens + issued` is what
-- the refill has brought in all (it only grows, and grows slower while the
-- refill is throttled). A command that overdraws the bucket records the
-- `issued` its take left (`budget_ticket`): its call is due once the refill
-- has brought that much. A throttle that shrinks the refill therefore moves
-- every reservation booked before it back, instead of leaving them at times
-- that assumed the old rate.

alter table rate_bucket add column issued double precision not null default 0;
alter table command add column budget_ticket double precision;
