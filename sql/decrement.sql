-- idem_decrement: every outcome and SQLSTATE, all four amount types, plan
-- invalidation, privileges and row-level security. Races: specs/decrement-race.spec.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

CREATE TABLE stock (sku int PRIMARY KEY, amount int NOT NULL);
INSERT INTO stock VALUES (42, 10), (43, 0);
-- A plain integer literal resolves without ambiguity; the new amount comes back.
SELECT idem_decrement('stock', 'sku', 42, 'amount', 1);
SELECT idem_decrement('stock', 'sku', 42, 'amount', 9) AS down_to_zero;
-- Short: NULL, and nothing changes.
SELECT idem_decrement('stock', 'sku', 42, 'amount', 1) IS NULL AS short;
SELECT amount FROM stock WHERE sku = 42;
-- No such row: P0002.
SELECT pg_temp.error_of($$SELECT idem_decrement('stock', 'sku', 44, 'amount', 1)$$);
-- Rolled back with the caller's transaction.
UPDATE stock SET amount = 5 WHERE sku = 42;
BEGIN;
SELECT idem_decrement('stock', 'sku', 42, 'amount', 5);
ROLLBACK;
SELECT amount FROM stock WHERE sku = 42;

-- Every amount type; n converted to it; the key compared in the key column's type.
CREATE TABLE wallet (id text PRIMARY KEY, balance numeric(12, 2) NOT NULL, small smallint, big bigint, plain numeric);
INSERT INTO wallet VALUES ('a', 100.00, 300, 9000000000, 1.5);
SELECT idem_decrement('wallet', 'id', 'a'::text, 'balance', 10.25);
SELECT idem_decrement('wallet', 'id', 'a'::text, 'small', 100);
SELECT idem_decrement('wallet', 'id', 'a'::text, 'big', 1000000000);
SELECT idem_decrement('wallet', 'id', 'a'::text, 'plain', 0.0001);
-- A domain over numeric(10, 2) keeps two places too: 0.004 is refused
-- (22023), never rounded away to a "successful" decrement of nothing.
CREATE DOMAIN money2 AS numeric(10, 2);
CREATE TABLE purse (id int PRIMARY KEY, balance money2 NOT NULL);
INSERT INTO purse VALUES (1, 1.00);
SELECT pg_temp.error_of($$SELECT idem_decrement('purse', 'id', 1, 'balance', 0.004)$$) AS too_fine;
SELECT idem_decrement('purse', 'id', 1, 'balance', 0.01) AS cent;
CREATE TABLE stock_by_name (sku varchar(20) PRIMARY KEY, amount bigint);
INSERT INTO stock_by_name VALUES ('42', 3);
SELECT idem_decrement('stock_by_name', 'sku', 42, 'amount', 1) AS int_key_for_varchar_column;
-- The key is cast to the column's type without its length: a char(4) key
-- 'AB12' is never cut to 'A' (another row), and bit(4) keys are found.
CREATE TABLE stock_by_code (code char(4) PRIMARY KEY, amount int);
INSERT INTO stock_by_code VALUES ('A', 10), ('AB12', 10);
SELECT idem_decrement('stock_by_code', 'code', 'AB12'::text, 'amount', 1) AS ab12;
SELECT idem_decrement('stock_by_code', 'code', 'A'::text, 'amount', 2) AS a;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock_by_code', 'code', 'AB123'::text, 'amount', 1)$$) AS longer_than_the_column;
SELECT code, amount FROM stock_by_code ORDER BY code;
CREATE TABLE stock_by_bits (bits bit(4) PRIMARY KEY, amount int);
INSERT INTO stock_by_bits VALUES (B'1010', 3), (B'1000', 3);
SELECT idem_decrement('stock_by_bits', 'bits', B'1010', 'amount', 1) AS bit4;
SELECT bits, amount FROM stock_by_bits ORDER BY bits;
CREATE TABLE stock_big (sku bigint PRIMARY KEY, amount int);
INSERT INTO stock_big VALUES (7, 3);
SELECT idem_decrement('stock_big', 'sku', 7, 'amount', 1) AS int_key_for_bigint_column;

