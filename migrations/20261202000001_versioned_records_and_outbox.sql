-- Versioned session records, the store outbox, and an index for every periodic query.

-- Bumped in every statement that changes a session: the version of its record or
-- tombstone in the store, so a late write of an older state never lands (DESIGN.md §3).
alter table session add column version bigint not null default 1;

-- What must reach the store after a commit, written in the committing statement and
-- deleted once done: by the origin that committed it, or by any other if that one
-- failed or died (origin/src/publish.rs).
create table store_outbox (
    id bigint generated always as identity primary key,
    user_id uuid not null,
    -- The session whose record or tombstone to write; null: the user's not-before.
    session_id uuid,
    created_at timestamptz not null default now()
);

-- The cleanup's deletes (origin/src/tasks.rs) and the rebuild's reads, by index.
create index session_expires_at_idx on session (expires_at);
create index session_revoked_at_idx on session (revoked_at) where revoked_at is not null;
create index refresh_token_created_at_idx on refresh_token (created_at);
create index refresh_token_sealed_idx on refresh_token (rotated_at) where child_sealed is not null;
create index security_event_created_at_idx on security_event (created_at);
create index security_event_user_id_idx on security_event (user_id);
create index app_user_not_before_idx on app_user (sessions_not_before) where sessions_not_before is not null;
