#include "pg/spi.hpp"

extern "C" {
#include "catalog/namespace.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
}

#include <cstring>

namespace idem::pg {
namespace {

// The schema the plans were prepared for, and a generation that bumps
// whenever it changes so that each Statement notices on its next use.
Oid prepared_namespace = InvalidOid;
char* prepared_schema = nullptr;  // quoted, in TopMemoryContext
uint64 generation = 1;

// Every statement is parsed, planned and run with pg_catalog alone on the
// search path (compat::push_catalog_search_path): pg_idem's own objects are
// always named with their schema (@extschema@), so nothing a user creates,
// in public, pg_temp or the extension's own schema, can be found by an
// unqualified name. Otherwise a function in public with an exactly matching
// signature (unnest(text[]) against pg_catalog's unnest(anyarray)) would win
// the lookup and run as the extension's owner inside a SECURITY DEFINER
// function. (Pinning it this way costs a list push per statement on 15, a
// GUC nest level on 17; a SET search_path clause on each function cost
// about a fifth of a claim's time.)

void namespace_changed(Datum, int, uint32)
{
    prepared_namespace = InvalidOid;
}

const char* extension_schema(Oid nsp)
{
    if (nsp != prepared_namespace || prepared_schema == nullptr) {
        char* name = get_namespace_name(nsp);
        if (name == nullptr)
            elog(ERROR, "pg_idem: extension schema %u vanished", nsp);
        const char* quoted = quote_identifier(name);
        if (prepared_schema == nullptr || std::strcmp(prepared_schema, quoted) != 0) {
            if (prepared_schema != nullptr)
                pfree(prepared_schema);
            prepared_schema = MemoryContextStrdup(TopMemoryContext, quoted);
            generation++;
        }
        prepared_namespace = nsp;
    }
    return prepared_schema;
}

char* with_schema(const char* sql, const char* schema)
{
    static const char placeholder[] = "@extschema@";
    StringInfoData out;
    initStringInfo(&out);
    for (const char* p = sql; *p;) {
        const char* hit = std::strstr(p, placeholder);
        if (hit == nullptr) {
            appendStringInfoString(&out, p);
            break;
        }
        appendBinaryStringInfo(&out, p, static_cast<int>(hit - p));
        appendStringInfoString(&out, schema);
        p = hit + sizeof placeholder - 1;
    }
    return out.data;
}

}  // namespace

void spi_init()
{
    CacheRegisterSyscacheCallback(NAMESPACEOID, namespace_changed, 0);
}

void connect()
{
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "pg_idem: SPI_connect failed");
}

uint64 run(Statement& stmt, FunctionCallInfo fcinfo, Datum* values, const char* nulls)
{
    return run(stmt, get_func_namespace(fcinfo->flinfo->fn_oid), values, nulls);
}

Oid installed_namespace()
{
    return compat::extension_schema("pg_idem");
}

namespace {

enum class Snap { caller, latest, committed };

// Runs `stmt` under the caller's snapshot, the latest one, or the latest one
// without this transaction's own changes.
uint64 execute(Statement& stmt, Oid extension_namespace, Datum* values, const char* nulls, Snap snap)
{
    const char* schema = extension_schema(extension_namespace);
    int search_path_level = compat::push_catalog_search_path();
    if (stmt.plan == nullptr || stmt.generation != generation) {
        if (stmt.plan != nullptr) {
            SPI_freeplan(stmt.plan);
            stmt.plan = nullptr;
        }
        stmt.plan = prepare_kept(with_schema(stmt.sql, schema), stmt.nargs, stmt.argtypes);
        stmt.generation = generation;
    }
    int rc;
    if (snap == Snap::committed) {
        // A snapshot whose command id is the transaction's first sees none
        // of the rows this transaction inserted (and still sees those it
        // deleted); read-only, so that SPI keeps that command id.
        Snapshot snapshot = RegisterSnapshot(GetLatestSnapshot());
        snapshot->curcid = FirstCommandId;
        rc = SPI_execute_snapshot(stmt.plan, values, nulls, snapshot, InvalidSnapshot, true, true, 0);
        UnregisterSnapshot(snapshot);
    } else if (snap == Snap::latest) {
        // Not read-only, so that SPI advances the command counter: the latest
        // snapshot then also sees this transaction's earlier statements.
        rc = SPI_execute_snapshot(stmt.plan, values, nulls, GetLatestSnapshot(), InvalidSnapshot, false, true, 0);
    } else {
        rc = SPI_execute_plan(stmt.plan, values, nulls, false, 0);
    }
    if (rc < 0)
        elog(ERROR, "pg_idem: SPI_execute_plan failed: %s", SPI_result_code_string(rc));
    compat::pop_catalog_search_path(search_path_level);
    return SPI_processed;
}

}  // namespace

uint64 run(Statement& stmt, Oid extension_namespace, Datum* values, const char* nulls)
{
    return execute(stmt, extension_namespace, values, nulls, Snap::caller);
}

uint64 run_once(const char* sql, int nargs, Oid* argtypes, Datum* values, const char* nulls)
{
    int search_path_level = compat::push_catalog_search_path();
    int rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, 0);
    // Can't happen: a statement's own errors are raised by SPI with their
    // SQLSTATE; a negative code means SPI was misused (not connected, say).
    if (rc < 0)
        elog(ERROR, "pg_idem: SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
    compat::pop_catalog_search_path(search_path_level);
    return SPI_processed;
}

uint64 run_latest(Statement& stmt, Oid extension_namespace, Datum* values, const char* nulls)
{
    return execute(stmt, extension_namespace, values, nulls, Snap::latest);
}

uint64 run_committed(Statement& stmt, Oid extension_namespace, Datum* values, const char* nulls)
{
    return execute(stmt, extension_namespace, values, nulls, Snap::committed);
}

SPIPlanPtr prepare_kept(const char* sql, int nargs, Oid* argtypes)
{
    SPIPlanPtr plan = SPI_prepare(sql, nargs, argtypes);
    if (plan == nullptr)
        elog(ERROR, "pg_idem: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
    if (SPI_keepplan(plan) != 0)
        elog(ERROR, "pg_idem: SPI_keepplan failed");
    elog(DEBUG1, "pg_idem: prepared %s", sql);
    return plan;
}

Datum result_value(uint64 row, int col, bool* isnull)
{
    return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

}  // namespace idem::pg
