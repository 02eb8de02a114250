// Claims: the shared dedup table idem_claims and the functions that use it
// (SPEC "Claims"): idem_claim, idem_begin, idem_finish, idem_forget,
// idem_status.
//
// A claim is a row of idem_claims, written by the caller's transaction, so it
// commits or rolls back with the business write. The primary key on key_hash
// does the waiting: an INSERT that meets a row still being written by
// another transaction waits for that transaction and then sees its outcome.
// INSERT ... ON CONFLICT DO NOTHING that finds a committed row writes nothing
// at all, so a duplicate costs no WAL, no transaction id and no dead tuple.
//
// Every statement names the row by key_hash and key with equality, so that a
// sharding layer routes it to the one shard that holds the key (Citus
// distributes idem_claims by key); every time is a parameter.
#include "claim.hpp"

#include "fingerprint.hpp"
#include "own_claims.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::claims {
namespace {

using pg::Statement;

Statement insert_claim = {
    "INSERT INTO @extschema@.idem_claims (scope, key, key_hash, claimed_at, expires_at, fingerprint) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_hash) DO NOTHING",
    6,
    {TEXTOID, TEXTOID, UUIDOID, TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDOID}};

// What holds the key now. The first column tells a real match from a hash
// collision (core/key.hpp); xmin tells the statistics whether the INSERT
// waited for the row's writer (nothing else is decided from it); the last
// says a multi-step request holds the key (hold.cpp).
Statement probe_claim = {"SELECT scope = $1, expires_at, fingerprint, response, xmin, hold_fence IS NOT NULL "
                         "FROM @extschema@.idem_claims WHERE key_hash = $3 AND key = $2",
                         3,
                         {TEXTOID, TEXTOID, UUIDOID}};

// Whether any key has this hash: asked only when, two rounds in a row, the
// INSERT met a row that the probe by hash and key does not find. Once is a
// row deleted in between (idem_forget, the purge); twice, a collision. The
// only statement that does not name the key, so Citus sends it to every
// shard: asked that rarely, it keeps every claim on one shard.
Statement probe_hash = {"SELECT FROM @extschema@.idem_claims WHERE key_hash = $1", 1, {UUIDOID}};

// Take over an expired claim. The WHERE clause is re-checked against the
// newest row version after waiting for a concurrent writer, so of two
// transactions renewing the same expired claim only one succeeds.
Statement renew_claim = {"UPDATE @extschema@.idem_claims "
                         "SET claimed_at = $1, expires_at = $2, fingerprint = $3, response = NULL, hold_fence = NULL "
                         "WHERE key_hash = $4 AND key = $5 AND expires_at <= $1",
                         5,
                         {TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDOID, UUIDOID, TEXTOID}};

Statement date_claim = {"UPDATE @extschema@.idem_claims SET claimed_at = $1, expires_at = $2 "
                        "WHERE key_hash = $3 AND key = $4",
                        4,
                        {TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDOID, TEXTOID}};

Statement store_response = {"UPDATE @extschema@.idem_claims SET response = $3 "
                            "WHERE key_hash = $4 AND scope = $1 AND key = $2",
                            4,
                            {TEXTOID, TEXTOID, JSONBOID, UUIDOID}};

Statement forget_claim = {"DELETE FROM @extschema@.idem_claims "
                          "WHERE key_hash = $3 AND scope = $1 AND key = $2 "
                          "RETURNING expires_at",
                          3,
                          {TEXTOID, TEXTOID, UUIDOID}};

// What idem_status shows: a plain read, which takes no lock and never waits.
Statement read_claim = {"SELECT claimed_at, expires_at, response, hold_fence IS NOT NULL "
                        "FROM @extschema@.idem_claims WHERE key_hash = $3 AND scope = $1 AND key = $2",
                        3,
                        {TEXTOID, TEXTOID, UUIDOID}};

// A claim that keeps changing under us (renewed, forgotten, renewed again)
// cannot loop forever: after this many rounds the caller retries (40001).
constexpr int max_claim_rounds = 100;

bool is_live(bool never_expires, TimestampTz expires_at, TimestampTz now)
{
    return never_expires || now < expires_at;
}

const char* scope_for_message(const pg::ScopeArg& scope)
{
    return pg::key_for_message(Key{scope.scope.text});
}

[[noreturn]] void raise_hash_collision(const ClaimRequest& r)
{
    ereport(ERROR, (errcode(ERRCODE_UNIQUE_VIOLATION),
                    errmsg("key %s in scope %s shares its hash with another key", pg::key_for_message(r.key.key),
                           scope_for_message(r.scope)),
                    errdetail("pg_idem indexes claims by a 128-bit SHA-256 prefix of (scope, key)."),
                    errhint("Use another key.")));
}

// The claim is the caller's: remembered for idem_finish, counted, and dated
// from now if the statement that got it took a while.
ClaimOutcome granted(const ClaimRequest& r, FunctionCallInfo fcinfo, TimestampTz asked)
{
    TimestampTz now;
    if (granted_late(asked, &now)) {
        pg::Expiry expiry = pg::expiry_at(r.ttl, now);
        Datum values[4] = {TimestampTzGetDatum(now), TimestampTzGetDatum(expiry.at), UUIDPGetDatum(&r.key_hash),
                           r.key.datum};
        const char nulls[4] = {' ', expiry.never ? 'n' : ' ', ' ', ' '};
        pg::run(date_claim, fcinfo, values, nulls);
    }
    own_claims::remember(r.key_hash);
    count_granted(stats::claim_new, r, fcinfo);
    return ClaimOutcome{ClaimStatus::new_claim, false, 0};
}

[[noreturn]] void raise_request_mismatch(const ClaimRequest& r)
{
    stats::count(stats::request_mismatch, r.scope.scope);
    ereport(ERROR, (errcode(IDEM_ERRCODE_REQUEST_MISMATCH), errmsg("idempotency key reused with a different request"),
                    errdetail("Key %s in scope %s was claimed for a request that differs from this one.",
                              pg::key_for_message(r.key.key), scope_for_message(r.scope)),
                    errhint("A retry must send the same request; a new request needs a new key.")));
}

}  // namespace

