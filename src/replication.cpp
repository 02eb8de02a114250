#include "replication.hpp"

#include "pg/spi.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "utils/lsyscache.h"
}

namespace idem::replication {
namespace {

// pg_subscription_rel is per database, pg_subscription shared: the join
// keeps this database's relations of enabled subscriptions.
pg::Statement find_subscription = {"SELECT FROM pg_catalog.pg_subscription_rel r "
                                   "JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid "
                                   "WHERE r.srrelid = $1 AND s.subenabled LIMIT 1",
                                   1,
                                   {OIDOID}};

}  // namespace

bool subscribed(Oid extension_namespace, const char* table)
{
    Oid relid = get_relname_relid(table, extension_namespace);
    if (!OidIsValid(relid))
        return false;
    Datum values[1] = {ObjectIdGetDatum(relid)};
    return pg::run(find_subscription, extension_namespace, values, nullptr) > 0;
}

}  // namespace idem::replication
