-- pg_idem's guard (src/pg/guard.hpp) after a C++ exception thrown inside a
-- PG_TRY block or under an errcontext callback (test/guard/: a test library,
-- never part of pg_idem). The error comes out with its SQLSTATE and without
-- the dead frame's context, and the errors after it are reported normally:
-- the guard put PostgreSQL's error state back as the call found it.
CREATE FUNCTION pg_temp.throw_in_pg_try() RETURNS void
AS 'pg_idem_guard_test', 'idem_test_throw_in_pg_try' LANGUAGE C;
CREATE FUNCTION pg_temp.throw_in_errcontext() RETURNS void
AS 'pg_idem_guard_test', 'idem_test_throw_in_errcontext' LANGUAGE C;
\set VERBOSITY default
SELECT pg_temp.throw_in_pg_try();
SELECT 1 / 0;
SELECT pg_temp.throw_in_errcontext();
SELECT 1 / 0;
-- The same inside a transaction that goes on through savepoints.
BEGIN;
SAVEPOINT s;
SELECT pg_temp.throw_in_pg_try();
ROLLBACK TO SAVEPOINT s;
SELECT pg_temp.throw_in_errcontext();
ROLLBACK TO SAVEPOINT s;
SELECT 'still working' AS after_the_throws;
COMMIT;
