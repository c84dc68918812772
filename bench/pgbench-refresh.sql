-- The SQL of one refresh rotation, as origin/src/auth/refresh.rs runs it (same
-- statements, same locks, same order), for pgbench. Each pgbench client walks its
-- own token chain, as each wrk connection walks its own session's: the token it
-- presents is `sha256('pgb:<run>:<client>:<step>')` and the successor it writes is
-- step + 1. The origin computes hashes and ids in the application; here Postgres
-- computes them, a few microseconds more per transaction for pgbench.
-- Run with: pgbench -n -M prepared -f bench/pgbench-refresh.sql -D run=R -D step=0
\set next :step + 1
BEGIN;
select t.id as token_id, t.session_id, t.rotated_at, t.rotated_ip, t.rotated_user_agent, t.child_sealed,
       s.user_id, s.scope, s.created_at, s.last_used_at, s.expires_at, s.revoked_at
  from refresh_token t join session s on s.id = t.session_id
 where t.token_hash = sha256(convert_to('pgb:' || :run::text || ':' || :client_id::text || ':' || :step::text, 'UTF8'))
   for update of s, t \gset r_
with claimed as (
       update refresh_token set rotated_at = now(), rotated_ip = '127.0.0.1', rotated_user_agent = 'pgbench',
              child_sealed = '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea
        where id = :r_token_id and rotated_at is null returning session_id),
     child as (
       insert into refresh_token (id, session_id, token_hash)
       select gen_random_uuid(), session_id,
              sha256(convert_to('pgb:' || :run::text || ':' || :client_id::text || ':' || :next::text, 'UTF8'))
         from claimed),
     touched as (
       update session set last_used_at = now(), access_expires_at = now() + make_interval(secs => 900)
        where id in (select session_id from claimed))
select count(*) from claimed;
COMMIT;
\set step :next
