-- Users, their roles, and bearer tokens (login sessions and service accounts),
-- as in the Postgres migration of the same number. Passwords are stored only as
-- argon2id PHC strings, tokens only as SHA-256 of their secret part.

create table app_user (
    user_id       text primary key,
    user_name     text not null,
    display_name  text not null,
    email         text not null,
    role          text not null,
    password_hash text,
    revision      integer not null default 0,
    created_at    text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint app_user_role_check check (role in ('admin', 'operator', 'user')),
    -- case-sensitive, as Postgres `like` is (SQLite's is not)
    constraint app_user_password_hash_check
        check (password_hash is null or substr(password_hash, 1, 10) = '$argon2id$')
);
-- SQLite checks the unique indexes of a table newest first; creating the e-mail
-- index first makes a clash on both fields report the user name, as Postgres does.
create unique index app_user_email_key on app_user (lower(email));
create unique index app_user_user_name_key on app_user (lower(user_name));
create index app_user_revision_idx on app_user (revision);

create trigger app_user_touch_insert after insert on app_user begin
    update geonex_revision set value = value + 1;
    update app_user set revision = (select value from geonex_revision) where rowid = new.rowid;
end;
create trigger app_user_touch_update after update on app_user when new.revision = old.revision begin
    update geonex_revision set value = value + 1;
    update app_user set revision = (select value from geonex_revision),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where rowid = new.rowid;
end;

create table api_token (
    token_id     text primary key,
    secret_hash  blob not null,
    user_id      text references app_user (user_id) on delete cascade,
    -- a service account's name; login tokens have a user instead
    name         text,
    role         text not null,
    expires_at   text,
    revoked_at   text,
    created_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint api_token_role_check check (role in ('admin', 'operator', 'user')),
    constraint api_token_owner_check check ((user_id is null) <> (name is null)),
    constraint api_token_hash_check check (typeof(secret_hash) = 'blob' and length(secret_hash) = 32)
);
create index api_token_user_idx on api_token (user_id);
