// Anti-replay tokens (SPEC "Anti-replay tokens"), done transactionally.
//
// A token is a row of idem_tokens; consuming it deletes the row in the
// caller's transaction. So a failed business write gives the token back (the
// delete rolls back with it), and two concurrent consumers cannot both pass:
// the second waits on the first's row lock, then finds the row gone (false)
// or, if the first rolled back, deletes it itself (true). The Redis
// dilemma -- delete the token before the write or after it -- disappears.
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
}

namespace idem {
namespace {

pg::Statement insert_token = {
    "INSERT INTO @extschema@.idem_tokens (token, scope, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
    4,
    {UUIDOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}};

// Expired tokens stay until the purge and count as absent: one expired when
// the call began is not even locked. The DELETE may wait for another
// consumer that then rolls back, so whether the token it took had expired
// meanwhile is judged after it, by the clock then (false; the row is gone,
// as the purge would have it).
pg::Statement consume_token = {
    "DELETE FROM @extschema@.idem_tokens "
    "WHERE token = $1 AND scope = $2 AND (expires_at IS NULL OR expires_at > $3) RETURNING expires_at",
    3,
    {UUIDOID, TEXTOID, TIMESTAMPTZOID}};

// A random (version 4) UUID from PostgreSQL's strong random source.
pg_uuid_t random_token()
{
    pg_uuid_t uuid;
    if (!pg_strong_random(uuid.data, UUID_LEN))
        ereport(ERROR, (errcode(ERRCODE_SYSTEM_ERROR), errmsg("could not generate a random token")));
    uuid.data[6] = (uuid.data[6] & 0x0f) | 0x40;  // version 4
    uuid.data[8] = (uuid.data[8] & 0x3f) | 0x80;  // RFC 4122 variant
    return uuid;
}

}  // namespace
}  // namespace idem

using namespace idem;

// idem_token_issue(scope text DEFAULT 'default', ttl interval DEFAULT '1 hour') RETURNS uuid
IDEM_SQL_FUNCTION(idem_token_issue)
{
    PreventCommandIfReadOnly("idem_token_issue()");
    pg::ScopeArg scope = pg::scope_arg(fcinfo, 0, "scope");
    TimestampTz now = GetCurrentTimestamp();
    pg::Expiry expiry = pg::expiry_at(pg::ttl_arg(fcinfo, 1, "ttl", true), now);
    auto* token = static_cast<pg_uuid_t*>(palloc(sizeof(pg_uuid_t)));
    *token = random_token();

    pg::connect();
    Datum values[4] = {UUIDPGetDatum(token), scope.datum, TimestampTzGetDatum(now), TimestampTzGetDatum(expiry.at)};
    const char nulls[4] = {' ', ' ', ' ', expiry.never ? 'n' : ' '};
    pg::run(insert_token, fcinfo, values, nulls);
    SPI_finish();
    stats::count(stats::token_issued, scope.scope);
    return UUIDPGetDatum(token);
}

// idem_token_consume(token uuid, scope text DEFAULT 'default') RETURNS boolean
IDEM_SQL_FUNCTION(idem_token_consume)
{
    PreventCommandIfReadOnly("idem_token_consume()");
    pg::require_arg(fcinfo, 0, "token");
    pg::ScopeArg scope = pg::scope_arg(fcinfo, 1, "scope");

    pg::connect();
    Datum values[3] = {PG_GETARG_DATUM(0), scope.datum, TimestampTzGetDatum(GetCurrentTimestamp())};
    bool consumed = false;
    if (pg::run(consume_token, fcinfo, values, nullptr) == 1) {
        bool never_expires;
        TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 1, &never_expires));
        consumed = never_expires || GetCurrentTimestamp() < expires_at;
    }
    SPI_finish();
    stats::count(consumed ? stats::token_consumed : stats::token_refused, scope.scope);
    PG_RETURN_BOOL(consumed);
}
