// idem_claim_many(keys text[], scope text DEFAULT 'default', ttl interval DEFAULT NULL)
//   RETURNS TABLE (key text, claimed boolean)
//
// The batch form for message consumers. Keys are claimed in byte order,
// whatever order the caller gives (core/key_order.hpp), a chunk at a time:
// one INSERT for the chunk's keys, then claim_core for those that met a row
// (a duplicate, an expired claim, a collision). A chunk holds a bounded
// number of keys and bytes, and its working memory is freed before the next,
// so a call needs about twice the memory of its input array (the input, and
// the result rows), however large it is. Rows come back in the caller's
// order, one per distinct key.
#include "citus.hpp"
#include "claim.hpp"

#include "core/key_order.hpp"
#include "own_claims.hpp"
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
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::claims {
namespace {

using pg::Statement;

// The chunk's keys in one statement, in the order given. The rows it inserted
// come back in that order; keys that met an existing row are left out.
Statement insert_claims = {
    "INSERT INTO @extschema@.idem_claims (scope, key, key_hash, claimed_at, expires_at) "
    "SELECT $1, k, h, $2, $3 "
    "FROM ROWS FROM (pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.uuid[])) "
    "     WITH ORDINALITY AS u(k, h, i) "
    "ORDER BY i "
    "ON CONFLICT (key_hash) DO NOTHING "
    "RETURNING key_hash, key",
    5,
    {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTARRAYOID, UUIDARRAYOID}};

// The same where idem_claims is a Citus table (on any node), as one row of
// VALUES per key, made for the chunk: Citus sends each shard its rows, one
// statement per worker. (An INSERT ... SELECT goes through intermediate
// results, on a connection of their own, so even one key's chunk would
// commit in two phases; and Citus counts the rows it sent, not those
// inserted, which SPI refuses in a RETURNING: citusdata/citus#3377.)
uint64 insert_claims_by_rows(Oid nsp, int n, const Datum* values, const char* nulls, const Datum* keys,
                             const Datum* hashes)
{
    StringInfoData sql;
    initStringInfo(&sql);
    appendStringInfo(&sql, "INSERT INTO %s.idem_claims (scope, key, key_hash, claimed_at, expires_at) VALUES ",
                     quote_identifier(get_namespace_name(nsp)));
    int nargs = 3 + 2 * n;
    auto* types = static_cast<Oid*>(palloc(sizeof(Oid) * nargs));
    auto* args = static_cast<Datum*>(palloc(sizeof(Datum) * nargs));
    auto* arg_nulls = static_cast<char*>(palloc(nargs));
    types[0] = TEXTOID, types[1] = TIMESTAMPTZOID, types[2] = TIMESTAMPTZOID;
    for (int i = 0; i < 3; i++)
        args[i] = values[i], arg_nulls[i] = nulls[i];
    for (int c = 0; c < n; c++) {
        int k = 3 + 2 * c;
        appendStringInfo(&sql, "%s($1, $%d, $%d, $2, $3)", c == 0 ? "" : ", ", k + 1, k + 2);
        types[k] = TEXTOID, args[k] = keys[c], arg_nulls[k] = ' ';
        types[k + 1] = UUIDOID, args[k + 1] = hashes[c], arg_nulls[k + 1] = ' ';
    }
    appendStringInfoString(&sql, " ON CONFLICT (key_hash) DO NOTHING RETURNING key_hash, key");
    return pg::run_once(sql.data, nargs, types, args, arg_nulls);
}

// By key as well as by hash: Citus routes it to the keys' shards.
Statement date_claims = {"UPDATE @extschema@.idem_claims SET claimed_at = $1, expires_at = $2 "
                         "WHERE key_hash = ANY ($3::pg_catalog.uuid[]) AND key = ANY ($4::pg_catalog.text[])",
                         4,
                         {TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDARRAYOID, TEXTARRAYOID}};

// The most keys one call takes, and how large one chunk may grow.
constexpr int max_keys_per_call = 1000000;
constexpr int max_keys_per_chunk = 1000;
constexpr size_t max_bytes_per_chunk = 4 * 1024 * 1024;

struct Batch {
    int n;  // keys given
    pg::KeyArg* keys;  // validated, in the caller's order
    pg_uuid_t* hashes;  // their key_hash
    int n_distinct;
    int* order;  // [0, n_distinct): distinct keys in byte order
    int* first;  // first occurrence of each key
    bool* claimed;
};

bool same_hash(const pg_uuid_t& a, const pg_uuid_t& b)
{
    return std::memcmp(a.data, b.data, UUID_LEN) == 0;
}

// Claims the distinct keys order[from, to) with one INSERT, then the rest one by one.
void claim_chunk(Batch& b, int from, int to, const ClaimRequest& base, FunctionCallInfo fcinfo)
{
    int n = to - from;
    auto* key_datums = static_cast<Datum*>(palloc(sizeof(Datum) * n));
    auto* hash_datums = static_cast<Datum*>(palloc(sizeof(Datum) * n));
    for (int c = 0; c < n; c++) {
        key_datums[c] = b.keys[b.order[from + c]].datum;
        hash_datums[c] = UUIDPGetDatum(&b.hashes[b.order[from + c]]);
    }
    TimestampTz asked = GetCurrentTimestamp();
    pg::Expiry expiry = pg::expiry_at(base.ttl, asked);
    Datum values[5] = {base.scope.datum, TimestampTzGetDatum(asked), TimestampTzGetDatum(expiry.at),
                       PointerGetDatum(construct_array(key_datums, n, TEXTOID, -1, false, TYPALIGN_INT)),
                       PointerGetDatum(construct_array(hash_datums, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR))};
    const char nulls[5] = {' ', ' ', expiry.never ? 'n' : ' ', ' ', ' '};
    Oid nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
    bool citus_table = citus::loaded() && citus::is_citus_table(nsp, get_relname_relid("idem_claims", nsp));
    uint64 inserted = with_wait_timeout<uint64>(nullptr, base.scope, [&] {
        if (citus_table)
            return insert_claims_by_rows(nsp, n, values, nulls, key_datums, hash_datums);
        return pg::run(insert_claims, fcinfo, values, nulls);
    });
    SPITupleTable* returned = SPI_tuptable;

    // The inserted hashes come back in the chunk's order (from Citus, shard
    // by shard): walk both, and search from the start should one not.
    auto* granted = static_cast<Datum*>(palloc(sizeof(Datum) * Max(inserted, 1)));
    auto* granted_keys = static_cast<Datum*>(palloc(sizeof(Datum) * Max(inserted, 1)));
    int c = 0;
    for (uint64 row = 0; row < inserted; row++) {
        bool isnull;
        granted[row] = pg::result_value(row, 1, &isnull);
        granted_keys[row] = pg::result_value(row, 2, &isnull);
        const pg_uuid_t& h = *DatumGetUUIDP(granted[row]);
        int start = c;
        while (c < n && !same_hash(b.hashes[b.order[from + c]], h))
            c++;
        if (c == n)
            for (c = 0; c < start && !same_hash(b.hashes[b.order[from + c]], h); c++) {}
        if (c < n) {
            int i = b.order[from + c++];
            b.claimed[i] = true;
            own_claims::remember(b.hashes[i]);
        }
    }
    TimestampTz now;
    if (inserted > 0 && granted_late(asked, &now)) {
        pg::Expiry late = pg::expiry_at(base.ttl, now);
        int count = static_cast<int>(inserted);
        Datum date_values[4] = {
            TimestampTzGetDatum(now), TimestampTzGetDatum(late.at),
            PointerGetDatum(construct_array(granted, count, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR)),
            PointerGetDatum(construct_array(granted_keys, count, TEXTOID, -1, false, TYPALIGN_INT))};
        const char date_nulls[4] = {' ', late.never ? 'n' : ' ', ' ', ' '};
        pg::run(date_claims, fcinfo, date_values, date_nulls);
    }
    stats::count(stats::claim_new, base.scope.scope, inserted);
    SPI_freetuptable(returned);

    for (int d = from; d < to; d++) {
        int i = b.order[d];
        if (b.claimed[i])
            continue;
        ClaimRequest r = base;
        r.key = b.keys[i];
        r.key_hash = b.hashes[i];
        ClaimStatus status = claim_core(r, fcinfo, nullptr).status;
        if (status == ClaimStatus::in_progress)
            raise_held(r);
        b.claimed[i] = status == ClaimStatus::new_claim;
    }
}

// Where the chunk that starts at order[from] ends.
int chunk_end(const Batch& b, int from)
{
    size_t bytes = 0;
    int to = from;
    while (to < b.n_distinct && to - from < max_keys_per_chunk) {
        bytes += b.keys[b.order[to]].key.text.size;
        if (to > from && bytes > max_bytes_per_chunk)
            break;
        to++;
    }
    return to;
}

}  // namespace
}  // namespace idem::claims

