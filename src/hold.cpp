// Multi-step requests (SPEC "Multi-step requests"): idem_hold,
// idem_checkpoint, idem_complete, idem_abandon.
//
// A request that calls another service cannot keep one transaction open
// across the call and survive a crash, so its claim is *held*: committed on
// its own by the caller right after idem_hold, with a hold that runs out.
// The key space is idem_claims': a held request is a row there whose
// hold_fence names the holder (claims of the same key answer in_progress or
// 55P03 while it is set), plus a row of idem_holds with the hold's end, its
// default length and the last recovery point. idem_complete stores the
// response, clears hold_fence and deletes the idem_holds row: the key then
// replays like any finished claim, through idem_begin too.
//
// Fencing. Every holder gets a fence from the sequence idem_hold_fencing,
// drawn while the idem_claims row is locked (by the INSERT that creates it,
// the UPDATE that renews it, or SELECT ... FOR UPDATE before a resume), so a
// later holder always has a larger one, also after the purge deleted the
// rows. Every call that acts for a holder locks the row and compares
// hold_fence with the fence given: a holder whose request was resumed by
// another (its hold ran out: a crash, a stall) is refused with IK004 and
// changes nothing. Two callers racing to resume a stalled request both lock
// the row; the second sees the first's fence and a live hold, and answers
// in_progress.
#include "citus.hpp"
#include "claim.hpp"

