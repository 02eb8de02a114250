-- Anti-replay tokens: every outcome and error. Races: specs/token-race.spec,
-- test/t/008_token_race.pl (200 tokens, 8 clients).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

-- Issued tokens are random version 4 UUIDs.
SELECT idem_token_issue() AS t1 \gset
SELECT idem_token_issue() AS t2 \gset
SELECT :'t1'::uuid <> :'t2'::uuid AS distinct_tokens, substr(:'t1', 15, 1) AS uuid_version;
-- Consumed once: true, then false forever.
SELECT idem_token_consume(:'t1');
SELECT idem_token_consume(:'t1') AS second_try;
-- Consumption is transactional: a rollback gives the token back.
BEGIN;
SELECT idem_token_consume(:'t2');
ROLLBACK;
SELECT idem_token_consume(:'t2') AS after_rollback;
-- ... and ROLLBACK TO SAVEPOINT too.
SELECT idem_token_issue('checkout') AS t3 \gset
BEGIN;
SAVEPOINT s;
SELECT idem_token_consume(:'t3', 'checkout');
ROLLBACK TO SAVEPOINT s;
SELECT idem_token_consume(:'t3', 'checkout') AS after_savepoint_rollback;
COMMIT;
-- Twice in one transaction: only the first.
SELECT idem_token_issue() AS t4 \gset
BEGIN;
SELECT idem_token_consume(:'t4'), idem_token_consume(:'t4');
COMMIT;

-- Wrong scope, unknown token, expired token: false.
SELECT idem_token_issue('checkout') AS t5 \gset
SELECT idem_token_consume(:'t5', 'other') AS wrong_scope, idem_token_consume(:'t5', 'checkout') AS right_scope;
SELECT idem_token_consume('00000000-0000-4000-8000-000000000000') AS unknown;
SELECT idem_token_issue('default', '1 millisecond') AS t6 \gset
SELECT pg_sleep(0.01);
SELECT idem_token_consume(:'t6') AS expired;
-- An expired token nobody consumed stays until the purge.
SELECT idem_token_issue('default', '1 millisecond') AS t6b \gset
SELECT pg_sleep(0.01);
SELECT count(*) AS expired_row_still_stored FROM idem_tokens WHERE token = :'t6b';
SELECT idem_purge() >= 1 AS purged;
SELECT count(*) AS expired_row_purged FROM idem_tokens WHERE token = :'t6b';
-- Expiry is judged by the clock, not by the transaction's start: a token
-- issued and left to expire inside one transaction is refused there.
BEGIN;
SELECT idem_token_issue('default', '20 milliseconds') AS t6c \gset
SELECT pg_sleep(0.05);
SELECT idem_token_consume(:'t6c') AS expired_within_the_transaction;
COMMIT;
-- ttl NULL: never expires.
SELECT idem_token_issue('default', NULL) AS t7 \gset
SELECT expires_at IS NULL AS forever FROM idem_tokens WHERE token = :'t7';
-- The default ttl is an hour.
SELECT idem_token_issue('default') AS t8 \gset
SELECT expires_at - issued_at AS default_ttl FROM idem_tokens WHERE token = :'t8';

-- Hostile input.
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT idem_token_issue(NULL)$$,
    $$SELECT idem_token_issue('')$$,
    $$SELECT idem_token_issue(repeat('s', 129))$$,
    $$SELECT idem_token_issue('default', '0')$$,
    $$SELECT idem_token_issue('default', '-1 hour')$$,
    $$SELECT idem_token_issue('default', '5000 years')$$,
    $$SELECT idem_token_consume(NULL)$$,
    $$SELECT idem_token_consume('00000000-0000-4000-8000-000000000000', NULL)$$,
    $$SELECT idem_token_consume('00000000-0000-4000-8000-000000000000', '')$$,
    $$SELECT idem_token_consume('not-a-uuid')$$
]) AS sql;
BEGIN READ ONLY;
SELECT pg_temp.error_of($$SELECT idem_token_issue()$$);
SELECT pg_temp.error_of($$SELECT idem_token_consume('00000000-0000-4000-8000-000000000000')$$);
COMMIT;

DELETE FROM idem_tokens;
