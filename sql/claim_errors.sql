-- Hostile input to the claim functions: every error has its SQLSTATE and
-- names the argument at fault; no NULL answer that reads as "duplicate".
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    -- NULL: 22004
    $$SELECT idem_claim(NULL)$$,
    $$SELECT idem_claim('k', NULL)$$,
    $$SELECT * FROM idem_begin(NULL)$$,
    $$SELECT * FROM idem_begin('k', NULL)$$,
    $$SELECT * FROM idem_begin('k', wait => NULL)$$,
    $$SELECT idem_finish(NULL, 'default', '{}')$$,
    $$SELECT idem_finish('k', NULL, '{}')$$,
    $$SELECT * FROM idem_claim_many(NULL)$$,
    $$SELECT * FROM idem_claim_many(ARRAY['a', NULL, 'c'])$$,
    $$SELECT * FROM idem_claim_many(ARRAY['a'], NULL)$$,
    $$SELECT idem_forget(NULL)$$,
    $$SELECT idem_forget('k', NULL)$$,
    $$SELECT idem_key_hash(NULL, 'k')$$,
    -- empty: 22023
    $$SELECT idem_claim('')$$,
    $$SELECT idem_claim('k', '')$$,
    $$SELECT * FROM idem_begin('')$$,
    $$SELECT * FROM idem_claim_many(ARRAY['a', 'b', ''])$$,
    $$SELECT idem_forget('')$$,
    -- too long: 22001
    $$SELECT idem_claim(repeat('k', 65537))$$,
    $$SELECT idem_claim('k', repeat('s', 129))$$,
    $$SELECT * FROM idem_begin(repeat('k', 65537))$$,
    $$SELECT idem_finish(repeat('k', 65537), 'default', '{}')$$,
    $$SELECT idem_forget(repeat('k', 65537))$$,
    -- ttl: zero, negative, a zero sum of fields, out of range: 22023
    $$SELECT idem_claim('k', 'default', '0')$$,
    $$SELECT idem_claim('k', 'default', '-1 second')$$,
    $$SELECT idem_claim('k', 'default', '1 month -30 days')$$,
    $$SELECT idem_claim('k', 'default', '1 day -86400 seconds')$$,
    -- positive when a month counts 30 days, but a year back and 360 days on
    -- by the calendar lands in the past: refused, not claimed already expired
    $$SELECT idem_claim('k', 'default', '-1 year 360 days 1 second')$$,
    $$SELECT idem_token_issue('default', '-1 year 360 days 1 second')$$,
    $$SELECT idem_lease_acquire('n', 'o', '-1 year 360 days 1 second')$$,
    $$SELECT idem_claim('k', 'default', '1001 years')$$,
    $$SELECT idem_claim('k', 'default', make_interval(years => 2000, days => -700000))$$,
    $$SELECT idem_claim('k', 'default', '178000000 years')$$,
    $$SELECT * FROM idem_begin('k', 'default', '-1 day')$$,
    $$SELECT * FROM idem_claim_many(ARRAY['k'], 'default', '0')$$,
    -- more keys than one batch takes: 54000, before any is looked at
    $$SELECT * FROM idem_claim_many(array_fill(NULL::text, ARRAY[1000001]))$$,
    -- wrong types are refused by PostgreSQL before pg_idem runs
    $$SELECT idem_claim(42)$$,
    $$SELECT idem_claim('k', 'default', 'soon')$$,
    $$SELECT * FROM idem_begin('k', request => 'not json')$$,
    $$SELECT * FROM idem_claim_many('k')$$
]) AS sql;

-- The ttl limits are inclusive where they should be.
SELECT idem_claim('edge-1', 'default', '1 microsecond');
SELECT idem_claim('edge-2', 'default', '1000 years');

-- A read-only transaction cannot claim (25006), even a key that exists.
BEGIN READ ONLY;
SELECT pg_temp.error_of($$SELECT idem_claim('edge-2')$$);
SELECT pg_temp.error_of($$SELECT * FROM idem_begin('new-key')$$);
SELECT pg_temp.error_of($$SELECT * FROM idem_claim_many(ARRAY['new-key'])$$);
SELECT pg_temp.error_of($$SELECT idem_finish('edge-2', 'default', '{}')$$);
SELECT pg_temp.error_of($$SELECT idem_forget('edge-2')$$);
COMMIT;

-- An error deep in the C++ code (element 5000 of a batch) keeps its SQLSTATE,
-- claims nothing of the batch, and leaves the session usable.
SELECT * FROM idem_claim_many(array_append(ARRAY(SELECT 'deep-' || g FROM generate_series(1, 4999) g), repeat('k', 70000)));
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS claimed_from_failed_batch FROM idem_claims WHERE key LIKE 'deep-%';
SELECT idem_claim('after-deep-error');

-- A PostgreSQL error raised underneath the C++ code (statement_timeout,
-- while SPI runs inside the claim loop) keeps its SQLSTATE (57014), leaves
-- nothing half-claimed, and the session goes on.
\set SHOW_CONTEXT never
SET statement_timeout = '300ms';
SELECT count(*) FROM idem_claim_many(ARRAY(SELECT 'slow-' || g FROM generate_series(1, 100000) g));
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
\set SHOW_CONTEXT errors
SELECT count(*) AS claimed_from_cancelled_batch FROM idem_claims WHERE key LIKE 'slow-%';
SELECT idem_claim('after-timeout');

DELETE FROM idem_claims;
