-- Hot stock: every outcome and error of idem_stock_add / take / level and
-- the idem_stock view (the test server preloads pg_idem; without it every
-- stock function answers 55000: test/t/001_preload.pl). Races:
-- specs/stock-*.spec; crashes: test/t/006_stock_crash.pl.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

-- add creates the item and returns the level; take sells, level counts commits.
SELECT idem_stock_add('tv', 10) AS level_after_add;
SELECT idem_stock_add('tv', 5) AS level_after_second_add;
SELECT idem_stock_take('tv', 3) AS took, idem_stock_level('tv') AS level_in_same_statement;
SELECT idem_stock_level('tv') AS level;
-- Short: false, and nothing changes.
SELECT idem_stock_take('tv', 13) AS took_13;
SELECT idem_stock_level('tv') AS level;
-- Exactly what is left can be taken.
SELECT idem_stock_take('tv', 12) AS took_all, idem_stock_take('tv', 1) AS then_one_more;
SELECT idem_stock_level('tv') AS level;

-- Units held by this transaction show as in flight until it ends; a rollback
-- gives them back.
SELECT idem_stock_add('radio', 5);
BEGIN;
SELECT idem_stock_take('radio', 2);
SELECT * FROM idem_stock WHERE item = 'radio';
SELECT idem_stock_take('radio', 4) AS more_than_left;
ROLLBACK;
SELECT * FROM idem_stock WHERE item = 'radio';

-- ROLLBACK TO SAVEPOINT gives back what was taken after the savepoint only.
BEGIN;
SELECT idem_stock_take('radio', 1);
SAVEPOINT s;
SELECT idem_stock_take('radio', 3);
ROLLBACK TO SAVEPOINT s;
SELECT * FROM idem_stock WHERE item = 'radio';
SELECT idem_stock_take('radio', 4) AS the_rest;
COMMIT;
SELECT * FROM idem_stock WHERE item = 'radio';

-- Units taken in a released savepoint stay with the transaction.
SELECT idem_stock_add('radio', 3);
BEGIN;
SAVEPOINT s;
SELECT idem_stock_take('radio', 2);
RELEASE SAVEPOINT s;
COMMIT;
SELECT idem_stock_level('radio');

-- An add is transactional too: rolled back, nothing was added; an item
-- created by a rolled-back add does not exist.
BEGIN;
SELECT idem_stock_add('radio', 100);
ROLLBACK;
SELECT idem_stock_level('radio');
BEGIN;
SELECT idem_stock_add('ghost', 1);
ROLLBACK;
SELECT pg_temp.error_of($$SELECT idem_stock_take('ghost', 1)$$);
SELECT pg_temp.error_of($$SELECT idem_stock_level('ghost')$$);
-- Adding to it later creates it for real: its row commits with the add, so
-- the ledger rows have an item row to be folded into (test/t/011).
SELECT idem_stock_add('ghost', 5);
SELECT idem_stock_take('ghost', 2);
SELECT item, level FROM idem_stock_items WHERE item = 'ghost';
SELECT idem_stock_level('ghost');

-- The level counts committed takes and adds only, as the idem_stock view
-- does, also for an item that is sold out.
SELECT idem_stock_add('vase', 1);
SELECT idem_stock_take('vase', 1);
BEGIN;
SELECT idem_stock_add('vase', 5) AS level_seen_by_this_transaction;
SELECT idem_stock_level('vase') AS committed_level, (SELECT level FROM idem_stock WHERE item = 'vase') AS view_level;
COMMIT;
SELECT idem_stock_level('vase') AS committed_level, (SELECT level FROM idem_stock WHERE item = 'vase') AS view_level;

-- Units added in this transaction are for sale once it commits.
BEGIN;
SELECT idem_stock_add('lamp', 2);
SELECT idem_stock_take('lamp', 1) AS before_commit;
COMMIT;
SELECT idem_stock_take('lamp', 1) AS after_commit;

-- A transaction that took stock cannot be prepared (0A000).
BEGIN;
SELECT idem_stock_take('lamp', 1);
PREPARE TRANSACTION 'stock';
\echo :LAST_ERROR_SQLSTATE
SELECT idem_stock_level('lamp') AS lamp_level_after_refused_prepare;

-- The durable record: item rows plus ledger rows add up to the level.
SELECT i.item, i.level + coalesce((SELECT sum(delta) FROM idem_stock_ledger l WHERE l.item = i.item), 0) AS level_from_tables
FROM idem_stock_items i ORDER BY item;
SELECT item, level, in_flight FROM idem_stock ORDER BY item;

-- Hostile input.
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT idem_stock_take('nope', 1)$$,
    $$SELECT idem_stock_level('nope')$$,
    $$SELECT idem_stock_take(NULL, 1)$$,
    $$SELECT idem_stock_take('tv', NULL)$$,
    $$SELECT idem_stock_take('tv', 0)$$,
    $$SELECT idem_stock_take('tv', -5)$$,
    $$SELECT idem_stock_take('', 1)$$,
    $$SELECT idem_stock_take(repeat('x', 129), 1)$$,
    $$SELECT idem_stock_add(NULL, 1)$$,
    $$SELECT idem_stock_add('tv', NULL)$$,
    $$SELECT idem_stock_add('tv', 0)$$,
    $$SELECT idem_stock_add('lamp', 9223372036854775807)$$,
    $$SELECT idem_stock_level(NULL)$$,
    $$SELECT idem_stock_take('tv', 1.5)$$,
    $$SELECT idem_stock_take('tv', 'many')$$
]) AS sql;
BEGIN READ ONLY;
SELECT pg_temp.error_of($$SELECT idem_stock_take('tv', 1)$$);
SELECT pg_temp.error_of($$SELECT idem_stock_add('tv', 1)$$);
SELECT idem_stock_level('tv') AS level_readable_read_only;
COMMIT;
