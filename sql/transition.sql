-- idem_transition: true / false / IK003 / P0002, text and enum states.
-- Races: specs/transition-race.spec.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

CREATE TABLE orders (id int PRIMARY KEY, state text NOT NULL);
INSERT INTO orders VALUES (1, 'created'), (2, 'paid'), (3, 'shipped');
-- Moved: true. Repeated: false, nothing changes.
SELECT idem_transition('orders', 'id', 1, 'state', 'created', 'paid');
SELECT idem_transition('orders', 'id', 1, 'state', 'created', 'paid') AS repeated;
SELECT id, state, xmin = (SELECT xmin FROM orders WHERE id = 1) AS same_row_version FROM orders WHERE id = 1;
-- From another state: IK003 naming the current state.
SELECT pg_temp.error_of($$SELECT idem_transition('orders', 'id', 3, 'state', 'created', 'paid')$$);
-- No row: P0002.
SELECT pg_temp.error_of($$SELECT idem_transition('orders', 'id', 9, 'state', 'created', 'paid')$$);
-- Rolled back with the caller's transaction.
BEGIN;
SELECT idem_transition('orders', 'id', 2, 'state', 'paid', 'shipped');
ROLLBACK;
SELECT state FROM orders WHERE id = 2;

-- An enum state column; an unknown label is the enum's own error.
CREATE TYPE order_state AS ENUM ('created', 'paid', 'shipped');
CREATE TABLE typed_orders (code text PRIMARY KEY, state order_state NOT NULL DEFAULT 'created');
INSERT INTO typed_orders VALUES ('A-1');
SELECT idem_transition('typed_orders', 'code', 'A-1'::text, 'state', 'created', 'paid');
SELECT idem_transition('typed_orders', 'code', 'A-1'::text, 'state', 'created', 'paid') AS repeated;
SELECT pg_temp.error_of($$SELECT idem_transition('typed_orders', 'code', 'A-1'::text, 'state', 'paid', 'lost')$$);
SELECT pg_temp.error_of($$SELECT idem_transition('typed_orders', 'code', 'A-1'::text, 'state', 'created', 'shipped')$$);
-- varchar states too.
CREATE TABLE tickets (id bigint PRIMARY KEY, status varchar(10));
INSERT INTO tickets VALUES (1, 'open');
SELECT idem_transition('tickets', 'id', 1, 'status', 'open', 'closed');
-- char(n) states are compared and stored whole, never cut to char(1).
CREATE TABLE padded (id int PRIMARY KEY, state char(10) NOT NULL);
INSERT INTO padded VALUES (1, 'new'), (2, 'n');
SELECT idem_transition('padded', 'id', 1, 'state', 'new', 'paid');
SELECT pg_temp.error_of($$SELECT idem_transition('padded', 'id', 2, 'state', 'new', 'paid')$$) AS n_is_not_new;
SELECT id, state FROM padded ORDER BY id;
-- Inheritance children are not addressed: only the table's own row moves.
CREATE TABLE parent_orders (id int PRIMARY KEY, state text NOT NULL);
CREATE TABLE child_orders () INHERITS (parent_orders);
INSERT INTO parent_orders VALUES (1, 'created');
INSERT INTO child_orders VALUES (1, 'created');
SELECT idem_transition('parent_orders', 'id', 1, 'state', 'created', 'paid');
SELECT tableoid::regclass, id, state FROM parent_orders ORDER BY 1;
-- A table whose UPDATE a DO INSTEAD rule replaces is refused: 0A000.
CREATE TABLE frozen_orders (id int PRIMARY KEY, state text NOT NULL);
INSERT INTO frozen_orders VALUES (1, 'created');
CREATE RULE frozen AS ON UPDATE TO frozen_orders DO INSTEAD NOTHING;
SELECT pg_temp.error_of($$SELECT idem_transition('frozen_orders', 'id', 1, 'state', 'created', 'paid')$$);
-- States are compared in the column's type, not as text: a boolean row in
-- state true is already in 'yes' (false, not IK003), and 'true' and 't' are
-- the same state (22023).
CREATE TABLE flags (id int PRIMARY KEY, state boolean NOT NULL);
INSERT INTO flags VALUES (1, true);
SELECT xmin AS flags_xmin FROM flags \gset
SELECT idem_transition('flags', 'id', 1, 'state', 'false', 'yes') AS already_true;
SELECT pg_temp.error_of($$SELECT idem_transition('flags', 'id', 1, 'state', 'true', 't')$$) AS same_state;
SELECT state, xmin::text = :'flags_xmin' AS same_row_version FROM flags;
-- A NULL state is no state: IK003.
INSERT INTO tickets VALUES (2, NULL);
SELECT pg_temp.error_of($$SELECT idem_transition('tickets', 'id', 2, 'status', 'open', 'closed')$$);

