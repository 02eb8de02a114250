-- The attack of hardening finding 1: pg_idem in public, and a role that may
-- create objects there (the database owner in PostgreSQL 15, PUBLIC in
-- databases created before 15). Its objects do not try to run as the
-- extension's owner (security_public.sql has those); they try to make
-- pg_idem's statements ambiguous (42725) or mean something else, for every
-- role: an overload of the claim hash with a default argument (the reported
-- attack: every claim failed with "function public.idem_key_hash(text, text)
-- is not unique", also from cached plans after the next ANALYZE), overloads
-- of the functions pg_idem calls, operators on the types its statements
-- compare, and a type named like one its statements cast to. (An overload of
-- idem_claim itself would make the application's own calls ambiguous, as it
-- would for any function in a schema others may create in: README
-- "Security" says to install pg_idem in a schema of its own then.)
\i settings.psql

BEGIN;
SELECT plan(8);

CREATE EXTENSION pg_idem;
CREATE ROLE idem_tap_overloader LOGIN;
CREATE ROLE idem_tap_victim LOGIN;
GRANT CREATE ON SCHEMA public TO idem_tap_overloader;

-- Plans prepared before the attack, to be used after it.
SELECT idem_claim('before'), idem_claim('before');
CREATE TEMP TABLE expected_hash AS SELECT idem_key_hash('default', 'after') AS h;

SET ROLE idem_tap_overloader;
CREATE FUNCTION public.idem_key_hash(scope text, key text, salt int DEFAULT 0) RETURNS uuid
LANGUAGE sql IMMUTABLE AS 'SELECT NULL::uuid';
CREATE FUNCTION public.unnest(anyarray, extra int DEFAULT 0) RETURNS SETOF anyelement
LANGUAGE sql AS 'SELECT NULL';
CREATE FUNCTION public.sum(bigint, extra int DEFAULT 0) RETURNS bigint LANGUAGE sql AS 'SELECT NULL::bigint';
CREATE FUNCTION public.uuid_never_equal(a uuid, b uuid) RETURNS boolean LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.uuid_never_equal);
CREATE FUNCTION public.ts_never_le(a timestamptz, b timestamptz) RETURNS boolean LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR public.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = public.ts_never_le);
CREATE DOMAIN public.uuid AS pg_catalog.text;
RESET ROLE;
ANALYZE idem_claims;

SELECT is(idem_claim('after') AND NOT idem_claim('after'), true,
          'as the superuser: a new key and its duplicate, with the overloads in place');
SELECT is(idem_claim('before'), false,
          'a plan prepared before the attack still answers (after ANALYZE)');
SET ROLE idem_tap_victim;
SELECT is(idem_claim('victim'), true, 'as another role: a new key');
SELECT is((SELECT string_agg(key || '=' || claimed, ',' ORDER BY key)
           FROM idem_claim_many(ARRAY['victim', 'batch-1', 'batch-2'])),
          'batch-1=true,batch-2=true,victim=false', 'idem_claim_many');
SELECT is((SELECT status FROM idem_begin('begun', request => '{"a": 1}')), 'new',
          'idem_begin');
SELECT lives_ok($$SELECT idem_finish('begun', 'default', '{"r": 1}')$$, 'idem_finish');
RESET ROLE;
SELECT is(idem_forget('victim'), true, 'idem_forget');
SELECT is((SELECT key_hash FROM idem_claims WHERE key = 'after'), (SELECT h FROM expected_hash),
          'the stored hash is the one idem_key_hash computes');

SELECT * FROM finish();
ROLLBACK;