void raise_held(const ClaimRequest& r)
{
    ereport(ERROR, (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
                    errmsg("key %s in scope %s is held by a multi-step request", pg::key_for_message(r.key.key),
                           scope_for_message(r.scope)),
                    errdetail("idem_hold() holds it, in transactions of its own: there is no transaction to wait for."),
                    errhint("Retry later with the same key, or use idem_begin(), which answers in_progress.")));
}

pg_uuid_t key_hash_of(const pg::ScopeArg& scope, const pg::KeyArg& key)
{
    KeyHash hash = key_hash(scope.scope, key.key);
    pg_uuid_t uuid;
    std::memcpy(uuid.data, hash.bytes, UUID_LEN);
    return uuid;
}

ClaimRequest claim_request(FunctionCallInfo fcinfo, pg::KeyArg key, int scope_argno, int ttl_argno)
{
    ClaimRequest r;
    r.scope = pg::scope_arg(fcinfo, scope_argno, "scope");
    r.key = key;
    r.key_hash = key_hash_of(r.scope, r.key);
    r.ttl = pg::ttl_arg(fcinfo, ttl_argno, "ttl", true);
    r.has_fingerprint = false;
    std::memset(&r.fingerprint, 0, sizeof r.fingerprint);
    return r;
}

bool granted_late(TimestampTz asked, TimestampTz* now)
{
    *now = GetCurrentTimestamp();
    return *now - asked > grant_slack_usec;
}

