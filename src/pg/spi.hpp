// Statements pg_idem runs through SPI, each prepared once per backend.
//
// pg_idem reaches its tables only through SQL (SPEC "Beyond one machine"),
// with every time computed here and passed as a parameter. The SQL text says
// @extschema@ for the schema the extension lives in; it is resolved from the
// calling function, and the plans are prepared again when that schema moves
// or is renamed. Every statement runs under a pinned search path
// (pg_catalog alone), whatever the caller's.
#pragma once

#include "pg/postgres.hpp"

extern "C" {
#include "executor/spi.h"
}

namespace idem::pg {

constexpr int max_statement_args = 8;

struct Statement {
    const char* sql;
    int nargs;
    Oid argtypes[max_statement_args];
    // Filled on first use.
    SPIPlanPtr plan;
    uint64 generation;
};

// Registers the invalidation callback; called once from _PG_init.
void spi_init();

// SPI_connect, for the SQL functions that run statements.
void connect();

// Runs `stmt` (inside SPI_connect) for the extension installed in schema
// `extension_namespace`; `nulls` as SPI takes them (' ' or 'n'), NULL for
// none. Returns SPI_processed; the rows are in SPI_tuptable.
uint64 run(Statement& stmt, Oid extension_namespace, Datum* values, const char* nulls);

// The same, for the extension of the SQL function that `fcinfo` calls.
uint64 run(Statement& stmt, FunctionCallInfo fcinfo, Datum* values, const char* nulls);

// Runs `sql`, made for this one call (no @extschema@: it names what it
// touches), under the same pinned search path. Returns SPI_processed.
uint64 run_once(const char* sql, int nargs, Oid* argtypes, Datum* values, const char* nulls);

// The same under the latest snapshot instead of the caller's: it sees every
// transaction committed so far (and this transaction's own earlier
// statements), whatever the isolation level and however old the caller's
// snapshot is.
uint64 run_latest(Statement& stmt, Oid extension_namespace, Datum* values, const char* nulls);

// The same under the latest snapshot without this transaction's own changes:
// only what other transactions have committed, for a read-only statement.
uint64 run_committed(Statement& stmt, Oid extension_namespace, Datum* values, const char* nulls);

// The schema pg_idem is installed in, in the current database; InvalidOid
// when it is not installed. For code that no SQL function calls (the
// worker); runs inside SPI_connect.
Oid installed_namespace();

// SPI_prepare + SPI_keepplan: a plan that outlives the call, prepared under
// whatever search path is in force (DEBUG1 says what was prepared). The
// Statements above use it under the pinned one; the helpers with the
// caller's.
SPIPlanPtr prepare_kept(const char* sql, int nargs, Oid* argtypes);

// Column `col` (1-based) of result row `row`.
Datum result_value(uint64 row, int col, bool* isnull);

}  // namespace idem::pg
