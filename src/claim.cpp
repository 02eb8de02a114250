// Claims: the shared dedup table idem_claims and the functions that use it
// (SPEC "Claims"): idem_claim, idem_begin, idem_finish, idem_claim_many,
// idem_forget.
//
// A claim is a row of idem_claims, written by the caller's transaction, so it
// commits or rolls back with the business write. The unique index on
// idem_key_hash(scope, key) does the waiting: an INSERT that meets a row still
// being written by another transaction waits for that transaction and then
// sees its outcome. INSERT ... ON CONFLICT DO NOTHING that finds a committed
// row writes nothing at all, so a duplicate costs no WAL, no transaction id
// and no dead tuple.
#include "core/key.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
}

#include <algorithm>
#include <cstring>

namespace idem {
namespace {

using pg::Statement;

// What idem_begin reports; idem_claim is true exactly for new_claim.
enum class ClaimStatus { new_claim, replay, in_progress };

struct ClaimOutcome {
    ClaimStatus status;
    bool has_response;
    Datum response;  // jsonb, copied into the caller's memory context
};

struct ClaimRequest {
    pg::ScopeArg scope;
    pg::KeyArg key;
    bool hashed;     // hash is computed only when needed: a new key never needs it
    pg_uuid_t hash;  // the index's idem_key_hash(scope, key)
    pg::Ttl ttl;
    bool has_fingerprint;
    int64 fingerprint;  // jsonb_hash_extended of the request
};

// Columns of idem_claims as the INSERT writes them.
Statement insert_claim = {
    "INSERT INTO @extschema@.idem_claims (scope, key, claimed_at, expires_at, request_fp) "
    "VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (@extschema@.idem_key_hash(scope, key)) DO NOTHING",
    5, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID}};

// What holds the key now. The first column tells a real match from a hash
// collision (core/key.hpp); xmin tells whether this transaction wrote it.
Statement probe_claim = {
    "SELECT scope = $1 AND key = $2, expires_at, request_fp, response, xmin "
    "FROM @extschema@.idem_claims WHERE @extschema@.idem_key_hash(scope, key) = $3",
    3, {TEXTOID, TEXTOID, UUIDOID}};

// Take over an expired claim. The WHERE clause is re-checked against the
// newest row version after waiting for a concurrent writer, so of two
// transactions renewing the same expired claim only one succeeds.
Statement renew_claim = {
    "UPDATE @extschema@.idem_claims "
    "SET claimed_at = $1, expires_at = $2, request_fp = $3, response = NULL "
    "WHERE @extschema@.idem_key_hash(scope, key) = $4 AND expires_at <= $1",
    4, {TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID, UUIDOID}};

// idem_claim_many's first step: every key in one statement, in the order
// given (byte order, see there). The keys it inserted come back in that
// order; keys that meet an existing row are left to claim_core, one by one.
Statement insert_claims = {
    "INSERT INTO @extschema@.idem_claims (scope, key, claimed_at, expires_at) "
    "SELECT $1, k, $2, $3 FROM pg_catalog.unnest($4::pg_catalog.text[]) WITH ORDINALITY AS u(k, i) ORDER BY i "
    "ON CONFLICT (@extschema@.idem_key_hash(scope, key)) DO NOTHING "
    "RETURNING key",
    4, {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTARRAYOID}};

Statement store_response = {
    "UPDATE @extschema@.idem_claims SET response = $3 "
    "WHERE @extschema@.idem_key_hash(scope, key) = $4 AND scope = $1 AND key = $2",
    4, {TEXTOID, TEXTOID, JSONBOID, UUIDOID}};

Statement forget_claim = {
    "DELETE FROM @extschema@.idem_claims "
    "WHERE @extschema@.idem_key_hash(scope, key) = $3 AND scope = $1 AND key = $2 "
    "RETURNING expires_at",
    3, {TEXTOID, TEXTOID, UUIDOID}};

// The most keys one idem_claim_many call takes: its working memory is a few
// dozen bytes per key, well inside what one allocation may hold.
constexpr int max_keys_per_batch = 1000000;

// A claim that keeps changing under us (renewed, forgotten, renewed again)
// cannot loop forever: after this many rounds the caller retries (40001).
constexpr int max_claim_rounds = 100;

pg_uuid_t uuid_of(KeyHash hash)
{
    pg_uuid_t uuid;
    std::memcpy(uuid.data, hash.bytes, UUID_LEN);
    return uuid;
}

// The (scope, key) a function names, validated, with its index hash.
struct KeyInScope {
    pg::KeyArg key;
    pg::ScopeArg scope;
    pg_uuid_t hash;
};

KeyInScope key_in_scope(FunctionCallInfo fcinfo, int key_argno, int scope_argno)
{
    KeyInScope k;
    k.key = pg::key_arg(fcinfo, key_argno, "key");
    k.scope = pg::scope_arg(fcinfo, scope_argno, "scope");
    k.hash = uuid_of(key_hash(k.scope.scope, k.key.key));
    return k;
}

bool same_text(const Text& a, const Text& b)
{
    return a.size == b.size && std::memcmp(a.data, b.data, a.size) == 0;
}

bool is_live(bool never_expires, TimestampTz expires_at, TimestampTz now)
{
    return never_expires || now < expires_at;
}

ClaimRequest claim_request(FunctionCallInfo fcinfo, pg::KeyArg key, int scope_argno, int ttl_argno)
{
    ClaimRequest r;
    r.scope = pg::scope_arg(fcinfo, scope_argno, "scope");
    r.key = key;
    r.hashed = false;
    r.ttl = pg::ttl_arg(fcinfo, ttl_argno, "ttl", true);
    r.has_fingerprint = false;
    r.fingerprint = 0;
    return r;
}

[[noreturn]] void raise_hash_collision(const ClaimRequest& r)
{
    ereport(ERROR,
            (errcode(ERRCODE_UNIQUE_VIOLATION),
             errmsg("key %s in scope %s shares its hash with another key",
                    pg::key_for_message(r.key.key), pg::key_for_message(Key{r.scope.scope.text})),
             errdetail("pg_idem indexes claims by a 128-bit SHA-256 prefix of (scope, key)."),
             errhint("Use another key.")));
}

// The heart of claiming; runs inside SPI_connect. Every decision is judged
// by the clock at the moment it is made: a statement may have waited for
// another transaction, and a claim may have expired meanwhile.
ClaimOutcome claim_core(ClaimRequest r, FunctionCallInfo fcinfo, MemoryContext result_cxt)
{
    for (int round = 0; round < max_claim_rounds; round++) {
        // 1. The common case, a key nobody holds: one INSERT.
        TimestampTz now = GetCurrentTimestamp();
        pg::Expiry expiry = pg::expiry_at(r.ttl, now);
        Datum insert_values[5] = {r.scope.datum, r.key.datum, TimestampTzGetDatum(now),
                                  TimestampTzGetDatum(expiry.at), Int64GetDatum(r.fingerprint)};
        const char insert_nulls[5] = {' ', ' ', ' ', expiry.never ? 'n' : ' ', r.has_fingerprint ? ' ' : 'n'};
        if (pg::run(insert_claim, fcinfo, insert_values, insert_nulls) == 1) {
            stats::count(stats::claim_new, r.scope.scope);
            return ClaimOutcome{ClaimStatus::new_claim, false, 0};
        }

        // 2. A row holds the key; if its writer was still running, the INSERT
        //    waited for it. Read what is there now.
        now = GetCurrentTimestamp();
        if (!r.hashed) {
            r.hash = uuid_of(key_hash(r.scope.scope, r.key.key));
            r.hashed = true;
        }
        Datum probe_values[3] = {r.scope.datum, r.key.datum, UUIDPGetDatum(&r.hash)};
        if (pg::run(probe_claim, fcinfo, probe_values, nullptr) == 0)
            continue;  // deleted in between (idem_forget, purge): try again
        bool isnull, never_expires, fp_null, response_null;
        bool same_key = DatumGetBool(pg::result_value(0, 1, &isnull));
        TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &never_expires));
        int64 stored_fp = DatumGetInt64(pg::result_value(0, 3, &fp_null));
        Datum response = pg::result_value(0, 4, &response_null);
        TransactionId writer = DatumGetTransactionId(pg::result_value(0, 5, &isnull));
        if (!same_key)
            raise_hash_collision(r);