namespace {

// The heart of claiming; runs inside SPI_connect. Every decision is judged
// by the clock at the moment it is made: a statement may have waited for
// another transaction, and a claim may have expired meanwhile.
ClaimOutcome claim_rounds(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt)
{
    const char fingerprint_null = r.has_fingerprint ? ' ' : 'n';
    bool missed = false;  // the previous round's probe found no row
    for (int round = 0; round < max_claim_rounds; round++) {
        // 1. The common case, a key nobody holds: one INSERT.
        TimestampTz now = GetCurrentTimestamp();
        pg::Expiry expiry = pg::expiry_at(r.ttl, now);
        Datum insert_values[6] = {r.scope.datum,
                                  r.key.datum,
                                  UUIDPGetDatum(&r.key_hash),
                                  TimestampTzGetDatum(now),
                                  TimestampTzGetDatum(expiry.at),
                                  UUIDPGetDatum(&r.fingerprint)};
        const char insert_nulls[6] = {' ', ' ', ' ', ' ', expiry.never ? 'n' : ' ', fingerprint_null};
        if (pg::run(insert_claim, fcinfo, insert_values, insert_nulls) == 1)
            return granted(r, fcinfo, now);

        // 2. A row holds the key; if its writer was still running, the INSERT
        //    waited for it. Read what is there now.
        now = GetCurrentTimestamp();
        Datum probe_values[3] = {r.scope.datum, r.key.datum, UUIDPGetDatum(&r.key_hash)};
        if (pg::run(probe_claim, fcinfo, probe_values, nullptr) == 0) {
            Datum hash_values[1] = {UUIDPGetDatum(&r.key_hash)};
            if (missed && pg::run(probe_hash, fcinfo, hash_values, nullptr) > 0)
                raise_hash_collision(r);  // another key in the same scope
            missed = true;
            continue;  // deleted in between (idem_forget, purge): try again
        }
        missed = false;
        bool isnull, never_expires, fingerprint_missing, response_null;
        bool same_scope = DatumGetBool(pg::result_value(0, 1, &isnull));
        TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &never_expires));
        Datum stored_fingerprint = pg::result_value(0, 3, &fingerprint_missing);
        Datum response = pg::result_value(0, 4, &response_null);
        TransactionId writer = DatumGetTransactionId(pg::result_value(0, 5, &isnull));
        bool held = DatumGetBool(pg::result_value(0, 6, &isnull));
        if (!same_scope)
            raise_hash_collision(r);

        if (is_live(never_expires, expires_at, now)) {
            // The claim's writer was still running when the calling statement
            // started: the INSERT above waited for it to commit. (A worker's
            // xmin means nothing to this node's snapshot: from a Citus
            // coordinator, waits are not counted.)
            if (!own_claims::holds(r.key_hash) && !claim_is_remote() && ActiveSnapshotSet() &&
                XidInMVCCSnapshot(writer, GetActiveSnapshot()))
                stats::count(stats::claim_wait, r.scope.scope);
            if (r.has_fingerprint && !fingerprint_missing &&
                std::memcmp(DatumGetUUIDP(stored_fingerprint)->data, r.fingerprint.data, UUID_LEN) != 0)
                raise_request_mismatch(r);
            if (held) {  // a multi-step request, in its own transactions: nothing to wait for
                SPI_freetuptable(SPI_tuptable);
                stats::count(stats::claim_in_progress, r.scope.scope);
                return ClaimOutcome{ClaimStatus::in_progress, false, 0};
            }
            stats::count(stats::claim_duplicate, r.scope.scope);
            ClaimOutcome replay{ClaimStatus::replay, !response_null && result_cxt != nullptr, 0};
            if (replay.has_response) {
                MemoryContext old = MemoryContextSwitchTo(result_cxt);
                replay.response = PointerGetDatum(PG_DETOAST_DATUM_COPY(response));
                MemoryContextSwitchTo(old);
            }
            SPI_freetuptable(SPI_tuptable);
            return replay;
        }
        SPI_freetuptable(SPI_tuptable);

        // 3. The claim there has expired: it counts as absent, take it over.
        expiry = pg::expiry_at(r.ttl, now);
        Datum renew_values[5] = {TimestampTzGetDatum(now), TimestampTzGetDatum(expiry.at),
                                 UUIDPGetDatum(&r.fingerprint), UUIDPGetDatum(&r.key_hash), r.key.datum};
        const char renew_nulls[5] = {' ', expiry.never ? 'n' : ' ', fingerprint_null, ' ', ' '};
        if (pg::run(renew_claim, fcinfo, renew_values, renew_nulls) == 1)
            return granted(r, fcinfo, now);
    }
    ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                    errmsg("could not claim key %s in scope %s: concurrent transactions kept changing it",
                           pg::key_for_message(r.key.key), scope_for_message(r.scope))));
    pg_unreachable();
}

}  // namespace

