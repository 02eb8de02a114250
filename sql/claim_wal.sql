-- A duplicate claim writes no WAL, takes no transaction id and leaves no
-- dead tuple (SPEC "Claims"). How it is measured:
--  * WAL: every WAL record between two LSNs is read back with pg_walinspect
--    and those that touch idem_claims, its index or its TOAST table are
--    counted. Records of other relations (checkpoints, other tables) cannot
--    make the test flaky, and neither can a vacuum of idem_claims itself:
--    autovacuum is off for the table while the test runs (the tests before
--    this one leave it many dead rows), and a VACUUM first leaves no page for
--    a reader to prune.
--  * transaction id: txid_current_if_assigned() inside the transaction.
--  * dead tuples: the backend's row counters for idem_claims do not move
--    during the transaction (PostgreSQL 15 keeps them pending across
--    transactions, so the test compares before and after), and the claim row
--    keeps its ctid and xmin.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
RESET client_min_messages;
ALTER TABLE idem_claims SET (autovacuum_enabled = off, toast.autovacuum_enabled = off);
VACUUM idem_claims;

CREATE TEMP TABLE claim_files AS
SELECT pg_relation_filenode(c) AS filenode
FROM unnest(ARRAY['idem_claims'::regclass, 'idem_claims_key'::regclass,
                  (SELECT reltoastrelid FROM pg_class WHERE oid = 'idem_claims'::regclass)::regclass]) c;

-- Count the WAL records that touch pg_idem's claim relations in [from, to).
-- The caller first forces a WAL flush, so every record before `to` is readable.
CREATE FUNCTION pg_temp.claim_wal_records(from_lsn pg_lsn, to_lsn pg_lsn) RETURNS bigint
LANGUAGE sql AS $$
    -- (no WAL at all: pg_get_wal_records_info refuses an empty range)
    SELECT 0::bigint WHERE from_lsn >= to_lsn
    UNION ALL
    SELECT count(*)
    FROM pg_get_wal_records_info(from_lsn, to_lsn) r
    WHERE from_lsn < to_lsn AND EXISTS (SELECT 1 FROM claim_files f
                  WHERE r.block_ref ~ ('rel \d+/\d+/' || f.filenode || '\M'))
$$;

SELECT idem_claim('dup-1'), idem_claim(repeat('big', 5000));
-- The first read after a commit sets hint bits; with data checksums on that
-- alone would log a full page image, for any reader of any table.
SELECT count(*) > 0 AS read_all FROM idem_claims;
-- Rows this backend has inserted, updated or deleted in idem_claims so far.
CREATE FUNCTION pg_temp.claim_rows_written() RETURNS bigint
LANGUAGE sql AS $$
    SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables
    WHERE relid = 'idem_claims'::regclass
$$;

SELECT ctid AS ctid_before, xmin AS xmin_before FROM idem_claims WHERE key = 'dup-1' \gset

-- The positive control: a new claim does write WAL and take an xid.
SELECT pg_current_wal_insert_lsn() AS before_new \gset
BEGIN;
SELECT pg_temp.claim_rows_written() AS rows_before \gset
SELECT idem_claim('new-1');
SELECT txid_current_if_assigned() IS NOT NULL AS new_claim_took_xid;
SELECT pg_temp.claim_rows_written() - :rows_before AS new_claim_rows_written;
COMMIT;
SELECT pg_current_wal_insert_lsn() AS after_new \gset

-- The duplicates: idem_claim, idem_begin (with and without wait), idem_claim_many, a big key.
SELECT pg_current_wal_insert_lsn() AS before_dup \gset
BEGIN;
SELECT pg_temp.claim_rows_written() AS rows_before \gset
SELECT idem_claim('dup-1') AS claimed;
SELECT status FROM idem_begin('dup-1');
SELECT status FROM idem_begin('dup-1', wait => false);
SELECT * FROM idem_claim_many(ARRAY['dup-1', repeat('big', 5000)]) m(k, claimed) WHERE claimed;
SELECT idem_claim(repeat('big', 5000)) AS claimed;
SELECT txid_current_if_assigned() IS NULL AS duplicate_took_no_xid;
SELECT pg_temp.claim_rows_written() - :rows_before AS duplicate_rows_written;
COMMIT;
SELECT pg_current_wal_insert_lsn() AS after_dup \gset

-- Flush WAL (a committed catalog write) so pg_walinspect can read up to after_dup.
CREATE TABLE wal_flush_marker ();
DROP TABLE wal_flush_marker;

SELECT pg_temp.claim_wal_records(:'before_new', :'after_new') > 0 AS new_claim_wrote_wal;
SELECT pg_temp.claim_wal_records(:'before_dup', :'after_dup') AS duplicate_wal_records;
SELECT ctid = :'ctid_before' AND xmin = :'xmin_before' AS row_untouched FROM idem_claims WHERE key = 'dup-1';

DELETE FROM idem_claims;
ALTER TABLE idem_claims RESET (autovacuum_enabled, toast.autovacuum_enabled);
