-- Claims: what idem_claim, idem_begin, idem_finish, idem_claim_many and
-- idem_forget do for one session (races are in specs/claim-*.spec).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

-- The first claim wins; a retry is a duplicate.
SELECT idem_claim('order-1');
SELECT idem_claim('order-1');
-- Scopes are separate spaces of keys.
SELECT idem_claim('order-1', 'payments');
SELECT idem_claim('order-1', 'payments');
-- The scope/key boundary is part of the identity: ('ab','c') is not ('a','bc').
SELECT idem_claim('c', 'ab'), idem_claim('bc', 'a');
-- Keys that share a prefix, differ in case, in trailing bytes or in
-- multibyte characters are all different keys.
SELECT k, idem_claim(k, 'near') FROM unnest(ARRAY['key', 'Key', 'KEY', 'key ', 'key  ', 'keyx', 'ke', 'ключ', 'КЛЮЧ']) k;
SELECT count(*) FROM idem_claims WHERE scope = 'near';

-- The claim belongs to the transaction: ROLLBACK removes it.
BEGIN;
SELECT idem_claim('order-2');
ROLLBACK;
SELECT count(*) FROM idem_claims WHERE key = 'order-2';
SELECT idem_claim('order-2');

-- ROLLBACK TO a savepoint taken before the claim removes it too.
BEGIN;
SAVEPOINT before_claim;
SELECT idem_claim('order-3');
ROLLBACK TO SAVEPOINT before_claim;
SELECT count(*) FROM idem_claims WHERE key = 'order-3';
SELECT idem_claim('order-3');
COMMIT;
SELECT idem_claim('order-3');

-- A key this transaction already claimed is a duplicate: its business write
-- is already in this transaction, so it must not run twice.
BEGIN;
SELECT idem_claim('order-4');
SELECT idem_claim('order-4');
COMMIT;

-- TTL: the row remembers when the claim ends.
SELECT idem_claim('order-5', 'default', '1 hour');
SELECT expires_at - claimed_at AS ttl FROM idem_claims WHERE key = 'order-5';
-- An omitted ttl is pg_idem.default_ttl (24 hours); ttl => NULL is forever.
SELECT expires_at - claimed_at AS default_ttl FROM idem_claims WHERE key = 'order-1' AND scope = 'default';
SELECT idem_claim('order-6', ttl => NULL);
SELECT expires_at IS NULL AS forever FROM idem_claims WHERE key = 'order-6';

-- Expiry is judged by the server's clock, not by the transaction's start:
-- inside one transaction a 1 ms claim has expired 10 ms later and can be
-- claimed again; the claim time is the clock's, later than now().
BEGIN;
SELECT idem_claim('blink', 'default', '1 millisecond');
SELECT pg_sleep(0.01);
SELECT idem_claim('blink', 'default', '1 hour');
SELECT idem_claim('blink', 'default', '1 hour');
SELECT claimed_at > now() AS claimed_by_the_clock FROM idem_claims WHERE key = 'blink';
COMMIT;

-- An expired claim behaves as if absent, whether or not the purge has run.
SELECT idem_claim('lapsed', 'default', '1 millisecond');
SELECT pg_sleep(0.01);
SELECT count(*) AS still_stored FROM idem_claims WHERE key = 'lapsed';
SELECT idem_claim('lapsed', ttl => NULL);
SELECT idem_claim('lapsed');
SELECT expires_at IS NULL AS renewed_forever FROM idem_claims WHERE key = 'lapsed';