namespace {

// Whether the caller (the role outside pg_idem's SECURITY DEFINER functions)
// may read idem_scope_stats, pg_monitor by default, and so be told which
// scopes exist.
bool may_read_scope_stats(FunctionCallInfo fcinfo)
{
    Oid view = get_relname_relid("idem_scope_stats", get_func_namespace(fcinfo->flinfo->fn_oid));
    return OidIsValid(view) && pg_class_aclcheck(view, GetOuterUserId(), ACL_SELECT) == ACLCHECK_OK;
}

}  // namespace

void count_granted(stats::Event event, const ClaimRequest& r, FunctionCallInfo fcinfo)
{
    stats::SwapSign sign = stats::count_claim(event, r.scope.scope, r.key.key);
    bool key_is_scope = sign.key_is_scope && may_read_scope_stats(fcinfo);
    if (!key_is_scope && !sign.key_repeats)
        return;
    const char* key = pg::key_for_message(r.key.key);
    const char* scope = scope_for_message(r.scope);
    ereport(WARNING,
            (errcode(ERRCODE_WARNING), errmsg("key %s and scope %s look swapped", key, scope),
             key_is_scope
                 ? errdetail("Scope %s is new, and key %s is the name of another scope of this database.", scope, key)
                 : errdetail("Scope %s is new, and so were the %d scopes before it, each first claimed with key %s.",
                             scope, stats::swapped_streak - 1, key),
             errhint("Pass the request's key first and the scope second.")));
}

// The claim's waits for the key's holder end after pg_idem.wait_timeout,
// and their 55P03 names the key.
ClaimOutcome claim_core(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt)
{
    return with_wait_timeout<ClaimOutcome>(&r.key, r.scope, [&] { return claim_rounds(r, fcinfo, result_cxt); });
}

namespace {

// The (key, scope) of idem_finish and idem_forget, arguments 0 and 1.
struct KeyInScope {
    pg::KeyArg key;
    pg::ScopeArg scope;
    pg_uuid_t hash;
};

KeyInScope key_in_scope(FunctionCallInfo fcinfo)
{
    KeyInScope k;
    k.key = pg::key_arg(fcinfo, 0, "key");
    k.scope = pg::scope_arg(fcinfo, 1, "scope");
    k.hash = key_hash_of(k.scope, k.key);
    return k;
}

const char* status_name(ClaimStatus status)
{
    switch (status) {
    case ClaimStatus::new_claim:
        return "new";
    case ClaimStatus::replay:
        return "replay";
    case ClaimStatus::in_progress:
        return "in_progress";
    }
    return "?";
}

}  // namespace
}  // namespace idem::claims

using namespace idem;
using namespace idem::claims;

// idem_claim(key text, scope text DEFAULT 'default', ttl interval DEFAULT NULL) RETURNS boolean
IDEM_SQL_FUNCTION(idem_claim)
{
    PreventCommandIfReadOnly("idem_claim()");
    ClaimRequest r = claim_request(fcinfo, pg::key_arg(fcinfo, 0, "key"), 1, 2);
    note_autocommit(fcinfo, "idem_claim()", &r.key, r.scope);
    pg::connect();
    ClaimOutcome outcome = claim_core(r, fcinfo, nullptr);
    if (outcome.status == ClaimStatus::in_progress)
        raise_held(r);
    SPI_finish();
    return BoolGetDatum(outcome.status == ClaimStatus::new_claim);
}

// idem_begin(key text, scope text, ttl interval, request jsonb, wait boolean)
//   RETURNS TABLE (status text, response jsonb)
IDEM_SQL_FUNCTION(idem_begin)
{
    PreventCommandIfReadOnly("idem_begin()");
    ClaimRequest r = claim_request(fcinfo, pg::key_arg(fcinfo, 0, "key"), 1, 2);
    if (!PG_ARGISNULL(3)) {
        r.has_fingerprint = true;
        r.fingerprint = request_fingerprint(PG_GETARG_JSONB_P(3));
    }
    pg::require_arg(fcinfo, 4, "wait");
    bool wait = PG_GETARG_BOOL(4);
    note_autocommit(fcinfo, "idem_begin()", &r.key, r.scope);

    InitMaterializedSRF(fcinfo, 0);
    MemoryContext cxt = CurrentMemoryContext;
    pg::connect();
    ClaimOutcome outcome = wait ? claim_core(r, fcinfo, cxt) : claim_nowait(r, fcinfo, cxt);
    SPI_finish();

    auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
    Datum values[2] = {CStringGetTextDatum(status_name(outcome.status)), outcome.response};
    bool nulls[2] = {false, !outcome.has_response};
    tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    return 0;
}

