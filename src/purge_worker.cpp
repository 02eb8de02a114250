// The purge worker: one visit of one database, started by the launcher
// (purge_launcher.cpp, which has the design) and gone when it is done.
//
// It connects to the database the launcher chose (bgw_main_arg, its OID)
// and leaves at once if pg_idem is not installed there. Otherwise each batch
// purges up to pg_idem.purge_batch_size expired rows in transactions of at
// most rows_per_transaction rows, committed one after the other (so a claim
// of a key being purged waits for one small transaction, never for the
// batch), then folds as many committed hot-stock ledger rows into their
// items in a transaction of its own. Batches follow each other,
// pg_idem.purge_delay apart, while a batch was full; then the worker exits.
// After visit_ms with rows left it exits too, and tells the launcher so,
// which comes back soon instead of after pg_idem.purge_interval.
//
// An error in one table's purge leaves that table alone for the rest of the
// visit; a cancel ends the visit. Either is logged, and the next round
// comes back. A cancel while it pauses between batches only wakes it.
// SIGTERM ends it (die), and so does the postmaster's death, checked
// between transactions and in every wait. Its background worker type is
// worker_type, by which claims know a wait for it ends soon.
#include "purge_internal.hpp"

#include "pg/spi.hpp"
#include "replication.hpp"
#include "stock.hpp"

