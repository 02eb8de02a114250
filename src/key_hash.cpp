// idem_key_hash(scope, key): the value the claim index holds (core/key.hpp).
#include "core/key.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"

extern "C" {
#include "utils/uuid.h"
}

#include <cstring>

IDEM_SQL_FUNCTION(idem_key_hash)
{
    return idem::pg::guarded([&]() -> Datum {
        // The index evaluates this for rows already stored, so only NULL is
        // refused here; the claim functions check lengths before storing.
        if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                            errmsg("%s must not be NULL", PG_ARGISNULL(0) ? "scope" : "key")));
        text* scope = PG_GETARG_TEXT_PP(0);
        text* key = PG_GETARG_TEXT_PP(1);
        idem::KeyHash hash = idem::key_hash(
            idem::Scope{{VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope)}},
            idem::Key{{VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)}});
        auto* uuid = static_cast<pg_uuid_t*>(palloc(sizeof(pg_uuid_t)));
        std::memcpy(uuid->data, hash.bytes, UUID_LEN);
        return UUIDPGetDatum(uuid);
    });
}