-- idem_begin / idem_finish: a retry gets the stored response back.
BEGIN;
SELECT * FROM idem_begin('pay-1', 'payments', '1 day', '{"amount": 10, "to": "bob"}');
SELECT idem_finish('pay-1', 'payments', '{"payment_id": 42}');
COMMIT;
-- Equal jsonb is the same request (key order, whitespace, numeric scale).
SELECT * FROM idem_begin('pay-1', 'payments', '1 day', '{"to":"bob",   "amount": 10.0}');
-- No request on either side: nothing to compare, replay.
SELECT * FROM idem_begin('pay-1', 'payments');
-- A different request under the same key: IK001, before anything is replayed.
SELECT pg_temp.error_of($$SELECT * FROM idem_begin('pay-1', 'payments', '1 day', '{"amount": 11, "to": "bob"}')$$);
-- The fingerprint tells structures apart that a hash of jsonb skipping where
-- arrays and objects end takes for one: nesting moved, an element moved
-- into an object, a scalar for a one-element array, a string for a number.
BEGIN;
SELECT * FROM idem_begin('order-78', 'pay', NULL, '{"items": [{"sku": "A"}], "coupon": "X"}');
SELECT idem_finish('order-78', 'pay', '{"order": 78}');
COMMIT;
SELECT r, pg_temp.error_of(format('SELECT * FROM idem_begin(%L, %L, NULL, %L)', 'order-78', 'pay', r))
FROM unnest(ARRAY['{"items": [{"sku": "A", "coupon": "X"}]}', '{"items": [{"sku": "A"}, "coupon", "X"]}',
                  '{"items": [{"sku": "A"}], "coupon": ["X"]}', '{"items": {"sku": "A"}, "coupon": "X"}',
                  '{"items": [{"sku": "A"}], "coupon": "X", "": null}', '{"items": [{"sku": "A"}], "coupon": 1}']) r;
BEGIN;
SELECT * FROM idem_begin('nest', 'pay', NULL, '{"a": {"b": 1}, "c": 2}');
COMMIT;
SELECT pg_temp.error_of($$SELECT * FROM idem_begin('nest', 'pay', NULL, '{"a": {"b": 1, "c": 2}}')$$);
SELECT * FROM idem_begin('scalar', 'pay', NULL, '1');
SELECT pg_temp.error_of($$SELECT * FROM idem_begin('scalar', 'pay', NULL, '[1]')$$);
SELECT pg_temp.error_of($$SELECT * FROM idem_begin('scalar', 'pay', NULL, '"1"')$$);
-- Equal values are one request, however written.
SELECT * FROM idem_begin('order-78', 'pay', NULL, '{"coupon":"X","items":[{"sku":"A"}]}');
SELECT * FROM idem_begin('scalar', 'pay', NULL, '1.000');
-- A claim made without a request replays for any request.
SELECT idem_claim('pay-2', 'payments');
SELECT * FROM idem_begin('pay-2', 'payments', NULL, '{"amount": 1}');
-- Nothing stored: replay with a NULL response.
SELECT status, response IS NULL AS no_response FROM idem_begin('pay-2', 'payments');
-- wait => false without contention answers like wait => true.
SELECT * FROM idem_begin('pay-3', 'payments', wait => false);
SELECT * FROM idem_begin('pay-3', 'payments', wait => false);
-- The stored response is only what idem_finish stored, in the claiming
-- transaction; it can be overwritten there, and is returned as stored.
BEGIN;
SELECT * FROM idem_begin('pay-4', 'payments');
SELECT idem_finish('pay-4', 'payments', '{"try": 1}');
SELECT idem_finish('pay-4', 'payments', '{"try": 2}');
SELECT * FROM idem_begin('pay-4', 'payments');
COMMIT;
SELECT * FROM idem_begin('pay-4', 'payments');

-- idem_finish needs a claim that this transaction holds (IK002): none at all,
-- one committed by an earlier transaction, one rolled back to a savepoint.
SELECT pg_temp.error_of($$SELECT idem_finish('never-claimed', 'payments', '{}')$$);
SELECT pg_temp.error_of($$SELECT idem_finish('pay-1', 'payments', '{}')$$);
BEGIN;
SAVEPOINT s;
SELECT idem_claim('pay-5', 'payments');
ROLLBACK TO SAVEPOINT s;
SELECT pg_temp.error_of($$SELECT idem_finish('pay-5', 'payments', '{}')$$);
COMMIT;
-- A claim taken in a released savepoint still belongs to the transaction.
BEGIN;
SAVEPOINT s;
SELECT idem_claim('pay-6', 'payments');
RELEASE SAVEPOINT s;
SELECT idem_finish('pay-6', 'payments', '{"ok": true}');
COMMIT;
SELECT * FROM idem_begin('pay-6', 'payments');

