// The purge launcher: how the purge reaches every database (SPEC "Expiry and
// purge") without a worker per database.
//
// One static background worker, "pg_idem purge launcher", registered at
// server start when pg_idem is preloaded, started once recovery has ended
// (on a primary, or a standby once promoted). It connects to no database:
// it reads only pg_database, a shared catalog. Each round it lists the
// databases pg_idem.database covers ('*': every database that accepts
// connections, templates left out; or the names listed) and visits them
// one after another. A visit is a dynamic background worker of type "pg_idem
// purge worker" (purge_worker.cpp) for that database, never restarted: it
// connects, leaves at once if pg_idem is not installed there, otherwise
// purges batches until nothing expired is left, or for visit_ms, and exits;
// the launcher waits for it to exit before it starts the next. The next
// round starts pg_idem.purge_interval later, or pg_idem.purge_delay later if
// a visit ran out of time with rows left.
//
// Why this shape:
// * It holds two of max_worker_processes whatever the number of databases
//   (the launcher, and one worker while it visits), and no connection to a
//   database with nothing to do: a database without pg_idem costs one short
//   connection a round.
// * Nothing is registered per database, so a database created later (and
//   its CREATE EXTENSION) is found by the next round, without a restart, and
//   a dropped one is simply no longer listed.
// * A worker that stayed connected would make DROP DATABASE of its database
//   fail ("being accessed by other users") and, in a template, CREATE
//   DATABASE: a visit is short (DROP DATABASE waits up to 5 s for it), and
//   templates are not visited unless named.
// * One worker at a time does what one database's worker did before, so the
//   purge takes no more CPU and I/O from the claims; visit_ms keeps one
//   database's backlog from holding back the others.
//
// When no worker slot is free (max_worker_processes, shared with parallel
// query and other extensions), the launcher says so in the log once, ends
// the round and tries again the next: it never fails for it, nor retries
// in a loop. A database dropped between the listing and its visit: just
// before the visit the launcher reads its pg_database row again and skips
// it while a DROP DATABASE holds or awaits its lock. Only a drop that takes
// the lock in the few milliseconds between that check and the worker's
// connection makes the worker fail, with PostgreSQL's own FATAL "It seems
// to have just been dropped"; the launcher goes on.
//
// Signals: SIGTERM ends the launcher at once, also while it waits for a
// worker (which finishes its visit on its own); the postmaster starts it
// again after restart_seconds. SIGHUP reloads the settings and starts a
// round at once, with the new list. A cancel (pg_cancel_backend) never ends
// it: while it sleeps it starts a round at once, otherwise it is ignored.
// The postmaster's death ends it at once (every wait has
// WL_EXIT_ON_PM_DEATH).
#include "purge_internal.hpp"

extern "C" {
#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
}

#include <cstring>

