-- S3 output usage, as in the Postgres migration of the same number: one row per
-- scanned output with its totals, and the last S3 event applied to each object
-- key under a scanned output, so that duplicate or out-of-order events count once.

create table s3_usage (
    s3_usage_id      integer primary key autoincrement,
    -- canonical form: `s3://bucket` or `s3://bucket/prefix` without a trailing '/'
    s3_output        text not null,
    bucket           text not null,
    prefix           text not null,
    bytes            integer not null default 0,
    objects          integer not null default 0,
    -- when the listing behind `bytes`/`objects` began: events older than this are in it
    scan_started_at  text,
    scanned_at       text,
    scan_command_id  text,
    last_error       text,
    error_at         text,
    -- false after an object of unknown size was removed: bytes are off until the next scan
    bytes_exact      boolean not null default true,
    -- the scan that holds this output: one scan per output at a time
    lease_command_id text,
    lease_until      text,
    revision         integer not null default 0,
    created_at       text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint s3_usage_s3_output_key unique (s3_output),
    constraint s3_usage_counts_check check (bytes >= 0 and objects >= 0),
    constraint s3_usage_output_check
        check (s3_output = 's3://' || bucket || case when prefix = '' then '' else '/' || prefix end),
    constraint s3_usage_prefix_check check (prefix not like '%/'),
    constraint s3_usage_bytes_exact_check check (bytes_exact in (0, 1)),
    constraint s3_usage_lease_check check ((lease_command_id is null) = (lease_until is null)),
    constraint s3_usage_scanned_check check ((scanned_at is null) = (scan_started_at is null)),
    constraint s3_usage_error_check check ((last_error is null) = (error_at is null))
);
create index s3_usage_bucket_idx on s3_usage (bucket, prefix);
create index s3_usage_revision_idx on s3_usage (revision);

create trigger s3_usage_touch_insert after insert on s3_usage begin
    update geonex_revision set value = value + 1;
    update s3_usage set revision = (select value from geonex_revision) where rowid = new.rowid;
end;
create trigger s3_usage_touch_update after update on s3_usage when new.revision = old.revision begin
    update geonex_revision set value = value + 1;
    update s3_usage set revision = (select value from geonex_revision),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;

create table s3_object (
    s3_object_id integer primary key autoincrement,
    bucket       text not null,
    key          text not null,
    -- whether the newest applied event left the object in place, and its size then
    present      boolean not null,
    size         integer,
    -- ordering token of the newest applied event: 'S' + the S3 sequencer (upper-case,
    -- right-padded), or 'T' + the event time where the source sends no sequencer
    event_order  text not null,
    event_time   text not null,
    created_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint s3_object_bucket_key_key unique (bucket, key),
    constraint s3_object_present_check check (present in (0, 1)),
    constraint s3_object_size_check check (present = (size is not null) and (size is null or size >= 0)),
    constraint s3_object_order_check check (substr(event_order, 1, 1) in ('S', 'T'))
);
create index s3_object_removed_idx on s3_object (bucket, event_time) where not present;
