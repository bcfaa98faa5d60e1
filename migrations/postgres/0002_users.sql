-- Users, their roles, and bearer tokens (login sessions and service accounts).
-- Passwords are stored only as argon2id PHC strings, tokens only as SHA-256 of
-- their secret part.

create table app_user (
    user_id       uuid primary key,
    user_name     text not null,
    display_name  text not null,
    email         text not null,
    role          text not null,
    password_hash text,
    revision      bigint not null default 0,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    constraint app_user_role_check check (role in ('admin', 'operator', 'user')),
    constraint app_user_password_hash_check check (password_hash is null or password_hash like '$argon2id$%')
);
create unique index app_user_user_name_key on app_user (lower(user_name));
create unique index app_user_email_key on app_user (lower(email));
create index app_user_revision_idx on app_user (revision);
create trigger app_user_touch before insert or update on app_user
    for each row execute function geonex_touch();

create table api_token (
    token_id     uuid primary key,
    secret_hash  bytea not null,
    user_id      uuid references app_user (user_id) on delete cascade,
    -- a service account's name; login tokens have a user instead
    name         text,
    role         text not null,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    created_at   timestamptz not null default now(),
    constraint api_token_role_check check (role in ('admin', 'operator', 'user')),
    constraint api_token_owner_check check ((user_id is null) <> (name is null)),
    constraint api_token_hash_check check (octet_length(secret_hash) = 32)
);
create index api_token_user_idx on api_token (user_id);
