#include "citus.hpp"

#include "pg/guard.hpp"
#include "pg/spi.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
}

#include <cstring>

namespace idem::citus {
namespace {

// Prepared only where Citus is installed (they name its catalog).
pg::Statement ask_coordinator = {"SELECT pg_catalog.citus_is_coordinator()", 0, {}};
pg::Statement ask_citus_table = {"SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1", 1, {OIDOID}};
pg::Statement find_local_shards = {"SELECT s.shardid FROM pg_catalog.pg_dist_shard s "
                                   "JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid "
                                   "JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid = s.logicalrelid "
                                   "WHERE s.logicalrelid = $1 AND d.partmethod = 'h' "
                                   "  AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group) "
                                   "ORDER BY s.shardid",
                                   1,
                                   {OIDOID}};

}  // namespace

bool installed_here()
{
    return loaded() && OidIsValid(get_extension_oid("citus", true));
}

bool loaded()
{
    // Citus defines its settings when it loads; a server loads it at start.
    static const bool citus_loaded = GetConfigOption("citus.node_conninfo", true, false) != nullptr;
    return citus_loaded;
}

bool on_worker(Oid nsp)
{
    if (!installed_here())
        return false;
    pg::run(ask_coordinator, nsp, nullptr, nullptr);
    bool isnull;
    bool coordinator = DatumGetBool(pg::result_value(0, 1, &isnull));
    return !isnull && !coordinator;
}

void require_coordinator(Oid nsp, const char* function, const char* why)
{
    if (!on_worker(nsp))
        return;
    ereport(ERROR,
            (errcode(ERRCODE_FEATURE_NOT_SUPPORTED), errmsg("%s runs on the Citus coordinator only", function),
             errdetail("%s", why), errhint("Call it on the coordinator, not in a function delegated to a worker.")));
}

bool is_citus_table(Oid nsp, Oid rel)
{
    if (!installed_here())
        return false;
    Datum values[1] = {ObjectIdGetDatum(rel)};
    return pg::run(ask_citus_table, nsp, values, nullptr) > 0;
}

List* local_shards(Oid nsp, Oid rel)
{
    if (!installed_here())
        return NIL;
    Datum values[1] = {ObjectIdGetDatum(rel)};
    uint64 rows = pg::run(find_local_shards, nsp, values, nullptr);
    const char* schema = get_namespace_name(get_rel_namespace(rel));
    const char* name = get_rel_name(rel);
    List* shards = NIL;
    for (uint64 i = 0; i < rows; i++) {
        bool isnull;
        int64 shardid = DatumGetInt64(pg::result_value(i, 1, &isnull));
        // Citus names a shard after its table: name_shardid, in the table's schema.
        char* shard = psprintf("%s_" INT64_FORMAT, name, shardid);
        shards = lappend(shards, quote_qualified_identifier(schema, shard));
    }
    return shards;
}

}  // namespace idem::citus

using namespace idem;

// idem_drop_extension(): an event trigger, before DROP EXTENSION. Citus drops
// the metadata of an extension's distributed tables with the extension, but
// leaves their shards on the workers (citusdata/citus#6662). So before
// DROP EXTENSION pg_idem on the coordinator, the shards of pg_idem's tables
// are dropped with Citus' own function; the rest of the command drops the
// tables as before. Anywhere else, and for any other extension, it does
// nothing. The transaction is the command's: if the drop fails, nothing is
// gone.
IDEM_SQL_FUNCTION(idem_drop_extension)
{
    if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("idem_drop_extension() is an event trigger")));
    auto* event = reinterpret_cast<EventTriggerData*>(fcinfo->context);
    if (!citus::loaded() || !IsA(event->parsetree, DropStmt))
        PG_RETURN_VOID();
    auto* drop = reinterpret_cast<DropStmt*>(event->parsetree);
    bool dropping_pg_idem = false;
    ListCell* cell;
    foreach (cell, drop->objects)
        dropping_pg_idem |= drop->removeType == OBJECT_EXTENSION && std::strcmp(strVal(lfirst(cell)), "pg_idem") == 0;
    Oid nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
    pg::connect();
    if (dropping_pg_idem && !citus::on_worker(nsp)) {
        for (const char* table : {"idem_claims", "idem_holds", "idem_tokens", "idem_leases"}) {
            Oid rel = get_relname_relid(table, nsp);
            if (!OidIsValid(rel) || !citus::is_citus_table(nsp, rel))
                continue;
            Oid types[4] = {OIDOID, TEXTOID, TEXTOID, BOOLOID};
            Datum values[4] = {ObjectIdGetDatum(rel), CStringGetTextDatum(get_namespace_name(nsp)),
                               CStringGetTextDatum(table), BoolGetDatum(false)};
            pg::run_once("SELECT pg_catalog.citus_drop_all_shards($1, $2, $3, $4)", 4, types, values, nullptr);
        }
    }
    SPI_finish();
    PG_RETURN_VOID();
}
