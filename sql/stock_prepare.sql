-- Hot stock and two-phase commit. A transaction that holds units (or has
-- units added) cannot be prepared (0A000, sql/stock.sql); one that touched
-- stock but holds nothing any more can, and the session goes on safely.
-- Needs max_prepared_transactions > 0 (scripts/test sets it).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
SELECT current_setting('max_prepared_transactions')::int > 0 AS prepared_transactions_enabled;
SELECT idem_stock_add('two-phase', 1000);

-- A take rolled back to its savepoint holds nothing: PREPARE works.
BEGIN;
SAVEPOINT s;
SELECT idem_stock_take('two-phase', 1);
ROLLBACK TO SAVEPOINT s;
PREPARE TRANSACTION 'stock-savepoint';
-- The session's next transaction keeps its own book of takes (this once
-- wrote into freed memory and crashed the backend).
BEGIN;
SAVEPOINT a; SAVEPOINT b; SAVEPOINT c; SAVEPOINT d;
SELECT idem_stock_take('two-phase', 1);
ROLLBACK TO SAVEPOINT b;
SELECT idem_stock_take('two-phase', 2);
COMMIT;
COMMIT PREPARED 'stock-savepoint';
SELECT level, in_flight FROM idem_stock WHERE item = 'two-phase';

-- A take that answered false holds nothing either.
BEGIN;
SELECT idem_stock_take('two-phase', 1000000) AS short;
PREPARE TRANSACTION 'stock-short';
BEGIN;
SAVEPOINT a; SAVEPOINT b; SAVEPOINT c; SAVEPOINT d;
SELECT idem_stock_take('two-phase', 1);
ROLLBACK TO SAVEPOINT b;
SELECT idem_stock_take('two-phase', 3);
ROLLBACK;
ROLLBACK PREPARED 'stock-short';
SELECT level, in_flight FROM idem_stock WHERE item = 'two-phase';

-- Holding units, or adding them, still refuses PREPARE, and gives them back.
BEGIN;
SELECT idem_stock_take('two-phase', 5);
PREPARE TRANSACTION 'stock-held';
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SELECT idem_stock_add('two-phase', 5);
PREPARE TRANSACTION 'stock-added';
\echo :LAST_ERROR_SQLSTATE
SELECT level, in_flight FROM idem_stock WHERE item = 'two-phase';
SELECT count(*) AS prepared_left FROM pg_prepared_xacts WHERE gid LIKE 'stock-%';