using namespace idem;
using namespace idem::claims;

IDEM_SQL_FUNCTION(idem_claim_many)
{
    PreventCommandIfReadOnly("idem_claim_many()");
    pg::require_arg(fcinfo, 0, "keys");
    ArrayType* array = PG_GETARG_ARRAYTYPE_P(0);
    int given = ArrayGetNItems(ARR_NDIM(array), ARR_DIMS(array));
    if (given > max_keys_per_call)
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                        errmsg("keys holds %d elements, at most %d are allowed", given, max_keys_per_call),
                        errhint("Claim the keys in several calls; they may share a transaction.")));
    Datum* elements;
    bool* element_nulls;
    Batch b;
    deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elements, &element_nulls, &b.n);

    // Validate every element before claiming any, naming the bad one.
    int room = Max(b.n, 1);
    ClaimRequest base = claim_request(fcinfo, pg::KeyArg{0, Key{{"", 0}}}, 1, 2);
    note_autocommit(fcinfo, "idem_claim_many()", nullptr, base.scope);
    b.keys = static_cast<pg::KeyArg*>(palloc(sizeof(pg::KeyArg) * room));
    b.hashes = static_cast<pg_uuid_t*>(palloc(sizeof(pg_uuid_t) * room));
    auto* texts = static_cast<Text*>(palloc(sizeof(Text) * room));
    for (int i = 0; i < b.n; i++) {
        char name[32];
        snprintf(name, sizeof name, "keys[%d]", i + 1);
        b.keys[i] = pg::key_datum(elements[i], element_nulls[i], name);
        b.hashes[i] = key_hash_of(base.scope, b.keys[i]);
        texts[i] = b.keys[i].key.text;
    }
    b.order = static_cast<int*>(palloc(sizeof(int) * room));
    b.first = static_cast<int*>(palloc(sizeof(int) * room));
    b.claimed = static_cast<bool*>(palloc0(sizeof(bool) * room));
    b.n_distinct = distinct_in_byte_order(texts, b.n, b.order, b.first);

    InitMaterializedSRF(fcinfo, 0);
    MemoryContext cxt = CurrentMemoryContext;
    MemoryContext chunk_cxt = AllocSetContextCreate(cxt, "pg_idem claim_many chunk", ALLOCSET_DEFAULT_SIZES);
    pg::connect();
    for (int from = 0, to; from < b.n_distinct; from = to) {
        to = chunk_end(b, from);
        MemoryContext old = MemoryContextSwitchTo(chunk_cxt);
        claim_chunk(b, from, to, base, fcinfo);
        MemoryContextSwitchTo(old);
        MemoryContextReset(chunk_cxt);
        CHECK_FOR_INTERRUPTS();
    }
    SPI_finish();

    auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
    for (int i = 0; i < b.n; i++) {
        if (b.first[i] != i)
            continue;
        Datum values[2] = {b.keys[i].datum, BoolGetDatum(b.claimed[i])};
        bool nulls[2] = {false, false};
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    }
    return 0;
}