        if (is_live(never_expires, expires_at, now)) {
            // The claim's writer was still running when the calling statement
            // started: the INSERT above waited for it to commit.
            if (ActiveSnapshotSet() && XidInMVCCSnapshot(writer, GetActiveSnapshot()) &&
                !TransactionIdIsCurrentTransactionId(writer))
                stats::count(stats::claim_wait, r.scope.scope);
            if (r.has_fingerprint && !fp_null && stored_fp != r.fingerprint) {
                stats::count(stats::request_mismatch, r.scope.scope);
                ereport(ERROR,
                        (errcode(IDEM_ERRCODE_REQUEST_MISMATCH),
                         errmsg("idempotency key reused with a different request"),
                         errdetail("Key %s in scope %s was claimed for a request that differs from this one.",
                                   pg::key_for_message(r.key.key), pg::key_for_message(Key{r.scope.scope.text})),
                         errhint("A retry must send the same request; a new request needs a new key.")));
            }
            stats::count(stats::claim_duplicate, r.scope.scope);
            ClaimOutcome replay{ClaimStatus::replay, !response_null, 0};
            if (!response_null) {
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
        Datum renew_values[4] = {TimestampTzGetDatum(now), TimestampTzGetDatum(expiry.at),
                                 Int64GetDatum(r.fingerprint), UUIDPGetDatum(&r.hash)};
        const char renew_nulls[4] = {' ', expiry.never ? 'n' : ' ', r.has_fingerprint ? ' ' : 'n', ' '};
        if (pg::run(renew_claim, fcinfo, renew_values, renew_nulls) == 1) {
            stats::count(stats::claim_new, r.scope.scope);
            return ClaimOutcome{ClaimStatus::new_claim, false, 0};
        }
    }
    ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                    errmsg("could not claim key %s: concurrent transactions kept changing it",
                           pg::key_for_message(r.key.key))));
    pg_unreachable();
}

