-- Claims' settings (SPEC "Claims"): pg_idem.default_ttl, pg_idem.max_response_size,
-- and idem_status, the read-only look-up. (pg_idem.wait_timeout waits for
-- another session: specs/claim-timeout.spec; pg_idem.allow_autocommit:
-- sql/claim_autocommit.sql.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

-- The defaults a newcomer gets.
SELECT name, setting, unit, context FROM pg_settings
WHERE name IN ('pg_idem.default_ttl', 'pg_idem.wait_timeout', 'pg_idem.max_response_size', 'pg_idem.allow_autocommit')
ORDER BY name;

-- An omitted ttl takes pg_idem.default_ttl in force at call time; ttl =>
-- NULL is forever; an explicit ttl wins. idem_begin and idem_claim_many alike.
BEGIN;
SELECT idem_claim('ttl-default');
SET LOCAL pg_idem.default_ttl = '7 days';
SELECT idem_claim('ttl-set');
SELECT status FROM idem_begin('ttl-begin');
SELECT key, claimed FROM idem_claim_many(ARRAY['ttl-many']);
SELECT idem_claim('ttl-never', ttl => NULL);
SELECT idem_claim('ttl-explicit', ttl => '1 hour');
COMMIT;
SELECT key, expires_at - claimed_at AS ttl FROM idem_claims WHERE key LIKE 'ttl-%' ORDER BY key;
SELECT idem_default_ttl();

-- The setting is checked when set, with a message that says what it takes.
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SET pg_idem.default_ttl = 'soon'$$,
    $$SET pg_idem.default_ttl = '0'$$,
    $$SET pg_idem.default_ttl = '-1 hour'$$,
    $$SET pg_idem.default_ttl = '1 day -1 hour'$$,
    $$SET pg_idem.default_ttl = '90 minutes'$$
]) AS sql;
RESET pg_idem.default_ttl;

-- A response larger than pg_idem.max_response_size is refused (54000),
-- naming the key, its size and the limit; one within it is stored.
SET pg_idem.max_response_size = '1kB';
BEGIN;
SELECT status FROM idem_begin('big');
SAVEPOINT s;
SELECT pg_temp.error_of($$SELECT idem_finish('big', 'default', to_jsonb(repeat('x', 2000)))$$);
SELECT idem_finish('big', 'default', to_jsonb(repeat('x', 1000)));
COMMIT;
SELECT length(response #>> '{}') AS stored FROM idem_claims WHERE key = 'big';
RESET pg_idem.max_response_size;

-- idem_status: absent, done (with its times and response), absent again once
-- expired; an uncommitted claim is invisible to it, as to any reader.
BEGIN;
SELECT status FROM idem_begin('st-1', 'orders');
SELECT idem_finish('st-1', 'orders', '{"order_id": 7}');
COMMIT;
SELECT status, expires_at - claimed_at AS ttl, response FROM idem_status('st-1', 'orders');
SELECT status, claimed_at, expires_at, response FROM idem_status('st-1');
SELECT status, claimed_at, expires_at, response FROM idem_status('never-seen', 'orders');
BEGIN;
SELECT idem_claim('st-2', 'orders', '1 millisecond');
COMMIT;
SELECT pg_sleep(0.01);
SELECT status FROM idem_status('st-2', 'orders');
-- It writes nothing: it runs in a read-only transaction.
BEGIN READ ONLY;
SELECT status FROM idem_status('st-1', 'orders');
COMMIT;
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT * FROM idem_status(NULL)$$,
    $$SELECT * FROM idem_status('k', NULL)$$,
    $$SELECT * FROM idem_status('')$$
]) AS sql;
-- It looks the key up by the primary key.
EXPLAIN (COSTS OFF) SELECT * FROM idem_claims WHERE key_hash = idem_key_hash('orders', 'st-1') AND key = 'st-1';
