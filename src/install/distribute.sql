
-- Citus --------------------------------------------------------------------

-- The layout README "Scaling out with Citus" describes, made on the
-- coordinator: idem_claims and idem_holds distributed by key, co-located
-- with the business table given (distributed by its request key, text);
-- tokens by token and leases by name, each in a colocation group of its own
-- (they have nothing to do with the business tables' shards). Hot stock stays local to the coordinator
-- (src/citus.hpp says why): its tables are refused as Citus tables.
--
-- idem_claims' primary key is key_hash, which Citus would refuse because it
-- does not include key. It is still unique across shards: equal (scope, key)
-- means equal key, so one shard; citus.allow_unsafe_constraints says so to
-- Citus, for this transaction only. Written in plpgsql so that it can be
-- created where Citus is not installed; it needs it when it runs.
CREATE FUNCTION @extschema@.idem_distribute(colocate_with regclass DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'idem_distribute() needs the citus extension in this database'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'CREATE EXTENSION citus, and add the workers, first.';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'idem_distribute() runs on the Citus coordinator only'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF colocate_with IS NOT NULL AND NOT EXISTS (
            SELECT FROM pg_catalog.pg_dist_partition
            WHERE logicalrelid = colocate_with AND partmethod = 'h') THEN
        RAISE EXCEPTION 'colocate_with: % is not a distributed table', colocate_with
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Distribute the business table by its request key (create_distributed_table) first.';
    END IF;
    FOR t IN SELECT c.oid::regclass AS rel FROM pg_catalog.pg_class c
             WHERE c.relnamespace = '@extschema@'::regnamespace
               AND c.relname IN ('idem_stock_items', 'idem_stock_ledger')
               AND c.oid IN (SELECT logicalrelid FROM pg_catalog.pg_dist_partition) LOOP
        RAISE EXCEPTION 'hot stock''s table % is a Citus table', t.rel
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Each node''s shared memory would sell the same units.',
                  HINT = 'Hot stock runs on the Citus coordinator, with its tables local there.';
    END LOOP;
    PERFORM pg_catalog.set_config('citus.allow_unsafe_constraints', 'on', true);
    FOR t IN SELECT * FROM (VALUES
                 ('idem_claims', 'key', coalesce(colocate_with::text, 'default')),
                 ('idem_holds', 'key', '@extschema@.idem_claims'),
                 ('idem_tokens', 'token', 'none'),
                 ('idem_leases', 'name', 'none')) AS l(name, column_name, colocated) LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                       WHERE logicalrelid = pg_catalog.format('@extschema@.%I', t.name)::regclass) THEN
            PERFORM pg_catalog.create_distributed_table(pg_catalog.format('@extschema@.%I', t.name),
                                                        t.column_name, colocate_with => t.colocated);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.idem_distribute(regclass) IS
    'On a Citus coordinator: distributes pg_idem''s tables (claims by key, co-located with colocate_with)';
REVOKE ALL ON FUNCTION @extschema@.idem_distribute(regclass) FROM PUBLIC;

-- Citus leaves the shards of an extension's distributed tables behind when
-- the extension is dropped: this drops them first (src/citus.cpp).
CREATE FUNCTION @extschema@.idem_drop_extension()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'idem_drop_extension'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.idem_drop_extension() IS
    'Event trigger: before DROP EXTENSION pg_idem on a Citus coordinator, drops the shards of pg_idem''s tables';
REVOKE ALL ON FUNCTION @extschema@.idem_drop_extension() FROM PUBLIC;
CREATE EVENT TRIGGER idem_drop_extension ON ddl_command_start WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION @extschema@.idem_drop_extension();
COMMENT ON EVENT TRIGGER idem_drop_extension IS
    'Before DROP EXTENSION pg_idem on a Citus coordinator, drops the shards of pg_idem''s tables (idem_drop_extension)';
