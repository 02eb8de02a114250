-- pg_idem install script, assembled by the Makefile from src/install/*.sql.
\echo Use "CREATE EXTENSION pg_idem" to load this file. \quit

-- Security model (README "Security"): the idem_* tables belong to the
-- extension's owner and no other role may read or write them directly. The
-- functions that write them run as that owner (SECURITY DEFINER); every
-- statement they run is schema-qualified and runs under a search path pinned
-- in C++ (pg_catalog alone: src/pg/spi.cpp). They are
-- executable by PUBLIC unless the README says otherwise; a DBA may REVOKE
-- EXECUTE ... FROM PUBLIC and grant a role of their own.