// claim_core without waiting: a key another transaction holds right now
// gives in_progress. The wait happens in a subtransaction with a 1 ms
// lock_timeout (the smallest PostgreSQL offers), which is rolled back
// when it expires; nothing else of the caller's transaction is touched.
ClaimOutcome claim_nowait(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt)
{
    MemoryContext cxt = CurrentMemoryContext;
    ResourceOwner owner = CurrentResourceOwner;
    ClaimOutcome outcome;

    BeginInternalSubTransaction(nullptr);
    MemoryContextSwitchTo(cxt);
    int guc_level = NewGUCNestLevel();
    (void)set_config_option("lock_timeout", "1", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
    PG_TRY();
    {
        outcome = claim_core(r, fcinfo, result_cxt);
        AtEOXact_GUC(true, guc_level);
        ReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(cxt);
        CurrentResourceOwner = owner;
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(cxt);
        ErrorData* edata = CopyErrorData();
        FlushErrorState();
        RollbackAndReleaseCurrentSubTransaction();  // also restores lock_timeout
        MemoryContextSwitchTo(cxt);
        CurrentResourceOwner = owner;
        if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
            ReThrowError(edata);
        FreeErrorData(edata);
        outcome = ClaimOutcome{ClaimStatus::in_progress, false, 0};
        stats::count(stats::claim_in_progress, r.scope.scope);
    }
    PG_END_TRY();
    return outcome;
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
}  // namespace idem

using namespace idem;

// idem_claim(key text, scope text DEFAULT 'default', ttl interval DEFAULT NULL) RETURNS boolean
IDEM_SQL_FUNCTION(idem_claim)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_claim()");
        ClaimRequest r = claim_request(fcinfo, pg::key_arg(fcinfo, 0, "key"), 1, 2);
        MemoryContext cxt = CurrentMemoryContext;
        pg::connect();
        ClaimOutcome outcome = claim_core(r, fcinfo, cxt);
        SPI_finish();
        return BoolGetDatum(outcome.status == ClaimStatus::new_claim);
    });
}

