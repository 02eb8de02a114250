-- Hot stock: one transaction's book of takes and adds (src/stock_book.cpp, "This
-- transaction's changes"). 100,000 takes of one item in one transaction,
-- with savepoints released and rolled back in between: every rolled-back
-- savepoint gives back exactly its own units, and the level is exact. The
-- book once grew by one element a take, was scanned whole on every take (80,000
-- takes took 7.6 s) and stayed in TopMemoryContext after the transaction
-- (6.4 MB after 200,000 takes); now the backend keeps no memory of it.
-- (bench/stock_book.sh times 20,000 against 80,000 takes; no timing here.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;

SELECT idem_stock_add('book', 200000), idem_stock_add('book-other', 1000);
-- Plans are prepared on first use: use them once before measuring.
BEGIN;
SELECT idem_stock_take('book', 1), idem_stock_take('book-other', 1);
ROLLBACK;

CREATE TEMP TABLE memory_before AS
SELECT (SELECT total_bytes FROM pg_backend_memory_contexts WHERE name = 'TopMemoryContext') AS top,
       (SELECT sum(total_bytes) FROM pg_backend_memory_contexts) AS all_contexts;

-- 40,000 takes of one unit; every hundredth in a savepoint that is released,
-- every thousandth a savepoint that takes 7 units and one of another item,
-- and is rolled back: 39,960 units stay taken.
CREATE FUNCTION pg_temp.takes(n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        IF i % 1000 = 0 THEN
            BEGIN
                PERFORM idem_stock_take('book', 7), idem_stock_take('book-other', 1);
                RAISE EXCEPTION 'roll this savepoint back';
            EXCEPTION WHEN raise_exception THEN
                NULL;
            END;
        ELSIF i % 100 = 0 THEN
            BEGIN
                PERFORM idem_stock_take('book', 1);
            EXCEPTION WHEN division_by_zero THEN
                NULL;
            END;
        ELSE
            PERFORM idem_stock_take('book', 1);
        END IF;
    END LOOP;
END $$;

BEGIN;
SELECT pg_temp.takes(40000);
SELECT item, level, in_flight FROM idem_stock WHERE item LIKE 'book%' ORDER BY item;
-- 20,000 more in a savepoint rolled back as a whole, then 40,000 again.
SAVEPOINT many;
DO $$ BEGIN FOR i IN 1 .. 20000 LOOP PERFORM idem_stock_take('book', 1); END LOOP; END $$;
SELECT in_flight AS in_flight_before_rollback FROM idem_stock WHERE item = 'book';
ROLLBACK TO SAVEPOINT many;
SELECT pg_temp.takes(40000);
SELECT item, level, in_flight FROM idem_stock WHERE item LIKE 'book%' ORDER BY item;
COMMIT;

-- 200,000 - 2 x 39,960 = 120,080 units left, nothing in flight; the tables agree.
SELECT item, level, in_flight, idem_stock_level(item) AS level_fn FROM idem_stock WHERE item LIKE 'book%' ORDER BY item;
SELECT i.item, i.level + coalesce((SELECT sum(delta) FROM idem_stock_ledger l WHERE l.item = i.item), 0) AS level_from_tables
FROM idem_stock_items i WHERE i.item LIKE 'book%' ORDER BY i.item;

-- The transaction's book went with it: the backend holds no more memory
-- than before (the book of 100,000 takes needed megabytes).
SELECT (SELECT total_bytes FROM pg_backend_memory_contexts WHERE name = 'TopMemoryContext') - top < 256 * 1024
         AS top_memory_context_returned,
       (SELECT sum(total_bytes) FROM pg_backend_memory_contexts) - all_contexts < 1024 * 1024
         AS all_contexts_returned
FROM memory_before;
