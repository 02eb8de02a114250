#include "citus.hpp"

#include "pg/spi.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
}

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

bool installed()
{
    return loaded() && OidIsValid(get_extension_oid("citus", true));
}

}  // namespace

bool loaded()
{
    // Citus defines its settings when it loads; a server loads it at start.
    static const bool citus_loaded = GetConfigOption("citus.node_conninfo", true, false) != nullptr;
    return citus_loaded;
}

bool on_worker(Oid nsp)
{
    if (!installed())
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
    if (!installed())
        return false;
    Datum values[1] = {ObjectIdGetDatum(rel)};
    return pg::run(ask_citus_table, nsp, values, nullptr) > 0;
}

List* local_shards(Oid nsp, Oid rel)
{
    if (!installed())
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
