// idem_key_hash(scope, key): the value of idem_claims.key_hash (core/key.hpp),
// for a DBA who looks a claim up by its primary key.
#include "claim.hpp"
#include "pg/guard.hpp"

IDEM_SQL_FUNCTION(idem_key_hash)
{
    // Only NULL is refused, so that rows stored by hand can be looked up
    // whatever their length.
    if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                        errmsg("%s must not be NULL", PG_ARGISNULL(0) ? "scope" : "key")));
    text* scope = PG_GETARG_TEXT_PP(0);
    text* key = PG_GETARG_TEXT_PP(1);
    idem::pg::ScopeArg s{PointerGetDatum(scope), idem::Scope{{VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope)}}};
    idem::pg::KeyArg k{PointerGetDatum(key), idem::Key{{VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)}}};
    auto* uuid = static_cast<pg_uuid_t*>(palloc(sizeof(pg_uuid_t)));
    *uuid = idem::claims::key_hash_of(s, k);
    return UUIDPGetDatum(uuid);
}
