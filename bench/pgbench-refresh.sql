-- The SQL of one refresh rotation, as origin/src/db/sessions.rs runs it for the
-- current token of an active session (rotate_current: one statement, no explicit
-- transaction, the token row's lock taken by its update), for pgbench. The origin
-- passes the refreshes that arrive together as arrays (crate::db::rotations); each
-- pgbench client is one refresh client, so it passes one. Each pgbench client walks
-- its own token chain, as each load connection walks its own session's: the token it
-- presents is `sha256('pgb:<run>:<client>:<step>')` and the successor it writes is
-- step + 1. The origin computes hashes and ids in the application; here Postgres
-- computes them, a few microseconds more per transaction for pgbench. The outbox row
-- the rotation writes is deleted by the origin in batches after its Redis write; here
-- it stays (it only grows the outbox's table).
-- Run with: pgbench -n -M prepared -f bench/pgbench-refresh.sql -D run=R -D step=0
\set next :step + 1
with i as (
       select * from unnest(
                array[sha256(convert_to('pgb:' || :run::text || ':' || :client_id::text || ':' || :step::text, 'UTF8'))],
                array['127.0.0.1'], array['pgbench'],
                array['\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea],
                array[gen_random_uuid()],
                array[sha256(convert_to('pgb:' || :run::text || ':' || :client_id::text || ':' || :next::text, 'UTF8'))])
           with ordinality as i (token_hash, ip, user_agent, sealed, child_id, child_hash, n)),
     claimed as (
       update refresh_token t set rotated_at = now(), rotated_ip = i.ip, rotated_user_agent = i.user_agent,
                                  child_sealed = i.sealed
         from i, session s
        where t.token_hash = i.token_hash and t.rotated_at is null and s.id = t.session_id
          and s.revoked_at is null and s.expires_at > now()
          and s.last_used_at + make_interval(secs => 604800) > now()
       returning t.session_id, i.n, i.child_id, i.child_hash),
     child as (
       insert into refresh_token (id, session_id, token_hash) select child_id, session_id, child_hash from claimed),
     s as (
       update session set last_used_at = now(), access_expires_at = now() + make_interval(secs => 900),
                          version = version + 1
        where id in (select session_id from claimed) and revoked_at is null returning *),
     o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id, session_id)
select c.n, s.id, s.user_id, s.scope, s.created_at, s.last_used_at, s.expires_at, s.access_expires_at,
       s.revoked_at, s.version, now() as now, o.id as outbox_id
  from s join claimed c on c.session_id = s.id join o on o.session_id = s.id;
\set step :next
