-- One transaction can claim tens of thousands of keys (a batch import)
-- without exhausting the lock table: a claim is a row, not a lock.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;

SHOW max_locks_per_transaction;
BEGIN;
SELECT count(*) FILTER (WHERE idem_claim('bulk-' || g, 'import')) AS claimed_one_by_one
FROM generate_series(1, 20000) g;
SELECT count(*) AS claimed_in_batch
FROM idem_claim_many(ARRAY(SELECT 'bulk-' || g FROM generate_series(20001, 40000) g), 'import')
WHERE claimed;
SELECT count(*) < 20 AS few_locks_held FROM pg_locks WHERE pid = pg_backend_pid();
COMMIT;

-- Every one of them is now a duplicate.
SELECT count(*) FILTER (WHERE claimed) AS claimed_again, count(*) AS answered
FROM idem_claim_many(ARRAY(SELECT 'bulk-' || g FROM generate_series(1, 40000) g), 'import');

DELETE FROM idem_claims;