-- The key converts to the column's type only where nothing is lost, so it
-- addresses the row plain SQL's WHERE key_column = key would, or none:
-- integers between integer types (a narrowing overflows: 22003) and into
-- text, strings parsed by the column type (bad input: 22P02), implicit
-- casts (date to timestamp). Rounding or cutting the key is 42804: plain
-- SQL's WHERE sku = 1.6 finds no row, it must never decrement sku 2.
CREATE TABLE stock_exact (sku int PRIMARY KEY, amount int);
INSERT INTO stock_exact VALUES (2, 10), (42, 10);
CREATE TABLE stock_by_day (day date PRIMARY KEY, amount int);
INSERT INTO stock_by_day VALUES ('2020-01-01', 10);
CREATE TABLE stock_by_time (at timestamp PRIMARY KEY, amount int);
INSERT INTO stock_by_time VALUES ('2020-01-01 00:00', 10);
CREATE TABLE stock_by_decimal (sku numeric(5, 0) PRIMARY KEY, amount int);
INSERT INTO stock_by_decimal VALUES (2, 10);
CREATE TABLE stock_by_float (sku float8 PRIMARY KEY, amount int);
INSERT INTO stock_by_float VALUES (2, 10);
SELECT idem_decrement('stock_exact', 'sku', 2::bigint, 'amount', 1) AS bigint_key;
SELECT idem_decrement('stock_exact', 'sku', 2::smallint, 'amount', 1) AS smallint_key;
SELECT idem_decrement('stock_exact', 'sku', '42'::text, 'amount', 1) AS text_key;
SELECT idem_decrement('stock_exact', 'sku', '42'::varchar, 'amount', 1) AS varchar_key;
SELECT idem_decrement('stock_by_time', 'at', '2020-01-01'::date, 'amount', 1) AS date_key_for_timestamp;
SELECT idem_decrement('stock_by_decimal', 'sku', 2, 'amount', 1) AS int_key_for_numeric;
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT idem_decrement('stock_exact', 'sku', 1.6, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_exact', 'sku', 2.4::float8, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_exact', 'sku', 5000000000, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_exact', 'sku', '1.6'::text, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_by_day', 'day', '2020-01-01 23:59'::timestamp, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_by_decimal', 'sku', 1.6, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_by_float', 'sku', 2, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_by_float', 'sku', 2::numeric, 'amount', 1)$$
]) AS sql;
SELECT (SELECT array_agg(amount ORDER BY sku) FROM stock_exact) AS exact, (SELECT amount FROM stock_by_day) AS by_day,
       (SELECT amount FROM stock_by_decimal) AS by_decimal, (SELECT amount FROM stock_by_float) AS by_float;

-- The key addresses one row. A plain table's unique index does not reach
-- its inheritance children, so the helper addresses the table ONLY (the
-- parent and a child both holding sku 1 were both decremented, and the
-- call still answered NULL); a partitioned table's unique index covers
-- every partition. A DEFERRABLE unique index lets two rows share a key
-- until commit: 42P10 (so does a partial one, below).
CREATE TABLE stock_parent (sku int PRIMARY KEY, amount int NOT NULL);
CREATE TABLE stock_child () INHERITS (stock_parent);
INSERT INTO stock_parent VALUES (1, 5);
INSERT INTO stock_child VALUES (1, 5), (2, 5);
SELECT idem_decrement('stock_parent', 'sku', 1, 'amount', 2) AS parent_only;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock_parent', 'sku', 2, 'amount', 1)$$) AS child_row;
SELECT tableoid::regclass, sku, amount FROM stock_parent ORDER BY 1, 2;
CREATE TABLE stock_parted (sku int PRIMARY KEY, amount int NOT NULL) PARTITION BY RANGE (sku);
CREATE TABLE stock_parted_low PARTITION OF stock_parted FOR VALUES FROM (0) TO (100);
CREATE TABLE stock_parted_high PARTITION OF stock_parted FOR VALUES FROM (100) TO (200);
INSERT INTO stock_parted VALUES (1, 5), (150, 5);
SELECT idem_decrement('stock_parted', 'sku', 150, 'amount', 2) AS partitioned;
SELECT idem_decrement('stock_parted', 'sku', 1, 'amount', 9) IS NULL AS short;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock_parted', 'sku', 99, 'amount', 1)$$) AS no_row;
CREATE TABLE stock_deferrable (sku int UNIQUE DEFERRABLE INITIALLY DEFERRED, amount int);
INSERT INTO stock_deferrable VALUES (1, 5), (2, 5);
BEGIN;
UPDATE stock_deferrable SET sku = 1 WHERE sku = 2;
SELECT idem_decrement('stock_deferrable', 'sku', 1, 'amount', 2) AS deferrable_key;
ROLLBACK;