namespace idem::purge {
namespace {

// A launcher that failed or was terminated is started again after this long.
constexpr int restart_seconds = 10;

// What a worker tells the launcher (more_left() and its kin).
struct Shared {
    pg_atomic_uint32 more_left;
};
Shared* shared = nullptr;

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

void request_shmem()
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(MAXALIGN(sizeof(Shared)));
}

void startup_shmem()
{
    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    shared = static_cast<Shared*>(ShmemInitStruct("pg_idem purge", sizeof(Shared), &found));
    if (!found)
        pg_atomic_init_u32(&shared->more_left, 0);
    LWLockRelease(AddinShmemInitLock);
}

// pg_idem.database, read: `every` for '*', else `names` (char*, in the
// round's memory). Only values the check hook accepted get here.
struct Setting {
    bool every;
    List* names;
};

Setting read_setting()
{
    Setting s = {false, NIL};
    if (databases == nullptr)
        return s;
    char* copy = pstrdup(databases);
    if (!SplitGUCList(copy, ',', &s.names))
        s.names = NIL;  // cannot happen: check_databases accepted it
    if (list_length(s.names) == 1 && std::strcmp(static_cast<const char*>(linitial(s.names)), "*") == 0) {
        s.every = true;
        s.names = NIL;
    }
    return s;
}

bool listed(const Setting& s, const char* name)
{
    ListCell* cell;
    foreach (cell, s.names) {
        if (std::strcmp(static_cast<const char*>(lfirst(cell)), name) == 0)
            return true;
    }
    return false;
}

// A database a round visits.
struct Database {
    Oid oid;
    NameData name;
};

bool accepts_connections(Form_pg_database db)
{
    return db->datallowconn && !database_is_invalid_form(db);
}

bool visited(const Setting& s, Form_pg_database db)
{
    if (!accepts_connections(db))
        return false;
    return s.every ? !db->datistemplate : listed(s, NameStr(db->datname));
}

// Runs `read` (which reads catalogs, and takes the caller's memory context
// for what it returns) in a transaction of its own. False after an error (a
// cancel, say), which is logged.
template <typename Read>
bool in_transaction(Read read)
{
    MemoryContext cxt = CurrentMemoryContext;
    volatile bool ok = true;
    PG_TRY();
    {
        StartTransactionCommand();
        read(cxt);
        CommitTransactionCommand();
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(cxt);
        EmitErrorReport();
        FlushErrorState();
        AbortCurrentTransaction();
        ok = false;
    }
    PG_END_TRY();
    MemoryContextSwitchTo(cxt);
    return ok;
}

// Names of pg_idem.database's list already reported as not there, so each
// is logged once until it is there again (or the setting changes): char*
// in launcher_cxt, with the setting they were found under.
MemoryContext launcher_cxt = nullptr;
List* reported_missing = NIL;
char* reported_under = nullptr;

bool forget_reported(const char* name)
{
    ListCell* cell;
    foreach (cell, reported_missing) {
        char* entry = static_cast<char*>(lfirst(cell));
        if (std::strcmp(entry, name) == 0) {
            reported_missing = foreach_delete_current(reported_missing, cell);
            pfree(entry);
            return true;
        }
    }
    return false;
}

// Logs, once, a listed database that does not exist or accepts no
// connections (`refusing`); forgets one that is there again.
void report_listed(const char* name, bool exists, bool refusing)
{
    bool was_reported = forget_reported(name);
    if (exists && !refusing)
        return;
    MemoryContext old = MemoryContextSwitchTo(launcher_cxt);
    reported_missing = lappend(reported_missing, pstrdup(name));
    MemoryContextSwitchTo(old);
    if (was_reported)
        return;
    if (!exists)
        ereport(LOG, (errcode(ERRCODE_UNDEFINED_DATABASE),
                      errmsg("pg_idem.database names database \"%s\", which does not exist", name),
                      errhint("The purge skips it until it is created.")));
    else
        ereport(LOG, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                      errmsg("pg_idem.database names database \"%s\", which does not accept connections", name),
                      errhint("The purge skips it until ALTER DATABASE \"%s\" ALLOW_CONNECTIONS true.", name)));
}

// The databases this round visits (Database*, in the caller's memory), in
// pg_database's order; NIL after an error, which is logged.
List* list_databases(const Setting& s)
{
    const char* setting = databases != nullptr ? databases : "";
    if (reported_under == nullptr || std::strcmp(reported_under, setting) != 0) {
        MemoryContextReset(launcher_cxt);
        reported_missing = NIL;
        reported_under = MemoryContextStrdup(launcher_cxt, setting);
    }
    int nlisted = list_length(s.names);
    bool* exists = static_cast<bool*>(palloc0(sizeof(bool) * (nlisted + 1)));
    bool* refusing = static_cast<bool*>(palloc0(sizeof(bool) * (nlisted + 1)));
    List* result = NIL;
    bool ok = in_transaction([&](MemoryContext cxt) {
        Relation rel = table_open(DatabaseRelationId, AccessShareLock);
        TableScanDesc scan = table_beginscan_catalog(rel, 0, nullptr);
        HeapTuple tuple;
        while ((tuple = heap_getnext(scan, ForwardScanDirection)) != nullptr) {
            auto* db = reinterpret_cast<Form_pg_database>(GETSTRUCT(tuple));
            int i = 0;
            ListCell* cell;
            foreach (cell, s.names) {
                if (std::strcmp(static_cast<const char*>(lfirst(cell)), NameStr(db->datname)) == 0) {
                    exists[i] = true;
                    refusing[i] = !accepts_connections(db);
                }
                i++;
            }
            if (!visited(s, db))
                continue;
            MemoryContext old = MemoryContextSwitchTo(cxt);
            auto* entry = static_cast<Database*>(palloc(sizeof(Database)));
            entry->oid = db->oid;
            entry->name = db->datname;
            result = lappend(result, entry);
            MemoryContextSwitchTo(old);
        }
        table_endscan(scan);
        table_close(rel, AccessShareLock);
    });
    if (!ok)
        return NIL;
    int i = 0;
    ListCell* cell;
    foreach (cell, s.names) {
        report_listed(static_cast<const char*>(lfirst(cell)), exists[i], refusing[i]);
        i++;
    }
    return result;
}

