// What the purge launcher (purge_launcher.cpp, which has the design) and the
// per-database purge worker (purge_worker.cpp) share.
#pragma once

#include "purge.hpp"

extern "C" {
#include "utils/guc.h"
}

namespace idem::purge {

// The per-database worker's background worker type. src/claim_nowait.cpp
// compares a lock holder's type (GetBackgroundWorkerTypeByPid) with this
// very text to know a wait is for the purge, which ends soon.
constexpr const char* worker_type = "pg_idem purge worker";
constexpr const char* launcher_type = "pg_idem purge launcher";

// How long one visit of a worker purges, at most, while expired rows remain:
// then it leaves, the launcher goes on to the next database, and the next
// round starts after pg_idem.purge_delay instead of the interval. One
// database's backlog delays the others by this much, not until it is gone.
constexpr int visit_ms = 10000;

// pg_idem.database's check hook: '*', or a list of database names (quoted
// like identifiers when they hold a comma or a space), or empty.
bool check_databases(char** newval, void** extra, GucSource source);

// Shared memory, which exists when pg_idem is preloaded: the launcher clears
// the flag before each visit, a worker sets it when its visit ran out of
// time with expired rows left, and the launcher reads it once the worker
// has exited.
void clear_more_left();
void set_more_left();
bool more_left();

}  // namespace idem::purge

// The background workers' entry points (bgw_function_name); PostgreSQL
// calls them, so they never throw.
extern "C" PGDLLEXPORT void idem_purge_launcher_main(Datum arg);
extern "C" PGDLLEXPORT void idem_purge_worker_main(Datum arg);