#include "fingerprint.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::holds {
namespace {

using claims::ClaimRequest;
using pg::Statement;

// What holds the key now. The first column tells a real match from a hash
// collision. A replay needs nothing more; a held key, when its hold ends.
Statement probe_request = {"SELECT scope = $1, expires_at, fingerprint, response, hold_fence "
                           "FROM @extschema@.idem_claims WHERE key_hash = $3 AND key = $2",
                           3,
                           {TEXTOID, TEXTOID, UUIDOID}};

Statement probe_hold = {
    "SELECT held_until FROM @extschema@.idem_holds WHERE key_hash = $1 AND key = $2", 2, {UUIDOID, TEXTOID}};

// The same under the row lock, for a holder's call or a resume.
Statement lock_request = {"SELECT c.hold_fence, c.expires_at, h.held_until, h.hold_for, h.phase, h.state "
                          "FROM @extschema@.idem_claims c "
                          "LEFT JOIN @extschema@.idem_holds h ON h.key_hash = c.key_hash AND h.key = c.key "
                          "WHERE c.key_hash = $3 AND c.scope = $1 AND c.key = $2 "
                          "FOR UPDATE OF c",
                          3,
                          {TEXTOID, TEXTOID, UUIDOID}};

#define IDEM_NEXT_FENCE "pg_catalog.nextval('@extschema@.idem_hold_fencing'::pg_catalog.regclass)"

// A key nobody has: the row is the new holder's (the INSERT waits for a
// transaction that is writing the key, as a claim's does).
Statement insert_request = {
    "INSERT INTO @extschema@.idem_claims (scope, key, key_hash, claimed_at, expires_at, fingerprint, hold_fence) "
    "VALUES ($1, $2, $3, $4, $5, $6, " IDEM_NEXT_FENCE ") ON CONFLICT (key_hash) DO NOTHING RETURNING hold_fence",
    6,
    {TEXTOID, TEXTOID, UUIDOID, TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDOID}};

// An expired request or claim: taken over as a new one (the WHERE clause is
// checked again on the newest row version, so of two takers one wins).
Statement renew_request = {"UPDATE @extschema@.idem_claims "
                           "SET claimed_at = $1, expires_at = $2, fingerprint = $3, response = NULL, "
                           "    hold_fence = " IDEM_NEXT_FENCE " "
                           "WHERE key_hash = $4 AND key = $5 AND expires_at <= $1 RETURNING hold_fence",
                           5,
                           {TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDOID, UUIDOID, TEXTOID}};

// A stalled request's new holder (the row is locked).
Statement take_over = {"UPDATE @extschema@.idem_claims SET hold_fence = " IDEM_NEXT_FENCE " "
                       "WHERE key_hash = $1 AND key = $2 RETURNING hold_fence",
                       2,
                       {UUIDOID, TEXTOID}};
#undef IDEM_NEXT_FENCE

// A new hold: no recovery point yet. (A row left by an expired request of
// the same key, not purged yet, is replaced.)
Statement start_hold = {"INSERT INTO @extschema@.idem_holds "
                        "  (key_hash, scope, key, held_until, hold_for, phase, state, attempts, expires_at) "
                        "VALUES ($1, $2, $3, $4, $5, NULL, NULL, 1, $6) "
                        "ON CONFLICT (key_hash) DO UPDATE SET scope = EXCLUDED.scope, key = EXCLUDED.key, "
                        "  held_until = EXCLUDED.held_until, hold_for = EXCLUDED.hold_for, phase = NULL, "
                        "  state = NULL, attempts = 1, expires_at = EXCLUDED.expires_at",
                        6,
                        {UUIDOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID, TIMESTAMPTZOID}};

Statement resume_hold = {"UPDATE @extschema@.idem_holds "
                         "SET held_until = $3, hold_for = $4, attempts = attempts + 1 "
                         "WHERE key_hash = $1 AND key = $2",
                         4,
                         {UUIDOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID}};

Statement checkpoint_hold = {"UPDATE @extschema@.idem_holds SET phase = $3, state = $4, held_until = $5 "
                             "WHERE key_hash = $1 AND key = $2",
                             5,
                             {UUIDOID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID}};

Statement complete_request = {"UPDATE @extschema@.idem_claims SET response = $3, hold_fence = NULL "
                              "WHERE key_hash = $1 AND key = $2",
                              3,
                              {UUIDOID, TEXTOID, JSONBOID}};

Statement delete_hold = {"DELETE FROM @extschema@.idem_holds WHERE key_hash = $1 AND key = $2", 2, {UUIDOID, TEXTOID}};

Statement delete_request = {
    "DELETE FROM @extschema@.idem_claims WHERE key_hash = $1 AND key = $2", 2, {UUIDOID, TEXTOID}};

const char* scope_text(const pg::ScopeArg& scope)
{
    return pg::key_for_message(Key{scope.scope.text});
}

// The hold length argument: a positive interval (22004 NULL, 22023 otherwise).
const Interval* hold_arg(FunctionCallInfo fcinfo, int argno)
{
    pg::Ttl hold = pg::ttl_arg(fcinfo, argno, "hold", false);
    return hold.interval;
}

TimestampTz plus(TimestampTz at, const Interval* length)
{
    pg::Expiry end = pg::expiry_at(pg::Ttl{"hold", length}, at);
    return end.at;
}

// idem_hold's answer.
struct Answer {
    const char* status;
    bool has_fence;
    int64 fence;
    bool has_point;  // phase and state (either may be NULL)
    bool phase_null, state_null;
    Datum phase, state;
    bool has_response;
    Datum response;
};

Datum copy_datum(Datum value, bool typbyval, int typlen, MemoryContext cxt)
{
    MemoryContext old = MemoryContextSwitchTo(cxt);
    Datum copy = datumCopy(value, typbyval, typlen);
    MemoryContextSwitchTo(old);
    return copy;
}

// A new hold of the key, whose row the caller's statement has just written
// with fence `fence`.
Answer started(const ClaimRequest& r, FunctionCallInfo fcinfo, int64 fence, const Interval* hold, pg::Expiry expiry,
               TimestampTz now)
{
    Datum values[6] = {UUIDPGetDatum(&r.key_hash),           r.scope.datum,           r.key.datum,
                       TimestampTzGetDatum(plus(now, hold)), IntervalPGetDatum(hold), TimestampTzGetDatum(expiry.at)};
    const char nulls[6] = {' ', ' ', ' ', ' ', ' ', expiry.never ? 'n' : ' '};
    pg::run(start_hold, fcinfo, values, nulls);
    count_granted(stats::hold_new, r, fcinfo);
    return Answer{"new", true, fence, false, true, true, 0, 0, false, 0};
}

// A stalled request (the hold seen at `seen_fence` ran out): lock the row
// and take it over if it is still so.
bool try_resume(const ClaimRequest& r, FunctionCallInfo fcinfo, int64 seen_fence, const Interval* hold,
                MemoryContext result_cxt, Answer* answer)
{
    Datum key_values[3] = {r.scope.datum, r.key.datum, UUIDPGetDatum(&r.key_hash)};
    if (pg::run(lock_request, fcinfo, key_values, nullptr) == 0)
        return false;  // deleted meanwhile: look again
    bool fence_null, expires_null, held_null, isnull, phase_null, state_null;
    int64 fence = DatumGetInt64(pg::result_value(0, 1, &fence_null));
    TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &expires_null));
    TimestampTz held_until = DatumGetTimestampTz(pg::result_value(0, 3, &held_null));
    (void)pg::result_value(0, 4, &isnull);
    Datum phase = pg::result_value(0, 5, &phase_null);
    Datum state = pg::result_value(0, 6, &state_null);
    TimestampTz now = GetCurrentTimestamp();
    if (fence_null || fence != seen_fence || held_null || held_until > now || (!expires_null && expires_at <= now))
        return false;  // completed, resumed, extended or expired meanwhile: look again
    answer->phase = phase_null ? 0 : copy_datum(phase, false, -1, result_cxt);
    answer->state = state_null ? 0 : copy_datum(state, false, -1, result_cxt);
    answer->phase_null = phase_null;
    answer->state_null = state_null;

    Datum take_values[2] = {UUIDPGetDatum(&r.key_hash), r.key.datum};
    pg::run(take_over, fcinfo, take_values, nullptr);
    answer->fence = DatumGetInt64(pg::result_value(0, 1, &isnull));
    Datum hold_values[4] = {UUIDPGetDatum(&r.key_hash), r.key.datum, TimestampTzGetDatum(plus(now, hold)),
                            IntervalPGetDatum(hold)};
    pg::run(resume_hold, fcinfo, hold_values, nullptr);
    answer->status = "resume";
    answer->has_fence = true;
    answer->has_point = true;
    answer->has_response = false;
    stats::count(stats::hold_resumed, r.scope.scope);
    return true;
}

