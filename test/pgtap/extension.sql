-- The extension installs into any schema and DROP EXTENSION leaves nothing behind.
\i settings.psql

BEGIN;
SELECT plan(6);

CREATE SCHEMA idem_elsewhere;
CREATE EXTENSION pg_idem SCHEMA idem_elsewhere;
SELECT has_table('idem_elsewhere', 'idem_claims', 'CREATE EXTENSION ... SCHEMA puts the table there');
SELECT has_function('idem_elsewhere', 'idem_claim', ARRAY['text', 'text', 'interval'], 'and the functions');
SELECT is(idem_elsewhere.idem_claim('k'), true, 'claims work with the extension outside search_path');
SELECT is(idem_elsewhere.idem_claim('k'), false, 'and see their own table');
SELECT is((SELECT count(*)::int FROM idem_elsewhere.idem_claims), 1, 'the claim is in that schema');

DROP EXTENSION pg_idem;
SELECT is(
    (SELECT count(*)::int FROM pg_class WHERE relnamespace = 'idem_elsewhere'::regnamespace)
  + (SELECT count(*)::int FROM pg_proc WHERE proname LIKE 'idem\_%')
  + (SELECT count(*)::int FROM pg_type WHERE typnamespace = 'idem_elsewhere'::regnamespace),
    0, 'DROP EXTENSION leaves no table, index, function or type behind');

SELECT * FROM finish();
ROLLBACK;