// idem_begin(key text, scope text, ttl interval, request jsonb, wait boolean)
//   RETURNS TABLE (status text, response jsonb)
IDEM_SQL_FUNCTION(idem_begin)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_begin()");
        ClaimRequest r = claim_request(fcinfo, pg::key_arg(fcinfo, 0, "key"), 1, 2);
        if (!PG_ARGISNULL(3)) {
            r.has_fingerprint = true;
            r.fingerprint = DatumGetInt64(
                DirectFunctionCall2(jsonb_hash_extended, PG_GETARG_DATUM(3), Int64GetDatum(0)));
        }
        if (PG_ARGISNULL(4))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("wait must not be NULL")));
        bool wait = PG_GETARG_BOOL(4);

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
    });
}

// idem_finish(key text, scope text, response jsonb) RETURNS void
IDEM_SQL_FUNCTION(idem_finish)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_finish()");
        KeyInScope k = key_in_scope(fcinfo, 0, 1);

        pg::connect();
        // The transaction holds the claim exactly when it wrote the row
        // version it sees: inserted or renewed it, in this transaction or a
        // subtransaction of it that has not rolled back.
        Datum probe_values[3] = {k.scope.datum, k.key.datum, UUIDPGetDatum(&k.hash)};
        bool held = false;
        if (pg::run(probe_claim, fcinfo, probe_values, nullptr) == 1) {
            bool isnull;
            bool same_key = DatumGetBool(pg::result_value(0, 1, &isnull));
            TransactionId xmin = DatumGetTransactionId(pg::result_value(0, 5, &isnull));
            held = same_key && TransactionIdIsCurrentTransactionId(xmin);
        }
        if (!held)
            ereport(ERROR,
                    (errcode(IDEM_ERRCODE_NO_CLAIM_HELD),
                     errmsg("this transaction holds no claim on key %s in scope %s",
                            pg::key_for_message(k.key.key), pg::key_for_message(Key{k.scope.scope.text})),
                     errhint("Call idem_begin() or idem_claim() for the key first, in the same transaction.")));

        Datum store_values[4] = {k.scope.datum, k.key.datum, PG_GETARG_DATUM(2), UUIDPGetDatum(&k.hash)};
        const char store_nulls[4] = {' ', ' ', PG_ARGISNULL(2) ? 'n' : ' ', ' '};
        pg::run(store_response, fcinfo, store_values, store_nulls);
        SPI_finish();
        return 0;
    });
}

