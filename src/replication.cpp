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

// pg_subscription_rel is per database, pg_subscription shared: the join
// keeps this database's relations of enabled subscriptions.
pg::Statement find_subscription = {"SELECT FROM pg_catalog.pg_subscription_rel r "
                                   "JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid "
                                   "WHERE r.srrelid = $1 AND s.subenabled LIMIT 1",
                                   1,
                                   {OIDOID}};

// stock_subscribed's answer, for the extension in stock_namespace, while
// stock_known. Every invalidation of the two catalogs counts in
// invalidations: one that arrives while the answer is being read (its
// statement takes locks, which accept invalidations) leaves it unknown.
bool stock_known = false;
bool stock_answer = false;
Oid stock_namespace = InvalidOid;
uint64 invalidations = 0;
bool callbacks_registered = false;

void forget_stock_answer(Datum, int, uint32)
{
    invalidations++;
    stock_known = false;
}

}  // namespace

bool stock_subscribed(Oid extension_namespace)
{
    if (!callbacks_registered) {
        CacheRegisterSyscacheCallback(SUBSCRIPTIONRELMAP, forget_stock_answer, 0);
        CacheRegisterSyscacheCallback(SUBSCRIPTIONOID, forget_stock_answer, 0);
        callbacks_registered = true;
    }
    if (stock_known && stock_namespace == extension_namespace)
        return stock_answer;
    uint64 before = invalidations;
    bool answer =
        subscribed(extension_namespace, "idem_stock_items") || subscribed(extension_namespace, "idem_stock_ledger");
    if (invalidations == before) {
        stock_answer = answer;
        stock_namespace = extension_namespace;
        stock_known = true;
    }
    return answer;
}

bool subscribed(Oid extension_namespace, const char* table)
{
    Oid relid = get_relname_relid(table, extension_namespace);
    if (!OidIsValid(relid))
        return false;
    Datum values[1] = {ObjectIdGetDatum(relid)};
    return pg::run(find_subscription, extension_namespace, values, nullptr) > 0;
}

}  // namespace idem::replication