-- A BEFORE UPDATE trigger that returns NULL keeps the row in from_state:
-- IK003 saying the UPDATE changed nothing. The look-up finds the row in
-- from_state, which is also what a row replaced meanwhile looks like, so
-- the UPDATE runs once more: the trigger runs twice per call (it ran 100
-- times, then raised 40001, before the helpers stopped at two). Never
-- false, which would tell the caller the row is already in to_state.
CREATE TABLE held_orders (id int PRIMARY KEY, state text NOT NULL);
INSERT INTO held_orders VALUES (1, 'created');
CREATE SEQUENCE trigger_calls;  -- counts what a rollback does not undo
CREATE FUNCTION hold_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM nextval('trigger_calls'); RETURN NULL; END $$;
CREATE TRIGGER hold_row BEFORE UPDATE ON held_orders FOR EACH ROW EXECUTE FUNCTION hold_row();
SELECT idem_transition('held_orders', 'id', 1, 'state', 'created', 'paid');
SELECT pg_temp.error_of($$SELECT idem_transition('held_orders', 'id', 1, 'state', 'created', 'paid')$$) AS held;
SELECT last_value AS trigger_runs_for_two_calls, (SELECT state FROM held_orders) FROM trigger_calls;

-- Privileges and row-level security, as for idem_decrement: a role without
-- UPDATE gets 42501 like plain SQL; with separate policies the clerk sees
-- orders 1 and 2 but may update only 1: order 2 is IK003 (the UPDATE
-- changed nothing, as plain SQL's UPDATE 0), order 3, hidden, is P0002.
CREATE ROLE idem_transition_reader;
CREATE ROLE idem_transition_clerk;
CREATE TABLE shared_orders (id int PRIMARY KEY, state text NOT NULL);
INSERT INTO shared_orders VALUES (1, 'created'), (2, 'created'), (3, 'created');
GRANT SELECT ON shared_orders TO idem_transition_reader;
GRANT SELECT, UPDATE ON shared_orders TO idem_transition_clerk;
ALTER TABLE shared_orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY clerk_reads ON shared_orders FOR SELECT TO idem_transition_clerk USING (id IN (1, 2));
CREATE POLICY clerk_updates ON shared_orders FOR UPDATE TO idem_transition_clerk USING (id = 1);
SET ROLE idem_transition_reader;
SELECT pg_temp.error_of($$UPDATE shared_orders SET state = 'paid' WHERE id = 1$$) AS plain_sql;
SELECT pg_temp.error_of($$SELECT idem_transition('shared_orders', 'id', 1, 'state', 'created', 'paid')$$) AS helper;
RESET ROLE;
SET ROLE idem_transition_clerk;
SELECT idem_transition('shared_orders', 'id', 1, 'state', 'created', 'paid') AS may_update;
WITH changed AS (UPDATE shared_orders SET state = 'paid' WHERE id = 2 AND state = 'created' RETURNING id)
SELECT count(*) AS plain_sql_changes FROM changed;
SELECT pg_temp.error_of($$SELECT idem_transition('shared_orders', 'id', 2, 'state', 'created', 'paid')$$) AS seen_not_updatable;
SELECT pg_temp.error_of($$SELECT idem_transition('shared_orders', 'id', 3, 'state', 'created', 'paid')$$) AS hidden;
RESET ROLE;
SELECT id, state FROM shared_orders ORDER BY id;

-- Hostile input.
CREATE TABLE no_key (id int, state text);
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT idem_transition(NULL, 'id', 1, 'state', 'a', 'b')$$,
    $$SELECT idem_transition('orders', NULL, 1, 'state', 'a', 'b')$$,
    $$SELECT idem_transition('orders', 'id', NULL::int, 'state', 'a', 'b')$$,
    $$SELECT idem_transition('orders', 'id', 1, NULL, 'a', 'b')$$,
    $$SELECT idem_transition('orders', 'id', 1, 'state', NULL, 'b')$$,
    $$SELECT idem_transition('orders', 'id', 1, 'state', 'a', NULL)$$,
    $$SELECT idem_transition('orders', 'id', 1, 'state', 'paid', 'paid')$$,
    $$SELECT idem_transition('orders', 'id', 1, 'nope', 'a', 'b')$$,
    $$SELECT idem_transition('orders', 'nope', 1, 'state', 'a', 'b')$$,
    $$SELECT idem_transition('no_key', 'id', 1, 'state', 'a', 'b')$$,
    $$SELECT idem_transition('pg_class', 'oid', 1, 'relname', 'a', 'b')$$,
    $$SELECT idem_transition('orders_pkey', 'id', 1, 'state', 'a', 'b')$$,
    $$SELECT idem_transition('orders', 'id', 'x'::text, 'state', 'a', 'b')$$,
    $$SELECT idem_transition('orders', 'id', 1.5, 'state', 'created', 'paid')$$
]) AS sql;

-- A key sent as text (an untyped parameter) is read as the key column's type.
PREPARE move_untyped AS SELECT idem_transition('orders', 'id', $1, 'state', 'paid', 'shipped');
EXECUTE move_untyped('2');
EXECUTE move_untyped('2');
DEALLOCATE move_untyped;
-- Swapped key and state columns: the hint says so.
SELECT idem_transition('orders', 'state', 'created', 'id', '1', '2');

DROP TABLE orders, typed_orders, tickets, padded, parent_orders, child_orders, frozen_orders, flags, held_orders,
    shared_orders, no_key;
DROP SEQUENCE trigger_calls;
DROP FUNCTION hold_row();
DROP ROLE idem_transition_reader, idem_transition_clerk;
DROP TYPE order_state;
