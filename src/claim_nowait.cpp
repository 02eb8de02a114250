// idem_begin(wait => false): a key another transaction holds right now gives
// in_progress at once instead of a wait.
//
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
// The price is one subtransaction per call, and so one subtransaction id per
// new key: PostgreSQL caches 64 of them per backend, and a transaction with
// more has every snapshot taken meanwhile look them up in pg_subtrans. A
// duplicate writes nothing and takes no id. The README says to batch many new
// keys with idem_claim_many instead.
#include "claim.hpp"

#include "stats.hpp"

extern "C" {
#include "access/xact.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/resowner.h"
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

// One try in a subtransaction; false if a wait for the key's holder was cancelled.
bool try_claim(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt, ClaimOutcome* outcome)
{
    if (tick_timeout == MAX_TIMEOUTS)
        tick_timeout = RegisterTimeout(USER_TIMEOUT, on_tick);
    MemoryContext cxt = CurrentMemoryContext;
    ResourceOwner owner = CurrentResourceOwner;
    bool claimed = true;

    BeginInternalSubTransaction(nullptr);
    MemoryContextSwitchTo(cxt);
    holder_wait_cancelled = false;
    awaited = InvalidTransactionId;
    enable_timeout_every(tick_timeout, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), tick_ms), tick_ms);
    PG_TRY();
    {
        *outcome = claim_core(r, fcinfo, result_cxt);
        disable_timeout(tick_timeout, false);
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
        MemoryContextSwitchTo(cxt);
        ErrorData* edata = CopyErrorData();
        FlushErrorState();
        RollbackAndReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(cxt);
        CurrentResourceOwner = owner;
        if (edata->sqlerrcode != ERRCODE_QUERY_CANCELED || !holder_wait_cancelled)
            ReThrowError(edata);  // a real cancel, a timeout, any other error
        FreeErrorData(edata);
        claimed = false;
    }
    PG_END_TRY();
    return claimed;
}

}  // namespace

ClaimOutcome claim_nowait(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt)
{
    ClaimOutcome outcome;
    while (!try_claim(r, fcinfo, result_cxt, &outcome)) {
        TransactionId xid = awaited;
        if (!is_purge_worker(xid)) {
            stats::count(stats::claim_in_progress, r.scope.scope);
            return ClaimOutcome{ClaimStatus::in_progress, false, 0};
        }
        XactLockTableWait(xid, nullptr, nullptr, XLTW_None);
    }
    return outcome;
}

}  // namespace idem::claims