// Whether `db` is still to be visited, read again just before its visit:
// it exists, is covered by the setting, and no DROP DATABASE (or RENAME, or
// SET TABLESPACE) holds or awaits its lock, which the worker's connection
// would wait for only to fail once the drop commits.
bool still_visited(const Setting& s, const Database& db)
{
    bool found = false;
    bool ok = in_transaction([&](MemoryContext) {
        LOCKTAG tag;
        SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, db.oid, 0);
        if (LockAcquire(&tag, AccessShareLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
            return;  // released at commit otherwise
        Relation rel = table_open(DatabaseRelationId, AccessShareLock);
        ScanKeyData key;
        ScanKeyInit(&key, Anum_pg_database_oid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(db.oid));
        // No index: with no database selected, the relation cache can build
        // an entry for pg_database (nailed) but not for its indexes, until
        // a backend has written the shared cache file.
        SysScanDesc scan = systable_beginscan(rel, DatabaseOidIndexId, false, nullptr, 1, &key);
        HeapTuple tuple = systable_getnext(scan);
        found = HeapTupleIsValid(tuple) && visited(s, reinterpret_cast<Form_pg_database>(GETSTRUCT(tuple)));
        systable_endscan(scan);
        table_close(rel, AccessShareLock);
    });
    return ok && found;
}

// Between waits: SIGTERM ends the launcher here (die). Returns whether a
// cancel arrived, which would otherwise end the launcher
// with an ERROR outside any transaction.
bool handle_interrupts()
{
    bool cancelled = QueryCancelPending;
    QueryCancelPending = false;
    CHECK_FOR_INTERRUPTS();
    return cancelled;
}

// Set by a reload during a round: the round ends after the visit under
// way, and the next starts at once, under the new settings.
bool reloaded = false;

void reload_if_asked()
{
    if (!ConfigReloadPending)
        return;
    ConfigReloadPending = false;
    ProcessConfigFile(PGC_SIGHUP);
    reloaded = true;
}

bool no_slot_reported = false;

enum class Visit { done, more_left, no_slot };

// One worker's visit of `db`: starts it, waits for it to exit.
Visit visit(const Database& db)
{
    BackgroundWorker worker;
    std::memset(&worker, 0, sizeof worker);
    worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
    worker.bgw_restart_time = BGW_NEVER_RESTART;
    snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_idem");
    snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_worker_main");
    snprintf(worker.bgw_name, BGW_MAXLEN, "%s for %s", worker_type, NameStr(db.name));
    snprintf(worker.bgw_type, BGW_MAXLEN, "%s", worker_type);
    worker.bgw_main_arg = ObjectIdGetDatum(db.oid);
    static_assert(NAMEDATALEN <= BGW_EXTRALEN, "a database name fits in bgw_extra");
    std::memcpy(worker.bgw_extra, NameStr(db.name), NAMEDATALEN);
    worker.bgw_notify_pid = MyProcPid;

    clear_more_left();
    BackgroundWorkerHandle* handle;
    if (!RegisterDynamicBackgroundWorker(&worker, &handle)) {
        if (!no_slot_reported)
            ereport(LOG, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
                          errmsg("pg_idem purge launcher could not start a purge worker: no background worker slot "
                                 "is free"),
                          errdetail("max_worker_processes is %d, shared with parallel query and other extensions.",
                                    max_worker_processes),
                          errhint("The launcher tries again every round (pg_idem.purge_interval) and says so here "
                                  "once it succeeds; raise max_worker_processes if this persists.")));
        no_slot_reported = true;
        return Visit::no_slot;
    }
    if (no_slot_reported) {
        ereport(LOG, (errmsg("pg_idem purge launcher started a purge worker again")));
        no_slot_reported = false;
    }
    // The postmaster sets our latch when the worker starts and when it
    // exits (bgw_notify_pid); the timeout only bounds a notice missed.
    for (;;) {
        pid_t pid;
        BgwHandleStatus status = GetBackgroundWorkerPid(handle, &pid);
        if (status == BGWH_STOPPED)
            break;
        if (status == BGWH_POSTMASTER_DIED)
            proc_exit(1);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        (void)handle_interrupts();  // a cancel means nothing here
        reload_if_asked();
    }
    pfree(handle);
    return more_left() ? Visit::more_left : Visit::done;
}