// idem_hold's decision, judged by the clock when it is made.
Answer hold_request(const ClaimRequest& r, FunctionCallInfo fcinfo, const Interval* hold, MemoryContext result_cxt)
{
    const char fingerprint_null = r.has_fingerprint ? ' ' : 'n';
    Datum key_values[3] = {r.scope.datum, r.key.datum, UUIDPGetDatum(&r.key_hash)};
    for (int round = 0; round < 100; round++) {
        TimestampTz now = GetCurrentTimestamp();
        pg::Expiry expiry = pg::expiry_at(r.ttl, now);
        if (pg::run(probe_request, fcinfo, key_values, nullptr) == 0) {
            Datum values[6] = {r.scope.datum,
                               r.key.datum,
                               UUIDPGetDatum(&r.key_hash),
                               TimestampTzGetDatum(now),
                               TimestampTzGetDatum(expiry.at),
                               UUIDPGetDatum(&r.fingerprint)};
            const char nulls[6] = {' ', ' ', ' ', ' ', expiry.never ? 'n' : ' ', fingerprint_null};
            if (pg::run(insert_request, fcinfo, values, nulls) == 1) {
                bool isnull;
                int64 fence = DatumGetInt64(pg::result_value(0, 1, &isnull));
                return started(r, fcinfo, fence, hold, expiry, now);
            }
            continue;  // another transaction wrote the key meanwhile: look again
        }
        bool isnull, never_expires, fingerprint_missing, response_null, fence_null;
        bool same_scope = DatumGetBool(pg::result_value(0, 1, &isnull));
        TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &never_expires));
        Datum stored_fingerprint = pg::result_value(0, 3, &fingerprint_missing);
        Datum response = pg::result_value(0, 4, &response_null);
        int64 fence = DatumGetInt64(pg::result_value(0, 5, &fence_null));
        if (!same_scope)
            ereport(ERROR, (errcode(ERRCODE_UNIQUE_VIOLATION),
                            errmsg("key %s in scope %s shares its hash with another key",
                                   pg::key_for_message(r.key.key), scope_text(r.scope)),
                            errhint("Use another key.")));
        now = GetCurrentTimestamp();
        if (!never_expires && expires_at <= now) {
            // Expired (a request or a claim): absent, start it afresh.
            Datum values[5] = {TimestampTzGetDatum(now), TimestampTzGetDatum(expiry.at), UUIDPGetDatum(&r.fingerprint),
                               UUIDPGetDatum(&r.key_hash), r.key.datum};
            const char nulls[5] = {' ', expiry.never ? 'n' : ' ', fingerprint_null, ' ', ' '};
            if (pg::run(renew_request, fcinfo, values, nulls) == 1)
                return started(r, fcinfo, DatumGetInt64(pg::result_value(0, 1, &isnull)), hold, expiry, now);
            continue;
        }
        if (r.has_fingerprint && !fingerprint_missing &&
            std::memcmp(DatumGetUUIDP(stored_fingerprint)->data, r.fingerprint.data, UUID_LEN) != 0) {
            stats::count(stats::request_mismatch, r.scope.scope);
            ereport(ERROR,
                    (errcode(IDEM_ERRCODE_REQUEST_MISMATCH), errmsg("idempotency key reused with a different request"),
                     errdetail("Key %s in scope %s was claimed for a request that differs from this one.",
                               pg::key_for_message(r.key.key), scope_text(r.scope)),
                     errhint("A retry must send the same request; a new request needs a new key.")));
        }
        if (fence_null) {
            // Completed (by idem_complete, or idem_begin and idem_finish).
            Answer replay{"replay", false, 0, false, true, true, 0, 0, !response_null, 0};
            if (replay.has_response) {
                MemoryContext old = MemoryContextSwitchTo(result_cxt);
                replay.response = PointerGetDatum(PG_DETOAST_DATUM_COPY(response));
                MemoryContextSwitchTo(old);
            }
            stats::count(stats::claim_duplicate, r.scope.scope);
            return replay;
        }
        Datum hold_key[2] = {UUIDPGetDatum(&r.key_hash), r.key.datum};
        bool held_null = true;
        TimestampTz held_until = 0;
        if (pg::run(probe_hold, fcinfo, hold_key, nullptr) == 1)
            held_until = DatumGetTimestampTz(pg::result_value(0, 1, &held_null));
        if (!held_null && held_until > GetCurrentTimestamp()) {
            stats::count(stats::hold_in_progress, r.scope.scope);
            return Answer{"in_progress", false, 0, false, true, true, 0, 0, false, 0};
        }
        Answer resumed;
        if (try_resume(r, fcinfo, fence, hold, result_cxt, &resumed))
            return resumed;
    }
    ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                    errmsg("could not hold key %s in scope %s: concurrent transactions kept changing it",
                           pg::key_for_message(r.key.key), scope_text(r.scope))));
    pg_unreachable();
}

