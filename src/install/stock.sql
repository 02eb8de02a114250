
-- Hot stock ---------------------------------------------------------------

-- The durable record of hot-stock items: an item's level is its row's level
-- plus its ledger rows. Takes and adds append ledger rows; the purge worker
-- folds committed ones into the item rows. Shared memory decides takes.
CREATE TABLE @extschema@.idem_stock_items (
    item  text   PRIMARY KEY,
    level bigint NOT NULL
);
COMMENT ON TABLE @extschema@.idem_stock_items IS
    'Hot-stock items: an item''s level is its row''s level plus its rows in idem_stock_ledger';
COMMENT ON COLUMN @extschema@.idem_stock_items.item IS 'The item''s name';
COMMENT ON COLUMN @extschema@.idem_stock_items.level IS 'Units, as of the ledger rows folded in so far';
-- The key is made by the take or add (the time, then random bits: see
-- ledger_key in src/stock.cpp), not drawn from a sequence: logical
-- replication (a publication FOR ALL TABLES, a Citus shard move) carries
-- rows but not sequences, so a subscriber's sequence would hand out keys of
-- rows it already has once the application switches over to it. It is the
-- replica identity, by which a subscriber finds each row the fold deletes.
-- (The default serves rows written by hand.)
CREATE TABLE @extschema@.idem_stock_ledger (
    item  text   NOT NULL,
    delta bigint NOT NULL,
    id    uuid   NOT NULL DEFAULT pg_catalog.gen_random_uuid() PRIMARY KEY
);
COMMENT ON TABLE @extschema@.idem_stock_ledger IS
    'Hot-stock takes and adds, one row each, until the purge worker folds committed ones into idem_stock_items';
COMMENT ON COLUMN @extschema@.idem_stock_ledger.item IS 'The item taken or added to';
COMMENT ON COLUMN @extschema@.idem_stock_ledger.delta IS 'Units: positive for an add, negative for a take';
COMMENT ON COLUMN @extschema@.idem_stock_ledger.id IS 'The row''s key (its time, then random bits): its replica identity';
REVOKE ALL ON @extschema@.idem_stock_items, @extschema@.idem_stock_ledger FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_stock_items', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_stock_ledger', '');

CREATE FUNCTION @extschema@.idem_stock_add(item text, n bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_stock_add'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_stock_add(text, bigint) IS
    'Adds n units to a hot-stock item in this transaction, creating it at 0 if new: the level this transaction sees';

CREATE FUNCTION @extschema@.idem_stock_take(item text, n bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_stock_take'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_stock_take(text, bigint) IS
    'Takes n units of a hot-stock item in this transaction: true, sold when it commits; false if fewer than n remain';

CREATE FUNCTION @extschema@.idem_stock_level(item text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_stock_level'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_stock_level(text) IS
    'Units of a hot-stock item left after every committed take and add';

CREATE FUNCTION @extschema@.idem_stock_snapshot(OUT item text, OUT level bigint, OUT in_flight bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stock_snapshot'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_stock_snapshot() IS
    'The rows of the idem_stock view: every hot-stock item, its level and its units in flight. Not for PUBLIC';

-- One row per item: units left after every committed take, and units held
-- by transactions still in flight.
CREATE VIEW @extschema@.idem_stock AS SELECT * FROM @extschema@.idem_stock_snapshot();
COMMENT ON VIEW @extschema@.idem_stock IS
    'Hot-stock items, one row each: units left after every committed take, and units held by transactions in flight';
COMMENT ON COLUMN @extschema@.idem_stock.item IS 'The item''s name';
COMMENT ON COLUMN @extschema@.idem_stock.level IS 'Units left after every committed take and add';
COMMENT ON COLUMN @extschema@.idem_stock.in_flight IS
    'Units held by takes of transactions still running (through shared memory)';

-- The snapshot lists every item and its level: for the owner and monitoring
-- roles, not for PUBLIC (a caller reads the level of an item it names with
-- idem_stock_level). The view runs the function with its reader's rights,
-- so pg_monitor gets both.
REVOKE EXECUTE ON FUNCTION @extschema@.idem_stock_snapshot() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_stock_snapshot() TO pg_monitor;
GRANT SELECT ON @extschema@.idem_stock TO pg_monitor;
