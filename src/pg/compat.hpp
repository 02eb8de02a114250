// Every difference between the PostgreSQL versions pg_idem builds against
// (15, 16, 17, 18), and the only file that tests PG_VERSION_NUM. The rest of
// the code calls what this file names, the same on every version.
//
// pg/postgres.hpp includes it, so every PostgreSQL-side file has it.
#pragma once

#ifndef PG_VERSION_NUM
#error "include pg/postgres.hpp, not pg/compat.hpp directly"
#endif

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 190000
#error "pg_idem supports PostgreSQL 15 to 18"
#endif

extern "C" {
// 16 moved the varlena macros (VARDATA_ANY, VARSIZE_ANY_EXHDR) out of postgres.h.
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "storage/lockdefs.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#if PG_VERSION_NUM >= 170000
#include "storage/procnumber.h"
#else
#include "storage/backendid.h"
#endif
}

// The module's magic block: 18 also records the name and version, which
// pg_get_loaded_modules() shows.
#if PG_VERSION_NUM >= 180000
#define IDEM_MODULE_MAGIC(module_name, module_version) \
    PG_MODULE_MAGIC_EXT(.name = (module_name), .version = (module_version))
#else
#define IDEM_MODULE_MAGIC(module_name, module_version) PG_MODULE_MAGIC
#endif

namespace idem::pg::compat {

// This backend's slot in an array of MaxBackends entries, 0-based. 15 and 16
// number backends from 1 (MyBackendId); 17 replaced it with the 0-based
// MyProcNumber, in which regular backends and background workers come
// first. (A blanket MyBackendId = MyProcNumber would index slot -1.)
inline int backend_slot()
{
#if PG_VERSION_NUM >= 170000
    int slot = MyProcNumber;
#else
    int slot = MyBackendId - 1;
#endif
    Assert(slot >= 0 && slot < MaxBackends);
    return slot;
}

// This backend's index in ProcGlobal->allProcs (17 dropped PGPROC.pgprocno).
inline int my_proc_number()
{
#if PG_VERSION_NUM >= 170000
    return MyProcNumber;
#else
    return MyProc->pgprocno;
#endif
}

// Memory for a GUC check hook's `extra`, which the GUC machinery frees: 16
// moved GUC memory into a context of its own (guc_malloc); 15 takes malloc.
// NULL when out of memory (the hook then fails).
inline void* guc_extra_alloc(size_t size)
{
#if PG_VERSION_NUM >= 160000
    return guc_malloc(LOG, size);
#else
    return malloc(size);
#endif
}

// USAGE and the like on a schema: 16 folded pg_namespace_aclcheck() into
// object_aclcheck().
inline AclResult namespace_aclcheck(Oid nsp, Oid role, AclMode mode)
{
#if PG_VERSION_NUM >= 160000
    return object_aclcheck(NamespaceRelationId, nsp, role, mode);
#else
    return pg_namespace_aclcheck(nsp, role, mode);
#endif
}

// The namespace pg_idem is installed in, or InvalidOid where it is not.
// get_extension_schema() is exported from 16 on; before, this is its body.
inline Oid extension_schema(const char* extension)
{
    Oid ext = get_extension_oid(extension, true);
    if (!OidIsValid(ext))
        return InvalidOid;
#if PG_VERSION_NUM >= 160000
    return get_extension_schema(ext);
#else
    Relation rel = table_open(ExtensionRelationId, AccessShareLock);
    ScanKeyData key[1];
    ScanKeyInit(&key[0], Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(ext));
    SysScanDesc scan = systable_beginscan(rel, ExtensionOidIndexId, true, nullptr, 1, key);
    HeapTuple tuple = systable_getnext(scan);
    Oid result =
        HeapTupleIsValid(tuple) ? reinterpret_cast<Form_pg_extension>(GETSTRUCT(tuple))->extnamespace : InvalidOid;
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return result;
#endif
}

// An index scan of `heap` through `index` with `nkeys` scan keys: 18 added
// an instrumentation argument (nullptr: none).
inline IndexScanDesc index_scan_begin(Relation heap, Relation index, Snapshot snapshot, int nkeys)
{
#if PG_VERSION_NUM >= 180000
    return index_beginscan(heap, index, snapshot, nullptr, nkeys, 0);
#else
    return index_beginscan(heap, index, snapshot, nkeys, 0);
#endif
}

// Runs what follows with pg_catalog alone on the search path (pg_temp not
// searched) until the matching pop_catalog_search_path(level). An error in
// between needs no pop: (sub)transaction abort undoes the push.
//
// 15 and 16 push an override search path (a list push). 17 removed
// PushOverrideSearchPath; there the path is set as a function's SET clause
// does it: search_path at a GUC nest level of its own, undone by
// AtEOXact_GUC (17's search path cache makes the re-parse cheap).
#if PG_VERSION_NUM < 170000
inline int push_catalog_search_path()
{
    static OverrideSearchPath* path = nullptr;  // in TopMemoryContext
    if (path == nullptr) {
        path = static_cast<OverrideSearchPath*>(MemoryContextAllocZero(TopMemoryContext, sizeof(OverrideSearchPath)));
        path->schemas = NIL;
        path->addCatalog = true;
        path->addTemp = false;
    }
    PushOverrideSearchPath(path);
    return 0;
}

inline void pop_catalog_search_path(int)
{
    PopOverrideSearchPath();
}
#else
inline int push_catalog_search_path()
{
    int level = NewGUCNestLevel();
    // pg_temp named last keeps temporary objects from being found first;
    // function and operator look-ups never search pg_temp.
    (void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                            false);
    return level;
}

inline void pop_catalog_search_path(int level)
{
    AtEOXact_GUC(true, level);
}
#endif

}  // namespace idem::pg::compat