// The (key, scope, fence) of a holder's call, arguments 0, 1 and 2.
struct HolderCall {
    pg::KeyArg key;
    pg::ScopeArg scope;
    pg_uuid_t hash;
    int64 fence;
};

HolderCall holder_call(FunctionCallInfo fcinfo)
{
    HolderCall h;
    h.key = pg::key_arg(fcinfo, 0, "key");
    h.scope = pg::scope_arg(fcinfo, 1, "scope");
    h.hash = claims::key_hash_of(h.scope, h.key);
    pg::require_arg(fcinfo, 2, "fence");
    h.fence = PG_GETARG_INT64(2);
    return h;
}

// The row, locked, as its holder sees it.
struct Held {
    bool is_holder;  // the fence is the current holder's, and the request has not expired
    bool hold_for_null;
    Datum hold_for;
};

Held lock_for_holder(const HolderCall& h, FunctionCallInfo fcinfo)
{
    Datum values[3] = {h.scope.datum, h.key.datum, UUIDPGetDatum(&h.hash)};
    Held held{false, true, 0};
    uint64 rows = claims::with_wait_timeout<uint64>(&h.key, h.scope,
                                                    [&] { return pg::run(lock_request, fcinfo, values, nullptr); });
    if (rows == 0)
        return held;
    bool fence_null, expires_null, isnull;
    int64 fence = DatumGetInt64(pg::result_value(0, 1, &fence_null));
    TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &expires_null));
    (void)pg::result_value(0, 3, &isnull);
    held.hold_for = pg::result_value(0, 4, &held.hold_for_null);
    held.is_holder =
        !fence_null && fence == h.fence && !held.hold_for_null && (expires_null || expires_at > GetCurrentTimestamp());
    return held;
}

[[noreturn]] void raise_hold_lost(const HolderCall& h, const char* function)
{
    stats::count(stats::hold_fence_refused, h.scope.scope);
    ereport(ERROR, (errcode(IDEM_ERRCODE_HOLD_LOST),
                    errmsg("hold lost: fence " INT64_FORMAT " does not hold key %s in scope %s", h.fence,
                           pg::key_for_message(h.key.key), scope_text(h.scope)),
                    errdetail("%s changed nothing: another caller resumed the request, or it completed, was abandoned "
                              "or expired.",
                              function),
                    errhint("Stop working on the request: its current holder has a larger fence. idem_hold() tells "
                            "what the key is now.")));
}

}  // namespace
}  // namespace idem::holds

using namespace idem;
using namespace idem::holds;

