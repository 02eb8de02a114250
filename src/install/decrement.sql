
-- Conditional decrement -----------------------------------------------------

-- The helpers run with the caller's rights (SECURITY INVOKER) and search
-- path: exactly the privileges, row-level security and triggers of the
-- UPDATE they stand for.
CREATE FUNCTION @extschema@.idem_decrement(rel regclass, key_column name, key anyelement,
                                           amount_column name, n numeric)
RETURNS numeric
AS 'MODULE_PATHNAME', 'idem_decrement'
LANGUAGE C VOLATILE;