// One round: every database, one visit each. True if a visit left expired
// rows behind (it ran out of time).
bool run_round()
{
    pgstat_report_activity(STATE_RUNNING, "pg_idem purge: listing databases");
    Setting s = read_setting();
    List* dbs = list_databases(s);
    bool more = false;
    int visits = 0;
    ListCell* cell;
    foreach (cell, dbs) {
        const Database* db = static_cast<const Database*>(lfirst(cell));
        if (!still_visited(s, *db))
            continue;
        pgstat_report_activity(STATE_RUNNING, psprintf("pg_idem purge: visiting database \"%s\"", NameStr(db->name)));
        Visit v = visit(*db);
        if (v == Visit::no_slot)
            break;  // the other databases would find none either
        visits++;
        more = more || v == Visit::more_left;
        reload_if_asked();
        if (reloaded)
            break;
    }
    ereport(DEBUG1, (errmsg("pg_idem purge launcher visited %d of %d databases", visits, list_length(dbs))));
    return more;
}

// Sleeps `ms`, or until a reload or a cancel, which start a round at once.
// pg_stat_activity shows the launcher idle only here.
void sleep_between_rounds(long ms)
{
    pgstat_report_activity(STATE_IDLE, nullptr);
    TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
    for (;;) {
        reload_if_asked();
        if (reloaded) {
            reloaded = false;
            return;
        }
        long left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);
        if (left <= 0)
            return;
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, left, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        if (handle_interrupts())
            return;  // a cancel
    }
}

}  // namespace

void clear_more_left()
{
    pg_atomic_write_u32(&shared->more_left, 0);
}

void set_more_left()
{
    pg_atomic_write_u32(&shared->more_left, 1);
}

bool more_left()
{
    return pg_atomic_read_u32(&shared->more_left) != 0;
}

bool check_databases(char** newval, void**, GucSource)
{
    if (*newval == nullptr)
        return true;
    // SplitGUCList writes into its input and allocates the list: both in a
    // context of their own, freed before the hook returns.
    MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext, "pg_idem.database check", ALLOCSET_SMALL_SIZES);
    MemoryContext old = MemoryContextSwitchTo(tmp);
    char* copy = pstrdup(*newval);
    List* names = NIL;
    bool ok = SplitGUCList(copy, ',', &names);
    if (!ok)
        GUC_check_errdetail("List syntax is invalid: give '*' for every database, or names separated by commas.");
    ListCell* cell;
    foreach (cell, names) {
        const char* name = static_cast<const char*>(lfirst(cell));
        if (!ok)
            break;
        if (std::strcmp(name, "*") == 0 && list_length(names) > 1) {
            GUC_check_errdetail("'*' (every database) cannot be combined with names.");
            ok = false;
        } else if (std::strlen(name) >= NAMEDATALEN) {
            GUC_check_errdetail("Database name \"%s\" is longer than %d bytes.", name, NAMEDATALEN - 1);
            ok = false;
        }
    }
    MemoryContextSwitchTo(old);
    MemoryContextDelete(tmp);
    return ok;
}

void init_preloaded()
{
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = request_shmem;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = startup_shmem;

    BackgroundWorker launcher;
    std::memset(&launcher, 0, sizeof launcher);
    launcher.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    // Only where writes are possible: on a primary, or once a standby is promoted.
    launcher.bgw_start_time = BgWorkerStart_RecoveryFinished;
    launcher.bgw_restart_time = restart_seconds;
    snprintf(launcher.bgw_library_name, BGW_MAXLEN, "pg_idem");
    snprintf(launcher.bgw_function_name, BGW_MAXLEN, "idem_purge_launcher_main");
    snprintf(launcher.bgw_name, BGW_MAXLEN, "%s", launcher_type);
    snprintf(launcher.bgw_type, BGW_MAXLEN, "%s", launcher_type);
    RegisterBackgroundWorker(&launcher);
}

}  // namespace idem::purge

void idem_purge_launcher_main(Datum)
{
    using namespace idem::purge;
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();
    BackgroundWorkerInitializeConnection(nullptr, nullptr, 0);
    pgstat_report_appname(launcher_type);
    ereport(LOG, (errmsg("pg_idem purge launcher started"), errdetail("pg_idem.database is '%s'.", databases)));

    launcher_cxt = AllocSetContextCreate(TopMemoryContext, "pg_idem purge launcher", ALLOCSET_SMALL_SIZES);
    MemoryContext round_cxt = AllocSetContextCreate(TopMemoryContext, "pg_idem purge round", ALLOCSET_DEFAULT_SIZES);
    for (;;) {
        MemoryContextSwitchTo(round_cxt);
        bool more = run_round();
        MemoryContextSwitchTo(TopMemoryContext);
        MemoryContextReset(round_cxt);
        sleep_between_rounds(more ? delay_ms : interval_ms);
    }
}
