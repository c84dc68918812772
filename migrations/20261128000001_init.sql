-- Users, sessions, refresh tokens and security events. Postgres is the source of
-- truth; Redis only mirrors the active sessions for the edge.

create table app_user (
    id uuid primary key,
    username text not null,
    password_hash text not null,
    -- Set by logout-everywhere: sessions authenticated at or before it are dead.
    sessions_not_before timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint app_user_username_key unique (username)
);

create table session (
    id uuid primary key,
    user_id uuid not null references app_user (id) on delete cascade,
    scope text not null,
    user_agent text,
    ip text,
    created_at timestamptz not null default now(),
    last_used_at timestamptz not null default now(),
    -- Absolute end of the session.
    expires_at timestamptz not null,
    -- Expiry of the newest access token: lets a flushed Redis be rebuilt with the
    -- right TTLs.
    access_expires_at timestamptz not null,
    revoked_at timestamptz,
    revoked_reason text
);
create index session_user_id_idx on session (user_id);
create index session_active_idx on session (access_expires_at) where revoked_at is null;

create table refresh_token (
    id uuid primary key,
    session_id uuid not null references session (id) on delete cascade,
    -- SHA-256 of the token: the token itself is never stored.
    token_hash bytea not null,
    created_at timestamptz not null default now(),
    -- Set when this token was exchanged for its successor, with who did it: on reuse
    -- the security event names both requests.
    rotated_at timestamptz,
    rotated_ip text,
    rotated_user_agent text,
    -- The successor, XOR-sealed under a key only the holder of this token can derive,
    -- so a retry inside the grace window gets the same successor back. Cleared once the
    -- window has passed.
    child_sealed bytea,
    constraint refresh_token_token_hash_key unique (token_hash)
);
create index refresh_token_session_id_idx on refresh_token (session_id);

create table security_event (
    id bigint generated always as identity primary key,
    kind text not null,
    user_id uuid,
    session_id uuid,
    ip text,
    user_agent text,
    detail jsonb not null default '{}',
    created_at timestamptz not null default now()
);
create index security_event_session_id_idx on security_event (session_id);
