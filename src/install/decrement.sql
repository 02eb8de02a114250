
-- Conditional decrement -----------------------------------------------------

-- The helpers run with the caller's rights (SECURITY INVOKER) and search
-- path: exactly the privileges, row-level security and triggers of the
-- UPDATE they stand for.
CREATE FUNCTION @extschema@.idem_decrement(rel regclass, key_column name, key anyelement,
                                           amount_column name, n numeric)
RETURNS numeric
AS 'MODULE_PATHNAME', 'idem_decrement'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.idem_decrement(regclass, name, anyelement, name, numeric) IS
    'Subtracts n from amount_column where key_column = key if the row holds at least n: new amount, NULL if short';

-- The same with the key as text: drivers send untyped parameters as text
-- (node-postgres, psycopg), which the anyelement form cannot resolve. The
-- key is converted to the key column's type exactly, or refused (22P02).
CREATE FUNCTION @extschema@.idem_decrement(rel regclass, key_column name, key text,
                                           amount_column name, n numeric)
RETURNS numeric
AS 'MODULE_PATHNAME', 'idem_decrement'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.idem_decrement(regclass, name, text, name, numeric) IS
    'idem_decrement for a key sent as text (drivers'' untyped parameters), read by the key column''s type';