-- The same through nested savepoints and idem_begin's own subtransaction
-- (wait => false): what the transaction claimed is what a subtransaction that
-- was not rolled back claimed, never what a row's xmin says.
BEGIN;
SAVEPOINT outer_s;
SAVEPOINT inner_s;
SELECT status FROM idem_begin('pay-7', 'payments', wait => false);
RELEASE SAVEPOINT inner_s;
RELEASE SAVEPOINT outer_s;
SELECT idem_finish('pay-7', 'payments', '{"ok": 7}');
SAVEPOINT s;
SELECT idem_claim('pay-8', 'payments');
SAVEPOINT t;
SELECT idem_claim('pay-9', 'payments');
ROLLBACK TO SAVEPOINT s;
SELECT pg_temp.error_of($$SELECT idem_finish('pay-8', 'payments', '{}')$$);
COMMIT;
BEGIN;
SELECT idem_claim('pay-10', 'payments');
SAVEPOINT s;
SELECT idem_claim('pay-11', 'payments');
ROLLBACK TO SAVEPOINT s;
SELECT idem_finish('pay-10', 'payments', '{"ok": 10}');
SELECT pg_temp.error_of($$SELECT idem_finish('pay-11', 'payments', '{}')$$);
COMMIT;
SELECT key, response FROM idem_claims WHERE key IN ('pay-7', 'pay-8', 'pay-9', 'pay-10', 'pay-11') ORDER BY key;
-- A claim forgotten by its own transaction holds nothing to finish.
BEGIN;
SELECT idem_claim('pay-12', 'payments'), idem_forget('pay-12', 'payments');
SELECT pg_temp.error_of($$SELECT idem_finish('pay-12', 'payments', '{}')$$);
COMMIT;

-- idem_claim_many: one row per distinct key, in the caller's order.
SELECT idem_claim('m-2', 'batch');
SELECT * FROM idem_claim_many(ARRAY['m-1', 'm-2', 'm-3', 'm-1', 'm-3'], 'batch');
SELECT * FROM idem_claim_many(ARRAY['m-3', 'm-4'], 'batch', '1 hour');
SELECT * FROM idem_claim_many(ARRAY[]::text[], 'batch');
-- Rolled back with the transaction like single claims.
BEGIN;
SELECT * FROM idem_claim_many(ARRAY['m-5', 'm-6'], 'batch');
ROLLBACK;
SELECT * FROM idem_claim_many(ARRAY['m-6', 'm-5'], 'batch');

-- idem_forget: true when a live claim existed; the key can be claimed again.
SELECT idem_forget('order-1');
SELECT idem_forget('order-1');
SELECT idem_claim('order-1');
SELECT idem_claim('forgettable', 'default', '1 millisecond');
SELECT pg_sleep(0.01);
SELECT idem_forget('forgettable') AS forgot_an_expired_claim;

-- Keys of 8 KiB and up to the documented maximum (64 KiB) work.
SELECT idem_claim(repeat('x', 8192)), idem_claim(repeat('x', 8192));
SELECT idem_claim(repeat('y', 65536)), idem_claim(repeat('y', 65536));
SELECT * FROM idem_begin(repeat('z', 20000), 'payments');
SELECT idem_claim(repeat('s', 128), repeat('s', 128));

-- The index holds the first 128 bits of SHA-256 over the scope's length,
-- the scope and the key (src/core/key.hpp).
SELECT idem_key_hash('default', 'k1') =
       encode(substr(sha256('\x00000007'::bytea || convert_to('default', 'UTF8') || convert_to('k1', 'UTF8')), 1, 16), 'hex')::uuid
       AS hash_is_sha256_prefix;
SELECT count(*) = count(DISTINCT idem_key_hash(scope, key)) AS hashes_distinct FROM idem_claims;

DELETE FROM idem_claims;