-- A rule that replaces the UPDATE (DO INSTEAD) would make the helper report
-- what the rule did, not a decrement: such a table is refused, 0A000. A DO
-- ALSO rule runs beside the UPDATE, as with plain SQL.
CREATE TABLE stock_audit (sku int, amount int);
CREATE TABLE stock_instead (sku int PRIMARY KEY, amount int NOT NULL);
INSERT INTO stock_instead VALUES (1, 5);
SELECT idem_decrement('stock_instead', 'sku', 1, 'amount', 1) AS before_the_rule;
CREATE RULE log_instead AS ON UPDATE TO stock_instead DO INSTEAD
    INSERT INTO stock_audit VALUES (new.sku, new.amount) RETURNING stock_audit.sku, stock_audit.amount;
SELECT idem_decrement('stock_instead', 'sku', 1, 'amount', 1) AS instead_insert;
CREATE TABLE stock_nothing (sku int PRIMARY KEY, amount int NOT NULL);
INSERT INTO stock_nothing VALUES (1, 5);
CREATE RULE ignore_updates AS ON UPDATE TO stock_nothing DO INSTEAD NOTHING;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock_nothing', 'sku', 1, 'amount', 1)$$) AS instead_nothing;
CREATE TABLE stock_also (sku int PRIMARY KEY, amount int NOT NULL);
INSERT INTO stock_also VALUES (1, 5);
CREATE RULE log_also AS ON UPDATE TO stock_also DO ALSO INSERT INTO stock_audit VALUES (new.sku, new.amount);
SELECT idem_decrement('stock_also', 'sku', 1, 'amount', 1) AS also_rule;
SELECT * FROM stock_audit;

-- A BEFORE UPDATE trigger that returns NULL keeps the row as it was, as in
-- plain SQL (UPDATE 0): the helper answers NULL. The look-up finds the row
-- holding enough, which is also what a row replaced meanwhile looks like,
-- so the UPDATE runs once more: the trigger runs twice per call (it ran
-- 100 times, then raised 40001, before the helpers stopped at two).
CREATE TABLE stock_held (sku int PRIMARY KEY, amount int NOT NULL);
INSERT INTO stock_held VALUES (1, 5);
CREATE SEQUENCE trigger_calls;  -- counts what a rollback does not undo
CREATE FUNCTION hold_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM nextval('trigger_calls'); RETURN NULL; END $$;
CREATE TRIGGER hold_row BEFORE UPDATE ON stock_held FOR EACH ROW EXECUTE FUNCTION hold_row();
SELECT pg_temp.error_of($$SELECT idem_decrement('stock_held', 'sku', 1, 'amount', 1)$$) AS held;
SELECT idem_decrement('stock_held', 'sku', 1, 'amount', 1) IS NULL AS not_decremented;
SELECT last_value AS trigger_runs_for_two_calls, (SELECT amount FROM stock_held) FROM trigger_calls;

-- A BEFORE trigger that sets the amount to NULL: the UPDATE happened, but
-- the helper cannot answer NULL ("short") for a write that took place, nor
-- a made-up number: 22004, which undoes the write (a numeric amount crashed
-- the backend, an integer one answered 0).
CREATE TABLE stock_nulled (sku int PRIMARY KEY, amount int, balance numeric);
INSERT INTO stock_nulled VALUES (1, 5, 5);
CREATE FUNCTION null_amounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.balance := NULL; IF NEW.amount = 4 THEN NEW.amount := NULL; END IF; RETURN NEW; END $$;
CREATE TRIGGER null_amounts BEFORE UPDATE ON stock_nulled FOR EACH ROW EXECUTE FUNCTION null_amounts();
SELECT idem_decrement('stock_nulled', 'sku', 1, 'balance', 1) AS numeric_amount;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock_nulled', 'sku', 1, 'amount', 1)$$) AS integer_amount;
SELECT amount, balance FROM stock_nulled;

-- Triggers fire, as with plain SQL.
CREATE TABLE stock_log (sku int, old_amount int, new_amount int);
CREATE FUNCTION log_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO stock_log VALUES (NEW.sku, OLD.amount, NEW.amount); RETURN NEW; END $$;
CREATE TRIGGER log_stock AFTER UPDATE ON stock FOR EACH ROW EXECUTE FUNCTION log_stock();
SELECT idem_decrement('stock', 'sku', 42, 'amount', 2);
SELECT * FROM stock_log;
DROP TRIGGER log_stock ON stock;

