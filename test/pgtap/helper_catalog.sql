-- Catalog facts about the helpers stored procedures are written with:
-- one signature each, the caller's rights, no ambiguity for integer literals.
\i settings.psql

BEGIN;
CREATE EXTENSION pg_idem;
SELECT plan(12);

SELECT has_function('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric']);
SELECT function_returns('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric'], 'numeric');
SELECT is((SELECT count(*)::int FROM pg_proc WHERE proname = 'idem_decrement'), 1, 'idem_decrement has one signature: no overload can make a literal ambiguous');
SELECT isnt_definer('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric']);
SELECT volatility_is('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric'], 'volatile');
SELECT has_function('idem_transition', ARRAY['regclass', 'name', 'anyelement', 'name', 'text', 'text']);
SELECT function_returns('idem_transition', ARRAY['regclass', 'name', 'anyelement', 'name', 'text', 'text'], 'boolean');
SELECT isnt_definer('idem_transition', ARRAY['regclass', 'name', 'anyelement', 'name', 'text', 'text']);
SELECT has_function('idem_version_guard', ARRAY[]::text[]);
SELECT function_returns('idem_version_guard', ARRAY[]::text[], 'trigger');
SELECT isnt_definer('idem_version_guard', ARRAY[]::text[]);
-- SPEC's example with plain integer literals resolves and runs.
CREATE TEMP TABLE lit (sku int PRIMARY KEY, amount int);
INSERT INTO lit VALUES (42, 5);
SELECT is(idem_decrement('lit', 'sku', 42, 'amount', 1), 4::numeric, 'a plain integer literal is never ambiguous');

SELECT * FROM finish();
ROLLBACK;
