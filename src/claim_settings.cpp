// Claims' settings (SPEC "Claims"), the defaults that keep a newcomer safe:
//
//   pg_idem.default_ttl        the TTL of a claim whose `ttl` is omitted
//   pg_idem.wait_timeout       how long a claim waits for the key's holder
//   pg_idem.max_response_size  the largest response idem_finish stores
//
// An omitted `ttl` is the SQL default idem_default_ttl(), which reads the
// setting in force at call time; an explicit NULL still means "never". (A
// C function cannot tell an omitted argument from one passed, so the default
// is an expression of its own: it names the function by OID, which no
// object created later can redirect.)
//
// wait_timeout works through lock_timeout: while a claim runs, the backend's
// lock_timeout is the smaller of the two (0 counting as none), so a wait for
// the key's holder ends like any lock wait, with 55P03, which the claim then
// reports naming its key and scope. Setting the variable costs nothing
// unless the claim waits: PostgreSQL arms the timer only when a lock wait
// begins. On a Citus coordinator the waits are a worker's: there a timer of
// the same length cancels the claim's statements (claim.hpp).
#include "claim.hpp"

#include "citus.hpp"
#include "pg/spi.hpp"

#include "pg/guard.hpp"

extern "C" {
#include "access/detoast.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::claims {
namespace {

char* default_ttl_text = nullptr;  // pg_idem.default_ttl as set
Interval default_ttl_value;  // ... parsed by its check hook
int wait_timeout_ms = 10000;  // pg_idem.wait_timeout
int max_response_bytes = 1 << 20;  // pg_idem.max_response_size

// Accepts a positive interval. interval_in reports bad syntax with ERROR; a
// check hook must not, so the error is caught (interval_in allocates only
// memory, which the GUC machinery's context frees) and becomes the hook's
// message.
bool check_default_ttl(char** newval, void** extra, GucSource)
{
    MemoryContext cxt = CurrentMemoryContext;
    Interval* parsed = nullptr;
    PG_TRY();
    {
        parsed = DatumGetIntervalP(DirectFunctionCall3(interval_in, CStringGetDatum(*newval),
                                                       ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(cxt);
        FlushErrorState();
        parsed = nullptr;
    }
    PG_END_TRY();
    if (parsed == nullptr) {
        GUC_check_errdetail("\"%s\" is not an interval, such as '24 hours' or '7 days'.", *newval);
        return false;
    }
    if (parsed->month < 0 || parsed->day < 0 || parsed->time < 0 ||
        (parsed->month == 0 && parsed->day == 0 && parsed->time == 0)) {
        GUC_check_errdetail("pg_idem.default_ttl must be positive; an explicit ttl => NULL claims a key forever.");
        return false;
    }
    auto* copy = static_cast<Interval*>(pg::compat::guc_extra_alloc(sizeof(Interval)));
    if (copy == nullptr)
        return false;
    *copy = *parsed;
    *extra = copy;
    return true;
}

void assign_default_ttl(const char*, void* extra)
{
    default_ttl_value = *static_cast<Interval*>(extra);
}

}  // namespace

void define_settings()
{
    DefineCustomStringVariable("pg_idem.default_ttl", "The TTL of a claim whose ttl argument is omitted.",
                               "An explicit ttl => NULL claims a key forever.", &default_ttl_text, "24 hours",
                               PGC_USERSET, 0, check_default_ttl, assign_default_ttl, nullptr);
    DefineCustomIntVariable(
        "pg_idem.wait_timeout",
        "How long a claim waits for another transaction that holds its key; 0: no limit of its own.",
        "lock_timeout and statement_timeout still apply when shorter.", &wait_timeout_ms, 10000, 0, INT_MAX,
        PGC_USERSET, GUC_UNIT_MS, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_idem.max_response_size", "The largest response idem_finish stores.", nullptr,
                            &max_response_bytes, 1 << 20, 1, INT_MAX, PGC_USERSET, GUC_UNIT_BYTE, nullptr, nullptr,
                            nullptr);
    define_autocommit_setting();
}

int lock_timeout_for_claim(int lock_timeout_ms)
{
    if (wait_timeout_ms == 0)
        return lock_timeout_ms;
    if (lock_timeout_ms == 0 || wait_timeout_ms < lock_timeout_ms)
        return wait_timeout_ms;
    return lock_timeout_ms;
}

namespace {

TimeoutId remote_timeout = MAX_TIMEOUTS;  // registered on first use
volatile sig_atomic_t remote_timed_out = false;
bool remote_armed = false;
bool claims_remote = false;  // as claims_on_other_nodes() said when the claim began

void on_remote_timeout()
{
    remote_timed_out = true;
    InterruptPending = true;
    QueryCancelPending = true;  // Citus' executor, waiting for the worker, raises it
}

}  // namespace

bool remote_nowait = false;

// What claims_on_other_nodes() found, kept until a relation cache
// invalidation: create_distributed_table, undistribute_table, DROP EXTENSION
// and CREATE EXTENSION all send one, and a claim would otherwise pay two
// catalog look-ups on every Citus node.
enum class Known { no, yes, unknown };
Known known_remote = Known::unknown;
uint64 relcache_invalidations = 0;

void forget_remote(Datum, Oid)
{
    relcache_invalidations++;
    known_remote = Known::unknown;
}

bool claims_on_other_nodes()
{
    if (!citus::loaded())
        return false;
    static bool callback_registered = false;
    if (!callback_registered) {
        CacheRegisterRelcacheCallback(forget_remote, 0);
        callback_registered = true;
    }
    if (known_remote == Known::unknown) {
        uint64 before = relcache_invalidations;
        Oid nsp = pg::installed_namespace();
        // On a worker, a delegated function's statements on its shards run in
        // this backend (Citus' local execution): their waits are local.
        bool remote = OidIsValid(nsp) && citus::is_citus_table(nsp, get_relname_relid("idem_claims", nsp)) &&
                      !citus::on_worker(nsp);
        // An invalidation that arrived while the catalog was read leaves it unknown.
        if (relcache_invalidations == before)
            known_remote = remote ? Known::yes : Known::no;
        return remote;
    }
    return known_remote == Known::yes;
}

void arm_remote_wait_timeout(int timeout_ms)
{
    remote_timed_out = false;
    remote_armed = false;
    claims_remote = claims_on_other_nodes();
    if (remote_nowait)
        timeout_ms = timeout_ms <= 0 ? remote_nowait_ms : Min(timeout_ms, remote_nowait_ms);
    if (timeout_ms <= 0 || !claims_remote)
        return;
    if (remote_timeout == MAX_TIMEOUTS)
        remote_timeout = RegisterTimeout(USER_TIMEOUT, on_remote_timeout);
    enable_timeout_after(remote_timeout, timeout_ms);
    remote_armed = true;
}

bool claim_is_remote()
{
    return claims_remote;
}

bool disarm_remote_wait_timeout()
{
    if (remote_armed)
        disable_timeout(remote_timeout, false);
    remote_armed = false;
    return remote_timed_out;
}

[[noreturn]] void rethrow_claim_error(const pg::KeyArg* key, const pg::ScopeArg& scope_arg, MemoryContext cxt,
                                      bool remote_ran_out)
{
    MemoryContextSwitchTo(cxt);
    ErrorData* edata = CopyErrorData();
    bool ran_out = edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
                   (remote_ran_out && edata->sqlerrcode == ERRCODE_QUERY_CANCELED);
    if (!ran_out) {
        FreeErrorData(edata);
        PG_RE_THROW();
    }
    FlushErrorState();
    const char* scope = pg::key_for_message(Key{scope_arg.scope.text});
    char limit[32];
    std::snprintf(limit, sizeof limit, "%d ms", lock_timeout_for_claim(LockTimeout));
    if (key != nullptr)
        ereport(
            ERROR,
            (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
             errmsg("key %s in scope %s is still in progress in another transaction", pg::key_for_message(key->key),
                    scope),
             errdetail("The claim waited %s (pg_idem.wait_timeout, or lock_timeout when shorter) for the "
                       "transaction that holds the key.",
                       limit),
             errhint("The first attempt may still be running, or its client gone: retry later with the same key.")));
    ereport(ERROR,
            (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
             errmsg("a key of this batch in scope %s is still in progress in another transaction", scope),
             errdetail("The claims waited %s (pg_idem.wait_timeout, or lock_timeout when shorter) for a transaction "
                       "that holds one of the keys.",
                       limit),
             errhint("The first attempt may still be running, or its client gone: retry later with the same keys.")));
    pg_unreachable();
}

void check_response_size(Datum response, const pg::KeyArg& key, const pg::ScopeArg& scope)
{
    Size size = toast_raw_datum_size(response) - VARHDRSZ;
    if (size > static_cast<Size>(max_response_bytes))
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                        errmsg("response for key %s in scope %s is %zu bytes, more than pg_idem.max_response_size (%d "
                               "bytes)",
                               pg::key_for_message(key.key), pg::key_for_message(Key{scope.scope.text}), size,
                               max_response_bytes),
                        errhint("Store a smaller response (a reference to a row of your own, say), or raise "
                                "pg_idem.max_response_size.")));
}

}  // namespace idem::claims

// idem_default_ttl() RETURNS interval: pg_idem.default_ttl, the default of
// every omitted ttl of the claim functions.
IDEM_SQL_FUNCTION(idem_default_ttl)
{
    auto* result = static_cast<Interval*>(palloc(sizeof(Interval)));
    *result = idem::claims::default_ttl_value;
    return IntervalPGetDatum(result);
}
