
-- Hot stock ---------------------------------------------------------------

-- The durable record of hot-stock items: an item's level is its row's level
-- plus its ledger rows. Takes and adds append ledger rows; the purge worker
-- folds committed ones into the item rows. Shared memory decides takes.
CREATE TABLE @extschema@.idem_stock_items (
    item  text   PRIMARY KEY,
    level bigint NOT NULL
);
CREATE TABLE @extschema@.idem_stock_ledger (
    item  text   NOT NULL,
    delta bigint NOT NULL
);
REVOKE ALL ON @extschema@.idem_stock_items, @extschema@.idem_stock_ledger FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_stock_items', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_stock_ledger', '');

CREATE FUNCTION @extschema@.idem_stock_add(item text, n bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_stock_add'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_stock_take(item text, n bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_stock_take'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_stock_level(item text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_stock_level'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_stock_snapshot(OUT item text, OUT level bigint, OUT in_flight bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stock_snapshot'
LANGUAGE C VOLATILE SECURITY DEFINER;

-- One row per item: units left after every committed take, and units held
-- by transactions still in flight.
CREATE VIEW @extschema@.idem_stock AS SELECT * FROM @extschema@.idem_stock_snapshot();

-- The snapshot lists every item and its level: for the owner and monitoring
-- roles, not for PUBLIC (a caller reads the level of an item it names with
-- idem_stock_level). The view runs the function with its reader's rights,
-- so pg_monitor gets both.
REVOKE EXECUTE ON FUNCTION @extschema@.idem_stock_snapshot() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_stock_snapshot() TO pg_monitor;
GRANT SELECT ON @extschema@.idem_stock TO pg_monitor;
