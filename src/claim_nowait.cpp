// idem_begin(wait => false): a key another transaction holds right now gives
// in_progress at once instead of a wait.
//
// First the key's row is looked up as the INSERT's uniqueness check would
// find it (a dirty snapshot through the primary key): a row that another
// transaction is inserting, updating or deleting right now names that
// transaction, and unless it is the purge worker the answer is in_progress
// without entering any lock wait. (The common case: no wait at all, so no
// lock-wait bookkeeping, and nothing that pg_locks or isolationtester would
// show as waiting.)
//
// A holder that starts writing just after that look is met by the INSERT.
// PostgreSQL's INSERT has no NOWAIT for the uniqueness wait, so the claim
// runs in an internal subtransaction that can be rolled back when it would
// wait. What counts as "would wait" is decided by a timer that ticks every
// millisecond while the claim runs and looks at what the backend is waiting
// for (its PGPROC's waitLock): a wait for another transaction's end, its
// speculative insertion or a row lock that another waiter is queued for
// is a wait for the key's holder, and the tick cancels it; any other wait (a
// relation extension lock, a table lock of a DDL command, a buffer) runs its
// course. A wait for the purge worker, which deletes expired rows in short
// transactions, is not a holder either: the claim waits for it to end and
// tries again. (lock_timeout, which the first version set to 1 ms, ends
// every lock wait alike, and answered in_progress for keys nobody held.)
//
// On a Citus coordinator the waits are a worker's, which neither the look-up
// nor the tick can see. There the claim runs in a subtransaction under the
// remote wait timer (claim.hpp) of remote_nowait_ms: a claim that has not
// been answered by then is taken to wait for the key's holder, and answered
// in_progress. A slow answer for a key nobody holds is so taken too: a
// retry sent later is answered right (README "Scaling out with Citus"; a
// function delegated to the worker that owns the key answers exactly).
//
// The price is one subtransaction per call, and so one subtransaction id per
// new key: PostgreSQL caches 64 of them per backend, and a transaction with
// more has every snapshot taken meanwhile look them up in pg_subtrans. A
// duplicate writes nothing and takes no id. The README says to batch many new
// keys with idem_claim_many instead.
#include "claim.hpp"

#include "stats.hpp"

