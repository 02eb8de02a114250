
-- State transitions ---------------------------------------------------------

-- Like idem_decrement, with the caller's rights and search path.
CREATE FUNCTION @extschema@.idem_transition(rel regclass, key_column name, key anyelement,
                                            state_column name, from_state text, to_state text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_transition'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.idem_transition(regclass, name, anyelement, name, text, text) IS
    'Moves the row where key_column = key from from_state to to_state: true; false if already in to_state; else IK003';

-- The same with the key as text (see idem_decrement's).
CREATE FUNCTION @extschema@.idem_transition(rel regclass, key_column name, key text,
                                            state_column name, from_state text, to_state text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_transition'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.idem_transition(regclass, name, text, name, text, text) IS
    'idem_transition for a key sent as text (drivers'' untyped parameters), read by the key column''s type';