-- Plans are cached per backend and follow the table: ALTER TABLE changes the
-- amount's type, DROP and CREATE under the same name makes a new table.
SELECT idem_decrement('stock', 'sku', 42, 'amount', 1);
ALTER TABLE stock ALTER COLUMN amount TYPE numeric(10, 1);
SELECT idem_decrement('stock', 'sku', 42, 'amount', 0.5) AS after_alter;
DROP TABLE stock;
CREATE TABLE stock (id serial, sku int PRIMARY KEY, amount bigint NOT NULL);
INSERT INTO stock (sku, amount) VALUES (42, 1000);
SELECT idem_decrement('stock', 'sku', 42, 'amount', 1) AS after_recreate;
ALTER TABLE stock DROP CONSTRAINT stock_pkey;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock', 'sku', 42, 'amount', 1)$$) AS after_dropping_the_key;
ALTER TABLE stock ADD PRIMARY KEY (sku);

-- Hostile input.
CREATE VIEW stock_view AS SELECT * FROM stock;
CREATE SEQUENCE stock_seq;
CREATE TABLE two_col_key (a int, b int, amount int, UNIQUE (a, b));
CREATE TABLE partial_key (sku int, amount int);
CREATE UNIQUE INDEX ON partial_key (sku) WHERE amount > 0;
CREATE TABLE expr_key (sku text, amount int);
CREATE UNIQUE INDEX ON expr_key (lower(sku));
CREATE TABLE texty (sku int PRIMARY KEY, amount text);
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT idem_decrement(NULL, 'sku', 42, 'amount', 1)$$,
    $$SELECT idem_decrement('stock', NULL, 42, 'amount', 1)$$,
    $$SELECT idem_decrement('stock', 'sku', NULL::int, 'amount', 1)$$,
    $$SELECT idem_decrement('stock', 'sku', 42, NULL, 1)$$,
    $$SELECT idem_decrement('stock', 'sku', 42, 'amount', NULL)$$,
    $$SELECT idem_decrement('stock', 'sku', 42, 'amount', 0)$$,
    $$SELECT idem_decrement('stock', 'sku', 42, 'amount', -3)$$,
    $$SELECT idem_decrement('stock', 'sku', 42, 'amount', 'NaN')$$,
    $$SELECT idem_decrement('stock', 'sku', 42, 'amount', 1.5)$$,
    $$SELECT idem_decrement('stock', 'sku', 42, 'amount', 99999999999999999999)$$,
    $$SELECT idem_decrement('wallet', 'id', 'a'::text, 'small', 40000)$$,
    $$SELECT idem_decrement('wallet', 'id', 'a'::text, 'balance', 0.001)$$,
    $$SELECT idem_decrement('no_such_table', 'sku', 42, 'amount', 1)$$,
    $$SELECT idem_decrement(0, 'sku', 42, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_view', 'sku', 42, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_seq', 'sku', 42, 'amount', 1)$$,
    $$SELECT idem_decrement('stock_pkey', 'sku', 42, 'amount', 1)$$,
    $$SELECT idem_decrement('pg_class', 'oid', 1, 'relpages', 1)$$,
    $$SELECT idem_decrement('stock', 'nope', 42, 'amount', 1)$$,
    $$SELECT idem_decrement('stock', 'sku', 42, 'nope', 1)$$,
    $$SELECT idem_decrement('stock', 'ctid', 42, 'amount', 1)$$,
    $$SELECT idem_decrement('stock', 'id', 1, 'amount', 1)$$,
    $$SELECT idem_decrement('two_col_key', 'a', 1, 'amount', 1)$$,
    $$SELECT idem_decrement('partial_key', 'sku', 1, 'amount', 1)$$,
    $$SELECT idem_decrement('expr_key', 'sku', 'x'::text, 'amount', 1)$$,
    $$SELECT idem_decrement('texty', 'sku', 1, 'amount', 1)$$,
    $$SELECT idem_decrement('stock', 'sku', 'abc'::text, 'amount', 1)$$,
    $$SELECT idem_decrement('stock', 'sku', now(), 'amount', 1)$$,
    $$SELECT idem_decrement('stock', 'sku', 'abc', 'amount', 1)$$
]) AS sql;
-- A quoted, mixed-case identifier is taken as a name, never as SQL.
CREATE TABLE "Odd ""Table""" ("Sku; DROP TABLE stock" int PRIMARY KEY, "Amount" int);
INSERT INTO "Odd ""Table""" VALUES (1, 5);
SELECT idem_decrement('"Odd ""Table"""', 'Sku; DROP TABLE stock', 1, 'Amount', 2);
SELECT count(*) AS stock_still_there FROM stock;