extern "C" {
#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::claims {
namespace {

constexpr int tick_ms = 1;

TimeoutId tick_timeout = MAX_TIMEOUTS;  // registered on first use

// Set by the tick, in a signal handler: it cancelled a wait for a holder
// (of transaction `awaited`, where the lock names one).
volatile sig_atomic_t holder_wait_cancelled = false;
volatile TransactionId awaited = InvalidTransactionId;

void on_tick()
{
    if (holder_wait_cancelled)
        return;
    volatile PGPROC* proc = MyProc;
    const LOCK* lock = proc->waitLock;
    if (lock == nullptr)
        return;
    switch (lock->tag.locktag_type) {
    case LOCKTAG_TRANSACTION:
    case LOCKTAG_SPECULATIVE_TOKEN:
        awaited = lock->tag.locktag_field1;
        break;
    case LOCKTAG_TUPLE:
        awaited = InvalidTransactionId;
        break;
    default:
        return;
    }
    holder_wait_cancelled = true;
    InterruptPending = true;
    QueryCancelPending = true;
    SetLatch(MyLatch);
}

// The purge worker's transactions delete expired rows only, and end soon.
bool is_purge_worker(TransactionId xid)
{
    if (!TransactionIdIsValid(xid))
        return false;
    int pid = BackendXidGetPid(xid);
    const char* type = pid == 0 ? nullptr : GetBackgroundWorkerTypeByPid(pid);
    return type != nullptr && std::strcmp(type, "pg_idem purge worker") == 0;
}

// The transaction, other than this one, that is writing the key's row now
// (inserting it, or updating or deleting it), or InvalidTransactionId.
TransactionId writer_of_key(const ClaimRequest& r, FunctionCallInfo fcinfo)
{
    Oid claims = get_relname_relid("idem_claims", get_func_namespace(fcinfo->flinfo->fn_oid));
    if (!OidIsValid(claims))
        return InvalidTransactionId;
    Relation heap = table_open(claims, AccessShareLock);
    list_free(RelationGetIndexList(heap));  // which also sets rd_pkindex
    TransactionId writer = InvalidTransactionId;
    if (OidIsValid(heap->rd_pkindex)) {
        Relation index = index_open(heap->rd_pkindex, AccessShareLock);
        // Sets xmin (xmax) to a transaction that inserted (deletes) a tuple
        // it returns and has not ended; this transaction's own rows set neither.
        SnapshotData dirty;
        InitDirtySnapshot(dirty);
        ScanKeyData key;
        ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(&r.key_hash));
        IndexScanDesc scan = pg::compat::index_scan_begin(heap, index, &dirty, 1);
        index_rescan(scan, &key, 1, nullptr, 0);
        TupleTableSlot* slot = table_slot_create(heap, nullptr);
        while (!TransactionIdIsValid(writer) && index_getnext_slot(scan, ForwardScanDirection, slot))
            writer = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
        ExecDropSingleTupleTableSlot(slot);
        index_endscan(scan);
        index_close(index, AccessShareLock);
    }
    table_close(heap, AccessShareLock);
    return writer;
}

// One try in a subtransaction; false if a wait for the key's holder was
// cancelled: by the tick, or (`remote`: the waits are a worker's) by the
// remote wait timer, which the claim reports as 55P03.
bool try_claim(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt, ClaimOutcome* outcome,
               bool remote)
{
    if (tick_timeout == MAX_TIMEOUTS)
        tick_timeout = RegisterTimeout(USER_TIMEOUT, on_tick);
    MemoryContext cxt = CurrentMemoryContext;
    ResourceOwner owner = CurrentResourceOwner;
    volatile bool claimed = true;

    BeginInternalSubTransaction(nullptr);
    MemoryContextSwitchTo(cxt);
    holder_wait_cancelled = false;
    awaited = InvalidTransactionId;
    remote_nowait = remote;
    if (!remote)
        enable_timeout_every(tick_timeout, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), tick_ms), tick_ms);
    PG_TRY();
    {
        *outcome = claim_core(r, fcinfo, result_cxt);
        disable_timeout(tick_timeout, false);
        remote_nowait = false;
        // A tick that cancelled a wait just as it ended raises here, still
        // inside the subtransaction, never in the caller's next statement.
        CHECK_FOR_INTERRUPTS();
        ReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(cxt);
        CurrentResourceOwner = owner;
    }
    PG_CATCH();
    {
        disable_timeout(tick_timeout, false);
        remote_nowait = false;
        MemoryContextSwitchTo(cxt);
        ErrorData* edata = CopyErrorData();
        FlushErrorState();
        RollbackAndReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(cxt);
        CurrentResourceOwner = owner;
        bool cancelled = remote ? edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE
                                : edata->sqlerrcode == ERRCODE_QUERY_CANCELED && holder_wait_cancelled;
        if (!cancelled)
            ReThrowError(edata);  // a real cancel, a timeout, any other error
        FreeErrorData(edata);
        claimed = false;
    }
    PG_END_TRY();
    return claimed;
}

ClaimOutcome in_progress(const ClaimRequest& r)
{
    stats::count(stats::claim_in_progress, r.scope.scope);
    return ClaimOutcome{ClaimStatus::in_progress, false, 0};
}

}  // namespace

ClaimOutcome claim_nowait(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt)
{
    if (claims_on_other_nodes()) {
        ClaimOutcome outcome;
        return try_claim(r, fcinfo, result_cxt, &outcome, true) ? outcome : in_progress(r);
    }
    TransactionId writer = writer_of_key(r, fcinfo);
    if (TransactionIdIsValid(writer) && !is_purge_worker(writer))
        return in_progress(r);
    ClaimOutcome outcome;
    while (!try_claim(r, fcinfo, result_cxt, &outcome, false)) {
        TransactionId xid = awaited;
        if (!is_purge_worker(xid))
            return in_progress(r);
        XactLockTableWait(xid, nullptr, nullptr, XLTW_None);
    }
    return outcome;
}

}  // namespace idem::claims
