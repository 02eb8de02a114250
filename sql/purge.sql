-- idem_purge deletes expired rows only, at most max_rows, and returns how
-- many. (The worker that runs it on its own: test/t/003_purge_worker.pl.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

SELECT count(*) FILTER (WHERE idem_claim('gone-' || g, 'purge', '1 millisecond')) AS expiring,
       count(*) FILTER (WHERE idem_claim('kept-' || g, 'purge', '1 hour')) AS live
FROM generate_series(1, 30) g;
SELECT idem_claim('forever', 'purge');
SELECT pg_sleep(0.01);

SELECT idem_purge(5) AS purged_at_most_5;
SELECT count(*) AS left_stored FROM idem_claims WHERE scope = 'purge';
SELECT idem_purge() AS purged_the_rest;
SELECT idem_purge() AS nothing_left_to_purge;
-- Live claims and claims without expiry are untouched, and still answer.
SELECT count(*) FILTER (WHERE key LIKE 'kept-%') AS live_kept,
       count(*) FILTER (WHERE key = 'forever') AS forever_kept,
       count(*) FILTER (WHERE key LIKE 'gone-%') AS expired_left
FROM idem_claims WHERE scope = 'purge';
SELECT idem_claim('kept-1', 'purge'), idem_claim('forever', 'purge'), idem_claim('gone-1', 'purge');

-- A purge batch larger than purge_batch_size goes batch by batch.
SET pg_idem.purge_batch_size = 3;
SELECT count(*) FILTER (WHERE idem_claim('batch-' || g, 'purge', '1 millisecond')) FROM generate_series(1, 10) g;
SELECT pg_sleep(0.01);
SELECT idem_purge(7) AS purged_7_in_batches_of_3, idem_purge() AS then_3;
RESET pg_idem.purge_batch_size;

-- Purging is transactional: rolled back, the rows are back (and still expired).
SELECT idem_claim('undo', 'purge', '1 millisecond');
SELECT pg_sleep(0.01);
BEGIN;
SELECT idem_purge();
ROLLBACK;
SELECT count(*) AS back_after_rollback FROM idem_claims WHERE key = 'undo';

SELECT pg_temp.error_of($$SELECT idem_purge(0)$$);
SELECT pg_temp.error_of($$SELECT idem_purge(-1)$$);
BEGIN READ ONLY;
SELECT pg_temp.error_of($$SELECT idem_purge()$$);
COMMIT;

DELETE FROM idem_claims;