// idem_finish(key text, scope text, response jsonb) RETURNS void
//
// The transaction holds the claim exactly when it claimed the key itself, in
// a subtransaction that has not rolled back (own_claims.hpp), and the row is
// still there (idem_forget may have deleted it since).
IDEM_SQL_FUNCTION(idem_finish)
{
    PreventCommandIfReadOnly("idem_finish()");
    KeyInScope k = key_in_scope(fcinfo);

    bool held = false;
    pg::connect();
    if (!PG_ARGISNULL(2))
        check_response_size(PG_GETARG_DATUM(2), k.key, k.scope);
    if (own_claims::holds(k.hash)) {
        Datum values[4] = {k.scope.datum, k.key.datum, PG_GETARG_DATUM(2), UUIDPGetDatum(&k.hash)};
        const char nulls[4] = {' ', ' ', PG_ARGISNULL(2) ? 'n' : ' ', ' '};
        held = pg::run(store_response, fcinfo, values, nulls) == 1;
    }
    if (!held)
        ereport(ERROR, (errcode(IDEM_ERRCODE_NO_CLAIM_HELD),
                        errmsg("this transaction holds no claim on key %s in scope %s", pg::key_for_message(k.key.key),
                               scope_for_message(k.scope)),
                        errhint("Call idem_begin() or idem_claim() for the key first, in the same transaction.")));
    SPI_finish();
    return 0;
}

// idem_forget(key text, scope text DEFAULT 'default') RETURNS boolean
IDEM_SQL_FUNCTION(idem_forget)
{
    PreventCommandIfReadOnly("idem_forget()");
    KeyInScope k = key_in_scope(fcinfo);

    pg::connect();
    Datum values[3] = {k.scope.datum, k.key.datum, UUIDPGetDatum(&k.hash)};
    bool existed = false;
    if (pg::run(forget_claim, fcinfo, values, nullptr) == 1) {
        // An expired claim is as good as absent, by the clock after the
        // DELETE, which may have waited for the claim's writer.
        bool never_expires;
        TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 1, &never_expires));
        existed = is_live(never_expires, expires_at, GetCurrentTimestamp());
    }
    SPI_finish();
    return BoolGetDatum(existed);
}

// idem_status(key text, scope text DEFAULT 'default')
//   RETURNS TABLE (status text, claimed_at timestamptz, expires_at timestamptz, response jsonb)
//
// One row: absent (no committed row, or an expired one), in_progress (a
// multi-step request holds it) or done. A claim that another transaction
// has not committed is invisible here, as to any reader.
IDEM_SQL_FUNCTION(idem_status)
{
    KeyInScope k = key_in_scope(fcinfo);
    InitMaterializedSRF(fcinfo, 0);
    MemoryContext cxt = CurrentMemoryContext;
    Datum values[4] = {CStringGetTextDatum("absent"), 0, 0, 0};
    bool nulls[4] = {false, true, true, true};
    pg::connect();
    Datum key_values[3] = {k.scope.datum, k.key.datum, UUIDPGetDatum(&k.hash)};
    if (pg::run(read_claim, fcinfo, key_values, nullptr) == 1) {
        bool never_expires, isnull, response_null;
        TimestampTz claimed_at = DatumGetTimestampTz(pg::result_value(0, 1, &isnull));
        TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &never_expires));
        Datum response = pg::result_value(0, 3, &response_null);
        bool held = DatumGetBool(pg::result_value(0, 4, &isnull));
        if (is_live(never_expires, expires_at, GetCurrentTimestamp())) {
            MemoryContext old = MemoryContextSwitchTo(cxt);
            values[0] = CStringGetTextDatum(held ? "in_progress" : "done");
            values[1] = TimestampTzGetDatum(claimed_at);
            nulls[1] = false;
            values[2] = TimestampTzGetDatum(expires_at);
            nulls[2] = never_expires;
            if (!response_null) {
                values[3] = PointerGetDatum(PG_DETOAST_DATUM_COPY(response));
                nulls[3] = false;
            }
            MemoryContextSwitchTo(old);
        }
    }
    SPI_finish();
    auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
    tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    return 0;
}
