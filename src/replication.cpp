#include "replication.hpp"

#include "pg/spi.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
}

namespace idem::replication {
namespace {

// The tables of pg_idem that enabled subscriptions replicate into this
// database. pg_subscription_rel is per database, pg_subscription shared;
// pg_depend keeps the extension's own tables (six), wherever its schema is
// shared with the application's tables.
pg::Statement find_subscribed = {"SELECT r.srrelid FROM pg_catalog.pg_subscription_rel r "
                                 "JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid "
                                 "JOIN pg_catalog.pg_depend d ON d.objid = r.srrelid AND d.deptype = 'e' "
                                 "  AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
                                 "JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_idem' "
                                 "WHERE s.subenabled",
                                 0,
                                 {}};

// What find_subscribed found, while `valid`.
// Every invalidation of the two catalogs counts in `invalidations`: one that
// arrives while the tables are read (the statement takes locks, which accept
// invalidations) leaves the answer not valid.
constexpr int max_tables = 16;  // more than pg_idem has
struct Subscribed {
    bool valid;
    int count;
    Oid relids[max_tables];
};
Subscribed known = {};
uint64 invalidations = 0;
bool callbacks_registered = false;

void forget_subscribed(Datum, int, uint32)
{
    invalidations++;
    known.valid = false;
}

void read_subscribed(Oid nsp)
{
    if (!callbacks_registered) {
        CacheRegisterSyscacheCallback(SUBSCRIPTIONRELMAP, forget_subscribed, 0);
        CacheRegisterSyscacheCallback(SUBSCRIPTIONOID, forget_subscribed, 0);
        callbacks_registered = true;
    }
    uint64 before = invalidations;
    uint64 rows = pg::run(find_subscribed, nsp, nullptr, nullptr);
    known.count = 0;
    for (uint64 i = 0; i < rows && known.count < max_tables; i++) {
        bool isnull;
        known.relids[known.count++] = DatumGetObjectId(pg::result_value(i, 1, &isnull));
    }
    known.valid = invalidations == before;
}

}  // namespace

bool subscribed(Oid extension_namespace, const char* table)
{
    Oid relid = get_relname_relid(table, extension_namespace);
    if (!OidIsValid(relid))
        return false;
    if (!known.valid)
        read_subscribed(extension_namespace);
    for (int i = 0; i < known.count; i++)
        if (known.relids[i] == relid)
            return true;
    return false;
}

bool stock_subscribed(Oid extension_namespace)
{
    return subscribed(extension_namespace, "idem_stock_items") || subscribed(extension_namespace, "idem_stock_ledger");
}

}  // namespace idem::replication