// idem_hold(key text, scope text, hold interval, request jsonb, ttl interval)
//   RETURNS TABLE (status text, fence bigint, phase text, state jsonb, response jsonb)
IDEM_SQL_FUNCTION(idem_hold)
{
    PreventCommandIfReadOnly("idem_hold()");
    claims::ClaimRequest r = claims::claim_request(fcinfo, pg::key_arg(fcinfo, 0, "key"), 1, 4);
    const Interval* hold = hold_arg(fcinfo, 2);
    if (!PG_ARGISNULL(3)) {
        r.has_fingerprint = true;
        r.fingerprint = request_fingerprint(PG_GETARG_JSONB_P(3));
    }
    InitMaterializedSRF(fcinfo, 0);
    MemoryContext cxt = CurrentMemoryContext;
    pg::connect();
    citus::require_coordinator(get_func_namespace(fcinfo->flinfo->fn_oid), "idem_hold()",
                               "Its fences come from the coordinator's sequence: each node has its own, and fences "
                               "from two could repeat for one key.");
    Answer a = claims::with_wait_timeout<Answer>(&r.key, r.scope, [&] { return hold_request(r, fcinfo, hold, cxt); });
    SPI_finish();

    auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
    Datum values[5] = {CStringGetTextDatum(a.status), Int64GetDatum(a.fence), a.phase, a.state, a.response};
    bool nulls[5] = {false, !a.has_fence, !a.has_point || a.phase_null, !a.has_point || a.state_null, !a.has_response};
    tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    return 0;
}

// idem_checkpoint(key text, scope text, fence bigint, phase text, state jsonb, hold interval) RETURNS void
IDEM_SQL_FUNCTION(idem_checkpoint)
{
    PreventCommandIfReadOnly("idem_checkpoint()");
    HolderCall h = holder_call(fcinfo);
    pg::require_arg(fcinfo, 3, "phase");
    const Interval* hold = PG_ARGISNULL(5) ? nullptr : hold_arg(fcinfo, 5);
    pg::connect();
    Held held = lock_for_holder(h, fcinfo);
    if (!held.is_holder)
        raise_hold_lost(h, "idem_checkpoint()");
    if (hold == nullptr)
        hold = DatumGetIntervalP(held.hold_for);
    Datum values[5] = {UUIDPGetDatum(&h.hash), h.key.datum, PG_GETARG_DATUM(3),
                       PG_ARGISNULL(4) ? 0 : PG_GETARG_DATUM(4),
                       TimestampTzGetDatum(plus(GetCurrentTimestamp(), hold))};
    const char nulls[5] = {' ', ' ', ' ', PG_ARGISNULL(4) ? 'n' : ' ', ' '};
    pg::run(checkpoint_hold, fcinfo, values, nulls);
    SPI_finish();
    return 0;
}

// idem_complete(key text, scope text, fence bigint, response jsonb) RETURNS void
IDEM_SQL_FUNCTION(idem_complete)
{
    PreventCommandIfReadOnly("idem_complete()");
    HolderCall h = holder_call(fcinfo);
    if (!PG_ARGISNULL(3))
        claims::check_response_size(PG_GETARG_DATUM(3), h.key, h.scope);
    pg::connect();
    if (!lock_for_holder(h, fcinfo).is_holder)
        raise_hold_lost(h, "idem_complete()");
    Datum values[3] = {UUIDPGetDatum(&h.hash), h.key.datum, PG_ARGISNULL(3) ? 0 : PG_GETARG_DATUM(3)};
    const char nulls[3] = {' ', ' ', PG_ARGISNULL(3) ? 'n' : ' '};
    pg::run(complete_request, fcinfo, values, nulls);
    pg::run(delete_hold, fcinfo, values, nullptr);
    SPI_finish();
    stats::count(stats::hold_completed, h.scope.scope);
    return 0;
}

// idem_abandon(key text, scope text, fence bigint) RETURNS boolean
IDEM_SQL_FUNCTION(idem_abandon)
{
    PreventCommandIfReadOnly("idem_abandon()");
    HolderCall h = holder_call(fcinfo);
    pg::connect();
    bool is_holder = lock_for_holder(h, fcinfo).is_holder;
    if (is_holder) {
        Datum values[2] = {UUIDPGetDatum(&h.hash), h.key.datum};
        pg::run(delete_request, fcinfo, values, nullptr);
        pg::run(delete_hold, fcinfo, values, nullptr);
    } else {
        stats::count(stats::hold_fence_refused, h.scope.scope);
    }
    SPI_finish();
    return BoolGetDatum(is_holder);
}