-- Privileges and row-level security: the helper can do exactly what plain SQL can.
CREATE ROLE idem_decrement_reader;
CREATE ROLE idem_decrement_clerk;
GRANT SELECT ON stock TO idem_decrement_reader;
GRANT SELECT, UPDATE ON stock TO idem_decrement_clerk;
INSERT INTO stock (sku, amount) VALUES (7, 100);
ALTER TABLE stock ENABLE ROW LEVEL SECURITY;
CREATE POLICY clerk_sees_42 ON stock TO idem_decrement_clerk USING (sku = 42);
SET ROLE idem_decrement_reader;
SELECT pg_temp.error_of($$UPDATE stock SET amount = amount - 1 WHERE sku = 42$$) AS plain_sql;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock', 'sku', 42, 'amount', 1)$$) AS helper;
RESET ROLE;
SET ROLE idem_decrement_clerk;
SELECT idem_decrement('stock', 'sku', 42, 'amount', 1) AS visible_row;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock', 'sku', 7, 'amount', 1)$$) AS row_hidden_by_policy;
UPDATE stock SET amount = amount - 1 WHERE sku = 7;
RESET ROLE;
SELECT sku, amount FROM stock WHERE sku IN (7, 42) ORDER BY sku;
-- Separate SELECT and UPDATE policies: the clerk sees sku 7 and 42 but may
-- update only 42. Plain SQL updates no row of sku 7 (UPDATE 0); the helper
-- answers NULL after its one UPDATE (it looped 100 times and raised 40001,
-- which clients retry forever). A row the SELECT policy hides: P0002.
CREATE TABLE stock_policies (sku int PRIMARY KEY, amount int NOT NULL);
INSERT INTO stock_policies VALUES (7, 100), (42, 100), (99, 100);
GRANT SELECT, UPDATE ON stock_policies TO idem_decrement_clerk;
ALTER TABLE stock_policies ENABLE ROW LEVEL SECURITY;
CREATE POLICY clerk_reads ON stock_policies FOR SELECT TO idem_decrement_clerk USING (sku IN (7, 42));
CREATE POLICY clerk_updates ON stock_policies FOR UPDATE TO idem_decrement_clerk USING (sku = 42);
SET ROLE idem_decrement_clerk;
SELECT idem_decrement('stock_policies', 'sku', 42, 'amount', 1) AS may_update;
WITH changed AS (UPDATE stock_policies SET amount = amount - 1 WHERE sku = 7 AND amount >= 1 RETURNING amount)
SELECT count(*) AS plain_sql_changes FROM changed;
SELECT idem_decrement('stock_policies', 'sku', 7, 'amount', 1) IS NULL AS seen_not_updatable;
SELECT pg_temp.error_of($$SELECT idem_decrement('stock_policies', 'sku', 99, 'amount', 1)$$) AS hidden;
RESET ROLE;
SELECT sku, amount FROM stock_policies ORDER BY sku;

-- Keys sent as text, as drivers send untyped parameters (node-postgres,
-- psycopg): the text overload takes them and reads them as the key
-- column's type; a string that type cannot read names the key.
UPDATE stock SET amount = 10 WHERE sku = 42;
PREPARE take_untyped AS SELECT idem_decrement('stock', 'sku', $1, 'amount', 1);
EXECUTE take_untyped('42');
SELECT idem_decrement('stock', 'sku', '42', 'amount', 1) AS untyped_literal;
EXECUTE take_untyped('4x2');
SELECT pg_temp.error_of($$EXECUTE take_untyped('42.5')$$) AS not_exact;
DEALLOCATE take_untyped;
-- Mistakes name the argument and suggest the fix: swapped columns, a
-- column that does not exist (with the table's columns in the hint).
SELECT idem_decrement('stock', 'amount', 42, 'sku', 1);
SELECT idem_decrement('stock', 'skew', 42, 'amount', 1);

DROP TABLE stock, wallet, purse, stock_by_name, stock_by_code, stock_by_bits, stock_big, stock_exact, stock_by_day,
    stock_by_time, stock_by_decimal, stock_by_float, stock_parent, stock_child, stock_parted, stock_deferrable,
    stock_audit, stock_instead, stock_nothing, stock_also, stock_held, stock_policies, stock_nulled, stock_log, two_col_key, partial_key, expr_key, texty, "Odd ""Table""" CASCADE;
DROP SEQUENCE stock_seq, trigger_calls;
DROP DOMAIN money2;
DROP FUNCTION log_stock(), hold_row(), null_amounts();
DROP ROLE idem_decrement_reader, idem_decrement_clerk;
