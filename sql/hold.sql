-- Multi-step requests (SPEC "Multi-step requests"): idem_hold's statuses,
-- recovery points, fencing, completion and abandonment, and how claims and
-- holds share one key space. (Races between sessions: specs/hold-*.spec;
-- clients killed mid-request: test/t/022_hold_crash.pl.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql
\pset null '(null)'
-- Fences are compared with what an earlier call answered: start the
-- sequence where this test expects it.
SELECT setval('idem_hold_fencing', 100, false);

-- new: the caller holds the key, with a fence; in_progress for anyone else
-- while the hold is live (also for idem_begin, and 55P03 for idem_claim).
SELECT * FROM idem_hold('pay-1', 'payments', request => '{"amount": 10}');
SELECT * FROM idem_hold('pay-1', 'payments', request => '{"amount": 10}');
SELECT status FROM idem_status('pay-1', 'payments');
BEGIN;
SELECT * FROM idem_begin('pay-1', 'payments');
SELECT pg_temp.error_of($$SELECT idem_claim('pay-1', 'payments')$$);
SELECT pg_temp.error_of($$SELECT * FROM idem_claim_many(ARRAY['pay-0', 'pay-1'], 'payments')$$);
COMMIT;
-- The request fingerprint rule of idem_begin: IK001 before anything else.
SELECT pg_temp.error_of($$SELECT * FROM idem_hold('pay-1', 'payments', request => '{"amount": 99}')$$);

-- A recovery point commits with the phase's own writes, and rolls back with them.
CREATE TABLE pay_orders (request_key text, fence bigint);
BEGIN;
INSERT INTO pay_orders VALUES ('pay-1', 100);
SELECT idem_checkpoint('pay-1', 'payments', 100, 'ordered', '{"order": 1}');
ROLLBACK;
SELECT phase, state FROM idem_holds WHERE key = 'pay-1';
BEGIN;
INSERT INTO pay_orders VALUES ('pay-1', 100);
SELECT idem_checkpoint('pay-1', 'payments', 100, 'ordered', '{"order": 1}');
COMMIT;
SELECT phase, state, attempts FROM idem_holds WHERE key = 'pay-1';

-- A fence that is not the holder's: IK004, nothing changes.
SELECT pg_temp.error_of($$SELECT idem_checkpoint('pay-1', 'payments', 99, 'charged')$$);
SELECT pg_temp.error_of($$SELECT idem_complete('pay-1', 'payments', 99, '{}')$$);
SELECT idem_abandon('pay-1', 'payments', 99) AS abandoned_by_a_stranger;
SELECT phase, hold_fence FROM idem_holds JOIN idem_claims USING (key_hash) WHERE idem_holds.key = 'pay-1';

-- resume: the hold ran out (a crash); the next caller gets a larger fence
-- and the last recovery point, and the stale holder is refused.
SELECT idem_checkpoint('pay-1', 'payments', 100, 'charged', '{"charge": "ch_1"}', hold => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT scope, key, phase, fence, attempts, held_until <= clock_timestamp() AS ran_out FROM idem_stalled;
SELECT * FROM idem_hold('pay-1', 'payments', request => '{"amount": 10}');
SELECT * FROM idem_stalled;
SELECT pg_temp.error_of($$SELECT idem_checkpoint('pay-1', 'payments', 100, 'late')$$);
SELECT pg_temp.error_of($$SELECT idem_complete('pay-1', 'payments', 100, '{"stale": true}')$$);
SELECT idem_checkpoint('pay-1', 'payments', 101, 'charged', '{"charge": "ch_1"}');

-- replay: completed; the key then answers like a finished claim, through
-- idem_begin too, and the holder's later calls are refused.
SELECT idem_complete('pay-1', 'payments', 101, '{"paid": "ch_1"}');
SELECT * FROM idem_hold('pay-1', 'payments');
BEGIN;
SELECT * FROM idem_begin('pay-1', 'payments');
SELECT idem_claim('pay-1', 'payments') AS claimed;
COMMIT;
SELECT status, response FROM idem_status('pay-1', 'payments');
SELECT pg_temp.error_of($$SELECT idem_complete('pay-1', 'payments', 101, '{}')$$);
SELECT count(*) AS hold_rows_left FROM idem_holds WHERE key = 'pay-1';

-- One key space the other way round: a key finished by idem_begin and
-- idem_finish replays through idem_hold.
BEGIN;
SELECT status FROM idem_begin('order-7', 'payments');
SELECT idem_finish('order-7', 'payments', '{"order": 7}');
COMMIT;
SELECT * FROM idem_hold('order-7', 'payments');

-- idem_abandon: the request is given up; the next idem_hold starts afresh
-- (new, no recovery point, a larger fence).
SELECT * FROM idem_hold('pay-2', 'payments');
SELECT idem_checkpoint('pay-2', 'payments', 102, 'ordered');
SELECT idem_abandon('pay-2', 'payments', 102);
SELECT idem_abandon('pay-2', 'payments', 102) AS again;
SELECT status FROM idem_status('pay-2', 'payments');
SELECT * FROM idem_hold('pay-2', 'payments');

-- An expired request (its TTL ran out) counts as absent: new.
SELECT * FROM idem_hold('pay-3', 'payments', ttl => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT * FROM idem_hold('pay-3', 'payments');
SELECT pg_temp.error_of($$SELECT idem_complete('pay-3', 'payments', 104, '{}')$$) AS expired_holder;

-- Fences grow for every key forever, also after the purge deleted its rows.
SELECT * FROM idem_hold('pay-4', 'payments', ttl => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT idem_purge() > 0 AS purged;
SELECT count(*) AS rows_left FROM idem_holds WHERE key = 'pay-4';
SELECT * FROM idem_hold('pay-4', 'payments');

-- Arguments: every error names the one at fault; a response above
-- pg_idem.max_response_size is refused.
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT * FROM idem_hold(NULL)$$,
    $$SELECT * FROM idem_hold('k', NULL)$$,
    $$SELECT * FROM idem_hold('k', hold => NULL)$$,
    $$SELECT * FROM idem_hold('k', hold => '0')$$,
    $$SELECT * FROM idem_hold('k', hold => '-1 second')$$,
    $$SELECT * FROM idem_hold('k', ttl => '0')$$,
    $$SELECT * FROM idem_hold('')$$,
    $$SELECT idem_checkpoint('k', 'default', NULL, 'p')$$,
    $$SELECT idem_checkpoint('k', 'default', 1, NULL)$$,
    $$SELECT idem_checkpoint('k', 'default', 1, 'p', hold => '0')$$,
    $$SELECT idem_complete('k', NULL, 1, '{}')$$,
    $$SELECT idem_abandon('k', 'default', NULL)$$,
    $$SELECT idem_checkpoint('never-held', 'default', 1, 'p')$$
]) AS sql;
SET pg_idem.max_response_size = '1kB';
SELECT pg_temp.error_of($$SELECT idem_complete('pay-4', 'payments', 106, to_jsonb(repeat('x', 2000)))$$);
RESET pg_idem.max_response_size;
-- In a read-only transaction: 25006.
BEGIN READ ONLY;
SELECT pg_temp.error_of($$SELECT * FROM idem_hold('ro')$$);
COMMIT;

SELECT holds_started, holds_resumed, holds_in_progress, holds_completed, stale_fences_refused
FROM idem_scope_stats WHERE scope = 'payments';
DROP TABLE pay_orders;