// idem_claim_many(keys text[], scope text DEFAULT 'default', ttl interval DEFAULT NULL)
//   RETURNS TABLE (key text, claimed boolean)
//
// Keys are claimed in byte order, whatever order the caller gives, so two
// batches that share keys wait for each other instead of deadlocking; rows
// come back in the caller's order, one per distinct key.
IDEM_SQL_FUNCTION(idem_claim_many)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_claim_many()");
        if (PG_ARGISNULL(0))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("keys must not be NULL")));
        ArrayType* array = PG_GETARG_ARRAYTYPE_P(0);
        int given = ArrayGetNItems(ARR_NDIM(array), ARR_DIMS(array));
        if (given > max_keys_per_batch)
            ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                            errmsg("keys holds %d elements, at most %d are allowed", given, max_keys_per_batch),
                            errhint("Claim the keys in several calls; they may share a transaction.")));
        Datum* elements;
        bool* element_nulls;
        int n;
        deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elements, &element_nulls, &n);

        // Validate every element before claiming any, naming the bad one.
        auto* keys = static_cast<pg::KeyArg*>(palloc(sizeof(pg::KeyArg) * Max(n, 1)));
        for (int i = 0; i < n; i++) {
            char name[32];
            snprintf(name, sizeof name, "keys[%d]", i + 1);
            keys[i] = pg::key_datum(elements[i], element_nulls[i], name);
        }
        ClaimRequest base = claim_request(fcinfo, pg::KeyArg{0, Key{{"", 0}}}, 1, 2);

        // Byte order: one total order of keys that every batch follows.
        auto* order = static_cast<int*>(palloc(sizeof(int) * Max(n, 1)));
        for (int i = 0; i < n; i++)
            order[i] = i;
        std::sort(order, order + n, [&](int a, int b) {
            const Text& x = keys[a].key.text;
            const Text& y = keys[b].key.text;
            int c = std::memcmp(x.data, y.data, Min(x.size, y.size));
            if (c != 0)
                return c < 0;
            return x.size != y.size ? x.size < y.size : a < b;
        });

        // first[i]: the index of the first occurrence of keys[i]'s key;
        // distinct[]: the first occurrences, in byte order.
        auto* first = static_cast<int*>(palloc(sizeof(int) * Max(n, 1)));
        auto* claimed = static_cast<bool*>(palloc0(sizeof(bool) * Max(n, 1)));
        auto* distinct = static_cast<int*>(palloc(sizeof(int) * Max(n, 1)));
        int n_distinct = 0;
        for (int j = 0; j < n; j++) {
            int i = order[j];
            if (j > 0 && same_text(keys[i].key.text, keys[order[j - 1]].key.text)) {
                first[i] = first[order[j - 1]];
                continue;
            }
            first[i] = i;
            distinct[n_distinct++] = i;
        }

        MemoryContext cxt = CurrentMemoryContext;
        InitMaterializedSRF(fcinfo, 0);
        pg::connect();
        if (n_distinct > 0) {
            // The common case, keys nobody holds: one INSERT for all of them.
            auto* datums = static_cast<Datum*>(palloc(sizeof(Datum) * n_distinct));
            for (int d = 0; d < n_distinct; d++)
                datums[d] = keys[distinct[d]].datum;
            ArrayType* batch = construct_array(datums, n_distinct, TEXTOID, -1, false, TYPALIGN_INT);
            TimestampTz now = GetCurrentTimestamp();
            pg::Expiry expiry = pg::expiry_at(base.ttl, now);
            Datum values[4] = {base.scope.datum, TimestampTzGetDatum(now), TimestampTzGetDatum(expiry.at),
                               PointerGetDatum(batch)};
            const char nulls[4] = {' ', ' ', expiry.never ? 'n' : ' ', ' '};
            uint64 inserted = pg::run(insert_claims, fcinfo, values, nulls);
            // The inserted keys come back in the order of distinct[]: walk
            // both (and search from the start should one not).
            int d = 0;
            for (uint64 row = 0; row < inserted; row++) {
                bool isnull;
                text* returned = DatumGetTextPP(pg::result_value(row, 1, &isnull));
                Text t{VARDATA_ANY(returned), VARSIZE_ANY_EXHDR(returned)};
                int from = d;
                while (d < n_distinct && !same_text(keys[distinct[d]].key.text, t))
                    d++;
                if (d == n_distinct)
                    for (d = 0; d < from && !same_text(keys[distinct[d]].key.text, t); d++) {}
                if (d < n_distinct)
                    claimed[distinct[d++]] = true;
            }
            stats::count(stats::claim_new, base.scope.scope, inserted);
            SPI_freetuptable(SPI_tuptable);
        }
        // The rest met a row: a duplicate, an expired claim, or a collision.
        for (int d = 0; d < n_distinct; d++) {
            int i = distinct[d];
            if (claimed[i])
                continue;
            ClaimRequest r = base;
            r.key = keys[i];
            claimed[i] = claim_core(r, fcinfo, cxt).status == ClaimStatus::new_claim;
        }
        SPI_finish();

        auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
        for (int i = 0; i < n; i++) {
            if (first[i] != i)
                continue;
            Datum values[2] = {keys[i].datum, BoolGetDatum(claimed[i])};
            bool nulls[2] = {false, false};
            tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
        }
        return 0;
    });
}

// idem_forget(key text, scope text DEFAULT 'default') RETURNS boolean
IDEM_SQL_FUNCTION(idem_forget)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_forget()");
        KeyInScope k = key_in_scope(fcinfo, 0, 1);

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
    });
}
