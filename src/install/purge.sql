
-- Expiry purge ------------------------------------------------------------

-- Deletes expired claims, tokens and leases (at most max_rows; NULL: all) in
-- the caller's transaction and returns how many. With pg_idem preloaded the
-- background worker does this on its own. Not for PUBLIC: an operator's tool.
CREATE FUNCTION @extschema@.idem_purge(max_rows integer DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_purge'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_purge(integer) IS
    'Deletes expired claims, tokens and leases (at most max_rows; NULL: all) in this transaction; returns how many';
REVOKE EXECUTE ON FUNCTION @extschema@.idem_purge(integer) FROM PUBLIC;