extern "C" {
#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::purge {
namespace {

// What one transaction does in the extension installed in `nsp`, inside
// SPI_connect; returns how many rows it deleted or folded.
using Task = int64 (*)(Oid nsp);

// Where the purge has got to in each table, kept across transactions and
// batches, and how many rows the next transaction may lock.
Cursor purge_cursor;
int64 purge_chunk_rows = 0;

int64 purge_expired(Oid nsp)
{
    // Nothing is lost in a crash that a later purge does not delete again,
    // so the commit need not wait for the WAL flush, nor hold its row locks
    // through it (for this transaction only: the fold keeps the default).
    (void)set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
    return delete_expired(nsp, GetCurrentTimestamp(), purge_chunk_rows, &purge_cursor);
}

int64 fold_ledger(Oid nsp)
{
    // A subscriber's ledger and levels follow the publisher's fold
    // (replication.hpp). Folding here as well would make levels wrong until
    // the publisher's next fold: its UPDATE of an item's level sets the
    // level it folded, without the rows folded only here.
    if (replication::stock_subscribed(nsp))
        return 0;
    return stock::fold_committed_ledger(nsp, batch_size);
}

// What a transaction came to.
constexpr int64 failed = -1;  // an error, which is logged
constexpr int64 not_installed = -2;  // pg_idem is not installed in this database
constexpr int64 canceled = -3;  // a cancel (or a statement_timeout), which is logged

// `task` in a transaction of its own, so that one task's error does not
// undo the other's work. Returns how many rows it deleted or folded, or
// failed, canceled or not_installed.
int64 run_transaction(Task task, const char* activity)
{
    MemoryContext cxt = CurrentMemoryContext;
    volatile int64 done = 0;
    PG_TRY();
    {
        SetCurrentStatementStartTimestamp();
        StartTransactionCommand();
        // A transaction may run no statement (pg_idem not installed), and
        // the batch's transactions follow each other without a wait: this is
        // where a SIGTERM or a cancel is answered between them.
        CHECK_FOR_INTERRUPTS();
        pg::connect();
        PushActiveSnapshot(GetTransactionSnapshot());
        pgstat_report_activity(STATE_RUNNING, activity);
        Oid nsp = pg::installed_namespace();
        done = OidIsValid(nsp) ? task(nsp) : not_installed;
        SPI_finish();
        PopActiveSnapshot();
        CommitTransactionCommand();
        pgstat_report_activity(STATE_IDLE, nullptr);
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(cxt);
        ErrorData* error = CopyErrorData();
        EmitErrorReport();
        FlushErrorState();
        AbortCurrentTransaction();
        pgstat_report_activity(STATE_IDLE, nullptr);
        done = error->sqlerrcode == ERRCODE_QUERY_CANCELED ? canceled : failed;
        FreeErrorData(error);
    }
    PG_END_TRY();
    return done;
}

// Between transactions, which may follow each other for a whole batch.
void exit_if_postmaster_died()
{
    if (!PostmasterIsAlive())
        proc_exit(1);
}

// One batch: purge transactions until batch_size rows or nothing is left,
// then the fold. Returns whether more may be waiting (a batch was full), or
// false after an error, or when pg_idem is not installed or the visit was
// canceled (`*gone`).
//
// A table whose purge fails (a lock_timeout, a publication that its replica
// identity does not suit) is left alone for the rest of the visit, and the
// purge goes on with the other tables: one table's error keeps neither the
// others nor the fold from being done. The next visit tries it again.
bool run_batch(MemoryContext batch_cxt, bool* gone)
{
    int64 purged = 0;
    bool purge_more = false;
    for (;;) {
        purge_chunk_rows = Min(rows_per_transaction, static_cast<int64>(batch_size) - purged);
        int64 n = run_transaction(purge_expired, "pg_idem purge");
        MemoryContextReset(batch_cxt);
        if (n == not_installed || n == canceled) {
            *gone = true;
            return false;
        }
        if (n == failed) {
            bool& skipped = purge_cursor.skipped[purge_cursor.last_run];
            if (skipped) {  // it failed before any table's statement: the visit ends
                *gone = true;
                return false;
            }
            skipped = true;
            continue;
        }
        purged += n;
        if (purge_cursor.done)
            break;
        if (purged >= batch_size) {
            purge_more = true;
            break;
        }
        exit_if_postmaster_died();
    }
    int64 folded = run_transaction(fold_ledger, "pg_idem fold hot-stock ledger");
    MemoryContextReset(batch_cxt);
    if (folded == canceled)
        return false;
    return purge_more || folded >= batch_size;
}

// The visit's batches: until nothing is left (false) or visit_ms has passed
// with more waiting (true).
bool visit_batches()
{
    MemoryContext batch_cxt = AllocSetContextCreate(TopMemoryContext, "pg_idem purge", ALLOCSET_DEFAULT_SIZES);
    TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), visit_ms);
    start_cursor(&purge_cursor);
    for (;;) {
        MemoryContextSwitchTo(batch_cxt);
        bool gone = false;
        bool more = run_batch(batch_cxt, &gone);
        MemoryContextSwitchTo(TopMemoryContext);
        if (gone || !more)
            return false;
        if (GetCurrentTimestamp() >= until)
            return true;
        // Hand the deletions to the statistics system, as every backend does
        // between transactions: autovacuum finds the dead rows only there.
        // (At exit they are handed over anyway.)
        pgstat_report_stat(false);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, delay_ms, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        // Between batches there is nothing to cancel, and an ERROR out here,
        // outside run_transaction's error handling, would end the worker
        // with a FATAL: a cancel that arrived meanwhile only woke it. (One
        // that arrives during a transaction ends the visit, logged.)
        QueryCancelPending = false;
        CHECK_FOR_INTERRUPTS();
        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
    }
}

// Every message of a visit names its database: the server log's lines do
// not, by default.
void visit_context(void* database)
{
    errcontext("pg_idem purge worker in database \"%s\"", static_cast<const char*>(database));
}

// The visit: batches until nothing is left (false) or visit_ms has passed
// with more waiting (true).
bool visit(char* database)
{
    ErrorContextCallback context;
    context.callback = visit_context;
    context.arg = database;
    context.previous = error_context_stack;
    error_context_stack = &context;
    bool more = visit_batches();
    error_context_stack = context.previous;
    return more;
}

}  // namespace
}  // namespace idem::purge

void idem_purge_worker_main(Datum arg)
{
    using namespace idem::purge;
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();

    char database[NAMEDATALEN];
    std::memcpy(database, MyBgworkerEntry->bgw_extra, NAMEDATALEN);
    database[NAMEDATALEN - 1] = '\0';
    BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
    pgstat_report_appname(worker_type);
    ereport(DEBUG1, (errmsg("pg_idem purge worker visits database \"%s\"", database)));
    if (visit(database))
        set_more_left();
}
