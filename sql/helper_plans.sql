-- The helpers' per-backend plans (src/helper.cpp): prepared once and
-- reused, prepared again when the table changes, never freed while one may
-- still be running, and freed with a dropped table.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

-- The plans whose SQL mentions `pattern`, as pg_backend_memory_contexts
-- shows them (one CachedPlanSource each, named by its SQL).
CREATE FUNCTION pg_temp.plans_alive(pattern text) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM pg_backend_memory_contexts WHERE name = 'CachedPlanSource' AND ident LIKE pattern
$$;

CREATE TABLE plan_stock (sku int PRIMARY KEY, amount int NOT NULL, state text NOT NULL);
INSERT INTO plan_stock VALUES (1, 100, 'new'), (2, 100, 'new');

-- Prepared once and reused: DEBUG1 tells when a statement is prepared. The
-- look-up that tells "short" from "no row" is prepared when first needed.
SET client_min_messages = debug1;
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1);
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1);
SELECT idem_decrement('plan_stock', 'sku', 2, 'amount', 1);
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1000) AS short;
SELECT idem_decrement('plan_stock', 'sku', 2, 'amount', 1000) AS short;
SELECT idem_transition('plan_stock', 'sku', 1, 'state', 'new', 'paid');
SELECT idem_transition('plan_stock', 'sku', 1, 'state', 'new', 'paid') AS repeated;
SELECT idem_transition('plan_stock', 'sku', 2, 'state', 'new', 'paid');
RESET client_min_messages;

-- RENAME COLUMN: the old name is unknown (42703), the new one works.
ALTER TABLE plan_stock RENAME amount TO qty;
SELECT pg_temp.error_of($$SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1)$$) AS old_name;
SELECT idem_decrement('plan_stock', 'sku', 1, 'qty', 1) AS new_name;
ALTER TABLE plan_stock RENAME qty TO amount;
ALTER TABLE plan_stock RENAME state TO status;
SELECT idem_transition('plan_stock', 'sku', 1, 'status', 'paid', 'shipped') AS renamed_state;
ALTER TABLE plan_stock RENAME status TO state;

-- ALTER TYPE inside one transaction, and undone by ROLLBACK TO a savepoint:
-- each call sees the type as this transaction left it.
BEGIN;
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1) AS as_int;
ALTER TABLE plan_stock ALTER amount TYPE numeric(10, 1);
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 0.5) AS as_numeric;
ALTER TABLE plan_stock ALTER amount TYPE smallint USING floor(amount);
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1) AS as_smallint;
SAVEPOINT before_bigint;
ALTER TABLE plan_stock ALTER amount TYPE bigint;
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1) AS as_bigint;
ROLLBACK TO before_bigint;
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1) AS as_smallint_again,
       pg_typeof(amount) FROM plan_stock WHERE sku = 1;
COMMIT;

-- The schema renamed: the plans, which name it, are prepared again.
CREATE SCHEMA plan_schema;
CREATE TABLE plan_schema.stock (sku int PRIMARY KEY, amount int NOT NULL);
INSERT INTO plan_schema.stock VALUES (1, 10);
SELECT idem_decrement('plan_schema.stock', 'sku', 1, 'amount', 1) AS before_rename;
ALTER SCHEMA plan_schema RENAME TO plan_schema_renamed;
SELECT idem_decrement('plan_schema_renamed.stock', 'sku', 1, 'amount', 1) AS after_rename;
DROP SCHEMA plan_schema_renamed CASCADE;

-- A trigger of the helper's own UPDATE changes the table's catalog entry
-- (GRANT) and calls the helper again on the same table: the nested call
-- prepares new plans while the outer call's UPDATE is still running. The
-- running plan must stay alive until the transaction ends (freeing it
-- there was a use-after-free): more than one UPDATE plan inside, one
-- afterwards.
CREATE FUNCTION plan_reenter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.sku = 1 THEN
        EXECUTE 'GRANT SELECT ON plan_stock TO PUBLIC';
        RAISE NOTICE 'nested call: %', idem_decrement('plan_stock', 'sku', 2, 'amount', 1);
        RAISE NOTICE 'the outer call''s UPDATE plan is alive next to the new one: %',
            pg_temp.plans_alive('UPDATE %plan_stock SET amount%') > 1;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER plan_reenter BEFORE UPDATE ON plan_stock FOR EACH ROW EXECUTE FUNCTION plan_reenter();
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1) AS outer_call;
SELECT idem_decrement('plan_stock', 'sku', 1, 'amount', 1) AS outer_call_again;
SELECT pg_temp.plans_alive('UPDATE %plan_stock SET amount%') AS update_plans_afterwards;
SELECT sku, amount FROM plan_stock ORDER BY sku;
DROP TRIGGER plan_reenter ON plan_stock;

-- A dropped table's plans are freed when its transaction ends (500 such
-- cycles leaked ~5 MB in CacheMemoryContext).
SELECT format($$CREATE TEMP TABLE plan_temp (id int PRIMARY KEY, amount int, state text);
                INSERT INTO plan_temp VALUES (1, 5, 'a');
                SELECT idem_decrement('plan_temp', 'id', 1, 'amount', 10);
                SELECT idem_transition('plan_temp', 'id', 1, 'state', 'a', 'b');
                DROP TABLE plan_temp$$) FROM generate_series(1, 3) \gexec
SELECT pg_temp.plans_alive('%plan_temp%') AS plans_of_dropped_tables;

DROP TABLE plan_stock;
DROP FUNCTION plan_reenter();
