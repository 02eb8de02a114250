\set ECHO none
-- Helpers for the pg_regress tests (sql/*.sql), included with \i.
--
-- error_of(sql) runs one statement and returns 'SQLSTATE: message', or
-- 'no error', so expected output pins down every error's SQLSTATE and that
-- its message names the argument at fault. It runs in a subtransaction, which
-- is also how a client's savepoint-and-retry would see pg_idem.
CREATE FUNCTION pg_temp.error_of(sql text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
\set ECHO all
