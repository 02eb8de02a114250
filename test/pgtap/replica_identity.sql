-- Every table of the extension has a replica identity, so that logical
-- replication (a publication FOR ALL TABLES, a Citus shard move) never makes
-- an UPDATE or a DELETE of pg_idem's fail (test/t/023_logical_replication.pl
-- runs one). On failure, the tables without one.
\i settings.psql

BEGIN;
CREATE EXTENSION pg_idem;
SELECT plan(3);

CREATE TEMP VIEW idem_table AS
SELECT c.oid::regclass::text AS name,
       c.relreplident = 'f'
       OR (c.relreplident = 'd' AND EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
       OR (c.relreplident = 'i' AND EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))
         AS identified
FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_idem') AND d.deptype = 'e'
  AND c.relkind IN ('r', 'p');

SELECT ok((SELECT count(*) >= 6 FROM idem_table), 'the extension''s tables are found');
SELECT is(ARRAY(SELECT name FROM idem_table WHERE NOT identified ORDER BY name), '{}'::text[],
          'every table of pg_idem has a replica identity');

-- Not vacuous: a table without one is named.
ALTER TABLE idem_stock_ledger REPLICA IDENTITY NOTHING;
SELECT is(ARRAY(SELECT name FROM idem_table WHERE NOT identified), '{idem_stock_ledger}'::text[],
          'a table whose replica identity is dropped is named');

SELECT * FROM finish();
ROLLBACK;
