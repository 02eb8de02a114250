-- Catalog facts about the helpers stored procedures are written with:
-- a key of any type and one of text (for drivers' untyped parameters), the
-- caller's rights, no ambiguity for any literal.
\i settings.psql

BEGIN;
CREATE EXTENSION pg_idem;
SELECT plan(15);

SELECT has_function('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric']);
SELECT function_returns('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric'], 'numeric');
SELECT has_function('idem_decrement', ARRAY['regclass', 'name', 'text', 'name', 'numeric']);
SELECT is((SELECT count(*)::int FROM pg_proc WHERE proname = 'idem_decrement'), 2, 'idem_decrement has two signatures: anyelement and text');
SELECT isnt_definer('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric']);
SELECT volatility_is('idem_decrement', ARRAY['regclass', 'name', 'anyelement', 'name', 'numeric'], 'volatile');
SELECT has_function('idem_transition', ARRAY['regclass', 'name', 'anyelement', 'name', 'text', 'text']);
SELECT function_returns('idem_transition', ARRAY['regclass', 'name', 'anyelement', 'name', 'text', 'text'], 'boolean');
SELECT isnt_definer('idem_transition', ARRAY['regclass', 'name', 'anyelement', 'name', 'text', 'text']);
SELECT has_function('idem_transition', ARRAY['regclass', 'name', 'text', 'name', 'text', 'text']);
SELECT has_function('idem_version_guard', ARRAY[]::text[]);
SELECT function_returns('idem_version_guard', ARRAY[]::text[], 'trigger');
SELECT isnt_definer('idem_version_guard', ARRAY[]::text[]);
-- SPEC's example with plain integer literals resolves and runs.
CREATE TEMP TABLE lit (sku int PRIMARY KEY, amount int);
INSERT INTO lit VALUES (42, 5);
SELECT is(idem_decrement('lit', 'sku', 42, 'amount', 1), 4::numeric, 'a plain integer literal is never ambiguous');
SELECT is(idem_decrement('lit', 'sku', '42', 'amount', 1), 3::numeric, 'an untyped literal takes the text form, read as the key column''s type');

SELECT * FROM finish();
ROLLBACK;
